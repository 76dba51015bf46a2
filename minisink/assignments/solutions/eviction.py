"""Assignment 7: eviction by attention, the choice TOVA and H2O make when the cache is full.

Symbols: H heads, L cached tokens (in stream order: index 0 is the oldest held).
"""

from __future__ import annotations

import numpy as np


def tova_victim(probs: np.ndarray) -> int:
    """TOVA's choice. probs [H, L]: the current query's attention probabilities over the L cached tokens (the
    current one included), per head -> the index in 0..L-1 of the token to evict; on a tie, the smallest index."""
    return int(np.argmin(probs.mean(axis=0)))


def h2o_victim(scores: np.ndarray, n_recent: int) -> int:
    """H2O's choice. scores [L]: each cached token's accumulated attention (the sum over the queries it has seen
    of their probability on it, averaged over heads); n_recent: how many of the most recent tokens are protected
    -> the index in 0..L-1 of the token to evict; on a tie, the smallest index."""
    return int(np.argmin(np.asarray(scores)[:len(scores) - n_recent]))
