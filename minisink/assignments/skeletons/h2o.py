"""Assignment 7: H2O (Zhang et al. 2023, "Heavy-Hitter Oracle") as a cache behind minisink's cache interface.

The model calls, for each chunk of T new tokens: `begin(T)` once (plan; return the chunk's rotation), then per
layer `blocks(layer, k, v)` (what the queries attend over) and, because `wants_attention` is True,
`observe(layer, probs)` (the attention those queries paid), then `end()` once (commit: score, evict, store).
`retained()` says which tokens each KV head holds.

The policy, one convention (as minisink/eviction.py and chapter 09 state it): every token's score is the attention
it has received, summed over every query that saw it and over the G query heads that share its KV head. Budget
N = heavy + recent tokens per query, itself included; between chunks a cache holds C = N - 1 tokens per layer and
KV head: the recent - 1 newest, and the `heavy` best-scored of the others (a tie: the newer token stays). Keys
keep their positions in the text (no renumbering). A chunk's T queries all see the held tokens and the chunk
causally; the choice is made once, at `end()`.

Symbols: L layers, Hkv KV heads, G query heads per KV head, D head width, T new tokens, n held tokens, C slots.
"""

from __future__ import annotations

import numpy as np

from minisink.cache import KVBlock, causal_mask  # noqa: F401 (the skeleton keeps the imports it needs)
from minisink.rope import rotation  # noqa: F401


class H2OCache:
    """Heavy hitters + recent tokens, per layer and KV head, in fixed storage of C = budget - 1 slots."""

    wants_attention = True  # the model hands this cache every layer's attention probabilities (observe)

    def __init__(self, config, budget: int, heavy: int):
        if not 0 <= heavy < budget:
            raise ValueError(f"need 0 <= heavy < budget (the current token takes one place), got {heavy}, {budget}")
        self.heavy, self.recent = heavy, budget - heavy
        self.capacity = C = budget - 1
        L, Hkv, D = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
        self.inv_freq = config.inv_freq()
        self.keys = np.zeros((L, Hkv, D, C), dtype=np.float32)  # rotated at their positions in the text
        self.values = np.zeros((L, Hkv, C, D), dtype=np.float32)
        self.token = np.full((L, Hkv, C), -1, dtype=np.int64)  # the stream index in each slot, -1 while empty
        self.score = np.zeros((L, Hkv, C))  # each held token's attention received so far (float64)
        self.held = 0  # n: slots 0..n-1 are filled, in stream order, for every layer and KV head
        self.seen = 0  # tokens committed so far

    def begin(self, T: int):
        """Plan a chunk of T tokens at stream positions seen..seen+T-1; -> their rotation. Changes nothing held."""
        raise NotImplementedError("TODO: H2OCache.begin")

    def blocks(self, layer: int, k: np.ndarray, v: np.ndarray) -> list[KVBlock]:
        """k (rotated), v [T, Hkv, D] -> [the held tokens (all visible), the chunk (causal)]."""
        raise NotImplementedError("TODO: H2OCache.blocks")

    def observe(self, layer: int, probs: np.ndarray):
        """probs [Hkv, G, T, n + T]: the chunk's attention over [held, chunk] in this layer."""
        raise NotImplementedError("TODO: H2OCache.observe")

    def end(self):
        """Score held + chunk, keep C per layer and KV head, rewrite the slots in stream order."""
        raise NotImplementedError("TODO: H2OCache.end")

    def _keep(self, tokens: np.ndarray, scores: np.ndarray, n_after: int) -> np.ndarray:
        """Which candidates stay (ascending indices): all of them while they fit; else the recent - 1 newest and
        the `heavy` best-scored of the others, a tie kept for the newer token."""
        raise NotImplementedError("TODO: H2OCache._keep")

    def retained(self) -> np.ndarray:
        """[L, Hkv, n] stream indices of the held tokens, sorted."""
        raise NotImplementedError("TODO: H2OCache.retained")
