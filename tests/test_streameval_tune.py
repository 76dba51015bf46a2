"""StreamEval (minisink/streameval.py) and `minisink tune` (minisink/tune.py) on tiny random models.

A tiny random model answers nothing right, so these tests check what can be checked without a real model: the
streams are built as specified (the question ends exactly D tokens after the key, the asked line holds the
expected value), every policy runs through the same loop and answers greedily from the same logits as a direct
forward, the CSV holds every query and is written atomically; tune's sweep stays within the memory budget and
its perplexities equal stream_nll's, its Pareto front and recommendation follow their definitions.
"""

import csv

import numpy as np
import pytest

from minisink import streameval as se
from minisink import tune
from minisink.cache import kv_bytes_per_token
from minisink.evaluate import perplexity, stream_nll
from minisink.cli import CACHE_POLICIES
from minisink.spec import CacheSpec, new_cache
from tiny import tiny_model

CHARS = "\n" + "".join(chr(c) for c in range(32, 127))  # 96 symbols: fits the tiny vocabulary of 97


class CharTokenizer:
    """One token per character: ids 0..95; nothing before a stream."""

    stream_start = []

    def encode(self, text):
        return [CHARS.index(c) for c in text]

    def encode_stream(self, text):
        return self.encode(text)

    def decode(self, ids):
        return "".join(CHARS[i] for i in ids)


@pytest.mark.parametrize("distance", [40, 75])
def test_passkey_question_ends_distance_tokens_after_the_key(distance):
    tok = CharTokenizer()
    pieces = list(se.passkey_pieces(tok, distance, 3, np.random.default_rng(0)))
    assert len(pieces) == 3 and len({key for _, key, _ in pieces}) == 3
    for i, (ids, key, d) in enumerate(pieces):
        text = tok.decode(ids)
        end_of_announcement = text.index(f"{key} is the pass key. ") + len(f"{key} is the pass key. ")
        assert d == distance and len(text) - end_of_announcement == distance
        assert text.endswith("What is the pass key? The pass key is")
        assert text.startswith(se.PREAMBLE) == (i == 0)


def test_passkey_distance_shorter_than_the_question_is_an_error():
    with pytest.raises(ValueError, match="--distance must be at least"):
        list(se.passkey_pieces(CharTokenizer(), 5, 1, np.random.default_rng(0)))


@pytest.mark.parametrize("distance", [1, 7, 20])
def test_lines_question_asks_about_the_line_distance_back(distance):
    tok = CharTokenizer()
    text = "".join(tok.decode(ids) for ids, _, _ in se.lines_pieces(tok, distance, 3, np.random.default_rng(1)))
    lines = [line for line in text.split("\n") if line.startswith("line ")]
    questions = [q for q in text.split("\n") if q.startswith("What is")]
    assert len(questions) == 3
    for ids, value, _ in se.lines_pieces(tok, distance, 3, np.random.default_rng(1)):
        piece = tok.decode(ids)
        written = [line for line in piece.split("\n") if line.startswith("line ")]
        target = int(piece.rsplit("in line ", 1)[1].split(" ")[0])
        last = int(written[-1].split(":")[0].split()[1])
        assert last + 1 - target == distance and (last + 1) % se.QUERY_EVERY == 0
        assert f"line {target}: REGISTER_CONTENT is <{value}>" in lines


SPECS = {"dense": {}, "window": dict(window=32), "sink": dict(sinks=2, window=30),  # 32 tokens, for each policy
         "recompute": dict(sinks=2, window=30), "h2o": dict(budget=32), "tova": dict(budget=32)}


@pytest.mark.parametrize("policy", CACHE_POLICIES)
def test_every_policy_answers_greedily_along_the_stream(policy, tmp_path):
    """Each answer is the argmax continuation of the stream so far under the policy's cache: the first answer of
    a dense run equals greedy decoding after a direct forward of the same ids."""
    m, tok = tiny_model(), CharTokenizer()
    spec = CacheSpec.parse(policy, **SPECS[policy])
    results = se.run_streameval(m, tok, "passkey", spec, distance=40, queries=2, seed=3)
    assert [q.index for q in results] == [0, 1] and results[0].position < results[1].position
    ids, key, _ = next(se.passkey_pieces(tok, 40, 1, np.random.default_rng(3)))
    assert results[0].expected == key and results[0].position == len(ids)
    if policy == "dense":
        cache = new_cache(m)
        logits, answer = m.forward(np.array(ids), cache)[-1], []
        for _ in range(se.ANSWER_TOKENS):
            answer.append(int(np.argmax(logits)))
            logits = m.forward(answer[-1:], cache)[-1]
        assert results[0].answer == tok.decode(answer)
    path = se.save_csv(results, tmp_path / "q.csv", {"policy": policy})
    rows = list(csv.DictReader(line for line in path.read_text().splitlines() if not line.startswith("#")))
    assert [r["expected"] for r in rows] == [q.expected for q in results]
    assert [p.name for p in tmp_path.iterdir()] == ["q.csv"]
    assert se.accuracy_line(results).startswith("accuracy ")


