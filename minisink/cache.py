"""KV caches: the position policy. Which tokens a query may see, and at which positions, is decided here.

The model talks to every cache through three calls (see `Llama.forward_chunk`):

    cache.begin(T)                        once per chunk of T new tokens: their positions and masks
    blocks = cache.blocks(layer, k, v)    per layer: the KVBlocks the T new queries attend over
    cache.end()                           once per chunk: the new tokens' keys and values join the cache

Keys enter the cache only at `end()`, so every query of a chunk sees the cache as it was before the chunk plus
the chunk itself (causally). That is what makes any chunking of a stream give the same logits.

Policies:
- FullCache: dense attention over everything so far, positions = positions in the text.
- SinkCache(n_sink=S, window=W): StreamingLLM (Xiao et al. 2024, Sec. 3.2). The first S tokens are pinned and the W
  most recent are kept in a ring buffer, so each token attends to exactly min(t + 1, S + W) tokens, itself included.
  Positions are assigned within the cache: the retained tokens, in stream order, have positions 0 .. n-1.
  S = 0 is plain window attention.
- RecomputeWindow(window=W): sliding window with re-computation, the paper's quality baseline: every token runs a
  fresh forward over the last W tokens (O(W^2) per token). It caches token ids, not keys (see its docstring).

How the sink cache handles RoPE (docs/05-ring-buffer.md has the derivation). A RoPE score depends only on the
distance between the query's position and the key's. Within the cache, a window token's distance to the current
query is its age in the stream, whatever has been evicted: so window keys are rotated once, at their stream
position, and never touched again, and the queries that look at them are rotated at their stream position too.
Only the sinks move relative to the query (sink j is at cache position j, the query at cache position
min(t, S + W - 1)), so for the sink block the query is rotated at its cache position instead. No key is ever
re-rotated, and every score equals the one computed with explicit cache positions (tests/test_sink_cache.py checks
this against a reference that does exactly that).

Symbols: T new tokens, L keys in a block, Hkv key/value heads, D head width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import LlamaConfig
from .rope import Rotation, apply_rope, rotation

MASKED = np.float32(-np.inf)  # additive mask value; every query always sees itself, so no row is all -inf


class CacheError(ValueError):
    """A cache was asked for something impossible (bad sizes, misuse)."""


@dataclass
class KVBlock:
    """A group of keys and values that a chunk's queries attend over, with the rotation for those queries."""

    keys: np.ndarray  # [Hkv, D, L]  RoPE-rotated keys, laid out so that q @ keys is a plain matrix product
    values: np.ndarray  # [Hkv, L, D]
    mask: np.ndarray | None  # [T, L] float32, 0 where query i may see key j, -inf where not; None: all visible
    query_rotation: Rotation  # rotate the T queries by this before scoring them against these keys


def causal_mask(query_pos: np.ndarray, key_pos: np.ndarray) -> np.ndarray:
    """[T, L] additive mask: query i may see key j iff key_pos[j] <= query_pos[i]."""
    return np.where(key_pos[None, :] <= query_pos[:, None], np.float32(0), MASKED).astype(np.float32)


def keys_layout(k: np.ndarray) -> np.ndarray:
    """[T, Hkv, D] -> [Hkv, D, T], the layout stored in caches (a (heads, D, L) K makes q @ K fast)."""
    return k.transpose(1, 2, 0)


def values_layout(v: np.ndarray) -> np.ndarray:
    """[T, Hkv, D] -> [Hkv, T, D]."""
    return v.transpose(1, 0, 2)


