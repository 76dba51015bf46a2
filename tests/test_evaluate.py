"""The fast exact evaluator: stream_nll fed in chunks equals token-by-token streaming (evaluate.py).

Property tests over random tiny models, stream lengths, sink counts, windows and chunkings: the chunked sink cache
gives every token the NLL that one-token-at-a-time ring-buffer streaming gives it, and that the explicit-position
reference cache (minisink/reference.py::ExplicitSinkCache, positions assigned within the cache by hand) gives
it. Also the full cache, the recompute baseline against a plain loop, and the `minisink ppl` plumbing (run_ppl,
save_run, ids).
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minisink.cache import kv_bytes_per_token
from minisink.corpus import load_text_ids
from minisink.evaluate import perplexity, stream_nll
from minisink.ppl import dense_token_limit, run_ppl, save_run
from minisink.model import PREFILL_CHUNK
from minisink.reference import ExplicitSinkCache as ReferenceSinkCache
from minisink.spec import new_cache
from tiny import tiny_model

MODELS = {seed: tiny_model(seed) for seed in range(3)}
TOL = 1e-4  # nats, per token


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """The plain float64 log softmax over the last axis, the oracle for evaluate.token_nll."""
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def stream(seed, n, data_seed=0):
    return np.random.default_rng(data_seed).integers(0, MODELS[seed].config.vocab_size, n)


@given(seed=st.sampled_from(sorted(MODELS)), S=st.integers(0, 6), W=st.integers(1, 48), N=st.integers(2, 150),
       chunk=st.integers(2, 160), renumber=st.booleans(), data_seed=st.integers(0, 2**16))
def test_chunked_sink_cache_equals_token_by_token(seed, S, W, N, chunk, renumber, data_seed):
    model, ids = MODELS[seed], stream(seed, N, data_seed)
    one = stream_nll(model, ids, new_cache(model, "sink", sinks=S, window=W, renumber=renumber), chunk=1)
    fast = stream_nll(model, ids, new_cache(model, "sink", sinks=S, window=W, renumber=renumber), chunk=chunk)
    assert one.shape == fast.shape == (N - 1,)
    np.testing.assert_allclose(fast, one, atol=TOL, rtol=0)


@given(S=st.integers(0, 4), W=st.integers(1, 24), N=st.integers(2, 80), chunk=st.integers(2, 90),
       renumber=st.booleans())
def test_chunked_sink_cache_equals_explicit_positions(S, W, N, chunk, renumber):
    """Against someone else's answer: the reference cache numbers the retained tokens by hand, one token a call."""
    model, ids = MODELS[1], stream(1, N, N)
    ref = stream_nll(model, ids, ReferenceSinkCache(model.config, S, W, renumber), chunk=1)
    fast = stream_nll(model, ids, new_cache(model, "sink", sinks=S, window=W, renumber=renumber), chunk=chunk)
    np.testing.assert_allclose(fast, ref, atol=TOL, rtol=0)


@given(N=st.integers(2, 150), chunk=st.integers(2, 160), seed=st.sampled_from(sorted(MODELS)))
def test_chunked_dense_equals_token_by_token(N, chunk, seed):
    model, ids = MODELS[seed], stream(seed, N, N)
    one = stream_nll(model, ids, new_cache(model), chunk=1)
    fast = stream_nll(model, ids, new_cache(model), chunk=chunk)
    np.testing.assert_allclose(fast, one, atol=TOL, rtol=0)


def test_window_larger_than_stream_is_dense():
    """While nothing has been evicted every cache is the full cache."""
    model, ids = MODELS[0], stream(0, 60)
    dense = stream_nll(model, ids, new_cache(model))
    np.testing.assert_allclose(stream_nll(model, ids, new_cache(model, "sink", sinks=4, window=56)), dense, atol=TOL)
    np.testing.assert_allclose(stream_nll(model, ids, new_cache(model, "sink", sinks=0, window=60)), dense, atol=TOL)


