"""Assignment 6: attention with a sink logit (softmax1 when the logit is 0).

Symbols: T queries, L keys, H query heads, Hkv key/value heads, G = H // Hkv, D head width.
"""

from __future__ import annotations

import numpy as np


def sink_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, sink_logits: np.ndarray,
                   visible: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scaled dot-product attention in which each query head h also has a sink logit sink_logits[h]: a column
    that takes a share of the softmax and carries no value.

    q [T, H, D]; k, v [L, Hkv, D] (query head h reads KV head h // G, as transformers' repeat_kv); sink_logits [H];
    visible bool [T, L] or None (every key visible) -> (output [T, H, D], probabilities [H, T, L]), float32.
    Finite for any finite inputs, including sink logits and scores near 100."""
    T, H, D = q.shape
    G = H // k.shape[1]
    kh = np.repeat(k.transpose(1, 0, 2), G, axis=0).astype(np.float64)  # [H, L, D]
    vh = np.repeat(v.transpose(1, 0, 2), G, axis=0).astype(np.float64)  # [H, L, D]
    s = q.transpose(1, 0, 2).astype(np.float64) @ kh.transpose(0, 2, 1) / np.sqrt(D)  # [H, T, L]
    if visible is not None:
        s = np.where(visible[None], s, -np.inf)
    sigma = np.asarray(sink_logits, dtype=np.float64)[:, None, None]  # [H, 1, 1]
    m = np.maximum(s.max(axis=-1, keepdims=True), sigma)  # [H, T, 1]: the max over the scores and the sink
    e = np.exp(s - m)  # [H, T, L]
    p = e / (e.sum(axis=-1, keepdims=True) + np.exp(sigma - m))
    return (p @ vh).transpose(1, 0, 2).astype(np.float32), p.astype(np.float32)
