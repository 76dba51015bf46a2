"""The sink cache (minisink/cache.py SinkCache) against slower, clearer answers.

Semantics (the issue): a sink cache with n_sink = S and window = W holds at most S + W tokens, the first S of the
stream (pinned) and the W most recent. At every step the current token attends to exactly min(t + 1, S + W) tokens,
itself included, at positions within the cache (the retained tokens, in stream order, are 0 .. n-1).

Oracles, none of them the ring buffer itself:
- the full cache (dense attention) while the stream still fits in S + W tokens (P1);
- minisink/reference.py::ExplicitSinkCache, which keeps every token's pre-RoPE keys forever and selects,
  numbers and rotates them explicitly for each query, one token per call (P2, P5);
- the same cache fed one token at a time, for any chunking (P3);
- a Python list of the first S and the last W stream indices, for `retained()` (P4);
- a fresh cache at position 0, for a stream that starts at position 10**7 or past 2**31 (P5): only distances matter;
- the recompute baseline (RecomputeWindow), which on a ONE-layer model must agree with the sink cache exactly and on
  a deeper one must not (it rebuilds the retained tokens' keys from the truncated context: docs chapter 06).

Property tests draw tiny random Llama models (GQA and not, 1 to 3 layers), S in 0..8, W in 1..64, streams up to
about 4 (S + W) tokens (at most 200) and random chunkings. The `real` tests repeat P1/P2 and the recompute
comparison on SmolLM2-135M-Instruct.

Tolerance: logits agree to 1e-5 times the row's logit scale, 1 + max |logit| (about 6 here, so ~6e-5 absolute).
That is float32 rounding, not slack: a different chunking changes the BLAS kernels, and the ring buffer composes
two float32 rotations where the reference uses one; over 60 random streams the worst such difference was 1.7e-5
absolute, 4e-6 of the scale. A wrong position or a wrong set of keys moves logits by 1e-2 or more (checked by
mutating cache.py: a sink query off by one position, a window of W + 1, renumber ignored, a ring slot skipped, a
long chunk keeping its first W tokens: each fails test_p2 within a few examples). The same rule holds on SmolLM2,
whose logits reach ~36: measured 4.8e-5 (P1) and 9.0e-5 (P2) absolute, against a bound of ~3.7e-4.
"""

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from minisink import CacheError, RecomputeWindow, SinkCache
from minisink.evaluate import logits
from minisink.reference import ExplicitSinkCache as ReferenceSinkCache
from tiny import tiny_model

TOL = 1e-5
VOCAB = 97  # tests/tiny.py
MAX_TOKENS = 200

# name -> (layers, query heads, KV heads); tiny.py's head_dim is 8, so q_proj is (H * 8) x 48.
CONFIGS = {
    "L1-H6-KV2": (1, 6, 2),  # GQA, 3 query heads per KV head
    "L3-H6-KV2": (3, 6, 2),
    "L1-H4-KV4": (1, 4, 4),  # plain multi-head attention
    "L3-H4-KV4": (3, 4, 4),
    "L2-H6-KV3": (2, 6, 3),  # GQA, 2 query heads per KV head
}
ONE_LAYER = [name for name, (layers, _, _) in CONFIGS.items() if layers == 1]
DEEP = [name for name, (layers, _, _) in CONFIGS.items() if layers > 1]


# The core properties are cheap (a tiny model, ~0.1 ms per token): run 5x the profile's examples.
MORE = settings(max_examples=5 * settings().max_examples)


@lru_cache(maxsize=None)
def model(name):
    layers, heads, kv_heads = CONFIGS[name]
    return tiny_model(seed=sorted(CONFIGS).index(name), num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads)


@dataclass
class Stream:
    model: str
    S: int
    W: int
    tokens: np.ndarray
    cuts: list[int]  # chunk boundaries, strictly inside 1 .. len(tokens) - 1

    def __repr__(self):  # what hypothesis prints for a failing example
        return (f"Stream(model={self.model!r}, S={self.S}, W={self.W}, n={len(self.tokens)}, cuts={self.cuts}, "
                f"tokens={self.tokens.tolist()})")

    def chunks(self):
        bounds = [0, *self.cuts, len(self.tokens)]
        return [self.tokens[a:b] for a, b in zip(bounds, bounds[1:])]


