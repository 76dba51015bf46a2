"""Assignment 4 checks: positions within the cache (cache.py: SinkCache.begin, graded with renumber=True).

Oracle, computed here: the explicit cache (minisink/reference.py::ExplicitSinkCache), which renumbers the visible
tokens 0..n-1 by hand at every step.
"""

from __future__ import annotations

import numpy as np

from minisink.reference import ExplicitSinkCache
from minisink.tiny import tiny_model

from .a3_ring_buffer import TASKS, check_text_positions_chunked, sink_cases, sink_vs_explicit  # noqa: F401
from .common import Fail, close, feed, run


def check_paper_example():
    model, raw, _ = tiny_model(0)
    ids = np.random.default_rng(0).integers(0, raw["vocab_size"], 10)
    got = yield run("model", sizes={}, seed=0, ids=ids, chunks=[3, 5, 1, 1], plug=["SinkCache"], cache="SinkCache",
                    cache_args=dict(n_sink=4, window=4))
    if got["retained"].tolist() != [0, 1, 2, 3, 6, 7, 8, 9]:
        raise Fail(f"n_sink=4, window=4, after tokens 0..9: retained() is {got['retained'].tolist()}, expected "
                   f"[0, 1, 2, 3, 6, 7, 8, 9]")
    close("logits of tokens 0..9", got["logits"], feed(model, ids, ExplicitSinkCache(model.config, 4, 4)), 1e-4,
          "n_sink=4, window=4, token 9 at cache position 7, chunks [3, 5, 1, 1], seed=0")


def check_cache_positions():
    yield from sink_vs_explicit(True, chunked=False)


def check_cache_positions_chunked():
    yield from sink_vs_explicit(True, chunked=True)


def check_far_positions():
    yield from sink_vs_explicit(True, chunked=True, offset=10**7)


def check_new_cache():
    for sizes, seed, model, ids, S, W, chunks, where in sink_cases(3, True, seed0=100):
        got = yield run("model", sizes=sizes, seed=seed, ids=ids, chunks=chunks, plug=["SinkCache"], new_cache="sink",
                        cache_args=dict(sinks=S, window=W))
        close("logits through new_cache(model, 'sink', sinks=S, window=W)", got["logits"],
              feed(model, ids, ExplicitSinkCache(model.config, S, W)), 1e-4, where + f", chunks {chunks}")


CHECKS = [
    ("SinkCache: the paper's example (S=4, W=4, token 9 sees 0,1,2,3,6,7,8,9 at positions 0..7)",
     check_paper_example),
    ("SinkCache: one token at a time equals an explicit cache with positions within the cache", check_cache_positions),
    ("SinkCache: any chunking equals the explicit cache", check_cache_positions_chunked),
    ("SinkCache: at position_offset=10**7 it still equals the explicit cache (no drift)", check_far_positions),
    ("SinkCache(renumber=False) still equals the explicit cache at text positions", check_text_positions_chunked),
    ("your SinkCache plugged into minisink's new_cache(model, 'sink', sinks=S, window=W) gives the reference "
     "logits", check_new_cache),
]
