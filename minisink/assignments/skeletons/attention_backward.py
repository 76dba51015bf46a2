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
    raise NotImplementedError("TODO: attention_backward")