@st.composite
def streams(draw, models=tuple(CONFIGS), S=st.integers(0, 8), W=st.integers(1, 64), length=None,
            distinct=False):
    """A model, S, W, a token stream and a chunking. `length(S, W)` -> strategy for the stream length;
    `distinct`: no token id twice in the stream."""
    name = draw(st.sampled_from(models))
    s, w = draw(S), draw(W)
    n = draw(length(s, w) if length else st.integers(1, min(MAX_TOKENS, 4 * (s + w) + 4)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    tokens = rng.permutation(VOCAB)[:n] if distinct else rng.integers(0, VOCAB, n)
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=12))) if n > 1 else []
    return Stream(name, s, w, tokens, cuts)


def fits(s, w):
    return st.integers(1, s + w)


def evicts(extra=40):
    """Streams that go past S + W by 1 .. extra tokens."""
    return lambda s, w: st.integers(s + w + 1, s + w + extra)


def feed(m, cache, stream: Stream, after_chunk=None):
    """The stream's logits [n, V] with the cache fed chunk by chunk; after_chunk(cache, tokens_seen, attention_probs)."""
    out, seen = [], 0
    for chunk in stream.chunks():
        probs = [] if after_chunk else None
        out.append(logits(m, chunk, cache) if isinstance(cache, RecomputeWindow) else m.forward(chunk, cache, probs))
        seen += len(chunk)
        if after_chunk:
            after_chunk(cache, seen, probs)
    return np.concatenate(out)


def one_at_a_time(m, cache, tokens):
    return np.concatenate([m.forward(tokens[i:i + 1], cache) for i in range(len(tokens))])


def reference(m, stream: Stream, renumber=True, position_offset=0):
    cache = ReferenceSinkCache(m.config, stream.S, stream.W, renumber, position_offset)
    return one_at_a_time(m, cache, stream.tokens)


def assert_close(got, want, what, tol=TOL):
    """Logits [n, V] equal up to tol times the row's logit scale (1 + max |logit|); the message names the first
    step that is not."""
    assert got.shape == want.shape, f"{what}: shapes {got.shape} vs {want.shape}"
    diff = np.abs(got - want)
    bad = diff > tol * (1 + np.abs(want).max(axis=-1, keepdims=True))
    assert not bad.any(), f"{what}: max abs diff {diff.max():.3g}, first bad step {int(np.argwhere(bad)[0][0])}"


def expected_retained(seen, S, W):
    """Stream indices of the first S and the last W tokens of the first `seen`, in stream order."""
    return sorted(set(range(min(S, seen))) | set(range(max(0, seen - W), seen)))


# ---------------------------------------------------------------------------------------------------------------
# P1-P5 on tiny random models


@MORE
@given(streams(length=fits), st.booleans())
def test_p1_fits_equals_full_cache(stream, renumber):
    """P1: while t + 1 <= S + W nothing is evicted, so the sink cache is dense attention (the full cache)."""
    m = model(stream.model)
    sink = feed(m, m.new_cache(n_sink=stream.S, window=stream.W, renumber=renumber), stream)
    full = m.forward(stream.tokens, m.new_cache())
    assert_close(sink, full, "sink vs full")


@MORE
@given(streams(), st.booleans())
def test_p2_equals_reference(stream, renumber):
    """P2: at every step, eviction included, the ring buffer equals the reference fed one token at a time, whether
    the sink cache is fed one token at a time or in chunks; with renumber=False too (positions in the text)."""
    m = model(stream.model)
    want = reference(m, stream, renumber)
    step = one_at_a_time(m, m.new_cache(n_sink=stream.S, window=stream.W, renumber=renumber), stream.tokens)
    assert_close(step, want, "sink one at a time vs reference")
    chunked = feed(m, m.new_cache(n_sink=stream.S, window=stream.W, renumber=renumber), stream)
    assert_close(chunked, want, "sink chunked vs reference")


