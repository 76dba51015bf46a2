"""Assignment 5 checks: the streaming evaluator's banded masks (banded.py: banded_visibility, token_nll).

Oracles, computed here: the plain loops of minisink/reference.py (banded_visible, token_nll in float64), and the
NLL of every token of a stream fed one token at a time through the explicit sink cache (ExplicitSinkCache at text
positions). The student's mask is also plugged into a small chunked evaluator (tasks.py's BandedCache, run in
the child): fed in chunks, it must give every token the NLL of token-by-token streaming.
"""

from __future__ import annotations

import numpy as np

from minisink.reference import ExplicitSinkCache, banded_visible, token_nll
from minisink.tiny import tiny_model

from .common import CASES, Fail, close, random_chunks, run
from .tasks import feed


def visibility_case(rng):
    """A chunk of T queries after `seen` tokens, over keys in ring order with empty slots."""
    S, W = int(rng.integers(0, 4)), int(rng.integers(1, 7))
    seen, T = int(rng.integers(0, 15)), int(rng.integers(1, 8))
    held = sorted(set(range(min(S, seen))) | set(range(max(0, seen - W), seen)))  # the cache before the chunk
    slots = np.array(held + [-1] * (S + W - len(held)))
    keys = np.concatenate([rng.permutation(slots), seen + np.arange(T)])  # the ring in slot order, then the chunk
    return seen + np.arange(T), keys, S, W


def check_visibility_examples(base):
    cases = [(np.arange(6, 10), np.array([0, 1, 3, 4, 5, 6, 7, 8, 9]), 2, 3, "chapter 06's example: 2 sinks, W=3"),
             (np.arange(2, 4), np.array([0, 1, -1, -1, -1, 2, 3]), 2, 3, "two tokens in: the ring is still empty")]
    rng = np.random.default_rng(base)
    cases += [(*visibility_case(rng), "a ring with empty slots") for _ in range(CASES)]
    for queries, keys, S, W, what in cases:
        got = (yield run("visibility", query_stream=queries, key_stream=keys, n_sink=S, window=W))["visible"]
        want = banded_visible(queries, keys, S, W)
        where = f"{what}: queries {queries.tolist()}, keys {keys.tolist()}, n_sink={S}, window={W}"
        if got.shape != want.shape or got.dtype != bool:
            raise Fail(f"{where}: got {got.dtype} {got.shape}, expected bool {want.shape}")
        if not np.array_equal(got, want):
            i, j = np.argwhere(got != want)[0]
            raise Fail(f"{where}: query {queries[i]} and key {keys[j]}: you say {'not ' * (not got[i, j])}visible")


def check_visibility_large(base):
    rng = np.random.default_rng(base + 1)
    for seed in range(base, base + 3):
        queries = 5000 + np.arange(64)
        keys = np.concatenate([np.arange(4), rng.permutation(np.arange(4990, 5000)), queries])
        S, W = 4, int(rng.integers(1, 40))
        got = (yield run("visibility", query_stream=queries, key_stream=keys, n_sink=S, window=W))["visible"]
        if not np.array_equal(got, banded_visible(queries, keys, S, W)):
            raise Fail(f"a chunk of 64 queries after 5000 tokens, n_sink={S}, window={W}, seed={seed}: "
                       f"the mask differs")


def check_token_nll(base):
    for seed in range(base, base + CASES):
        rng = np.random.default_rng(seed)
        T, V = int(rng.integers(1, 6)), int(rng.integers(2, 300))
        scale = float(rng.choice([1.0, 30.0, 1e4]))
        logits = (scale * rng.standard_normal((T, V))).astype(np.float32)
        targets = rng.integers(0, V, T)
        got = (yield run("nll", logits=logits, targets=targets))["nll"]
        close("token_nll", got, token_nll(logits, targets), 1e-6 * max(1.0, scale),
              f"T={T}, V={V}, logits of scale {scale:g}, seed={seed}")


def check_evaluator(base):
    for seed in range(base, base + CASES):
        rng = np.random.default_rng(seed)
        S, W = int(rng.integers(0, 4)), int(rng.integers(1, 7))
        model, raw, _ = tiny_model(seed)
        ids = rng.integers(0, raw["vocab_size"], int(rng.integers(S + W + 3, S + W + 25)))
        chunks = random_chunks(rng, len(ids) - 1)  # the last token is only predicted
        logits = feed(model, ids[:-1], ExplicitSinkCache(model.config, S, W, renumber=False))  # token by token
        got = (yield run("evaluate", seed=seed, ids=ids, chunks=chunks, n_sink=S, window=W))["nll"]
        close("per-token NLL, chunked with your mask, vs token-by-token streaming", got, token_nll(logits, ids[1:]),
              1e-4, f"n_sink={S}, window={W}, {len(ids)} tokens in chunks {chunks}, seed={seed}")


CHECKS = [  # (title, points, check)
    ("banded_visibility equals the plain rule (sinks, window, the ring's empty slots, any key order)",
     1, check_visibility_examples),
    ("banded_visibility on a 64-token chunk far into the stream", 1, check_visibility_large),
    ("token_nll equals the float64 log-softmax, also for logits as large as 1e4", 1, check_token_nll),
    ("a chunked evaluator with your mask and token_nll gives token-by-token streaming's NLL", 2, check_evaluator),
]
