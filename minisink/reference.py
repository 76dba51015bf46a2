"""Plain, slow, obviously right versions of minisink's caches: what the tests and graders compare against.

# --- eviction policies: plain references

`EvictionReference` runs H2O, TOVA or SnapKV the long way: it keeps every key and value ever computed, and a
boolean `kept[layer][kv_head, token]`; each chunk, every query head attends over all keys with a mask (the kept
tokens and the chunk, causally), positions given explicitly per KV head, and the policy's rule is applied again
from scratch to (kept + chunk) with sorted Python lists. No slots, no ring, no in-place bookkeeping: the fast
caches in minisink/eviction.py must give the same logits and keep the same tokens (tests/test_eviction.py).
"""

from __future__ import annotations

import numpy as np

from .model import linear, rms_norm, silu
from .rope import apply_rope, rotation

# --- eviction policies: plain references -------------------------------------------------------------------------


def h2o_rule(candidates: list[int], score: dict[int, float], heavy: int, recent: int) -> set[int]:
    """H2O on one KV head: the recent - 1 newest candidates, plus the `heavy` best-scored of the others
    (ties: the newer one stays). The current token of the next step completes the recent window."""
    newest = sorted(candidates)[len(candidates) - (recent - 1):] if recent > 1 else []
    others = sorted((t for t in candidates if t not in newest), key=lambda t: (score[t], t))
    return set(newest) | set(others[len(others) - heavy:] if heavy else [])


def top_rule(candidates: list[int], score: dict[int, float], keep: int) -> set[int]:
    """Keep the `keep` best-scored candidates (ties: the newer one stays): TOVA's rule, and SnapKV's window."""
    ranked = sorted(candidates, key=lambda t: (score[t], t))
    return set(ranked[len(ranked) - keep:]) if keep else set()


def snapkv_votes(window_probs: np.ndarray, w: int, kernel: int) -> np.ndarray:
    """SnapKV's vote for each of the first P - w prompt tokens, one KV head: probs [G, w, P] -> [P - w].
    Summed over the G query heads and the w queries, then averaged over `kernel` neighbours, zeros outside."""
    vote = window_probs.sum(axis=(0, 1), dtype=np.float64)[:-w]
    half = kernel // 2
    return np.array([vote[max(0, j - half):j + half + 1].sum() / kernel for j in range(len(vote))])


