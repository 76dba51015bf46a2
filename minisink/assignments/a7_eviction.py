"""Assignment 7 checks: an eviction policy behind the cache interface (h2o.py: H2OCache).

Oracle, computed here: minisink/reference.py::EvictionReference("h2o"), which keeps every key and re-applies
H2O's rule from scratch at each chunk (the plain version tests/test_eviction.py checks minisink's own H2OCache
against): the same stream, fed in the same chunks, must give the same logits and keep the same tokens per layer
and KV head. The convention is one: a token's score is the attention it received, summed over the queries that
saw it and over the G query heads of its KV head (docs/09-other-ways-to-forget.md).
"""

from __future__ import annotations

import numpy as np

from minisink.cache import FullCache
from minisink.reference import EvictionReference
from minisink.tiny import tiny_model

from .common import CASES, Fail, close, random_chunks, random_sizes, run


def h2o_case(seed, n_min=12, n_max=30, one_by_one=False):
    rng = np.random.default_rng(seed)
    sizes = random_sizes(rng)
    budget = int(rng.integers(2, 10))
    heavy = int(rng.integers(0, budget))
    model, raw, _ = tiny_model(seed, **sizes)
    ids = rng.integers(0, raw["vocab_size"], int(rng.integers(n_min, n_max)))
    chunks = [1] * len(ids) if one_by_one else random_chunks(rng, len(ids))
    where = f"budget={budget}, heavy={heavy}, {len(ids)} tokens in chunks {chunks}, tiny model {sizes}, seed={seed}"
    return sizes, model, ids, chunks, budget, heavy, where


def against_reference(seed, one_by_one):
    sizes, model, ids, chunks, budget, heavy, where = h2o_case(seed, one_by_one=one_by_one)
    got = yield run("h2o", sizes=sizes, seed=seed, ids=ids, chunks=chunks, budget=budget, heavy=heavy)
    ref, start, want = EvictionReference(model, "h2o", budget=budget, heavy=heavy), 0, []
    for i, size in enumerate(chunks):
        want.append(ref.forward(ids[start:start + size]))
        start += size
        if got[f"retained_{i}"].tolist() != ref.retained().tolist():
            raise Fail(f"{where}: after {start} tokens, retained() (per layer and KV head) is "
                       f"{got[f'retained_{i}'].tolist()}, the reference keeps {ref.retained().tolist()}")
        if got[f"storage_{i}"].tolist() != got["storage_0"].tolist():
            raise Fail(f"{where}: the key storage went from {got['storage_0'].tolist()} to "
                       f"{got[f'storage_{i}'].tolist()}: a budget of N tokens is N - 1 slots, fixed at construction")
    close("logits", got["logits"], np.concatenate(want), 1e-4, where)


def check_fits(base):
    for seed in range(base, base + CASES):
        sizes, model, ids, chunks, budget, heavy, where = h2o_case(seed)
        ids, chunks = ids[:budget - 1], random_chunks(np.random.default_rng(seed), budget - 1) if budget > 1 else []
        if not len(ids):
            continue
        got = yield run("h2o", sizes=sizes, seed=seed, ids=ids, chunks=chunks, budget=budget, heavy=heavy)
        close("logits while nothing is evicted", got["logits"], model.forward(ids, FullCache(model.config)), 1e-4,
              f"budget={budget}, heavy={heavy}, {len(ids)} tokens in chunks {chunks}, seed={seed}")


def check_one_by_one(base):
    for seed in range(base, base + CASES):
        yield from against_reference(seed, one_by_one=True)


def check_chunks(base):
    for seed in range(base + 100, base + 100 + CASES):
        yield from against_reference(seed, one_by_one=False)


def check_window(base):
    """heavy=0 keeps only the budget - 1 newest: window attention at text positions."""
    for seed in range(base + 200, base + 200 + 3):
        sizes, model, ids, chunks, budget, _, where = h2o_case(seed)
        got = yield run("h2o", sizes=sizes, seed=seed, ids=ids, chunks=chunks, budget=budget, heavy=0)
        n = len(ids)
        want = np.arange(max(0, n - (budget - 1)), n)
        if not all(row.tolist() == want.tolist() for layer in got[f"retained_{len(chunks) - 1}"] for row in layer):
            raise Fail(f"{where.replace(f'heavy={_}', 'heavy=0')}: with no heavy hitters the cache must hold the "
                       f"{budget - 1} newest tokens {want.tolist()}, got {got[f'retained_{len(chunks) - 1}'].tolist()}")


CHECKS = [  # (title, points, check)
    ("H2OCache: while the stream fits in the budget it equals the full cache", 1, check_fits),
    ("H2OCache: heavy=0 keeps the budget - 1 newest tokens (window attention)", 1, check_window),
    ("H2OCache: one token at a time, the logits and the kept tokens equal the reference H2O", 3, check_one_by_one),
    ("H2OCache: any chunking, the logits and the kept tokens equal the reference H2O", 3, check_chunks),
]
