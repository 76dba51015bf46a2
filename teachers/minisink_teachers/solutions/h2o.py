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
        self.T, self.staged, self.probs = T, {}, {}
        self.mask = causal_mask(np.arange(T), np.arange(T))  # [T, T] (None for one token)
        return rotation(self.seen + np.arange(T), self.inv_freq)

    def blocks(self, layer: int, k: np.ndarray, v: np.ndarray) -> list[KVBlock]:
        """k (rotated), v [T, Hkv, D] -> [the held tokens (all visible), the chunk (causal)]."""
        self.staged[layer] = (k, v)
        n = self.held
        chunk = KVBlock(np.ascontiguousarray(k.transpose(1, 2, 0)), np.ascontiguousarray(v.transpose(1, 0, 2)),
                        self.mask)  # [Hkv, D, T], [Hkv, T, D]
        if n == 0:
            return [chunk]
        return [KVBlock(self.keys[layer, :, :, :n], self.values[layer, :, :n], None), chunk]

    def observe(self, layer: int, probs: np.ndarray):
        """probs [Hkv, G, T, n + T]: the chunk's attention over [held, chunk] in this layer."""
        self.probs[layer] = probs

    def end(self):
        """Score held + chunk, keep C per layer and KV head, rewrite the slots in stream order."""
        n, T, C = self.held, self.T, self.capacity
        chunk_tokens = self.seen + np.arange(T)
        n_after = min(C, n + T)
        L, Hkv = self.token.shape[:2]
        keys, values = self.keys.copy(), self.values.copy()
        token, score = self.token.copy(), self.score.copy()
        for layer in range(L):
            k, v = self.staged[layer]
            received = self.probs[layer].sum(axis=(1, 2), dtype=np.float64)  # [Hkv, n + T]: G heads, T queries
            for h in range(Hkv):
                cand_token = np.concatenate([self.token[layer, h, :n], chunk_tokens])  # [n + T], stream order
                cand_score = np.concatenate([self.score[layer, h, :n], np.zeros(T)]) + received[h]
                keep = self._keep(cand_token, cand_score, n_after)  # indices into the candidates, ascending
                old, new = keep[keep < n], keep[keep >= n] - n
                m = len(old)
                keys[layer, h, :, :m] = self.keys[layer, h, :, old].T  # [D, m]
                values[layer, h, :m] = self.values[layer, h, old]
                keys[layer, h, :, m:n_after] = k[new, h].T  # [D, n_after - m]
                values[layer, h, m:n_after] = v[new, h]
                token[layer, h, :n_after] = cand_token[keep]
                score[layer, h, :n_after] = cand_score[keep]
        self.keys, self.values, self.token, self.score = keys, values, token, score
        self.held, self.seen = n_after, self.seen + T

    def _keep(self, tokens: np.ndarray, scores: np.ndarray, n_after: int) -> np.ndarray:
        """Which candidates stay (ascending indices): all of them while they fit; else the recent - 1 newest and
        the `heavy` best-scored of the others, a tie kept for the newer token."""
        if len(tokens) <= n_after:
            return np.arange(len(tokens))
        newest = np.arange(len(tokens) - (self.recent - 1), len(tokens))
        others = np.arange(len(tokens) - (self.recent - 1))
        ranked = others[np.lexsort((tokens[others], scores[others]))]  # worst first; ties: older first
        return np.sort(np.concatenate([ranked[len(ranked) - self.heavy:] if self.heavy else [], newest])
                       ).astype(np.int64)

    def retained(self) -> np.ndarray:
        """[L, Hkv, n] stream indices of the held tokens, sorted."""
        return np.sort(self.token[:, :, :self.held], axis=-1)
