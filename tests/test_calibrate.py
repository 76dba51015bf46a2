"""Calibrated sink logits (minisink/calibrate.py), the text split, and the sink flags of the CLI.

The estimators are checked on one-layer tiny models, where a layer's input does not depend on the cache, so what
calibration measured in the sink cache must hold exactly in window attention with the calibrated logit: the "mass"
estimator's virtual sink takes, on average, the attention the sinks took; and the "lme" estimator is the
log-mean-exp of sink scores recomputed here in float64 from the weights.
"""

import io
import re
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from minisink.calibrate import Calibration, CalibrationError, calibrate, fit_mass, load_sink_file, split_text
from minisink.evaluate import stream_nll
from minisink.ppl import run_ppl
from minisink.spec import new_cache
from draws import examples
from tiny import tiny_model

C, S = 40, 4


@pytest.fixture(scope="module")
def one_layer():
    model = tiny_model(seed=3, num_hidden_layers=1)
    ids = np.random.default_rng(3).integers(0, 97, 200)
    return model, ids, calibrate(model, ids, C, S, chunk=32)


def sink_attention(model, ids, window):
    """1 - the attention on the real keys, per head and steady query, in window attention with sink logits."""
    cache, masses = new_cache(model, "sink", sinks=0, window=window), []
    for start in range(0, len(ids), 32):
        probs = []
        model.forward(ids[start:start + 32], cache, attention_probs=probs)
        masses.append(1 - probs[0].sum(axis=-1, dtype=np.float64))  # [H, T]
    return np.concatenate(masses, axis=1)[:, C:]


def test_mass_estimator_reproduces_the_sinks_attention(one_layer):
    model, ids, cal = one_layer
    model.sink_logits = cal.sink_logits["mass"]
    try:
        virtual = sink_attention(model, ids, C - S)  # the same window keys as the sink cache S + (C - S)
    finally:
        model.sink_logits = None
    np.testing.assert_allclose(virtual.mean(axis=1), cal.sink_mass[0], rtol=1e-5, atol=1e-7)
    assert cal.queries == len(ids) - C


