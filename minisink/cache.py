"""KV caches: the position policy. Which tokens a query may see, and at which positions, is decided here.

The model talks to every cache through three calls (see `Llama.forward_chunk`):

    rotation = cache.begin(T)             once per chunk of T new tokens: the RoPE rotation at which the model
                                          rotates their queries and keys (their positions), and the masks
    blocks = cache.blocks(layer, k, v)    per layer: the KVBlocks the T new queries attend over
    cache.end()                           once per chunk: the chunk's tokens have joined the cache

Policies:
- FullCache: dense attention over everything so far, positions = positions in the text.
- SinkCache(n_sink=S, window=W): StreamingLLM (Xiao et al. 2024, Sec. 3.2). The first S tokens are pinned and the W
  most recent are kept in a ring buffer, so each token attends to exactly min(t + 1, S + W) tokens, itself included.
  Positions are assigned within the cache: the retained tokens, in stream order, have positions 0 .. n-1.
  S = 0 is plain window attention.
- RecomputeWindow(window=W): sliding window with re-computation, the paper's quality baseline: every token runs a
  fresh forward over the last W tokens (O(W^2) per token). It caches token ids, not keys (see its docstring).

Every query of a chunk sees the cache as it was before the chunk plus the chunk itself, causally: that is what
makes any chunking of a stream give the same logits. The full cache can store a chunk's keys before its queries
look (nothing is evicted); the ring buffer stores them at `end()`, because the chunk's later tokens overwrite slots
that its earlier queries still see.

How the sink cache handles RoPE (docs/05-ring-buffer.md has the derivation). A RoPE score depends only on the
distance between the query's position and the key's. Within the cache, a window token's distance to the current
query is its age in the stream, whatever has been evicted: so every key is rotated once, at its position in the
stream, and never touched again, and the queries are rotated at their stream position too. Only the sinks move
relative to the query: sink j sits at cache position j while the query sits at cache position min(t, S + W - 1),
so for the sink block the queries are rotated back by the number of tokens evicted so far. No key is ever
re-rotated, and every score equals the one computed with explicit cache positions
(minisink/assignments.py::ExplicitSinkCache does exactly that; tests/test_sink_cache.py checks they agree).

Symbols: T new tokens, L keys in a block, Hkv key/value heads, D head width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import LlamaConfig
from .rope import Rotation, rotation

MASKED = np.float32(-np.inf)  # additive mask value; every query always sees itself, so no row is all -inf


class CacheError(ValueError):
    """A cache was asked for something impossible (bad sizes, misuse)."""


@dataclass
class KVBlock:
    """A group of keys and values that a chunk's queries attend over (one softmax spans all of a chunk's blocks)."""

    keys: np.ndarray  # [Hkv, D, L]  RoPE-rotated keys, laid out so that q @ keys is a plain matrix product
    values: np.ndarray  # [Hkv, L, D]
    mask: np.ndarray | None  # [T, L] float32, 0 where query i may see key j, -inf where not; None: all visible
    query_rotation: Rotation | None = None  # if set, rotate the T queries further by this for these keys


def causal_mask(query_pos: np.ndarray, key_pos: np.ndarray) -> np.ndarray:
    """[T, L] additive mask: query i may see key j iff key_pos[j] <= query_pos[i]."""
    return additive_mask(key_pos[None, :] <= query_pos[:, None])


def additive_mask(visible: np.ndarray) -> np.ndarray | None:
    """[T, L] bools -> [T, L] float32, 0 where visible and -inf where not; None (no mask to add) if all visible."""
    return None if visible.all() else np.where(visible, np.float32(0), MASKED).astype(np.float32)


def keys_layout(k: np.ndarray) -> np.ndarray:
    """[T, Hkv, D] -> [Hkv, D, T], the layout stored in caches (a (heads, D, L) K makes q @ K fast)."""
    return k.transpose(1, 2, 0)


def values_layout(v: np.ndarray) -> np.ndarray:
    """[T, Hkv, D] -> [Hkv, T, D]."""
    return v.transpose(1, 0, 2)


class FullCache:
    """Dense attention: keeps every token; positions are the positions in the text (plus `position_offset`).

    Nothing is ever evicted, so the new keys can be written before the queries look: one block, causal within the
    chunk. Storage grows by doubling, so appending a token is O(1) amortized.
    """

    def __init__(self, config: LlamaConfig, position_offset: int = 0):
        self.n_layers, self.inv_freq = config.num_hidden_layers, config.inv_freq()
        self.position_offset = position_offset  # position of the first token (tests use 10**7 to show no drift)
        self.length = 0  # tokens held, including the chunk being fed
        shape = (self.n_layers, config.num_key_value_heads, config.head_dim)
        self.keys = np.zeros(shape + (16,), dtype=np.float32)  # [layers, Hkv, D, capacity]
        self.values = np.zeros(shape[:2] + (16, shape[2]), dtype=np.float32)  # [layers, Hkv, capacity, D]

    def begin(self, T: int):
        n = self.length
        if n + T > self.keys.shape[-1]:
            self._grow(2 * (n + T))
        self.new = slice(n, n + T)
        self.length = n + T
        positions = self.position_offset + np.arange(n + T)  # [n + T] every token's position in the text
        self.mask = causal_mask(positions[n:], positions)  # [T, n + T]; None for a lone query: it sees all
        return rotation(positions[n:], self.inv_freq)  # the new tokens' positions

    def blocks(self, layer: int, k: np.ndarray, v: np.ndarray) -> list[KVBlock]:
        """k (rotated), v [T, Hkv, D] -> one block: every token so far, the new ones included."""
        self.keys[layer, :, :, self.new] = keys_layout(k)
        self.values[layer, :, self.new] = values_layout(v)
        n = self.length
        return [KVBlock(self.keys[layer, :, :, :n], self.values[layer, :, :n], self.mask)]

    def end(self):
        pass  # the new tokens were stored as they came

    def _grow(self, capacity: int):
        keys = np.zeros(self.keys.shape[:3] + (capacity,), dtype=np.float32)
        values = np.zeros(self.values.shape[:2] + (capacity, self.values.shape[3]), dtype=np.float32)
        keys[..., :self.length] = self.keys[..., :self.length]
        values[:, :, :self.length] = self.values[:, :, :self.length]
        self.keys, self.values = keys, values

    def retained(self) -> np.ndarray:
        """Stream indices (0 = first token fed) of the tokens attended to by the next token."""
        return np.arange(self.length)

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(counters, arrays): what a session file stores (minisink/session.py), the tokens held and no spare room."""
        n = self.length
        return ({"length": n, "position_offset": self.position_offset},
                {"keys": self.keys[..., :n], "values": self.values[:, :, :n]})

    @classmethod
    def from_state(cls, config: LlamaConfig, counters: dict, arrays: dict[str, np.ndarray]) -> "FullCache":
        """The inverse of `state`. session.load checks every count, dtype and shape against the config first."""
        cache = cls(config, counters["position_offset"])
        cache.keys, cache.values, cache.length = arrays["keys"], arrays["values"], counters["length"]
        return cache


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
        # Each query sits at cache position min(t, S + W - 1): t - evicted. Sink j is at cache position j, so the
        # sink block's queries are rotated back by the number of evicted tokens (their stream position is kept
        # for the window, whose distances to the query are stream distances).
        evicted = np.maximum(stream - (S + W - 1), 0) if self.renumber else np.zeros(T, dtype=int)
        self.sink_rotation = rotation(-evicted, self.inv_freq) if evicted.any() else None

        self.new_sinks = stream[stream < S]  # new tokens that become sinks: written at once (slots never reused)
        self.new_window = stream >= S  # [T] which new tokens go to the window
        n_sinks = min(S, self.seen + T)
        self.sink_mask = causal_mask(stream, np.arange(n_sinks))  # [T, n_sinks]
        ring_token = self.slot_token[S:]  # [W]
        ring_visible = (ring_token >= 0)[None, :] & (stream[:, None] - ring_token[None, :] < W)
        self.ring_mask = additive_mask(ring_visible)  # [T, W]
        new_tokens = stream[self.new_window]
        new_visible = (new_tokens[None, :] <= stream[:, None]) & (stream[:, None] - new_tokens[None, :] < W)
        self.new_mask = additive_mask(new_visible)  # [T, T_window]
        self.n_sinks, self.ring_filled = n_sinks, bool((ring_token >= 0).any())
        return rotation(self.position_offset + stream, self.inv_freq)  # every key at its position in the stream

    def blocks(self, layer: int, k: np.ndarray, v: np.ndarray) -> list[KVBlock]:
        """k (rotated), v [T, Hkv, D] -> [sinks, the ring as it was before the chunk, the chunk's window tokens]."""
        S = self.n_sink
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
            blocks.append(KVBlock(self.keys[layer, :, :, S:], self.values[layer, :, S:], self.ring_mask))
        if len(k_win):
            blocks.append(KVBlock(keys_layout(k_win), values_layout(v_win), self.new_mask))
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

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(counters, arrays): what a session file stores (minisink/session.py); its size never grows."""
        return ({"n_sink": self.n_sink, "window": self.window, "renumber": self.renumber,
                 "position_offset": self.position_offset, "seen": self.seen, "write": self.write},
                {"keys": self.keys, "values": self.values, "slot_token": self.slot_token})

    @classmethod
    def from_state(cls, config: LlamaConfig, counters: dict, arrays: dict[str, np.ndarray]) -> "SinkCache":
        """The inverse of `state`. session.load checks every count, dtype and shape against the config first."""
        cache = cls(config, counters["n_sink"], counters["window"], counters["renumber"], counters["position_offset"])
        cache.seen, cache.write = counters["seen"], counters["write"]
        cache.keys, cache.values, cache.slot_token = arrays["keys"], arrays["values"], arrays["slot_token"]
        return cache


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
        self.seen = 0  # tokens fed so far

    def remember(self, token: int) -> list[int]:
        """Append one token id to the retained ones; return the context its logits are computed from."""
        self.seen += 1
        if len(self.sinks) < self.n_sink and not self.recent:
            self.sinks.append(int(token))
        else:
            self.recent = (self.recent + [int(token)])[-self.window:]
        return self.sinks + self.recent

    def forward(self, model, token_ids: np.ndarray) -> np.ndarray:
        """Logits [T, V]: one fresh dense forward over the retained tokens per new token."""
        return np.stack([model.forward(np.array(self.remember(t)), FullCache(self.config))[-1] for t in token_ids])

    def retained(self) -> np.ndarray:
        """Stream indices of the retained tokens (the first n_sink and the last W), in stream order."""
        return np.concatenate([np.arange(len(self.sinks)), np.arange(self.seen - len(self.recent), self.seen)])