def test_tune_sweep_within_budget_equals_stream_nll():
    m = tiny_model()
    ids = np.random.default_rng(5).integers(0, 97, 300)
    per_token = kv_bytes_per_token(m.config)
    budget_mb = 200 * per_token / 2**20  # 200 tokens: sizes 64, 128 and 200
    seen = []
    settings = tune.sweep(m, ids, budget_mb, chunk=64, progress=lambda done, total, s: seen.append((done, total)))
    assert seen[-1] == (9, 9) and {s.sinks + s.window for s in settings} == {64, 128, 200}
    assert all(s.memory_mb <= budget_mb + 1e-9 for s in settings)
    one = next(s for s in settings if s.sinks == 4 and s.window == 124)
    assert one.perplexity == pytest.approx(perplexity(stream_nll(m, ids, new_cache(m, "sink", sinks=4, window=124), 1)),
                                           rel=1e-6)
    front = tune.pareto(settings)
    for s in settings:  # nothing outside the front beats a member of it
        for f in front:
            assert not (s.memory_mb <= f.memory_mb and s.perplexity < f.perplexity and s.tokens_per_s > f.tokens_per_s)
    best, lowest = tune.recommend(settings, tolerance=0.5), min(s.perplexity for s in settings)
    assert best.perplexity <= 1.5 * lowest
    assert best.memory_mb == min(s.memory_mb for s in settings if s.perplexity <= 1.5 * lowest)
    with pytest.raises(ValueError, match="give at least"):
        tune.sweep(m, ids, 0.001)


# --- the commands, end to end on a tiny checkpoint with a word-level tokenizer ---------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from tiny import TINY, write_tiny_checkpoint

    path = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"))
    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(TINY["vocab_size"] - 1)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path / "tokenizer.json"))
    text = path / "words.txt"
    text.write_text(" ".join(f"w{i}" for i in np.random.default_rng(0).integers(0, 96, 400)))
    return path, text


def test_cli_ppl_several_budgets_in_one_pass(checkpoint, tmp_path, capsys):
    """`ppl --mode h2o --budget 8 16` writes one run per budget, each equal to its own token-by-token run."""
    from minisink import load_model
    from minisink.cli import main

    path, text = checkpoint
    assert main(["ppl", "--model", str(path), "--text", str(text), "--tokens", "60", "--mode", "h2o", "--budget",
                 "8", "16", "--out", str(tmp_path / "h2o.npz")]) == 0
    out = capsys.readouterr().out
    assert "budget 8 = 4 heavy + 4 recent" in out and "budget 16 = 8 heavy + 8 recent" in out
    m = load_model(path)
    ids = np.asarray([int(w[1:]) + 1 for w in text.read_text().split()[:60]])
    for budget in (8, 16):
        with np.load(tmp_path / f"h2o_{budget}.npz") as z:
            want = stream_nll(m, ids, new_cache(m, "h2o", budget=budget), chunk=1)
            np.testing.assert_allclose(z["nll"], want, atol=1e-5)
            assert str(z["mode"]) == "h2o" and int(z["window"]) == budget and int(z["heavy"]) == budget // 2
    with pytest.raises(SystemExit) as e:  # usage: exit status 2, the message on stderr (as argparse's)
        main(["ppl", "--model", str(path), "--text", str(text), "--mode", "sink", "--budget", "8"])
    assert e.value.code == 2 and "--budget and --heavy go with --policy h2o or tova" in capsys.readouterr().err