def test_window_renumbering_changes_nothing_without_sinks():
    """RoPE scores depend only on distances: with no sinks, shifting every position alike is invisible."""
    model, ids = MODELS[2], stream(2, 120)
    a = stream_nll(model, ids, new_cache(model, "sink", sinks=0, window=16, renumber=True), chunk=32)
    b = stream_nll(model, ids, new_cache(model, "sink", sinks=0, window=16, renumber=False), chunk=32)
    np.testing.assert_allclose(a, b, atol=TOL)
    c = stream_nll(model, ids, new_cache(model, "sink", sinks=4, window=12, renumber=True), chunk=32)
    d = stream_nll(model, ids, new_cache(model, "sink", sinks=4, window=12, renumber=False), chunk=32)
    assert np.abs(c - d)[20:].max() > 1e-3  # with sinks the gap between sinks and window is seen


def test_recompute_equals_a_plain_loop():
    """Recompute: each token's NLL from a fresh dense forward over the last W tokens (plus the sinks)."""
    model, ids, S, W = MODELS[0], stream(0, 40), 2, 7
    got = stream_nll(model, ids, new_cache(model, "recompute", sinks=S, window=W), chunk=5)
    want = []
    for t in range(len(ids) - 1):
        context = sorted(set(range(min(S, t + 1))) | set(range(max(0, t - W + 1), t + 1)))
        logits = model.forward(ids[context], new_cache(model))[-1]
        want.append(-log_softmax(logits[None])[0, ids[t + 1]])
    np.testing.assert_allclose(got, want, atol=TOL)


def test_stream_nll_is_the_nll():
    model, ids = MODELS[0], stream(0, 10)
    logits = model.forward(ids[:-1], new_cache(model))
    p = np.exp(logits.astype(np.float64))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(stream_nll(model, ids, new_cache(model)), -np.log(p[np.arange(9), ids[1:]]),
                               rtol=1e-5)
    assert perplexity(np.zeros(3)) == 1.0


def test_stream_nll_rejects_bad_input():
    model = MODELS[0]
    with pytest.raises(ValueError, match="at least 2"):
        stream_nll(model, [5], new_cache(model))
    with pytest.raises(ValueError, match="chunk"):
        stream_nll(model, [5, 6], new_cache(model), chunk=0)


def test_run_ppl_modes_and_defaults():
    model, ids = MODELS[0], stream(0, 90)
    sink = run_ppl(model, ids, "sink", chunk=32, sinks=2, window=20)
    assert (sink.sinks, sink.window, sink.tokens) == (2, 20, 90)
    window = run_ppl(model, ids, "window", window=22)
    assert (window.sinks, window.window) == (0, 22)
    np.testing.assert_allclose(window.nll, stream_nll(model, ids, new_cache(model, "sink", sinks=0, window=22)),
                               atol=TOL)
    assert run_ppl(model, ids, "dense").window is None
    assert run_ppl(model, ids, "sink").window == 1020  # defaults: 4 + 1020
    said = []
    rec = run_ppl(model, ids[:20], "recompute", window=8, say=said.append)
    assert rec.chunk == 1 and "s per token" in said[0]
    assert "perplexity" in sink.summary() and "last" not in sink.summary()
    for bad in (dict(spec="dense", window=8), dict(spec="window", sinks=4), dict(spec="nope"),
                dict(spec="recompute", window=8, renumber=False)):
        with pytest.raises(ValueError):
            run_ppl(model, ids, **bad)


def test_dense_token_limit(monkeypatch):
    model = MODELS[0]
    per = kv_bytes_per_token(model.config)
    assert per == 3 * 2 * 2 * 8 * 4  # layers * (K, V) * Hkv * D * float32
    limit = dense_token_limit(model.config, available=10**6)
    assert 0 < limit < 10**6 / (3 * per)
    monkeypatch.setattr("minisink.ppl.available_memory", lambda: 500_000)
    run = run_ppl(model, stream(0, 200), "dense")
    assert run.tokens == dense_token_limit(model.config, available=500_000) < 200
    assert any("truncated" in n for n in run.notes)
    monkeypatch.setattr("minisink.ppl.available_memory", lambda: 1000)
    with pytest.raises(ValueError, match="memory"):
        run_ppl(model, stream(0, 200), "dense")


