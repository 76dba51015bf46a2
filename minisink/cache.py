"""KV caches: the position policy. Which tokens a query may see, and at which positions, is decided here.

The model talks to every cache through the calls of the `Cache` protocol below (see `Llama.forward_chunk`):

    rotation = cache.begin(T)             once per chunk of T new tokens: their RoPE rotation (their positions)
    blocks = cache.blocks(layer, k, v)    per layer: the KVBlocks the T new queries attend over
    cache.observe(layer, probs)           per layer, only if cache.wants_attention: that layer's attention
    cache.end()                           once per chunk: commit; the chunk's tokens join the cache

`end()` is the only call that changes what a cache holds: an exception or Ctrl-C anywhere in a forward leaves it
as it was, and the next `begin` starts over.

Policies:
- FullCache: dense attention over everything so far, positions = positions in the text.
- SinkCache(n_sink=S, window=W): StreamingLLM (Xiao et al. 2024, Sec. 3.2). The first S tokens are pinned and the W
  most recent are kept in a ring buffer, so each token attends to exactly min(t + 1, S + W) tokens, itself included.
  Positions are assigned within the cache: the retained tokens, in stream order, have positions 0 .. n-1.
  S = 0 is plain window attention.
- RecomputeWindow(window=W): sliding window with re-computation, the paper's quality baseline: every token runs a
  fresh forward over the last W tokens (O(W^2) per token). It keeps token ids, not keys, and is no `Cache`: the
  model never sees it (see its docstring; minisink.evaluate.logits feeds a stream to either).

Every query of a chunk sees the cache as it was before the chunk plus the chunk itself, causally: that is what
makes any chunking of a stream give the same logits. The full cache stages a chunk's keys in its free slots,
past the tokens it holds, before the queries look, and `end()` counts them in; the ring buffer writes them into
the ring at `end()`, because the chunk's later tokens overwrite slots that its earlier queries still see (a lone
decode token goes straight into its slot, whose old token it cannot see: see SinkCache).

How the sink cache handles RoPE (docs/06-ring-buffer.md has the derivation). A RoPE score depends only on the
distance between the query's position and the key's. Within the cache, a window token's distance to the current
query is its age in the stream, whatever has been evicted: so every key is rotated once, at its position in the
stream, and never touched again, and the queries are rotated at their stream position too. Only the sinks move
relative to the query: sink j sits at cache position j while the query sits at cache position min(t, S + W - 1),
so for the sink block the queries are rotated back by the number of tokens evicted so far. No stored key is
ever re-rotated, and every score equals the one computed with explicit cache positions
(minisink/reference.py::ExplicitSinkCache does exactly that; tests/test_sink_cache.py checks they agree).
Decode (one query, ring full) does the same the other way round, which is faster: a working copy of the S sink
keys is rotated forward by the evicted count, always from the stored sinks, placed after the ring, and the ring
and the sinks become one block, every key visible: one matrix product, no mask.

Symbols: T new tokens, L keys in a block, Hkv key/value heads, D head width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .config import LlamaConfig
from .rope import Rotation, apply_rope, rotation

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


class Cache(Protocol):
    """What `Llama.forward_chunk` asks of a cache, once per chunk of T new tokens. Every call between `begin` and
    `end` may only stage the chunk: `end` is the only call that changes what the cache holds, so an exception (or
    Ctrl-C) anywhere in a forward leaves the cache exactly as it was before `begin`, and the next `begin` discards
    whatever was staged. FullCache and SinkCache below follow it; so does the explicit-positions
    oracle the tests compare the sink cache with.
    """

    wants_attention: bool  # True: the model calls `observe` with every layer's attention (eviction policies)

    def begin(self, T: int) -> Rotation:
        """Plan a chunk of T new tokens; return their RoPE rotation (their positions). Stages only."""

    def blocks(self, layer: int, k: np.ndarray, v: np.ndarray) -> list[KVBlock]:
        """The layer's new keys (rotated) and values [T, Hkv, D] -> the KVBlocks the T queries attend over, one
        softmax across all of them. May stage k and v; must not change what the cache holds."""

    def observe(self, layer: int, probs: np.ndarray) -> None:
        """Called only if `wants_attention`: the layer's attention probabilities [Hkv, G, T, sum of L], in the
        order of the blocks `blocks` returned. Stages only."""

    def end(self) -> None:
        """Commit the chunk: its tokens join the cache (and, for a bounded cache, others leave it)."""

    def retained(self) -> np.ndarray:
        """Stream indices (0 = first token fed) of the tokens the cache holds, in stream order."""


def causal_mask(query_pos: np.ndarray, key_pos: np.ndarray) -> np.ndarray:
    """[T, L] additive mask: query i may see key j iff key_pos[j] <= query_pos[i]."""
    return additive_mask(key_pos[None, :] <= query_pos[:, None])


def additive_mask(visible: np.ndarray) -> np.ndarray | None:
    """[T, L] bools -> [T, L] float32, 0 where visible and -inf where not; None (no mask to add) if all visible."""
    return None if visible.all() else np.where(visible, np.float32(0), MASKED).astype(np.float32)


def kv_bytes_per_token(config) -> int:
    """Bytes of keys and values one token adds to a full cache: layers * 2 (K and V) * Hkv * D * 4 (float32)."""
    return config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim * 4


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where there is no /proc)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(nbytes: int, what: str, fix: str):
    """Raise a CacheError before allocating `nbytes` for `what` if they exceed the available memory."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise CacheError(f"{what} needs {nbytes / 2**30:.2f} GiB of keys and values, but only "
                         f"{available / 2**30:.2f} GiB of memory is available: {fix}")


