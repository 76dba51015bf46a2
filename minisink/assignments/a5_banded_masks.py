"""Assignment 5 checks: the streaming evaluator's banded masks (banded.py: banded_visibility, token_nll).

Oracles, computed here: the plain loops of minisink/reference.py (banded_visible, token_nll in float64), and the
NLL of every token of a stream fed one token at a time through the explicit sink cache (ExplicitSinkCache at text
positions). The student's mask is also plugged into a small chunked evaluator (BandedCache, below, run in the
child): fed in chunks, it must give every token the NLL of token-by-token streaming.
"""

from __future__ import annotations

import numpy as np

from minisink.cache import KVBlock
from minisink.reference import ExplicitSinkCache, banded_visible, token_nll
from minisink.rope import rotation
from minisink.tiny import tiny_model

from .common import CASES, Fail, close, feed, random_chunks, run


# --- tasks: run in the child ------------------------------------------------------------------------------------

class BandedCache:
    """A cache that keeps every key at its stream position and lets `visibility` (the student's banded mask)
    decide what each query sees: with S sinks and a window W it is the sink cache at text positions."""

    wants_attention = False

    def __init__(self, config, n_sink, window, visibility):
        self.n_sink, self.window, self.visibility = n_sink, window, visibility
        self.inv_freq = config.inv_freq()
        shape = (config.num_key_value_heads, config.head_dim)
        self.keys = [np.zeros((shape[0], shape[1], 0), np.float32) for _ in range(config.num_hidden_layers)]
        self.values = [np.zeros((shape[0], 0, shape[1]), np.float32) for _ in range(config.num_hidden_layers)]
        self.seen = 0

    def begin(self, T):
        stream = np.arange(self.seen + T)  # every token so far: key j is stream index j
        visible = np.asarray(self.visibility(stream[self.seen:], stream, self.n_sink, self.window))
        if visible.shape != (T, self.seen + T) or visible.dtype != bool:
            raise TypeError(f"banded_visibility returned {visible.dtype} {visible.shape}, expected bool "
                            f"{(T, self.seen + T)}")
        self.T, self.staged = T, {}
        self.mask = np.where(visible, np.float32(0), np.float32(-np.inf)).astype(np.float32)  # [T, seen + T]
        return rotation(stream[self.seen:], self.inv_freq)

    def blocks(self, layer, k, v):
        keys = np.concatenate([self.keys[layer], k.transpose(1, 2, 0)], axis=-1)  # [Hkv, D, seen + T]
        values = np.concatenate([self.values[layer], v.transpose(1, 0, 2)], axis=1)  # [Hkv, seen + T, D]
        self.staged[layer] = keys, values
        return [KVBlock(keys, values, self.mask)]

    def end(self):
        for layer, (keys, values) in self.staged.items():
            self.keys[layer], self.values[layer] = keys, values
        self.seen += self.T

    def retained(self):
        return np.arange(self.seen)


def task_visibility(ctx, query_stream, key_stream, n_sink, window):
    return {"visible": np.asarray(ctx.student.banded_visibility(query_stream, key_stream, n_sink, window))}


def task_nll(ctx, logits, targets):
    return {"nll": ctx.student.token_nll(logits, targets)}


def task_evaluate(ctx, seed, ids, chunks, n_sink, window):
    """The chunked evaluator with the student's mask and score: NLL of tokens 1..N-1."""
    model = tiny_model(seed)[0]
    cache = BandedCache(model.config, n_sink, window, ctx.student.banded_visibility)
    nll, start = [], 0
    for size in chunks:
        piece = ids[start:start + size]
        nll.append(np.asarray(ctx.student.token_nll(model.forward(piece, cache), ids[start + 1:start + 1 + size])))
        start += size
    return {"nll": np.concatenate(nll)}


TASKS = {"visibility": task_visibility, "nll": task_nll, "evaluate": task_evaluate}


# --- checks: run in the grader -------------------------------------------------------------------------------

def visibility_case(rng):
    """A chunk of T queries after `seen` tokens, over keys in ring order with empty slots."""
    S, W = int(rng.integers(0, 4)), int(rng.integers(1, 7))
    seen, T = int(rng.integers(0, 15)), int(rng.integers(1, 8))
    held = sorted(set(range(min(S, seen))) | set(range(max(0, seen - W), seen)))  # the cache before the chunk
    slots = np.array(held + [-1] * (S + W - len(held)))
    keys = np.concatenate([rng.permutation(slots), seen + np.arange(T)])  # the ring in slot order, then the chunk
    return seen + np.arange(T), keys, S, W


def check_visibility_examples():
    cases = [(np.arange(6, 10), np.array([0, 1, 3, 4, 5, 6, 7, 8, 9]), 2, 3, "chapter 07's example: 2 sinks, W=3"),
             (np.arange(2, 4), np.array([0, 1, -1, -1, -1, 2, 3]), 2, 3, "two tokens in: the ring is still empty")]
    rng = np.random.default_rng(0)
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


def check_visibility_large():
    rng = np.random.default_rng(1)
    for seed in range(3):
        queries = 5000 + np.arange(64)
        keys = np.concatenate([np.arange(4), rng.permutation(np.arange(4990, 5000)), queries])
        S, W = 4, int(rng.integers(1, 40))
        got = (yield run("visibility", query_stream=queries, key_stream=keys, n_sink=S, window=W))["visible"]
        if not np.array_equal(got, banded_visible(queries, keys, S, W)):
            raise Fail(f"a chunk of 64 queries after 5000 tokens, n_sink={S}, window={W}, seed={seed}: "
                       "the mask differs")


def check_token_nll():
    for seed in range(CASES):
        rng = np.random.default_rng(seed)
        T, V = int(rng.integers(1, 6)), int(rng.integers(2, 300))
        scale = float(rng.choice([1.0, 30.0, 1e4]))
        logits = (scale * rng.standard_normal((T, V))).astype(np.float32)
        targets = rng.integers(0, V, T)
        got = (yield run("nll", logits=logits, targets=targets))["nll"]
        close("token_nll", got, token_nll(logits, targets), 1e-6 * max(1.0, scale),
              f"T={T}, V={V}, logits of scale {scale:g}, seed={seed}")


def check_evaluator():
    for seed in range(CASES):
        rng = np.random.default_rng(seed)
        S, W = int(rng.integers(0, 4)), int(rng.integers(1, 7))
        model, raw, _ = tiny_model(seed)
        ids = rng.integers(0, raw["vocab_size"], int(rng.integers(S + W + 3, S + W + 25)))
        chunks = random_chunks(rng, len(ids) - 1)  # the last token is only predicted
        logits = feed(model, ids[:-1], ExplicitSinkCache(model.config, S, W, renumber=False))  # token by token
        got = (yield run("evaluate", seed=seed, ids=ids, chunks=chunks, n_sink=S, window=W))["nll"]
        close("per-token NLL, chunked with your mask, vs token-by-token streaming", got, token_nll(logits, ids[1:]),
              1e-4, f"n_sink={S}, window={W}, {len(ids)} tokens in chunks {chunks}, seed={seed}")


CHECKS = [
    ("banded_visibility equals the plain rule (sinks, window, the ring's empty slots, any key order)",
     check_visibility_examples),
    ("banded_visibility on a 64-token chunk far into the stream", check_visibility_large),
    ("token_nll equals the float64 log-softmax, also for logits as large as 1e4", check_token_nll),
    ("a chunked evaluator with your mask and token_nll gives token-by-token streaming's NLL", check_evaluator),
]
