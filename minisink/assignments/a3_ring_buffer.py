"""Assignment 3 checks: the ring buffer with pinned sinks (cache.py: SinkCache, graded at text positions).

Oracles, computed here: the full cache while nothing is evicted, and an explicit cache that keeps every key and
picks the visible ones (minisink/reference.py::ExplicitSinkCache), fed one token at a time.
"""

from __future__ import annotations

import numpy as np

from minisink.cache import FullCache
from minisink.reference import ExplicitSinkCache
from minisink.tiny import tiny_model

from .common import CASES, Fail, close, random_chunks, random_sizes, run
from .tasks import feed


# --- checks: run in the grader -------------------------------------------------------------------------------

def sink_cases(n, renumber, seed0=0, offset=0, S_max=3):
    """(sizes, the grader's model, ids, S, W, chunks, where) for n seeded random streams longer than the cache."""
    for seed in range(seed0, seed0 + n):
        rng = np.random.default_rng(seed)
        sizes = random_sizes(rng)
        S, W = int(rng.integers(0, S_max + 1)), int(rng.integers(1, 7))
        N = int(rng.integers(S + W + 1, S + W + 15))
        model, raw, _ = tiny_model(seed, **sizes)
        ids = rng.integers(0, raw["vocab_size"], N)
        chunks = random_chunks(rng, N)
        where = (f"n_sink={S}, window={W}, renumber={renumber}{f', position_offset={offset}' if offset else ''}, "
                 f"{N} tokens, tiny model {sizes}, seed={seed}")
        yield sizes, seed, model, ids, S, W, chunks, where


def sink_vs_explicit(base, renumber, chunked, offset=0, S_max=3):
    for sizes, seed, model, ids, S, W, chunks, where in sink_cases(CASES, renumber, base, offset, S_max):
        want = feed(model, ids, ExplicitSinkCache(model.config, S, W, renumber, offset))
        got = yield run("model", sizes=sizes, seed=seed, ids=ids, chunks=chunks if chunked else None,
                        cache="SinkCache",
                        cache_args=dict(n_sink=S, window=W, renumber=renumber, position_offset=offset))
        close("logits", got["logits"], want, 1e-4 if not offset else 1e-3,
              where + (f", chunks {chunks}" if chunked else ", one token at a time"))


def check_fits(base):
    for seed in range(base, base + CASES):
        rng = np.random.default_rng(seed)
        sizes = random_sizes(rng)
        S, W = int(rng.integers(0, 4)), int(rng.integers(1, 8))
        model, raw, _ = tiny_model(seed, **sizes)
        ids = rng.integers(0, raw["vocab_size"], S + W)  # exactly fills the cache: nothing evicted
        chunks = random_chunks(rng, S + W)
        got = yield run("model", sizes=sizes, seed=seed, ids=ids, chunks=chunks,
                        cache="SinkCache", cache_args=dict(n_sink=S, window=W, renumber=False))
        close("logits", got["logits"], model.forward(ids, FullCache(model.config)), 1e-4,
              f"n_sink={S}, window={W}, {S + W} tokens in chunks {chunks}, seed={seed}")


def check_retained(base):
    for seed in range(base, base + CASES):
        rng = np.random.default_rng(seed)
        S, W = int(rng.integers(0, 5)), int(rng.integers(1, 8))
        ids = rng.integers(0, 61, int(rng.integers(1, 30)))
        chunks = random_chunks(rng, len(ids))
        got = yield run("retained", sizes={"num_hidden_layers": 1}, seed=seed, ids=ids, chunks=chunks,
                        n_sink=S, window=W)
        fed = 0
        for i, size in enumerate(chunks):
            fed += size
            want = sorted(set(range(min(S, fed))) | set(range(max(0, fed - W), fed)))
            if got[f"retained_{i}"].tolist() != want:
                raise Fail(f"n_sink={S}, window={W}, after {fed} tokens (chunk of {size}), seed={seed}: retained() "
                           f"is {got[f'retained_{i}'].tolist()}, expected the first {S} and the last {W}: {want}")
            if got[f"storage_{i}"].tolist() != got["storage_0"].tolist():
                raise Fail(f"n_sink={S}, window={W}, seed={seed}: the key storage grew from "
                           f"{got['storage_0'].tolist()} to {got[f'storage_{i}'].tolist()}: a ring buffer's "
                           f"storage is fixed at construction")


def check_text_positions(base):
    yield from sink_vs_explicit(base, False, chunked=False)


def check_text_positions_chunked(base):
    yield from sink_vs_explicit(base, False, chunked=True)


def check_window_attention(base):
    yield from sink_vs_explicit(base, True, chunked=True, S_max=0)


CHECKS = [  # (title, points, check)
    ("SinkCache: while the stream fits (S + W tokens) it equals the full cache", 1, check_fits),
    ("SinkCache: retained() is the first S and the last W tokens; the storage never grows", 1, check_retained),
    ("SinkCache(renumber=False): one token at a time equals an explicit cache at text positions",
     1, check_text_positions),
    ("SinkCache(renumber=False): any chunking equals the explicit cache", 2, check_text_positions_chunked),
    ("SinkCache(n_sink=0): window attention equals the explicit cache", 1, check_window_attention),
]
