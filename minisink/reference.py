"""The plain, slow, obviously right versions that the tests and the assignment graders compare against.

What it does: each function or class here states one idea of minisink in the plainest code there is (loops over
heads and tokens, float64 where it costs nothing, every key kept), so that it can be read against the paper and
trusted as an oracle. minisink's own code is compared with these in tests/, and a student's code in the graders.
What it does not: run fast. Nothing in minisink's forward pass calls this module.
"""

from __future__ import annotations

import numpy as np

from .cache import KVBlock
from .rope import apply_rope, rotation


class ExplicitSinkCache:
    """The sink cache written for clarity, not speed (the oracle of tests/test_sink_cache.py): every pre-RoPE key kept
    forever; the query at stream index t sees the first S and the last W tokens (itself included), numbered
    0..n-1 in stream order (or, with renumber=False, at their positions in the text). One token per call; like
    every cache, it changes what it holds only at `end()`."""

    def __init__(self, config, n_sink, window, renumber=True, position_offset=0):
        self.n_sink, self.window, self.renumber, self.offset = n_sink, window, renumber, position_offset
        self.inv_freq = config.inv_freq()
        self.keys = [[] for _ in range(config.num_hidden_layers)]  # per layer: pre-RoPE keys [Hkv, D] per token
        self.values = [[] for _ in range(config.num_hidden_layers)]
        self.t = 0

    def visible(self, t):
        return sorted(set(range(min(self.n_sink, t + 1))) | set(range(max(0, t - self.window + 1), t + 1)))

    def begin(self, T):
        assert T == 1, "the explicit cache takes one token at a time"
        self.kept = np.array(self.visible(self.t))
        self.staged = {}
        positions = np.arange(len(self.kept)) if self.renumber else self.kept  # within the cache, or in the text
        self.unrotate = rotation(-np.array([self.offset + self.t]), self.inv_freq)
        self.key_rotation = rotation(self.offset + positions, self.inv_freq)
        self.query_rotation = rotation(positions[-1:] - self.t, self.inv_freq)  # from t to its cache position
        return rotation(np.array([self.offset + self.t]), self.inv_freq)

    def blocks(self, layer, k, v):
        self.staged[layer] = (apply_rope(k, self.unrotate)[0], v[0])  # this token's pre-RoPE key and value
        keys = self.keys[layer] + [self.staged[layer][0]]
        values = self.values[layer] + [self.staged[layer][1]]
        keys = apply_rope(np.stack([keys[j] for j in self.kept]), self.key_rotation)  # [n, Hkv, D]
        values = np.stack([values[j] for j in self.kept])
        return [KVBlock(keys.transpose(1, 2, 0), values.transpose(1, 0, 2), None, self.query_rotation)]

    def end(self):
        """Commit: the token's key and value join the history (blocks only staged them)."""
        for layer, (k, v) in self.staged.items():
            self.keys[layer].append(k)
            self.values[layer].append(v)
        self.t += 1

    def retained(self):
        """Stream indices the last query saw: the first S and the last W, in stream order."""
        return np.array(self.visible(self.t - 1)) if self.t else np.array([], dtype=int)



def loop_attention(q, blocks, n_kv_heads):
    """Attention head by head and block by block, float64: the plainest statement of GQA."""
    T, H, D = q.shape
    G = H // n_kv_heads
    out, probs = np.zeros((T, H, D)), []
    for h in range(H):
        kv = h // G  # query head h reads KV head h // G (transformers' repeat_kv)
        scores, values = [], []
        for b in blocks:
            qb = q if b.query_rotation is None else apply_rope(q, b.query_rotation)
            sc = qb[:, h].astype(np.float64) @ b.keys[kv] / np.sqrt(D)  # [T, L]
            scores.append(sc if b.mask is None else sc + b.mask)
            values.append(b.values[kv])
        sc = np.concatenate(scores, axis=-1)
        p = np.exp(sc - sc.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[:, h] = p @ np.concatenate(values)
        probs.append(p)
    return out.reshape(T, H * D), np.stack(probs).reshape(n_kv_heads, G, T, -1)