@MORE
@given(streams(), st.booleans())
def test_p3_chunking_invariance(stream, renumber):
    """P3: any chunking gives the logits of one token at a time (keys join the cache only at the chunk's end, and
    a chunk longer than W evicts inside itself)."""
    m = model(stream.model)
    chunked = feed(m, m.new_cache(n_sink=stream.S, window=stream.W, renumber=renumber), stream)
    step = one_at_a_time(m, m.new_cache(n_sink=stream.S, window=stream.W, renumber=renumber), stream.tokens)
    assert_close(chunked, step, "chunked vs one at a time")


@MORE
@given(streams())
def test_p4_retained_and_fixed_storage(stream):
    """P4: after every chunk, retained() is the first S and the last W stream indices, in order; each query of the
    chunk attended to exactly min(t + 1, S + W) keys in every layer; the storage never grows or moves."""
    m = model(stream.model)
    S, W = stream.S, stream.W
    cache = m.new_cache(n_sink=S, window=W)
    assert isinstance(cache, SinkCache)
    assert cache.retained().tolist() == []
    keys, values = cache.keys, cache.values
    shapes, nbytes = (keys.shape, values.shape), (keys.nbytes, values.nbytes)
    assert keys.shape[-1] == S + W + S and values.shape[-2] == S + W + S  # + the sinks' working copy for decode
    previous = [0]

    def check(cache, seen, probs):
        assert cache.retained().tolist() == expected_retained(seen, S, W), f"after {seen} tokens"
        assert cache.keys is keys and cache.values is values, f"storage replaced after {seen} tokens"
        assert (cache.keys.shape, cache.values.shape) == shapes and (cache.keys.nbytes, cache.values.nbytes) == nbytes
        t = np.arange(previous[0], seen)  # stream indices of the chunk's queries
        for layer, p in enumerate(probs):  # [H, T, keys]
            attended = (p > 0).sum(axis=-1)  # masked keys get exactly 0 (exp(-inf))
            assert (attended == np.minimum(t + 1, S + W)[None, :]).all(), \
                f"layer {layer}, tokens {t[0]}..{t[-1]}: attended to {attended[0].tolist()}"
        previous[0] = seen

    feed(m, cache, stream, after_chunk=check)


OFFSETS = st.one_of(st.just(10**7), st.integers(2**31, 2**31 + 10**6))


@MORE
@given(streams(), st.booleans(), OFFSETS)
def test_p5_large_position_offset(stream, renumber, offset):
    """P5: a stream that starts at position 10**7 or past 2**31 gives the reference's logits at the same offset,
    and a fresh cache's at offset 0: scores depend on distances only, and distances within the cache are bounded."""
    m = model(stream.model)
    S, W = stream.S, stream.W
    far = feed(m, m.new_cache(n_sink=S, window=W, renumber=renumber, position_offset=offset), stream)
    assert_close(far, reference(m, stream, renumber, offset), f"offset {offset} vs reference at the same offset")
    near = feed(m, m.new_cache(n_sink=S, window=W, renumber=renumber), stream)
    assert_close(far, near, f"offset {offset} vs offset 0")


@given(streams(S=st.just(0)), OFFSETS)
def test_window_attention_renumbering_changes_nothing(stream, offset):
    """S = 0 is window attention: shifting every retained position by the same amount (renumbering) changes
    nothing, RoPE being shift invariant. With sinks it would: they then sit at a growing distance."""
    m = model(stream.model)
    for position_offset in (0, offset):
        renumbered = feed(m, m.new_cache(window=stream.W, position_offset=position_offset), stream)
        kept = feed(m, m.new_cache(n_sink=0, window=stream.W, renumber=False, position_offset=position_offset),
                    stream)
        assert_close(renumbered, kept, f"renumber vs not, offset {position_offset}")


def test_renumbering_matters_with_sinks():
    """The counterpart: with sinks and eviction, renumber=False moves the sinks away, so the logits differ.
    (Shows the flag is not a no-op; P2 shows each setting matches its own reference.)"""
    m = model("L3-H6-KV2")
    tokens = np.random.default_rng(0).integers(0, VOCAB, 60)
    a = m.forward(tokens, m.new_cache(n_sink=4, window=8))
    b = m.forward(tokens, m.new_cache(n_sink=4, window=8, renumber=False))
    assert_close(a[:12], b[:12], "before eviction")
    assert np.abs(a[12:] - b[12:]).max() > 1e-3


