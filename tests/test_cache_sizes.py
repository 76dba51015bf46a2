"""Sizes are checked before anything is allocated, and a cache's per-chunk work follows the tokens it holds.

- A cache larger than the available memory is refused up front with a CacheError naming both sizes (a window of
  10**9 used to end in a NumPy allocation error); the full cache checks each time it grows.
- A huge window that is mostly empty costs what it holds: a 300-token prompt into a sink cache of window 10**6
  used to build [T, W] masks (2.2 GB and 21 s on SmolLM2 sizes); now the masks and scores are [T, tokens held].
- Booleans are not sizes (`window=True` is not a window of 1).
"""

import time
import tracemalloc

import numpy as np
import pytest

import minisink.cache
from minisink import CacheError
from minisink.spec import new_cache
from tiny import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0, num_hidden_layers=1)


@pytest.mark.parametrize("policy, kwargs", [("sink", dict(sinks=4, window=10**9)), ("window", dict(window=10**9)),
                                            ("recompute", dict(sinks=4, window=10**9))])
def test_a_cache_larger_than_memory_is_refused_up_front(model, policy, kwargs):
    with pytest.raises(CacheError, match=r"needs \d+\.\d+ GiB of keys and values, but only \d+\.\d+ GiB"):
        new_cache(model, policy, **kwargs)


def test_the_check_uses_the_available_memory(model, monkeypatch):
    per_token = minisink.cache.kv_bytes_per_token(model.config)
    monkeypatch.setattr(minisink.cache, "available_memory", lambda: 100 * per_token)
    new_cache(model, "sink", sinks=4, window=92)  # exactly fits: 4 + 92 slots and the sinks' working copy (4)
    with pytest.raises(CacheError, match="a sink cache of 4 \\+ 93 slots"):
        new_cache(model, "sink", sinks=4, window=93)


def test_the_full_cache_checks_before_it_grows(model, monkeypatch):
    per_token = minisink.cache.kv_bytes_per_token(model.config)
    cache = new_cache(model)
    model.forward(np.arange(10), cache)
    monkeypatch.setattr(minisink.cache, "available_memory", lambda: 50 * per_token)
    with pytest.raises(CacheError, match="a full cache of 80 tokens"):
        model.forward(np.arange(30), cache)
    assert len(cache.retained()) == 10  # refused before anything changed
    monkeypatch.setattr(minisink.cache, "available_memory", lambda: None)  # no /proc: no check
    model.forward(np.arange(30), cache)
    assert len(cache.retained()) == 40


def test_a_huge_mostly_empty_window_costs_what_it_holds(model):
    """300 tokens into a window of 10**6: the work and the temporary memory are those of 300 tokens."""
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, 300)
    small = model.forward(ids, new_cache(model, "sink", sinks=4, window=400))
    cache = new_cache(model, "sink", sinks=4, window=10**6)  # 10**6 slots, allocated lazily (zeros)
    tracemalloc.start()
    start = time.perf_counter()
    got = model.forward(ids, cache)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.testing.assert_allclose(got, small, atol=1e-5)  # nothing evicted either way
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MB of temporaries for 300 tokens"
    assert seconds < 5, f"{seconds:.1f} s for 300 tokens"


@pytest.mark.parametrize("policy, kwargs", [("recompute", dict(window=True)), ("recompute", dict(sinks=True, window=4)),
                                            ("sink", dict(sinks=2, window=True))])
def test_booleans_are_not_sizes(model, policy, kwargs):
    with pytest.raises(CacheError, match="must be an integer"):
        new_cache(model, policy, **kwargs)