class FullCache:
    """Dense attention: keeps every token; positions are the positions in the text (plus `position_offset`).

    Storage grows by doubling, so appending a token is O(1) amortized.
    """

    def __init__(self, config: LlamaConfig, position_offset: int = 0):
        self.n_layers, self.inv_freq = config.num_hidden_layers, config.inv_freq()
        self.position_offset = position_offset  # position of the first token (tests use 10**7 to show no drift)
        self.length = 0  # tokens held
        shape = (self.n_layers, config.num_key_value_heads, config.head_dim)
        self.keys = np.zeros(shape + (16,), dtype=np.float32)  # [layers, Hkv, D, capacity]
        self.values = np.zeros(shape[:2] + (16, shape[2]), dtype=np.float32)  # [layers, Hkv, capacity, D]
        self._pending = {}

    def begin(self, T: int):
        self.T = T
        self.positions = self.position_offset + self.length + np.arange(T)  # [T] positions of the new tokens
        self.rotation = rotation(self.positions, self.inv_freq)
        self.new_mask = causal_mask(self.positions, self.positions) if T > 1 else None  # [T, T]

    def blocks(self, layer: int, k: np.ndarray, v: np.ndarray) -> list[KVBlock]:
        """k, v [T, Hkv, D] (k before RoPE) -> [everything stored, the new tokens]."""
        k = apply_rope(k, self.rotation)
        self._pending[layer] = (k, v)
        n = self.length
        stored = KVBlock(self.keys[layer, :, :, :n], self.values[layer, :, :n], None, self.rotation)
        new = KVBlock(keys_layout(k), values_layout(v), self.new_mask, self.rotation)
        return [stored, new] if n else [new]

    def end(self):
        n, T = self.length, self.T
        if n + T > self.keys.shape[-1]:
            self._grow(2 * (n + T))
        for layer, (k, v) in self._pending.items():
            self.keys[layer, :, :, n:n + T] = keys_layout(k)
            self.values[layer, :, n:n + T] = values_layout(v)
        self._pending.clear()
        self.length += T

    def _grow(self, capacity: int):
        keys = np.zeros(self.keys.shape[:3] + (capacity,), dtype=np.float32)
        values = np.zeros(self.values.shape[:2] + (capacity, self.values.shape[3]), dtype=np.float32)
        keys[..., :self.length] = self.keys[..., :self.length]
        values[:, :, :self.length] = self.values[:, :, :self.length]
        self.keys, self.values = keys, values

    def retained(self) -> np.ndarray:
        """Stream indices (0 = first token fed) of the tokens attended to by the next token."""
        return np.arange(self.length)


class SinkCache:
    """StreamingLLM's cache: S pinned sink tokens + a ring buffer of the W most recent tokens.

    Storage is fixed at construction: keys [layers, Hkv, D, S + W], values [layers, Hkv, S + W, D]. Slots 0..S-1
    hold the sinks (written once, never moved); slots S..S+W-1 are the ring, overwritten in turn at `write`, which
    wraps. Evicting a token costs nothing: its slot is simply the next one written.

    renumber=True (the paper) gives positions within the cache; renumber=False keeps the positions of the
    original text for every token (an ablation: the gap between the sinks and the window then grows).
    """

    def __init__(self, config: LlamaConfig, n_sink: int, window: int, renumber: bool = True,
                 position_offset: int = 0):
        if not isinstance(n_sink, (int, np.integer)) or isinstance(n_sink, bool) or n_sink < 0:
            raise CacheError(f"n_sink must be an integer >= 0 (0 means plain window attention), got {n_sink!r}")
        if not isinstance(window, (int, np.integer)) or isinstance(window, bool) or window < 1:
            raise CacheError(f"window must be an integer >= 1 (the current token is part of the window), "
                             f"got {window!r}")
        self.n_sink, self.window, self.renumber = int(n_sink), int(window), renumber
        self.n_layers, self.inv_freq = config.num_hidden_layers, config.inv_freq()
        self.position_offset = position_offset  # position of the first token (tests use 10**7 to show no drift)
        self.seen = 0  # tokens fed so far
        self.write = 0  # next ring slot to overwrite, in 0..W-1
        slots = self.n_sink + self.window
        self.keys = np.zeros((self.n_layers, config.num_key_value_heads, config.head_dim, slots), dtype=np.float32)
        self.values = np.zeros((self.n_layers, config.num_key_value_heads, slots, config.head_dim), dtype=np.float32)
        self.slot_token = np.full(slots, -1)  # stream index held by each slot, -1 while empty
        self._pending = {}

    def begin(self, T: int):
        S, W = self.n_sink, self.window
        self.T = T
        stream = self.seen + np.arange(T)  # [T] stream indices of the new tokens
        self.positions = self.position_offset + stream
        self.rotation = rotation(self.positions, self.inv_freq)  # keys (at their stream position), window queries
        # Where each query sits within the cache: after min(t, S + W - 1) retained tokens.
        in_cache = np.minimum(stream, S + W - 1) if self.renumber else stream
        self.sink_rotation = rotation(self.position_offset + in_cache, self.inv_freq)

        self.new_sinks = stream[stream < S]  # new tokens that become sinks: written at once (slots never reused)
        self.new_window = stream >= S  # [T] which new tokens go to the window
        n_sinks = min(S, self.seen + T)
        self.sink_mask = causal_mask(stream, np.arange(n_sinks))  # [T, n_sinks]
        ring_token = self.slot_token[S:]  # [W]
        ring_visible = (ring_token >= 0)[None, :] & (stream[:, None] - ring_token[None, :] < W)
        self.ring_mask = np.where(ring_visible, np.float32(0), MASKED).astype(np.float32)  # [T, W]
        new_tokens = stream[self.new_window]
        new_visible = (new_tokens[None, :] <= stream[:, None]) & (stream[:, None] - new_tokens[None, :] < W)
        self.new_mask = np.where(new_visible, np.float32(0), MASKED).astype(np.float32)  # [T, T_window]
        self.n_sinks, self.ring_filled = n_sinks, bool((ring_token >= 0).any())

    def blocks(self, layer: int, k: np.ndarray, v: np.ndarray) -> list[KVBlock]:
        """k, v [T, Hkv, D] (k before RoPE) -> [sinks, ring as it was before the chunk, new window tokens]."""
        S = self.n_sink
        k = apply_rope(k, self.rotation)
        for t in self.new_sinks:  # sinks go straight to their fixed slots: nothing else ever writes there
            i = t - self.seen
            self.keys[layer, :, :, t] = k[i]
            self.values[layer, :, t] = v[i]
        k_win, v_win = k[self.new_window], v[self.new_window]
        self._pending[layer] = (k_win, v_win)

        blocks = []
        if self.n_sinks:
            blocks.append(KVBlock(self.keys[layer, :, :, :self.n_sinks], self.values[layer, :, :self.n_sinks],
                                  self.sink_mask, self.sink_rotation))
        if self.ring_filled:
            blocks.append(KVBlock(self.keys[layer, :, :, S:], self.values[layer, :, S:], self.ring_mask,
                                  self.rotation))
        if len(k_win):
            blocks.append(KVBlock(keys_layout(k_win), values_layout(v_win), self.new_mask, self.rotation))
        return blocks

    def end(self):
        """Write the chunk's window tokens into the ring: the last min(W, n) of them, O(1) per token."""
        S, W = self.n_sink, self.window
        tokens = (self.seen + np.arange(self.T))[self.new_window]
        keep = slice(max(0, len(tokens) - W), len(tokens))
        slots = S + (self.write + np.arange(keep.stop - keep.start)) % W
        for layer, (k, v) in self._pending.items():
            self.keys[layer][:, :, slots] = keys_layout(k[keep])
            self.values[layer][:, slots] = values_layout(v[keep])
        self.slot_token[slots] = tokens[keep]
        self.slot_token[self.new_sinks] = self.new_sinks
        self.write = (self.write + len(slots)) % W
        self.seen += self.T
        self._pending.clear()

    def retained(self) -> np.ndarray:
        """Stream indices of the tokens held (the first S and the last W), in stream order."""
        held = self.slot_token[self.slot_token >= 0]
        return np.sort(held)