@pytest.mark.parametrize("kwargs", [dict(n_sink=-1, window=4), dict(n_sink=4, window=0), dict(n_sink=0, window=-3),
                                    dict(n_sink=4), dict(n_sink=1.5, window=4), dict(n_sink=2, window=True),
                                    dict(window=0, recompute=True), dict(n_sink=-1, window=4, recompute=True)])
def test_validation(kwargs):
    """S >= 0 and W >= 1 (the current token is in the window): anything else is refused at construction."""
    m = model("L1-H6-KV2")
    with pytest.raises(CacheError):
        m.new_cache(**kwargs)


# ---------------------------------------------------------------------------------------------------------------
# The recompute baseline vs the sink cache
#
# One layer: a token's key and value are projections of its own embedding, whatever it attended to, and scores
# depend only on query-key distances, which are the same whether the retained tokens are renumbered 0..n-1
# (recompute) or kept at stream positions (the ring buffer's window). So the two must agree exactly.
# Several layers: from layer 2 on, a retained token's key depends on what it attended to below. The sink cache
# keeps the key computed when the token saw its own window; recompute rebuilds it from the truncated context.
# They agree before the first eviction, and differ after it, except for W = 1, where the only window token is
# the current one (computed now in both) and the sinks only ever saw each other. They differ on streams of distinct
# tokens: with repeats, the truncated context can be indistinguishable from the full one (hypothesis found
# [30, 30, 12] at S = 0, W = 2: attending over two copies of one token gives exactly what attending over one gives,
# since values carry no position, so every layer's keys come out the same).

SHORT = dict(S=st.integers(0, 8), W=st.integers(1, 24))  # recompute is O(W^2) per token: keep it small


@MORE
@given(streams(models=tuple(ONE_LAYER), length=evicts(), **SHORT))
def test_recompute_equals_sink_cache_on_one_layer(stream):
    m = model(stream.model)
    S, W = stream.S, stream.W
    sink = feed(m, m.new_cache(n_sink=S, window=W), stream)
    cache = m.new_cache(n_sink=S, window=W, recompute=True) if S else m.new_cache(window=W, recompute=True)
    recompute = feed(m, cache, stream)
    assert_close(recompute, sink, "recompute vs sink cache, one layer")


@MORE
@given(streams(models=tuple(DEEP), length=evicts(extra=25), distinct=True, **SHORT))
def test_recompute_differs_from_sink_cache_after_eviction(stream):
    m = model(stream.model)
    S, W = stream.S, stream.W
    sink = feed(m, m.new_cache(n_sink=S, window=W), stream)
    recompute = feed(m, m.new_cache(n_sink=S, window=W, recompute=True), stream)
    assert_close(recompute[:S + W], sink[:S + W], "before eviction")
    if W == 1:
        assert_close(recompute, sink, "W = 1: nothing to rebuild")
    else:
        diff = float(np.abs(recompute[S + W:] - sink[S + W:]).max())
        note(f"after eviction: max abs diff {diff:.3g}")
        assert diff > 1e-3, f"recompute and sink cache agree after eviction on a deep model ({diff:.3g})"


@MORE
@given(streams(models=tuple(CONFIGS), length=evicts(extra=20), **SHORT))
def test_recompute_retained(stream):
    """The recompute baseline keeps the same tokens as the sink cache: the first S and the last W stream indices."""
    m = model(stream.model)
    S, W = stream.S, stream.W

    def check(cache, seen, probs):
        assert cache.retained().tolist() == expected_retained(seen, S, W), f"after {seen} tokens"

    feed(m, m.new_cache(n_sink=S, window=W, recompute=True), stream, after_chunk=check)


# ---------------------------------------------------------------------------------------------------------------
# The real model (SmolLM2-135M-Instruct)