def test_cli_tune_and_streameval(checkpoint, capsys):
    from minisink.cli import main

    path, text = checkpoint
    assert main(["tune", "--model", str(path), "--text", str(text), "--budget-mb", "0.05", "--tokens", "300"]) == 0
    captured = capsys.readouterr()
    assert "Pareto front" in captured.out and "recommended:" in captured.out and "use it: minisink chat" in captured.out
    assert "[1/" in captured.err  # progress, one line per setting
    assert main(["streameval", "--model", str(path), "--task", "lines", "--policy", "tova", "--window", "20",
                 "--distance", "3", "--queries", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("accuracy ") and out[-1].endswith("of 2)") and len(out) == 3


# ---- bounded work (issue 22) ---------------------------------------------------------------------------------------

def streameval_flags() -> set[str]:
    from minisink.cli import build_parser

    action = next(a for a in build_parser()._actions if isinstance(a.choices, dict) and "streameval" in a.choices)
    return {flag for a in action.choices["streameval"]._actions for flag in a.option_strings}


@pytest.mark.parametrize("n", [1, 5, 24, 90, 91, 500, 3000])
def test_filler_is_tiled_exactly_as_it_would_be_encoded(n):
    """filler_ids tiles one period of the filler's tokens: the same ids as encoding the repeated text whole."""
    tok = CharTokenizer()
    assert se.filler_ids(tok, n).tolist() == tok.encode(se.FILLER * (n // 8 + 2))[:n]


@pytest.mark.real
def test_filler_and_lines_match_whole_encodings_on_the_real_tokenizer(real_tokenizer):
    for n in (1, 24, 100, 1000, 5000):
        assert se.filler_ids(real_tokenizer, n).tolist() == real_tokenizer.encode(se.FILLER * (n // 8 + 2))[:n]
    for ids, _, _ in se.lines_pieces(real_tokenizer, 700, 2, np.random.default_rng(0)):  # 3 blocks of lines, then 1
        assert ids.tolist() == real_tokenizer.encode(real_tokenizer.decode(ids))


@pytest.mark.parametrize("task, policy, distance", [("passkey", "sink", 10**9), ("passkey", "dense", 10**6),
                                                    ("lines", "sink", 99999999999), ("lines", "dense", 10**6)])
def test_a_stream_too_large_for_memory_is_refused_before_it_is_built(task, policy, distance, monkeypatch):
    """Issue 22: `--task lines --distance 99999999999` looped silently while its memory grew; `--distance 1000000000`
    (passkey) tokenized a billion-token filler at once and was killed at 24 GB. Refused at once, naming flags that
    `minisink streameval` has."""
    import re
    import time
    import tracemalloc

    monkeypatch.setattr(se, "available_memory", lambda: 8 << 30)
    model, start = tiny_model(), time.perf_counter()
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"stream of about [\d,]+ tokens .* lower --distance or --queries") as e:
            se.run_streameval(model, CharTokenizer(), task, CacheSpec.parse(policy), distance=distance)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 5 and peak < 8 << 20
    assert set(re.findall(r"--[a-z-]+", str(e.value))) <= streameval_flags()
    assert ("--policy" in str(e.value)) == (policy == "dense")


def test_a_stream_that_fits_is_not_refused():
    sink = CacheSpec.parse("sink", sinks=4, window=252)
    se.check_plan(tiny_model().config, CharTokenizer(), "passkey", sink, 10**6, 10, available=8 << 30)
    with pytest.raises(ValueError, match=r"more than 50% of the 0.1 GiB available"):
        se.check_plan(tiny_model().config, CharTokenizer(), "passkey", sink, 2 * 10**6, 10, available=100 << 20)


def test_tune_budget_beyond_memory_is_refused_at_once():
    """Issue 22: `tune --budget-mb 1e30` grew to 6.7 GB over 25 s before refusing."""
    import time

    m, ids, start = tiny_model(), np.random.default_rng(5).integers(0, 97, 300), time.perf_counter()
    with pytest.raises(ValueError, match=r"--budget-mb 1e\+30 is more than 50% of the 8,192 MB .* give at most 4,096"):
        tune.check_budget(1e30, available=8 << 30)
    with pytest.raises(ValueError, match="--budget-mb 1e\\+30 is more than"):
        tune.sweep(m, ids, 1e30)
    assert time.perf_counter() - start < 2
    tune.check_budget(4096, available=8 << 30)


def test_tune_sizes_stop_at_the_texts_length():
    m = tiny_model()
    ids = np.random.default_rng(5).integers(0, 97, 100)
    settings = tune.sweep(m, ids, 1000 * kv_bytes_per_token(m.config) / 2**20, chunk=64)
    assert {s.sinks + s.window for s in settings} == {64, 100}  # not 128, 256, 512, 1000: the same scores as 100
