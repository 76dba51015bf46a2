"""Assignment 9: the backward pass of causal attention with a sink logit.

Symbols: T tokens (the queries and the keys are the same T tokens, causal), H query heads, Hkv key/value heads,
G = H // Hkv, D head width. A name d_x is the gradient of the loss with respect to x, with x's shape.
"""

from __future__ import annotations

import numpy as np


def attention_backward(q: np.ndarray, k: np.ndarray, v: np.ndarray, sink_logits: np.ndarray | None,
                       d_out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The gradients of causal grouped-query attention with a sink logit per query head.

    Forward: s_ij = q_i . k_j / sqrt(D) for j <= i (query i sees keys 0..i), p_ij = exp(s_ij) / (sum_k exp(s_ik) +
    exp(sigma_h)) (plain softmax when sink_logits is None), out_i = sum_j p_ij v_j; query head h reads KV head h // G.
    q [T, H, D]; k, v [T, Hkv, D]; sink_logits [H] or None; d_out [T, H, D], the gradient of the loss with respect
    to out -> (d_q [T, H, D], d_k [T, Hkv, D], d_v [T, Hkv, D], d_sink_logits [H] or None), float32."""
    T, H, D = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    qh = q.transpose(1, 0, 2).astype(np.float64)  # [H, T, D]
    kh = np.repeat(k.transpose(1, 0, 2), G, axis=0).astype(np.float64)  # [H, T, D]: head h reads KV head h // G
    vh = np.repeat(v.transpose(1, 0, 2), G, axis=0).astype(np.float64)
    s = qh @ kh.transpose(0, 2, 1) / np.sqrt(D)  # [H, T, T]
    s = np.where(np.tri(T, dtype=bool), s, -np.inf)  # query i sees keys j <= i
    top = s.max(axis=-1, keepdims=True)  # [H, T, 1]
    if sink_logits is not None:
        sigma = np.asarray(sink_logits, dtype=np.float64)[:, None, None]  # [H, 1, 1]
        top = np.maximum(top, sigma)
    e = np.exp(s - top)
    total = e.sum(axis=-1, keepdims=True)
    if sink_logits is not None:
        total = total + np.exp(sigma - top)
    p = e / total  # [H, T, T]

    d_outh = d_out.transpose(1, 0, 2).astype(np.float64)  # [H, T, D]
    d_vh = p.transpose(0, 2, 1) @ d_outh  # [H, T, D]: out = p @ v
    d_p = d_outh @ vh.transpose(0, 2, 1)  # [H, T, T]
    row = (p * d_p).sum(axis=-1, keepdims=True)  # [H, T, 1]: sum_k p_ik d_p_ik (the sink's d_p is 0: no value)
    d_s = p * (d_p - row)  # the softmax backward
    d_qh = d_s @ kh / np.sqrt(D)
    d_kh = d_s.transpose(0, 2, 1) @ qh / np.sqrt(D)
    d_sink = None
    if sink_logits is not None:  # the sink is one more column: d_sigma = p_sink * (0 - row), summed over queries
        d_sink = (-(np.exp(sigma - top) / total) * row).sum(axis=(1, 2)).astype(np.float32)

    def per_kv_head(x):  # [H, T, D] -> [T, Hkv, D]: the G query heads of a KV head add up
        return x.reshape(Hkv, G, T, D).sum(axis=1).transpose(1, 0, 2).astype(np.float32)

    return d_qh.transpose(1, 0, 2).astype(np.float32), per_kv_head(d_kh), per_kv_head(d_vh), d_sink