PROSE = """\
The lighthouse stood at the end of a long spit of sand, and for most of the year the only people who walked out to
it were the keeper and the boy who brought his bread. The keeper was an old man who had once been a sailor, and he
liked to say that the sea had taught him patience, though the boy suspected that it had mostly taught him to
complain about the weather. Every evening, an hour before sunset, the old man climbed the hundred and twelve steps
to the lamp room, trimmed the wick, polished the great glass lens until it shone, and waited for the dark.

In the winter the storms came in from the west. The waves broke over the rocks below the tower and threw spray as
high as the gallery, and the whole building seemed to hum with the wind. On those nights the boy stayed in the
kitchen at the bottom of the tower and listened to the keeper's stories: about a ship that had lost its mast off the
southern cape, about a cook who could make soup from nothing but potatoes and salt, about a harbour in the north
where the ice was so thick in spring that the children walked across it to school.

Years later, when the light was run by a machine and the keeper had long since gone, the boy, now a grown man with
children of his own, walked out along the spit one autumn afternoon. The door of the tower was locked, the paint on
the railings had faded, and the garden where the old man had grown his beans was full of thistles. But the lamp
still turned at dusk, as it always had, and he stood on the sand and counted the flashes, three short and one long,
until the stars came out over the water and it was time to go home.
"""

REAL_S, REAL_W = 4, 60


@pytest.fixture(scope="module")
def prose_ids(real_tokenizer):
    ids = np.array(real_tokenizer.encode(PROSE))
    assert len(ids) >= 250, len(ids)
    return ids[:250]


def nll(logits, next_ids):
    """Mean negative log-likelihood (nats) of next_ids [n] under logits [n, V], in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(-logp[np.arange(len(next_ids)), next_ids].mean())


@pytest.mark.real
def test_real_fits_equals_full_cache(real_model, prose_ids):
    """P1 on SmolLM2: 64 = S + W tokens fed in three chunks equal dense attention."""
    m, ids = real_model, prose_ids[:REAL_S + REAL_W]
    cache = m.new_cache(n_sink=REAL_S, window=REAL_W)
    sink = np.concatenate([m.forward(ids[a:b], cache) for a, b in [(0, 10), (10, 41), (41, 64)]])
    assert_close(sink, m.forward(ids, m.new_cache()), "real: sink vs full")


@pytest.mark.real
def test_real_equals_reference(real_model, prose_ids):
    """P2 on SmolLM2: 250 tokens (186 past the first eviction), the ring buffer fed in four chunks (one longer than
    W, one of a single token) equals the reference fed one token at a time."""
    m, ids = real_model, prose_ids
    cache = m.new_cache(n_sink=REAL_S, window=REAL_W)
    bounds = [0, 50, 51, 130, 250]
    sink = np.concatenate([m.forward(ids[a:b], cache) for a, b in zip(bounds, bounds[1:])])
    assert cache.retained().tolist() == expected_retained(250, REAL_S, REAL_W)
    want = one_at_a_time(m, ReferenceSinkCache(m.config, REAL_S, REAL_W), ids)
    assert_close(sink, want, "real: sink vs reference")


@pytest.mark.real
def test_real_recompute_vs_sink_cache(real_model, prose_ids):
    """Recompute (the paper's quality baseline) vs the sink cache on SmolLM2, S = 4, W = 60, 150 tokens: equal
    before the first eviction, different after it (retained keys rebuilt vs kept), with similar perplexity."""
    m, ids = real_model, prose_ids[:150]
    S, W = REAL_S, REAL_W
    sink = m.forward(ids, m.new_cache(n_sink=S, window=W))
    recompute = logits(m, ids, m.new_cache(n_sink=S, window=W, recompute=True))
    full = m.forward(ids, m.new_cache())
    assert_close(recompute[:S + W], sink[:S + W], "real: recompute vs sink before eviction")

    evicted = slice(S + W, len(ids) - 1)  # queries that have lost a token, predicting the next one
    diff = float(np.abs(recompute[evicted] - sink[evicted]).max())
    nll_sink, nll_recompute, nll_full = (nll(x[evicted], ids[S + W + 1:]) for x in (sink, recompute, full))
    print(f"\nreal S={S} W={W} tokens={len(ids)}: max |recompute - sink| logit {diff:.4g}; mean NLL over the "
          f"{len(ids) - 1 - S - W} evicted steps: sink {nll_sink:.4f}, recompute {nll_recompute:.4f}, "
          f"full {nll_full:.4f}")
    assert diff > 1e-2
    assert np.isfinite([nll_sink, nll_recompute]).all()
    assert abs(nll_sink - nll_recompute) <= 0.3 * min(nll_sink, nll_recompute)
