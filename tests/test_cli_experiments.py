"""`minisink ppl` and `minisink attn` end to end on a tiny checkpoint with a word-level tokenizer, and the
experiment scripts' commands (experiments/run_all.py) against the real parser."""

import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from minisink.cli import build_parser, main
from tiny import TINY, write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WORDS = [f"w{i}" for i in range(TINY["vocab_size"] - 1)]  # 96 words + [UNK] = the tiny vocabulary of 97


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random Llama with a tokenizer.json: one token per word, ids 0..96."""
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path / "tokenizer.json"))
    return path


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("text") / "words.txt"
    path.write_text(" ".join(WORDS[i] for i in rng.integers(0, len(WORDS), 1400)))
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ppl_sink_writes_npz_and_summary(checkpoint, text, tmp_path, capsys):
    out = tmp_path / "runs" / "sink.npz"
    code, stdout, _ = run(capsys, "ppl", "--model", checkpoint, "--text", text, "--tokens", 1200, "--mode", "sink",
                          "--sinks", 2, "--window", 30, "--out", out)
    assert code == 0
    assert "perplexity" in stdout and "last 1000" in stdout and "tokens/s" in stdout and "1200 tokens" in stdout
    with np.load(out) as z:
        assert z["nll"].shape == (1199,) and np.isfinite(z["nll"]).all()
        assert (str(z["mode"]), int(z["sinks"]), int(z["window"]), bool(z["renumber"])) == ("sink", 2, 30, True)
    assert [p.name for p in out.parent.iterdir()] == ["sink.npz"]  # written atomically: no temporary left


def test_ppl_chunk_1_equals_chunked_and_csv(checkpoint, text, tmp_path, capsys):
    """The CLI's --chunk changes the speed, not the numbers (the fast exact evaluator)."""
    common = ["ppl", "--model", checkpoint, "--text", text, "--tokens", 200, "--sinks", 3, "--window", 17,
              "--no-renumber"]
    run(capsys, *common, "--chunk", 1, "--out", tmp_path / "one.npz")
    run(capsys, *common, "--chunk", 64, "--out", tmp_path / "fast.csv")
    with np.load(tmp_path / "one.npz") as z:
        one = z["nll"]
        assert not bool(z["renumber"]) and int(z["chunk"]) == 1
    csv = np.loadtxt(tmp_path / "fast.csv", delimiter=",", comments="#", skiprows=1 + 9)
    np.testing.assert_array_equal(csv[:, 0], np.arange(1, 200))
    np.testing.assert_allclose(csv[:, 1], one, atol=1e-4)


@pytest.mark.parametrize("mode, extra", [("dense", []), ("window", ["--window", 16]),
                                         ("recompute", ["--window", 12])])
def test_ppl_other_modes(checkpoint, text, capsys, mode, extra):
    code, stdout, stderr = run(capsys, "ppl", "--model", checkpoint, "--text", text, "--tokens", 60, "--mode", mode,
                               *extra)
    assert code == 0 and f"{mode}:" in stdout and "perplexity" in stdout
    if mode == "recompute":
        assert "s per token" in stderr  # the cost estimate is printed before it starts
    if mode == "dense":
        assert "dense keys and values" in stdout


def test_ppl_corpus_kjv(checkpoint, tmp_path, capsys, monkeypatch):
    from minisink import corpus

    fake = tmp_path / "kjv.txt"
    fake.write_text(" ".join(WORDS[:50]))
    monkeypatch.setattr(corpus, "fetch_kjv", lambda **kw: fake)
    code, stdout, _ = run(capsys, "ppl", "--model", checkpoint, "--corpus", "kjv", "--window", 8, "--sinks", 1)
    assert code == 0 and "50 tokens" in stdout


@pytest.mark.parametrize("argv, message", [
    ([], "--text FILE or --corpus kjv"),
    (["--mode", "dense", "--window", "8"], "neither"),
    (["--mode", "window", "--sinks", "4"], "no sinks"),
    (["--tokens", "1"], ">= 2"),
    (["--chunk", "0"], "chunk"),
])
def test_ppl_errors(checkpoint, text, argv, message, capsys):
    source = [] if not argv else ["--text", str(text)]
    with pytest.raises(SystemExit) as e:  # a command's own check, or argparse's (its message goes to stderr)
        main(["ppl", "--model", str(checkpoint), *source, *argv])
    assert message in f"{e.value.code} {capsys.readouterr().err}"


def test_attn_table_heads_and_plots(checkpoint, tmp_path, capsys):
    prompt = " ".join(WORDS[:40])
    code, stdout, _ = run(capsys, "attn", "--model", checkpoint, "--prompt", prompt)
    assert code == 0 and "40-token prompt" in stdout
    rows = [line.split() for line in stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [r[0] for r in rows] == ["0", "1", "2"]  # one row per layer
    assert "uniform attention would give" in stdout
    code, stdout, _ = run(capsys, "attn", "--model", checkpoint, "--prompt", prompt, "--heads")
    assert "h5" in stdout
    if "matplotlib" in sys.modules or __import__("importlib").util.find_spec("matplotlib"):
        code, stdout, _ = run(capsys, "attn", "--model", checkpoint, "--prompt", prompt, "--plot", tmp_path / "img")
        assert sorted(p.name for p in (tmp_path / "img").iterdir()) == ["attention_maps.png", "sink_mass.png"]


def test_attn_plot_without_matplotlib(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit, match=r"pip install 'minisink\[plot\]'"):
        main(["attn", "--model", str(checkpoint), "--prompt", " ".join(WORDS[:10]), "--plot", str(tmp_path)])


def test_attn_default_prompt_is_about_100_words():
    from minisink.attention_maps import DEFAULT_PROMPT

    assert 70 <= len(DEFAULT_PROMPT.split()) <= 110


def test_experiment_commands_parse():
    """Every run of experiments/run_all.py is a valid `minisink ppl` command line."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import run_all

    for name, args in run_all.PPL_RUNS.items():
        ns = build_parser().parse_args(["ppl", "--corpus", "kjv", *args.split()])
        assert ns.policy in name.split("_")[0] or name == "dense"
        assert ns.tokens >= 2