def test_save_run_npz_and_csv(tmp_path):
    model, ids = MODELS[0], stream(0, 30)
    run = run_ppl(model, ids, "sink", chunk=4, sinks=1, window=8, renumber=False)
    out = save_run(run, tmp_path / "sub" / "r.npz", source="t.txt")
    with np.load(out) as z:
        np.testing.assert_array_equal(z["nll"], run.nll)
        assert (str(z["mode"]), int(z["sinks"]), int(z["window"]), bool(z["renumber"]), int(z["chunk"])) == \
            ("sink", 1, 8, False, 4)
        assert str(z["source"]) == "t.txt" and int(z["tokens"]) == 30
    csv = save_run(run, tmp_path / "r.csv").read_text().splitlines()
    assert "# mode=sink" in csv and csv[csv.index("token,nll") + 1].startswith("1,")
    assert len(csv) - csv.index("token,nll") - 1 == 29
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["r.csv", "r.npz", "sub"]  # no temporary left


class CountingTokenizer:
    """One token per word, and counts how many characters it was asked to encode."""

    def __init__(self):
        self.chars = 0

    def encode(self, text):
        self.chars = max(self.chars, len(text))
        return [len(w) for w in text.split()]

    def encode_stream(self, text):  # nothing before a stream, as SmolLM2's
        return self.encode(text)


def test_load_text_ids_encodes_a_prefix():
    text = " ".join(["ab"] * 10000)
    tok = CountingTokenizer()
    ids = load_text_ids(tok, text, 100)
    assert ids.tolist() == [2] * 100 and tok.chars < len(text) // 10
    assert len(load_text_ids(CountingTokenizer(), "a bb ccc", 50)) == 3  # shorter than asked: all of it
    assert len(load_text_ids(CountingTokenizer(), text)) == 10000
    with pytest.raises(ValueError):
        load_text_ids(tok, text, 1)
    assert PREFILL_CHUNK >= 2


@pytest.mark.real
def test_real_model_window_without_sinks_collapses(real_model, real_tokenizer):
    """SmolLM2 on the KJV, 160 tokens, a 24-token cache: the last 24 tokens alone are clearly worse than
    4 sinks + the last 20 (paper Fig. 3 / Table 2, in small)."""
    import weights_fetch

    text = weights_fetch.fetch_kjv(progress=False).read_text(encoding="utf-8")
    ids = load_text_ids(real_tokenizer, text, 160)
    window = run_ppl(real_model, ids, "window", window=24, chunk=80)
    sinks = run_ppl(real_model, ids, "sink", chunk=80, sinks=4, window=20)
    print(f"window 24: {perplexity(window.nll[48:]):.2f}, 4 sinks + 20: {perplexity(sinks.nll[48:]):.2f}")
    assert perplexity(window.nll[48:]) > 2 * perplexity(sinks.nll[48:])
    np.testing.assert_allclose(window.nll[:23], sinks.nll[:23], atol=1e-3)  # the same until the first eviction


def test_a_first_chunk_of_another_size_gives_the_same_nlls():
    """run_ppl feeds the recompute baseline's first sinks + window tokens as one chunk, then one token at a time."""
    model, ids = MODELS[0], stream(0, 30)
    for recompute in (True, False):
        make = lambda recompute=recompute: new_cache(model, "recompute" if recompute else "sink", sinks=2,  # noqa: E731
                                               window=7)
        want = stream_nll(model, ids, make(), chunk=1)
        for first in (1, 9, 29, 40):
            fed = []
            got = stream_nll(model, ids, make(), chunk=4, progress=fed.append, first_chunk=first)
            np.testing.assert_allclose(got, want, atol=TOL)
            steps = [b - a for a, b in zip(fed, fed[1:], strict=False)]
            assert fed[0] == min(first, 29) and fed[-1] == 29 and all(step <= 4 for step in steps)
