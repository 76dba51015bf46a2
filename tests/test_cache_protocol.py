"""The model <-> cache protocol (minisink/cache.py `Cache`): a chunk is committed only at `end()`.

An exception or a Ctrl-C (KeyboardInterrupt) raised anywhere inside a forward, at any layer of any chunk, must
leave every cache exactly as it was: fed the same chunks afterwards, it gives the same logits, bit for bit, and
holds the same tokens as a fresh cache that never saw the interrupted attempts (the oracle). The failure is
injected by making `attention` (every cache, the recompute baseline's inner forwards included) or the cache's
`blocks` raise on their n-th call.
"""

from contextlib import contextmanager
from functools import lru_cache
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minisink.model
from minisink.cache import FullCache
from minisink.evaluate import logits
from minisink.spec import new_cache
from draws import examples
from tiny import tiny_model

VOCAB = 97  # tests/tiny.py


@lru_cache(maxsize=None)
def model(layers):
    return tiny_model(seed=layers, num_hidden_layers=layers)


def cache_of_kind(m, kind, S, W):
    if kind == "full":
        return new_cache(m)
    if kind == "recompute":
        return new_cache(m, "recompute", sinks=S, window=W)
    return new_cache(m, "sink", sinks=S, window=W)


class Injected(Exception):
    pass


@contextmanager
def raising(owner, name, n, error):
    """`owner.name` (a function or method) raises `error` on its n-th call (0-based) inside the block."""
    original, calls = getattr(owner, name), [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] - 1 == n:
            raise error("injected")
        return original(*args, **kwargs)

    with mock.patch.object(owner, name, wrapper):
        yield calls


@st.composite
def runs(draw):
    kind = draw(st.sampled_from(["full", "sink", "recompute"]))
    layers = draw(st.integers(1, 3))
    S, W = draw(st.integers(0, 4)), draw(st.integers(1, 12))
    n = draw(st.integers(1, 40))
    tokens = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, VOCAB, n)
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=8))) if n > 1 else []
    bounds = [0, *cuts, n]
    chunks = [tokens[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    # per chunk: None, or (where, which call, what is raised) of an attempt that fails before the real one
    faults = [draw(st.none() | st.tuples(st.sampled_from(["attention", "blocks"]), st.integers(0, 10 ** 6),
                                         st.sampled_from([Injected, KeyboardInterrupt]))) for _ in chunks]
    return kind, layers, S, W, chunks, faults


@settings(max_examples=examples(150), deadline=None)
@given(runs())
def test_an_interrupted_chunk_leaves_every_cache_as_it_was(run):
    kind, layers, S, W, chunks, faults = run
    m = model(layers)
    cache, fresh = cache_of_kind(m, kind, S, W), cache_of_kind(m, kind, S, W)
    for chunk, fault in zip(chunks, faults, strict=True):
        if fault is not None:
            where, n, error = fault
            forwards = 1  # recompute: one forward per token, but one for all the tokens before any eviction
            if kind == "recompute":
                ramp = min(len(chunk), max(S + W - cache.seen, 0))
                forwards = (ramp > 0) + len(chunk) - ramp
            calls = layers * forwards  # attention / blocks calls in the chunk
            if where == "attention":
                patch = raising(minisink.model, "attention", n % calls, error)
            elif kind == "recompute":  # its inner forwards run on fresh FullCaches
                patch = raising(FullCache, "blocks", n % calls, error)
            else:
                patch = raising(cache, "blocks", n % calls, error)
            with pytest.raises(error), patch:
                logits(m, chunk, cache)
        got, want = logits(m, chunk, cache), logits(m, chunk, fresh)
        assert np.array_equal(got, want), f"{kind}: logits differ after an interrupted chunk (max " \
                                          f"{np.abs(got - want).max():.3g})"
        assert np.array_equal(cache.retained(), fresh.retained()), f"{kind}: {cache.retained()} vs {fresh.retained()}"


def test_long_input_commits_whole_chunks_and_says_so():
    """A forward longer than PREFILL_CHUNK commits chunk by chunk: a failure in the second chunk leaves the first
    one held, and the exception's note says how many tokens the cache holds."""
    m = model(1)
    ids = np.random.default_rng(0).integers(0, VOCAB, minisink.model.PREFILL_CHUNK + 5)
    cache = new_cache(m)
    with pytest.raises(Injected) as info, raising(cache, "blocks", 1, Injected):  # one layer: chunk 2's blocks
        m.forward(ids, cache)
    assert len(cache.retained()) == minisink.model.PREFILL_CHUNK
    assert f"holds the first {minisink.model.PREFILL_CHUNK} of these {len(ids)} tokens" in "".join(
        info.value.__notes__)


class RowsRecorder(np.ndarray):
    """An LM head that records how many rows each product multiplies it with."""

    rows: list = []

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = [np.asarray(x) if isinstance(x, RowsRecorder) else x for x in inputs]
        if ufunc is np.matmul:
            RowsRecorder.rows.append(plain[0].shape[0])
        return getattr(ufunc, method)(*plain, **kwargs)


def test_recompute_applies_the_lm_head_to_the_last_row_only():
    """The recompute baseline runs a forward over its whole window per token but needs the last row's logits only:
    the LM head multiplies one row per token (the first 6, before any eviction, come from one forward: 6 rows),
    and the logits are those of the full forward's last row."""
    m = tiny_model(seed=5)
    ids = np.random.default_rng(5).integers(0, VOCAB, 12)
    want = [m.forward(ids[max(0, t - 5):t + 1], new_cache(m))[-1] for t in range(12)]  # window 6, no sinks
    m.lm_head = m.lm_head.view(RowsRecorder)
    RowsRecorder.rows = []
    got = logits(m, ids, new_cache(m, "recompute", window=6))
    assert RowsRecorder.rows == [6] + [1] * 6, RowsRecorder.rows
    np.testing.assert_allclose(got, np.stack(want), atol=1e-5)