class RecomputeWindow:
    """Sliding window with re-computation (the paper's quality baseline, Fig. 1c): O(W^2) per token.

    For each new token it runs a fresh dense forward over the last W tokens (itself included; with n_sink > 0, the
    first n_sink tokens of the stream as well) and keeps only the last logits. So it caches token ids, not keys:
    a retained token's keys and values are rebuilt every step from the truncated context. That is the difference
    with SinkCache, whose retained keys are the ones computed when each token still saw its own window: with more
    than one layer the two give different logits (the paper: perplexity 5.43 vs 5.40).
    `Llama.forward` hands this cache the whole call (it cannot be split into per-layer blocks).
    """

    def __init__(self, config: LlamaConfig, window: int, n_sink: int = 0):
        if not isinstance(window, (int, np.integer)) or window < 1:
            raise CacheError(f"window must be an integer >= 1, got {window!r}")
        if not isinstance(n_sink, (int, np.integer)) or n_sink < 0:
            raise CacheError(f"n_sink must be an integer >= 0, got {n_sink!r}")
        self.config, self.window, self.n_sink = config, int(window), int(n_sink)
        self.sinks: list[int] = []  # the first n_sink token ids
        self.recent: list[int] = []  # the last W token ids

    def forward(self, model, token_ids: np.ndarray) -> np.ndarray:
        logits = []
        for token in token_ids:
            if len(self.sinks) < self.n_sink and not self.recent:
                self.sinks.append(int(token))
                context = self.sinks
            else:
                self.recent = (self.recent + [int(token)])[-self.window:]
                context = self.sinks + self.recent
            logits.append(model.forward(np.array(context), FullCache(self.config))[-1])
        return np.stack(logits)

    def retained(self) -> np.ndarray:
        return np.array(self.sinks + self.recent)
