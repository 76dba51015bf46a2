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
    raise NotImplementedError("TODO: sink_attention")