class EvictionReference:
    """H2O / TOVA / SnapKV with every key kept and the rule re-applied from scratch at each chunk.

    policy "h2o": budget, heavy (default budget // 2); "tova": budget; "snapkv": capacity, window, w, kernel.
    positions "text" (a token's position is its index in the stream) or "cache" (per KV head, the kept tokens in
    stream order are at 0..n-1 and the chunk follows). `forward(ids)` -> logits [T, V] (float32, as the model).
    """

    def __init__(self, model, policy: str, budget: int | None = None, heavy: int | None = None,
                 positions: str = "text", capacity: int | None = None, window: int | None = None,
                 w: int = 32, kernel: int = 5):
        c = model.config
        self.model, self.policy, self.positions = model, policy, positions
        if policy == "snapkv":
            budget = capacity + window
        self.budget, self.capacity, self.w, self.kernel = budget, capacity, w, kernel
        self.heavy = budget // 2 if heavy is None else heavy
        L, self.Hkv, self.D = c.num_hidden_layers, c.num_key_value_heads, c.head_dim
        self.G = c.num_attention_heads // self.Hkv
        self.k = [np.zeros((0, self.Hkv, self.D), np.float32) for _ in range(L)]  # pre-RoPE keys of every token
        self.v = [np.zeros((0, self.Hkv, self.D), np.float32) for _ in range(L)]
        self.kept = [[set() for _ in range(self.Hkv)] for _ in range(L)]  # stream indices each KV head keeps
        self.score = [[{} for _ in range(self.Hkv)] for _ in range(L)]  # H2O totals, SnapKV pins
        self.seen = 0

    def forward(self, token_ids) -> np.ndarray:
        m, c = self.model, self.model.config
        ids = np.asarray(token_ids)
        T, n_all, H, D = len(ids), self.seen, c.num_attention_heads, self.D
        x = m.embed_tokens[ids].astype(np.float32)  # [T, d_model]
        attended = []  # per layer: probs [H, T, n_all + T]
        for li, layer in enumerate(m.layers):
            h = rms_norm(x, layer.input_layernorm, c.rms_norm_eps)
            qkv = linear(h, layer.qkv_proj, layer.qkv_bias)
            q = qkv[:, :H * D].reshape(T, H, D)
            k = qkv[:, H * D:(H + self.Hkv) * D].reshape(T, self.Hkv, D)
            v = qkv[:, (H + self.Hkv) * D:].reshape(T, self.Hkv, D)
            K, V = np.concatenate([self.k[li], k]), np.concatenate([self.v[li], v])  # [n_all + T, Hkv, D]
            out = np.zeros((T, H, D), np.float32)
            probs = np.zeros((H, T, n_all + T))
            for j in range(self.Hkv):
                kept = sorted(self.kept[li][j])
                visible = np.zeros((T, n_all + T), dtype=bool)  # [T, n_all + T]: query i may see key t
                visible[:, kept] = True
                visible[:, n_all:] = np.tril(np.ones((T, T), dtype=bool))
                if self.positions == "text":
                    key_pos, query_pos = np.arange(n_all + T), n_all + np.arange(T)
                else:  # kept tokens at 0..n-1 in stream order, the chunk after them
                    key_pos = np.zeros(n_all + T, dtype=np.int64)
                    key_pos[kept] = np.arange(len(kept))
                    key_pos[n_all:] = len(kept) + np.arange(T)
                    query_pos = len(kept) + np.arange(T)
                keys = apply_rope(K[:, j:j + 1], rotation(key_pos, c.inv_freq()))[:, 0]  # [n_all + T, D]
                for g in range(self.G):
                    head = j * self.G + g
                    query = apply_rope(q[:, head:head + 1], rotation(query_pos, c.inv_freq()))[:, 0]  # [T, D]
                    s = (query @ keys.T).astype(np.float64) / np.sqrt(D)  # [T, n_all + T]
                    s[~visible] = -np.inf
                    p = np.exp(s - s.max(axis=1, keepdims=True))
                    p /= p.sum(axis=1, keepdims=True)
                    out[:, head] = p @ V[:, j]
                    probs[head] = p
            x = x + linear(out.reshape(T, H * D), layer.o_proj, layer.o_bias)
            h = rms_norm(x, layer.post_attention_layernorm, c.rms_norm_eps)
            gate_up = linear(h, layer.gate_up_proj, layer.gate_up_bias)
            I = gate_up.shape[1] // 2
            x = x + linear(silu(gate_up[:, :I]) * gate_up[:, I:], layer.down_proj, layer.down_bias)
            attended.append(probs)
            self.k[li], self.v[li] = K, V
        logits = rms_norm(x, m.norm, c.rms_norm_eps) @ m.lm_head.T
        for li, probs in enumerate(attended):
            self._apply_rule(li, probs, n_all, T)
        self.seen += T
        return logits

    def _apply_rule(self, li: int, probs: np.ndarray, n_all: int, T: int):
        chunk = list(range(n_all, n_all + T))
        slots = self.budget - 1  # tokens kept between chunks
        for j in range(self.Hkv):
            candidates = sorted(self.kept[li][j]) + chunk
            heads = probs[j * self.G:(j + 1) * self.G]  # [G, T, n_all + T]
            score = self.score[li][j]
            if self.policy == "h2o":
                for t in candidates:  # every query of the chunk, every query head of this KV head
                    score[t] = score.get(t, 0.0) + float(heads[:, :, t].sum())
                keep = h2o_rule(candidates, score, self.heavy, self.budget - self.heavy) \
                    if len(candidates) > slots else set(candidates)
            elif self.policy == "tova":
                last = probs[:, -1].mean(axis=0)  # the chunk's last query, averaged over all H heads
                keep = top_rule(candidates, {t: last[t] for t in candidates}, min(slots, len(candidates)))
            else:  # snapkv: the prompt is compressed and pinned; after it, the oldest unpinned token goes first
                if n_all == 0:
                    pinned = list(range(T))
                    if T > self.capacity:
                        votes = snapkv_votes(heads[:, -self.w:], self.w, self.kernel)
                        order = sorted(range(T - self.w), key=lambda t: (-votes[t], t))  # best first, older first
                        pinned = order[:self.capacity - self.w] + list(range(T - self.w, T))
                    for t in pinned:
                        score[t] = np.inf
                    keep = set(pinned)
                else:
                    for t in chunk:
                        score[t] = float(t)
                    keep = top_rule(candidates, score, min(slots, len(candidates)))
            self.kept[li][j] = keep

    def retained(self) -> np.ndarray:
        """[layers, Hkv, n] sorted stream indices, as the fast caches' `retained()`."""
        return np.array([[sorted(s) for s in layer] for layer in self.kept])
