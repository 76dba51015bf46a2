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



# --- assignment 5: the streaming evaluator's masks and scores --------------------------------------------------

def banded_visible(query_stream, key_stream, n_sink: int, window: int) -> np.ndarray:
    """bool [T, L]: may the query at stream index query_stream[i] see the token at key_stream[j] (-1: an empty
    slot)? In a sink cache the query at t sees the first S tokens and the last W up to itself (W includes t)."""
    visible = np.zeros((len(query_stream), len(key_stream)), dtype=bool)
    for i, t in enumerate(query_stream):
        for j, s in enumerate(key_stream):
            visible[i, j] = 0 <= s <= t and (s < n_sink or t - s < window)
    return visible


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row in float64: [T, V] + [T] -> [T]. log-sum-exp after taking out the
    row max, which makes it exact for any finite logits."""
    x = np.asarray(logits, dtype=np.float64)
    top = x.max(axis=-1)
    lse = top + np.log(np.exp(x - top[:, None]).sum(axis=-1))
    return lse - x[np.arange(len(targets)), targets]


# --- assignment 6: attention with a sink logit ----------------------------------------------------------------

def sink_attention(q, k, v, sink_logits, visible=None):
    """Attention with one sink logit sigma_h per query head, float64, head by head (gpt-oss; softmax1 when sigma=0):

        p_ij = exp(s_ij) / (sum_k exp(s_ik) + exp(sigma_h)),   s_ij = q_i . k_j / sqrt(D) over the visible keys.

    The sink takes probability but adds no value. q [T, H, D]; k, v [L, Hkv, D] (head h reads KV head h // G);
    sink_logits [H]; visible bool [T, L] or None -> (output [T, H, D], probabilities [H, T, L])."""
    T, H, D = q.shape
    G = H // k.shape[1]
    out, probs = np.zeros((T, H, D)), np.zeros((H, T, k.shape[0]))
    for h in range(H):
        s = q[:, h].astype(np.float64) @ k[:, h // G].T.astype(np.float64) / np.sqrt(D)  # [T, L]
        if visible is not None:
            s = np.where(visible, s, -np.inf)
        m = np.maximum(s.max(axis=-1, keepdims=True), sink_logits[h])  # the max over the scores and the sink
        e = np.exp(s - m)
        probs[h] = e / (e.sum(axis=-1, keepdims=True) + np.exp(sink_logits[h] - m))
        out[:, h] = probs[h] @ v[:, h // G]
    return out, probs


# --- assignment 7: eviction by attention ------------------------------------------------------------------------

def tova_victim(probs) -> int:
    """TOVA (Oren et al. 2024): the token the current query attends to least, attention averaged over heads.
    probs [H, L] -> an index into L (the first one on a tie)."""
    mean = [sum(probs[h][j] for h in range(len(probs))) / len(probs) for j in range(len(probs[0]))]
    return min(range(len(mean)), key=lambda j: (mean[j], j))


def h2o_victim(scores, n_recent: int) -> int:
    """H2O (Zhang et al. 2023): among the tokens older than the n_recent most recent, the one with the least
    accumulated attention. scores [L] in stream order -> an index into L (the first one on a tie)."""
    older = range(len(scores) - n_recent)
    return min(older, key=lambda j: (scores[j], j))
