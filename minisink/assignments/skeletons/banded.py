"""Assignment 5: the streaming evaluator's banded masks, and the score of each token.

Symbols: T queries (the new tokens of a chunk), L keys, V vocabulary size. A stream index counts tokens from the
first one of the stream (0). n_sink and window mean what they mean in SinkCache(n_sink, window): the window
includes the current token.
"""

from __future__ import annotations

import numpy as np


def banded_visibility(query_stream: np.ndarray, key_stream: np.ndarray, n_sink: int, window: int) -> np.ndarray:
    """Which keys each query may see, as a sink cache fed one token at a time would let it: bool [T, L].

    query_stream [T] ints: the stream index of each query. key_stream [L] ints: the stream index of the token each
    key belongs to, in any order; -1 marks an empty slot (never visible)."""
    raise NotImplementedError("TODO: banded_visibility")


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The negative log-likelihood of each target under its row of logits: [T, V] float32 + [T] ints -> [T]
    float64 (nats). Must be finite and accurate for any finite logits, as large as 1e4."""
    raise NotImplementedError("TODO: token_nll")