def test_lme_estimator_from_scores_in_float64(one_layer):
    model, ids, cal = one_layer
    c, w = model.config, model.layers[0]
    H, Hkv, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    x = model.embed_tokens[ids].astype(np.float64)
    h = x / np.sqrt((x ** 2).mean(axis=1, keepdims=True) + c.rms_norm_eps) * w.input_layernorm
    qkv = h @ w.qkv_proj.T.astype(np.float64)
    q, k = qkv[:, :H * D].reshape(-1, H, D), qkv[:, H * D:(H + Hkv) * D].reshape(-1, Hkv, D)

    def rope(x, pos):  # rotate halves (Hugging Face), angle = pos * theta^(-2i/D)
        angle = pos * c.rope_theta ** (-np.arange(D // 2) * 2.0 / D)
        x1, x2 = x[..., :D // 2], x[..., D // 2:]
        return np.concatenate([x1 * np.cos(angle) - x2 * np.sin(angle), x2 * np.cos(angle) + x1 * np.sin(angle)], -1)

    qs = rope(q[C:], C - 1)  # [N, H, D]: steady queries at the last cache position
    ks = np.stack([rope(k[j], j) for j in range(S)])  # [S, Hkv, D]
    s = np.einsum("nhd,shd->hns", qs, np.repeat(ks, H // Hkv, axis=1)) / np.sqrt(D)  # [H, N, S]
    a = np.log(np.exp(s).sum(axis=-1))  # [H, N]
    np.testing.assert_allclose(cal.sink_logits["lme"][0], np.log(np.exp(a).mean(axis=1)), rtol=1e-4, atol=1e-4)


def test_fit_mass_solves_its_equation():
    z = np.random.default_rng(0).normal(0, 3, (4, 50))
    target = np.array([0.01, 0.3, 0.7, 0.99])
    sigma = fit_mass(z, target)
    np.testing.assert_allclose((1 / (1 + np.exp(z - sigma[:, None]))).mean(axis=1), target, rtol=1e-9)


def test_calibration_errors():
    model, ids = tiny_model(), np.arange(50) % 97
    with pytest.raises(CalibrationError, match="needs more than the cache"):
        calibrate(model, ids, 64)
    with pytest.raises(CalibrationError, match="1 <= sinks < cache"):
        calibrate(model, ids, 20, sinks=20)


def test_split_text_is_disjoint_and_at_a_line():
    lines = "".join(f"line {i} of the text\n" for i in range(1000))
    start, end = split_text(lines)
    assert end == len(lines) and lines[start - 1] == "\n" and abs(start - len(lines) / 2) < 30
    evaluation, calibration = lines[:start], lines[start:end]
    assert evaluation + calibration == lines and not set(evaluation.splitlines()) & set(calibration.splitlines())


def test_prefix_is_fed_first_and_not_scored():
    model = tiny_model(seed=4)
    ids = np.random.default_rng(4).integers(5, 97, 80)
    prefix = [1, 1, 2]
    run = run_ppl(model, ids, "sink", window=20, prefix=prefix)
    assert run.sinks == 3 and len(run.nll) == len(ids) - 1
    full = stream_nll(model, np.concatenate([prefix, ids]), new_cache(model, "sink", sinks=3, window=20))
    np.testing.assert_array_equal(run.nll, full[3:])


# ------------------------------------------------------------------------------------------------------ the CLI

from test_cli_experiments import checkpoint, run, text  # noqa: E402,F401  (the tiny checkpoint and its text)


def test_calibrate_then_ppl_with_sink_logits(checkpoint, text, tmp_path, capsys):  # noqa: F811
    sigma = tmp_path / "sigma.npz"
    code, out, _ = run(capsys, "calibrate", "--model", checkpoint, "--text", text, "--cache", 32, "--tokens", 200,
                       "--estimator", "lme", "--out", sigma)
    assert code == 0 and "sink mass" in out and [p.name for p in tmp_path.iterdir()] == ["sigma.npz"]
    f = load_sink_file(sigma)
    assert f["sink_logits"].shape == (3, 6) and f["sink_values"].shape == (3, 6, 8)
    with np.load(sigma) as saved:
        assert np.array_equal(f["sink_logits"], saved["sink_logits_lme"]) and f["source"] == str(text)
    words = text.read_text()
    assert f["char_start"] == split_text(words)[0]

    common = ["ppl", "--model", checkpoint, "--text", text, "--tokens", 100, "--mode", "window", "--window", 32]
    results = {}
    for name, extra in [("plain", []), ("zero", ["--sink-logits", "zero"]), ("file", ["--sink-logits", sigma]),
                        ("value", ["--sink-logits", sigma, "--sink-value"])]:
        code, out, _ = run(capsys, *common, *extra, "--out", tmp_path / f"{name}.npz")
        assert code == 0, out
        with np.load(tmp_path / f"{name}.npz") as z:
            results[name] = z["nll"]
    assert "sink logits:" in out and "mean value" in out
    for name in ("zero", "file", "value"):  # each changes the numbers
        assert not np.allclose(results[name], results["plain"])
    assert not np.allclose(results["file"], results["value"])


def test_ppl_refuses_to_score_the_calibration_text(checkpoint, text, tmp_path, capsys):  # noqa: F811
    sigma = tmp_path / "sigma.npz"
    run(capsys, "calibrate", "--model", checkpoint, "--text", text, "--cache", 32, "--tokens", 200, "--out", sigma)
    with pytest.raises(SystemExit, match="was calibrated on"):
        main_ppl = ["ppl", "--model", checkpoint, "--text", text, "--sink-logits", sigma]  # the whole text
        run(capsys, *main_ppl)


@pytest.mark.parametrize("extra, code, message", [
    (["--sink-value"], 2, "--sink-value needs --sink-logits FILE"),  # usage: flags that do not go together
    (["--sink-logits", "zero", "--sink-value"], 2, "--sink-value needs"),
    (["--sink-logits", "missing.npz"], 1, "cannot read sink logits"),  # the input is wrong
])
def test_sink_flag_errors(checkpoint, text, extra, code, message, capsys):  # noqa: F811
    with pytest.raises(SystemExit) as e:
        run(capsys, "ppl", "--model", checkpoint, "--text", text, "--tokens", 50, *extra)
    assert e.value.code == code if code == 2 else message in str(e.value.code)
    assert code == 1 or message in capsys.readouterr().err


def test_bad_sink_files_end_in_one_line_and_exit_1(checkpoint, text, tmp_path, capsys):  # noqa: F811
    """Issue 22: a truncated, empty or .npy file, or one without sink_values under --sink-value, ended in a
    traceback (BadZipFile, EOFError, TypeError, KeyError)."""
    (tmp_path / "empty.npz").write_bytes(b"")
    np.save(tmp_path / "sigma.npy", np.zeros((3, 6), np.float32))
    with open(tmp_path / "no-values.npz", "wb") as f:
        np.savez(f, sink_logits=np.zeros((3, 6), np.float32))
    for name, extra, message in [("empty.npz", [], "not an .npz"), ("sigma.npy", [], "not an .npz"),
                                 ("no-values.npz", ["--sink-value"], "has no 'sink_values' array")]:
        with pytest.raises(SystemExit, match=message) as e:
            run(capsys, "ppl", "--model", checkpoint, "--text", text, "--tokens", 50, "--sink-logits",
                tmp_path / name, *extra)
        assert str(e.value.code).startswith("minisink: error: ")  # Python prints it and exits with status 1


def test_the_calibration_guard_compares_resolved_paths(checkpoint, text, tmp_path, capsys, monkeypatch):  # noqa: F811
    """Issue 22: the guard refused a text given by its absolute path and accepted the same file given relatively."""
    sigma = tmp_path / "sigma.npz"
    code, _, _ = run(capsys, "calibrate", "--model", checkpoint, "--text", text, "--cache", 32, "--tokens", 200,
                     "--out", sigma)
    assert code == 0
    monkeypatch.chdir(text.parent)
    for typed in (text, f"./{text.name}", f"../{text.parent.name}/{text.name}"):
        with pytest.raises(SystemExit, match="was calibrated on"):
            run(capsys, "ppl", "--model", checkpoint, "--text", typed, "--sink-logits", sigma)


def test_sink_prefix_on_ppl_and_generate(checkpoint, text, capsys):  # noqa: F811
    code, out, _ = run(capsys, "ppl", "--model", checkpoint, "--text", text, "--tokens", 60, "--window", 20,
                       "--sink-prefix", "w1", "--sink-prefix", "w2 w3")
    assert code == 0 and "prefix of 3 tokens" in out and "60 tokens" in out and "3 sinks" in out
    code, out, _ = run(capsys, "generate", "--model", checkpoint, "w5 w6", "--max-new-tokens", 3,
                       "--sink-prefix", "w1", "--sinks", 1, "--window", 4, "--sink-logits", "zero")
    assert code == 0 and out.count("w") == 3  # three words (this tokenizer decodes without spaces)


@pytest.mark.real
def test_sink_prefix_and_logits_on_chat(real_model_dir, capsys, monkeypatch):
    """chat feeds the prefix before the first turn: the cache then holds it as its sinks."""
    import io
    import sys

    import minisink.spec as spec

    caches = []
    real_new_cache = spec.new_cache
    monkeypatch.setattr(spec, "new_cache", lambda *a, **k: caches.append(real_new_cache(*a, **k)) or caches[-1])
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\n"))
    code, out, _ = run(capsys, "chat", "--model", real_model_dir, "--sinks", 4, "--window", 60, "--max-new-tokens", 3,
                       "--sink-prefix", "\n", "--sink-prefix", "\n", "--sink-prefix", "\n", "--sink-prefix", "\n",
                       "--sink-logits", "zero")
    assert code == 0 and out.strip()
    assert caches[0].slot_token[:4].tolist() == [0, 1, 2, 3] and caches[0].seen > 4 + 20  # prefix, then the turn


# ------------------------------------------------------------------------------- sink-logit files as untrusted input

@pytest.fixture
def sink_file(tmp_path):
    """A real calibration file (3 layers, 6 heads, head_dim 8) and the model config it fits."""
    rng = np.random.default_rng(5)
    logits = {k: rng.normal(0, 1, (3, 6)).astype(np.float32) for k in ("lme", "mass")}
    cal = Calibration(logits, rng.normal(0, 1, (3, 6, 8)).astype(np.float32), np.full((3, 6), 0.5, np.float32),
                      32, 4, 10, {"source": "/texts/t.txt", "char_start": 100, "char_end": 200, "tokens": 50})
    return cal.save(tmp_path / "sigma.npz"), tiny_model().config


def write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def test_sink_file_round_trip(sink_file):
    path, config = sink_file
    f = load_sink_file(path, config, values=True)
    assert set(f) == {"sink_logits", "sink_values", "source", "estimator", "char_start", "cache"}
    assert (f["source"], f["char_start"], f["estimator"], f["cache"]) == ("/texts/t.txt", 100, "mass", 32)
    with np.load(path) as saved:
        assert np.array_equal(f["sink_logits"], saved["sink_logits_mass"])
        assert np.array_equal(f["sink_values"], saved["sink_values"])


def test_bad_sink_files_are_a_calibration_error(sink_file, tmp_path):
    """Issue 22: each of these ended in a traceback (BadZipFile, EOFError, TypeError, KeyError) from `--sink-logits`."""
    path, config = sink_file
    good = path.read_bytes()
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    cases = {
        "truncated.npz": (good[:len(good) // 2], "not an .npz from `minisink calibrate`, or a damaged one"),
        "empty.npz": (b"", "not an .npz"),
        "flipped.npz": (good[:200] + bytes([good[200] ^ 0xFF]) + good[201:], "damaged|expected|bytes"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CalibrationError, match=message):
            load_sink_file(tmp_path / name, config)
    np.save(tmp_path / "logits.npy", arrays["sink_logits"])  # a .npy in place of the .npz
    files = {
        tmp_path / "logits.npy": "not an .npz",
        write_npz(tmp_path / "no-values.npz", sink_logits=arrays["sink_logits"]): "has no 'sink_values' array",
        write_npz(tmp_path / "string.npz", **{**arrays, "char_start": np.asarray("100")}): "'char_start' is <U3",
        write_npz(tmp_path / "float.npz", **{**arrays, "char_start": np.asarray(1.5)}): "'char_start' is float64",
        write_npz(tmp_path / "negative.npz", **{**arrays, "char_start": np.asarray(-5)}): "char_start is -5",
        write_npz(tmp_path / "other-model.npz", **{**arrays, "sink_logits": np.zeros((2, 6), np.float32)}):
            r"'sink_logits' is float32 \(2, 6\), expected float32 \(3, 6\)",
        write_npz(tmp_path / "f64.npz", **{**arrays, "sink_logits": arrays["sink_logits"].astype(np.float64)}):
            "is float64 .*, expected float32",
        write_npz(tmp_path / "nan.npz", **{**arrays, "sink_logits": np.full((3, 6), np.nan, np.float32)}): "NaN",
        write_npz(tmp_path / "pickle.npz", **{**arrays, "sink_logits": np.array([{"x": 1}] * 18, object)}):
            "bytes, not the|expected float32",
        tmp_path: "Is a directory",
        tmp_path / "missing.npz": "No such file",
    }
    for bad, message in files.items():
        with pytest.raises(CalibrationError, match=message):
            load_sink_file(bad, config, values=True)
    without_config = write_npz(tmp_path / "f64-free.npz", sink_logits=np.zeros((3, 6)))
    with pytest.raises(CalibrationError, match="expected float32"):
        load_sink_file(without_config)


def test_a_zip_bomb_costs_nothing(sink_file, tmp_path):
    """Issue 22: a 1.5 MB zip bomb took `ppl` from 1 GB to 2.1 GB: every member was read, used or not. Now a member
    nobody uses is never decompressed, and a used one that declares more than its shape is refused unread."""
    path, config = sink_file
    bomb = tmp_path / "bomb.npz"
    bomb.write_bytes(path.read_bytes())
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as z, z.open("junk.npy", "w") as w:
        zeros = bytes(1 << 20)
        for _ in range(256):  # 256 MB of zeros, about 0.25 MB compressed
            w.write(zeros)
    assert bomb.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        f = load_sink_file(bomb, config, values=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20 and f["sink_logits"].shape == (3, 6)
    big = tmp_path / "big.npz"  # the used member itself declares 256 MB
    with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_DEFLATED) as z, z.open("sink_logits.npy", "w") as w:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (3, 6)})
        w.write(header.getvalue())
        for _ in range(256):
            w.write(zeros)
    for config_or_none in (config, None):
        with pytest.raises(CalibrationError, match="bytes, not the|more than the"):
            load_sink_file(big, config_or_none)


@settings(max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.sampled_from(["flip", "cut", "insert"]), st.floats(0, 1), st.integers(1, 255)),
                      min_size=1, max_size=4))
@example(edits=[("cut", 0.5, 1)])
@example(edits=[("cut", 0.0, 255)])
def test_fuzzed_sink_files_are_refused_or_read_exactly(sink_file, edits):
    """Random bit flips, truncations and insertions of a real file: a CalibrationError, or exactly what was saved."""
    path, config = sink_file
    want = load_sink_file(path, config)
    bad = bytearray(path.read_bytes())
    for kind, where, value in edits:
        at = int(where * (len(bad) - 1))
        if kind == "flip":
            bad[at] ^= value
        elif kind == "cut":
            del bad[at:at + value]
        else:
            bad[at:at] = bytes([value]) * (value % 7 + 1)
    fuzzed = path.with_name("fuzzed.npz")
    fuzzed.write_bytes(bytes(bad))
    try:
        got = load_sink_file(fuzzed, config)
    except CalibrationError:
        return
    assert set(got) <= set(want)  # a damaged member may be skipped only if it was never there: the logits always are
    for name, value in got.items():
        assert np.array_equal(value, want[name]), name


def test_calibrate_out_is_checked_before_the_run(checkpoint, text, tmp_path, capsys):  # noqa: F811
    """Issue 22: `calibrate --out DIR` and `--out FILE/x.npz` died with tracebacks after the whole run."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "a-file").write_text("in the way")
    for out, message in [(tmp_path / "folder", "--out .*folder is a directory: give a file name"),
                         (tmp_path / "a-file" / "x.npz", "--out .*: a file is in the way of the folder")]:
        code, stdout, err = run(capsys, "calibrate", "--model", checkpoint, "--text", text, "--cache", 32,
                                "--tokens", 200, "--out", out)
        assert code == 1 and re.search(message, err) and "sink mass" not in stdout  # no run happened