def keys_layout(k: np.ndarray) -> np.ndarray:
    """[T, Hkv, D] -> [Hkv, D, T], the layout stored in caches (a (heads, D, L) K makes q @ K fast)."""
    return k.transpose(1, 2, 0)


def values_layout(v: np.ndarray) -> np.ndarray:
    """[T, Hkv, D] -> [Hkv, T, D]."""
    return v.transpose(1, 0, 2)


class FullCache:
    """Dense attention: keeps every token; positions are the positions in the text (plus `position_offset`).

    Nothing is ever evicted, so the new keys can be written before the queries look, into the free slots past the
    `length` tokens held: one block, causal within the chunk. `end()` counts them in; until then they are only
    staged, so an interrupted chunk leaves `length` unchanged and the next chunk overwrites them. Storage grows by
    doubling, so appending a token is O(1) amortized.
    """

    wants_attention = False

    def __init__(self, config: LlamaConfig, position_offset: int = 0):
        self.n_layers, self.inv_freq = config.num_hidden_layers, config.inv_freq()
        self.position_offset = position_offset  # position of the first token (tests use 10**7 to show no drift)
        self.length = 0  # tokens held (committed)
        self.bytes_per_token = kv_bytes_per_token(config)
        shape = (self.n_layers, config.num_key_value_heads, config.head_dim)
        self.keys = np.zeros(shape + (16,), dtype=np.float32)  # [layers, Hkv, D, capacity]
        self.values = np.zeros(shape[:2] + (16, shape[2]), dtype=np.float32)  # [layers, Hkv, capacity, D]

    def begin(self, T: int):
        n = self.length
        if n + T > self.keys.shape[-1]:
            self._grow(2 * (n + T))  # more room: the same tokens held
        self.new = slice(n, n + T)  # the free slots the chunk is staged in
        positions = self.position_offset + np.arange(n + T)  # [n + T] every token's position in the text
        self.mask = causal_mask(positions[n:], positions)  # [T, n + T]; None for a lone query: it sees all
        return rotation(positions[n:], self.inv_freq)  # the new tokens' positions

    def blocks(self, layer: int, k: np.ndarray, v: np.ndarray) -> list[KVBlock]:
        """k (rotated), v [T, Hkv, D] -> one block: every token so far, the new ones included."""
        self.keys[layer, :, :, self.new] = keys_layout(k)  # staged in free slots: `length` does not count them yet
        self.values[layer, :, self.new] = values_layout(v)
        n = self.new.stop
        return [KVBlock(self.keys[layer, :, :, :n], self.values[layer, :, :n], self.mask)]

    def end(self):
        self.length = self.new.stop  # commit: the staged tokens are held

    def _grow(self, capacity: int):
        check_fits(capacity * self.bytes_per_token, f"a full cache of {capacity} tokens",
                   "feed fewer tokens, or use a sink cache: new_cache(n_sink=4, window=1020)")
        keys = np.zeros(self.keys.shape[:3] + (capacity,), dtype=np.float32)
        values = np.zeros(self.values.shape[:2] + (capacity, self.values.shape[3]), dtype=np.float32)
        keys[..., :self.length] = self.keys[..., :self.length]
        values[:, :, :self.length] = self.values[:, :, :self.length]
        self.keys, self.values = keys, values

    def retained(self) -> np.ndarray:
        """Stream indices (0 = first token fed) of the tokens held: all of them."""
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

    Storage is fixed at construction: keys [layers, Hkv, D, S + W + S], values [layers, Hkv, S + W + S, D]. Slots
    0..S-1 hold the sinks (written once, never moved); slots S..S+W-1 are the ring, overwritten in turn at `write`,
    which wraps. Evicting a token costs nothing: its slot is simply the next one written. The last S slots are a
    working copy of the sinks for decode (see `begin`): with them, the ring and the sinks are one block.

    renumber=True (the paper) gives positions within the cache; renumber=False keeps the positions of the
    original text for every token (an ablation: the gap between the sinks and the window then grows).

    A chunk is committed only at `end()`: before it, `blocks` writes nothing but new sinks, into sink slots no
    committed token holds yet (`slot_token` is -1 there until `end`), and a lone window token, into the ring slot
    it will take, whose old token no query can see any more. So an interrupted chunk changes no later logit and
    no `retained()`.
    """

    wants_attention = False

    def __init__(self, config: LlamaConfig, n_sink: int, window: int, renumber: bool = True,
                 position_offset: int = 0):
        if not isinstance(n_sink, (int, np.integer)) or isinstance(n_sink, bool) or n_sink < 0:
            raise CacheError(f"n_sink must be an integer >= 0 (0 means plain window attention), got {n_sink!r}")
        if not isinstance(window, (int, np.integer)) or isinstance(window, bool) or window < 1:
            raise CacheError(f"window must be an integer >= 1 (the current token is part of the window), "
                             f"got {window!r}")
        self.n_sink, self.window, self.renumber = int(n_sink), int(window), renumber
        check_fits((2 * self.n_sink + self.window) * kv_bytes_per_token(config),
                   f"a sink cache of {self.n_sink} + {self.window} slots", "use a smaller window")
        self.n_layers, self.inv_freq = config.num_hidden_layers, config.inv_freq()
        self.position_offset = position_offset  # position of the first token (tests use 10**7 to show no drift)
        self.seen = 0  # tokens fed so far
        self.write = 0  # next ring slot to overwrite, in 0..W-1
        slots = 2 * self.n_sink + self.window  # sinks, ring, the sinks' working copy
        self.keys = np.zeros((self.n_layers, config.num_key_value_heads, config.head_dim, slots), dtype=np.float32)
        self.values = np.zeros((self.n_layers, config.num_key_value_heads, slots, config.head_dim), dtype=np.float32)
        self.slot_token = np.full(self.n_sink + self.window, -1)  # stream index held by each slot, -1 while empty

    def begin(self, T: int):
        S, W = self.n_sink, self.window
        self.T = T
        self._pending = {}  # layer -> the chunk's window keys and values, written into the ring at `end`
        stream = self.seen + np.arange(T)  # [T] stream indices of the new tokens
        # Each query sits at cache position min(t, S + W - 1): t - evicted. Sink j is at cache position j, so the
        # sink block's queries are rotated back by the number of evicted tokens (their stream position is kept
        # for the window, whose distances to the query are stream distances).
        evicted = np.maximum(stream - (S + W - 1), 0) if self.renumber else np.zeros(T, dtype=int)
        self.sink_rotation = rotation(-evicted, self.inv_freq) if evicted.any() else None

        # The chunk's first new_sinks tokens become sinks (written at once: those slots are never reused), the
        # rest go to the window. The ring fills its slots in order, so the tokens it holds are in slots
        # S .. S + n_ring - 1: the ring block and its mask cover those, O(T x tokens held), however large W is.
        self.new_sinks = min(max(S - self.seen, 0), T)
        self.n_sinks = min(S, self.seen + T)
        self.n_ring = int((self.slot_token[S:] >= 0).sum())
        # A lone window token (decode) needs no block of its own: the ring slot it will take is empty, or holds
        # the oldest window token, W back, which neither it nor any later query can see. So `blocks` writes it
        # there at once, and the ring block covers it, every key visible: no mask, no copy at `end`.
        self.lone = S + self.write if T == 1 and not self.new_sinks else None
        if self.lone is not None:
            self.n_ring = max(self.n_ring, self.write + 1)
            self.sink_mask = self.ring_mask = self.new_mask = None
        else:
            self.sink_mask = causal_mask(stream, np.arange(self.n_sinks))  # [T, n_sinks]; None if all visible
            ring_token = self.slot_token[S:S + self.n_ring]  # [n_ring]
            self.ring_mask = additive_mask(stream[:, None] - ring_token[None, :] < W)  # [T, n_ring]
            new_tokens = stream[self.new_sinks:]  # [T_window]
            new_visible = (new_tokens[None, :] <= stream[:, None]) & (stream[:, None] - new_tokens[None, :] < W)
            self.new_mask = additive_mask(new_visible)  # [T, T_window]
        # Once the ring is full, a lone query's sinks need not be a block of their own either: rotating the S sink
        # keys forward by `evicted` gives the scores of rotating the query back (RoPE scores depend only on the
        # distance), so their working copy after the ring (slots S+W..) is rotated from the sinks, never from
        # itself, and the ring and sinks are one block, one matrix product.
        self.sinks_after_ring = self.lone is not None and S > 0 and self.n_ring == W
        if self.sinks_after_ring:
            # [S, layers, Hkv, D]; copied in storage order first, then transposed: gathering the transpose straight
            # from the cache touches each sink's 64-byte line S times (0.14 ms a step, against 0.04)
            sinks = self.keys[:, :, :, :S].copy().transpose(3, 0, 1, 2)
            ahead = apply_rope(sinks.reshape(1, -1, sinks.shape[-1]), rotation(evicted, self.inv_freq))
            self.keys[:, :, :, S + W:] = ahead.reshape(sinks.shape).transpose(1, 2, 3, 0)
        return rotation(self.position_offset + stream, self.inv_freq)  # every key at its position in the stream

    def blocks(self, layer: int, k: np.ndarray, v: np.ndarray) -> list[KVBlock]:
        """k (rotated), v [T, Hkv, D] -> [sinks, the ring as it was before the chunk, the chunk's window tokens]."""
        S, new = self.n_sink, self.new_sinks
        if new:  # new sinks go straight to their fixed slots, which no committed token holds yet
            sinks = slice(self.seen, self.seen + new)
            self.keys[layer, :, :, sinks] = keys_layout(k[:new])
            self.values[layer, :, sinks] = values_layout(v[:new])
            self.values[layer, :, S + self.window + sinks.start:S + self.window + sinks.stop] = values_layout(v[:new])
        k_win, v_win = k[new:], v[new:]  # [T_window, Hkv, D], views
        if self.lone is not None:  # straight into its ring slot: no block of its own, nothing left for `end`
            self.keys[layer, :, :, self.lone], self.values[layer, :, self.lone] = k_win[0], v_win[0]  # [Hkv, D]
            k_win = k_win[:0]
        else:
            self._pending[layer] = (k_win, v_win)  # written into the ring at `end`

        if self.sinks_after_ring:  # [the ring, the lone token in it; the sinks' working copy]: every key visible
            return [KVBlock(self.keys[layer, :, :, S:], self.values[layer, :, S:], None)]
        blocks = []
        if self.n_sinks:
            blocks.append(KVBlock(self.keys[layer, :, :, :self.n_sinks], self.values[layer, :, :self.n_sinks],
                                  self.sink_mask, self.sink_rotation))
        if self.n_ring:  # oldest first (slots S + write.., then S..): what a chunk's later queries no longer
            # see is then the start of the ring, which `attention` skips (see model.attention_in_tiles)
            split = self.write if self.n_ring == self.window else 0
            for a, b in ((S + split, S + self.n_ring), (S, S + split)):
                if b > a:
                    mask = None if self.ring_mask is None else self.ring_mask[:, a - S:b - S]
                    blocks.append(KVBlock(self.keys[layer, :, :, a:b], self.values[layer, :, a:b], mask))
        if len(k_win):
            blocks.append(KVBlock(keys_layout(k_win), values_layout(v_win), self.new_mask))
        return blocks

    def end(self):
        """Write the chunk's window tokens into the ring (the last min(W, n) of them, O(1) per token; a lone token
        is there already) and count them in."""
        S, W = self.n_sink, self.window
        tokens = np.arange(self.seen + self.new_sinks, self.seen + self.T)  # the chunk's window tokens
        kept = tokens[-W:]  # a chunk longer than W evicts inside itself
        slots = S + (self.write + np.arange(len(kept))) % W
        for layer, (k, v) in self._pending.items():
            self.keys[layer][:, :, slots] = keys_layout(k[-W:])
            self.values[layer][:, slots] = values_layout(v[-W:])
        self.slot_token[slots] = kept
        self.slot_token[self.seen:self.seen + self.new_sinks] = np.arange(self.seen, self.seen + self.new_sinks)
        self.write = (self.write + len(slots)) % W
        self.seen += self.T
        self._pending = {}

    def retained(self) -> np.ndarray:
        """Stream indices of the tokens held (the first S and the last W), in stream order."""
        held = self.slot_token[self.slot_token >= 0]
        return np.sort(held)

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(counters, arrays): what a session file stores (minisink/session.py); its size never grows. The S + W
        slots only: the sinks' working copy after them is derived from the sinks (see `from_state`)."""
        slots = self.n_sink + self.window
        return ({"n_sink": self.n_sink, "window": self.window, "renumber": self.renumber,
                 "position_offset": self.position_offset, "seen": self.seen, "write": self.write},
                {"keys": self.keys[..., :slots], "values": self.values[:, :, :slots], "slot_token": self.slot_token})

    @classmethod
    def from_state(cls, config: LlamaConfig, counters: dict, arrays: dict[str, np.ndarray]) -> "SinkCache":
        """The inverse of `state`. session.load checks every count, dtype and shape against the config first."""
        cache = cls(config, counters["n_sink"], counters["window"], counters["renumber"], counters["position_offset"])
        cache.seen, cache.write, cache.slot_token = counters["seen"], counters["write"], arrays["slot_token"]
        slots = cache.n_sink + cache.window
        cache.keys[..., :slots], cache.values[:, :, :slots] = arrays["keys"], arrays["values"]
        cache.values[:, :, slots:] = arrays["values"][:, :, :cache.n_sink]  # the working copy's values; decode's
        return cache                                                         # `begin` rotates its keys afresh


class RecomputeWindow:
    """Sliding window with re-computation (the paper's quality baseline, Fig. 1c): O(W^2) per token.

    For each new token it runs a fresh dense forward over the last W tokens (itself included; with n_sink > 0, the
    first n_sink tokens of the stream as well) and computes the logits of the last one only. So it keeps token ids,
    not keys: a retained token's keys and values are rebuilt every step from the truncated context. That is the
    difference with SinkCache, whose retained keys are the ones computed when each token still saw its own window:
    with more than one layer the two give different logits (the paper: perplexity 5.43 vs 5.40).

    It is not a `Cache`, and cannot be one: a query of the protocol sees keys computed once, by the forward that
    fed their token, while here every step recomputes every retained token's keys, at every layer, from a context
    that differs step to step: no per-layer `blocks` can give them. So it is a strategy beside the model that
    *uses* it, `logits(model, ids)`, and the model knows nothing of it; `minisink.evaluate.logits(model, ids, cache)`
    is the one call that feeds a stream to either. Like a cache, it commits the call's tokens only once all their
    forwards have run.
    """

    wants_attention = False

    def __init__(self, config: LlamaConfig, window: int, n_sink: int = 0):
        if not isinstance(window, (int, np.integer)) or isinstance(window, bool) or window < 1:
            raise CacheError(f"window must be an integer >= 1, got {window!r}")
        if not isinstance(n_sink, (int, np.integer)) or isinstance(n_sink, bool) or n_sink < 0:
            raise CacheError(f"n_sink must be an integer >= 0, got {n_sink!r}")
        self.config, self.window, self.n_sink = config, int(window), int(n_sink)
        check_fits((self.n_sink + self.window) * kv_bytes_per_token(config),
                   f"recomputing a window of {self.n_sink} + {self.window} tokens", "use a smaller window")
        self.sinks: list[int] = []  # the first n_sink token ids
        self.recent: list[int] = []  # the last W token ids
        self.seen = 0  # tokens fed so far

    def begin(self, T: int):
        raise CacheError("the recompute baseline is not a cache the model can attend over (see RecomputeWindow): "
                         "feed it with minisink.evaluate.logits(model, ids, cache) or cache.logits(model, ids)")

    def appended(self, sinks: list[int], recent: list[int], token: int) -> tuple[list[int], list[int]]:
        """The retained ids (sinks, recent) after one more token, as new lists (the old ones are left as they were)."""
        if len(sinks) < self.n_sink and not recent:
            return sinks + [int(token)], recent
        return sinks, (recent + [int(token)])[-self.window:]

    def remember(self, token: int) -> list[int]:
        """Append one token id to the retained ones, without a forward; return the retained ids."""
        self.sinks, self.recent = self.appended(self.sinks, self.recent, token)
        self.seen += 1
        return self.sinks + self.recent

    def logits(self, model, token_ids: np.ndarray) -> np.ndarray:
        """Logits [T, V]: one fresh dense forward over the retained tokens per new token. The retained ids are
        committed only after the last forward, so an interrupt leaves this as it was.

        Until the stream is longer than n_sink + W nothing is evicted: the retained tokens are the whole stream, and
        each of those tokens' fresh forwards is a prefix of one dense forward, which gives all their logits at once
        (the same numbers up to float32 rounding: attention is causal). That saves about W^2 / 2 token-forwards over
        the first n_sink + W tokens; the rest cost one forward each."""
        sinks, recent, logits = self.sinks, self.recent, []
        ramp = min(len(token_ids), max(self.n_sink + self.window - self.seen, 0))  # tokens before any eviction
        for token in token_ids[:ramp]:
            sinks, recent = self.appended(sinks, recent, token)
        if ramp:
            logits.append(model.forward(sinks + recent, FullCache(self.config), last=ramp))  # [ramp, V]
        for token in token_ids[ramp:]:
            sinks, recent = self.appended(sinks, recent, token)
            logits.append(model.forward(sinks + recent, FullCache(self.config), last=1))  # [1, V]
        self.sinks, self.recent, self.seen = sinks, recent, self.seen + len(token_ids)  # commit
        return np.concatenate(logits)  # [T, V]

    def retained(self) -> np.ndarray:
        """Stream indices of the retained tokens (the first n_sink and the last W), in stream order."""
        return np.concatenate([np.arange(len(self.sinks)), np.arange(self.seen - len(self.recent), self.seen)])
