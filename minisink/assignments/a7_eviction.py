"""Assignment 7 checks: eviction by attention (eviction.py: tova_victim, h2o_victim).

Oracles, computed here: the plain rules of minisink/reference.py (tova_victim, h2o_victim) on random inputs, and a
tiny streaming run (`stream`, below) in which the student's rule and the reference each choose every eviction:
a wrong choice changes every attention row after it, so the two runs must agree step by step.
"""

from __future__ import annotations

import numpy as np

from minisink import reference

from .common import CASES, Fail, run


def stream(q, k, capacity, policy, victim, n_recent=0):
    """Stream N tokens through a cache of `capacity`: token t's query attends over the kept keys (itself included),
    then, if the cache is over capacity, `victim` picks the token to drop. q, k [N, H, D] -> [N] stream index
    evicted at each step (-1: none)."""
    kept, scores, evicted = [], [], []
    for t in range(len(q)):
        kept.append(t)
        scores.append(0.0)
        s = np.einsum("hd,lhd->hl", q[t].astype(np.float64), k[kept].astype(np.float64)) / np.sqrt(q.shape[2])
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)  # [H, L]
        scores = [a + b for a, b in zip(scores, p.mean(axis=0), strict=True)]  # H2O's accumulated attention
        if len(kept) <= capacity:
            evicted.append(-1)
            continue
        i = victim(p) if policy == "tova" else victim(np.array(scores), n_recent)
        i = int(i)
        if not 0 <= i < len(kept):
            raise IndexError(f"the victim must be an index in 0..{len(kept) - 1}, got {i}")
        evicted.append(kept.pop(i))
        scores.pop(i)
    return np.array(evicted)


def task_tova(ctx, probs):
    return {"victim": np.array(int(ctx.student.tova_victim(probs)))}


def task_h2o(ctx, scores, n_recent):
    return {"victim": np.array(int(ctx.student.h2o_victim(scores, n_recent)))}


def task_stream(ctx, q, k, capacity, policy, n_recent=0):
    rule = ctx.student.tova_victim if policy == "tova" else ctx.student.h2o_victim
    return {"evicted": stream(q, k, capacity, policy, rule, n_recent)}


TASKS = {"tova": task_tova, "h2o": task_h2o, "stream": task_stream}


def check_tova():
    for seed in range(2 * CASES):
        rng = np.random.default_rng(seed)
        H, L = int(rng.integers(1, 5)), int(rng.integers(1, 12))
        probs = rng.dirichlet(np.ones(L) * 0.5, H).astype(np.float32)  # [H, L], rows sum to 1
        if seed % 4 == 3:
            probs[:, -1] = probs[:, 0]  # a tie: the first index wins
        got = int((yield run("tova", probs=probs))["victim"])
        want = reference.tova_victim(probs.astype(np.float64))
        if got != want:
            raise Fail(f"H={H}, L={L}, seed={seed}: you evict {got}, TOVA evicts {want} (mean attention over heads "
                       f"{np.round(probs.mean(0), 3).tolist()})")


def check_h2o():
    for seed in range(2 * CASES):
        rng = np.random.default_rng(seed)
        L = int(rng.integers(2, 12))
        n_recent = int(rng.integers(0, L))
        scores = (rng.random(L) * rng.integers(1, 20)).astype(np.float64)
        if seed % 4 == 3:
            scores[1] = scores[0]
        got = int((yield run("h2o", scores=scores, n_recent=n_recent))["victim"])
        want = reference.h2o_victim(scores, n_recent)
        if got != want:
            raise Fail(f"L={L}, n_recent={n_recent}, seed={seed}: you evict {got}, H2O evicts {want} "
                       f"(scores {np.round(scores, 3).tolist()})")


def _check_stream(policy):
    for seed in range(4):
        rng = np.random.default_rng(seed)
        N, H, D = 40, int(rng.integers(1, 4)), 8
        q, k = (3 * rng.standard_normal((2, N, H, D))).astype(np.float32)
        capacity = int(rng.integers(3, 10))
        n_recent = int(rng.integers(1, capacity)) if policy == "h2o" else 0
        rule = reference.tova_victim if policy == "tova" else reference.h2o_victim
        want = stream(q, k, capacity, policy, rule, n_recent)
        got = (yield run("stream", q=q, k=k, capacity=capacity, policy=policy, n_recent=n_recent))["evicted"]
        if not np.array_equal(got, want):
            t = int(np.argmax(got != want))
            raise Fail(f"{policy}, capacity {capacity}{f', n_recent {n_recent}' if n_recent else ''}, {N} tokens, "
                       f"H={H}, seed={seed}: at token {t} you evicted token {got[t]}, the reference {want[t]}")


def check_tova_stream():
    yield from _check_stream("tova")


def check_h2o_stream():
    yield from _check_stream("h2o")


CHECKS = [
    ("tova_victim: the least attended token, averaged over heads (ties: the first)", check_tova),
    ("h2o_victim: the least accumulated attention outside the recent window (ties: the first)", check_h2o),
    ("a 40-token stream through a TOVA cache evicts what the reference evicts, step by step", check_tova_stream),
    ("a 40-token stream through an H2O cache evicts what the reference evicts, step by step", check_h2o_stream),
]
