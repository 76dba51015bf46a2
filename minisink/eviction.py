"""Caches that read attention to decide what to forget: H2O, TOVA, SnapKV (docs/09-other-ways-to-forget.md).

StreamingLLM's sink cache keeps tokens by *where* they are (the first S, the last W). These policies keep tokens by
how much attention they receive, so they ask the model for each layer's attention probabilities: they set
`wants_attention = True`, and `Llama.forward_chunk` then calls `cache.observe(layer, probs)` after each layer's
attention. Every other step is the ordinary cache protocol (cache.py): `begin(T)` plans the chunk, `blocks(layer,
k, v)` hands out what the queries attend over and stages the new keys, `end()` commits. Nothing changes what the
cache holds before `end()`, so an exception mid-forward leaves it as it was.

Policies (budget N = tokens a query attends to, itself included, as the sink cache's S + W):
- H2OCache (Zhang et al. 2023, "H2O: Heavy-Hitter Oracle"; FMInference/H2O
  `h2o_hf/utils_real_drop/modify_llama.py`, `H2OKVCache_LayerWise._update_hh_score` and `__call__`): every token
  accumulates the attention it receives, summed over queries; a cache keeps the `heavy` tokens with the largest
  totals plus the `recent` newest. Per layer and per KV head: each KV head keeps its own tokens.
- TOVACache (Oren et al. 2024, "Transformers are Multi-State RNNs"; schwartz-lab-NLP/TOVA `src/tova_cache.py`,
  `TOVACache.reduce`): when the cache is over budget, keep the tokens the *current* query attends to most,
  its probabilities averaged over all heads of the layer. One decision per layer: every KV head keeps the same
  tokens.
- SnapKVCache (Li et al. 2024, "SnapKV"; FasterDecoding/SnapKV `snapkv/monkeypatch/snapkv_utils.py`,
  `SnapKVCluster.update_kv`): the prompt (the first chunk) is compressed once: its last `w` queries vote for the
  earlier keys, the votes are smoothed along the keys (a max-pool of width `kernel`), and each KV head keeps its
  `capacity - w` best plus the last `w`. Decoding then works like a sink cache whose "sinks" are the compressed
  prompt: it is pinned, and a ring of the `window` most recent tokens follows it.

Pooling the G query heads of a KV head (SmolLM2 has 9 query heads over 3 KV heads; the originals ran on models
without GQA): the keys belong to the KV head, so H2O and SnapKV pool their G query heads' probabilities by summing
them (the same ranking as their mean). TOVA averages over all H query heads, as its `reduce` does.

Positions. The originals cache keys after RoPE, so a kept token keeps its position in the text (`positions="text"`,
the default): nothing is ever re-rotated, and a query at stream position t sees kept keys at their text positions.
H2O's repository also has a "position rolling" variant (`H2OLlamaAttention_streaming`), which gives the kept tokens
positions within the cache, as StreamingLLM does (`positions="cache"`): the kept tokens of a KV head, in stream
order, are at 0 .. n-1 and the new queries at n, n+1, ... . Which tokens are kept differs between KV heads, so
there is no single shift that serves all of them: this cache stores keys *before* RoPE and rotates them to their
rank at every step (a cost of about one more pass over the cached keys per step). Text positions past the model's
pre-training length (8,192 for SmolLM2) are out of distribution; cache positions never pass the budget.

Chunks. The policies decide per token; a chunk of T > 1 tokens is treated as the originals treat a prompt: all T
queries see the kept tokens and the chunk causally (so inside a chunk a query may see more than N tokens), and the
decision is made once, at `end()`: H2O sums the chunk's T queries into the totals, TOVA looks at the chunk's last
query. Feeding a stream token by token and in chunks therefore keeps different tokens: the two are not the same
computation (unlike the sink cache), and perplexity is measured token by token (`minisink ppl` forces chunk 1).
minisink/reference.py has the plain versions the tests compare against, for any chunking.

What these caches do not do: batch, save and load, or sink logits beyond what `attention` applies.

Symbols: T new tokens, C = N - 1 slots (kept tokens between chunks), n tokens held now (<= C), Hkv KV heads,
G query heads per KV head, D head width.
"""

from __future__ import annotations

import numpy as np

from .cache import CacheError, KVBlock, causal_mask, keys_layout, values_layout
from .config import LlamaConfig
from .rope import apply_rope, rotation

POSITIONS = ("text", "cache")


def _check_int(name: str, value, low: int, hint: str = "") -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise CacheError(f"{name} must be an integer >= {low}{hint}, got {value!r}")
    return int(value)


class ScoredCache:
    """What H2O, TOVA and SnapKV share: C = budget - 1 slots per layer and KV head, fixed at construction, a
    score per slot, and a commit that keeps the best of (held + chunk), C of them once full. Subclasses say how a
    token is scored (`new_scores`), which tokens are never evicted (`protected`) and how many stay
    (`keep_count`).

    Storage: keys [layers, Hkv, D, C], values [layers, Hkv, C, D], slot_token [layers, Hkv, C] (the stream index
    in each slot, -1 while empty), score [layers, Hkv, C] float64. Slots 0..n-1 are filled, the rest empty (the
    cache fills in order, and once full every eviction frees exactly the slots the chunk refills).
    """

    wants_attention = True  # Llama.forward_chunk hands this cache each layer's attention probabilities

    def __init__(self, config: LlamaConfig, budget: int, positions: str = "text"):
        self.budget = _check_int("budget", budget, 1, " (the tokens a query attends to, itself included)")
        if positions not in POSITIONS:
            raise CacheError(f"positions must be 'text' (kept tokens keep their positions in the text) or 'cache' "
                             f"(positions within the cache), got {positions!r}")
        self.positions = positions
        C, L, Hkv, D = self.budget - 1, config.num_hidden_layers, config.num_key_value_heads, config.head_dim
        self.capacity, self.inv_freq = C, config.inv_freq()
        self.keys = np.zeros((L, Hkv, D, C), dtype=np.float32)  # rotated at text positions, or not at all ("cache")
        self.values = np.zeros((L, Hkv, C, D), dtype=np.float32)
        self.slot_token = np.full((L, Hkv, C), -1, dtype=np.int64)
        self.score = np.zeros((L, Hkv, C))
        self.held = 0  # n: tokens held per (layer, KV head), the same for all
        self.seen = 0  # tokens committed so far
        if positions == "cache":  # cos and sin at every rank a held key can have, [C, D] each (as rope.Rotation)
            table = rotation(np.arange(C), self.inv_freq)
            self.rank_cos, self.rank_sin = table.cos[:, 0], table.sin[:, 0]
            self.rank = np.zeros((L, Hkv, C), dtype=np.int64)  # each held key's position within the cache
        self._staged, self._probs = {}, {}

    # --- the protocol -------------------------------------------------------------------------------------------

    def begin(self, T: int):
        self._staged.clear()  # whatever an interrupted forward left behind
        self._probs.clear()
        self.T = T
        self.chunk_mask = causal_mask(np.arange(T), np.arange(T))  # [T, T], None for a lone query
        first = self.seen if self.positions == "text" else self.held  # the chunk follows the held tokens
        self.chunk_rotation = rotation(first + np.arange(T), self.inv_freq)
        return self.chunk_rotation

    def blocks(self, layer: int, k: np.ndarray, v: np.ndarray) -> list[KVBlock]:
        """k (rotated), v [T, Hkv, D] -> [the held tokens, the chunk (causal)]. Stages k and v for `end`."""
        self._staged[layer] = (k, v)
        n, blocks = self.held, []
        if n:
            keys = self.keys[layer, :, :, :n]  # [Hkv, D, n]
            if self.positions == "cache":
                keys = self._rotate_to_rank(keys, self.rank[layer, :, :n])
            blocks.append(KVBlock(keys, self.values[layer, :, :n], None))  # every held token is older: all visible
        blocks.append(KVBlock(keys_layout(k), values_layout(v), self.chunk_mask))
        return blocks

    def observe(self, layer: int, probs: np.ndarray):
        """probs [Hkv, G, T, n + T]: this layer's attention over [held, chunk], staged for `end`."""
        assert probs.shape[2:] == (self.T, self.held + self.T), f"{probs.shape} vs T={self.T}, n={self.held}"
        self._probs[layer] = probs

    def end(self):
        """Score held + chunk, keep the C best per (layer, KV head), write the kept chunk tokens into the freed
        slots. Every decision is made, for all layers at once, before anything is written."""
        n, T, L = self.held, self.T, len(self.keys)
        if len(self._staged) != L or (self.wants_attention and len(self._probs) != L):
            raise CacheError(f"{type(self).__name__} needs every layer's attention probabilities: the model must "
                             "call cache.observe(layer, probs) when cache.wants_attention is set")
        n_after = self.keep_count(n, T)
        chunk_tokens = self.seen + np.arange(T)
        held = self.slot_token[:, :, :n]  # [L, Hkv, n]
        stream = np.concatenate([held, np.broadcast_to(chunk_tokens, held.shape[:2] + (T,))], axis=-1)  # [L, Hkv, n+T]
        probs = np.stack([self._probs[layer] for layer in range(L)]) if self._probs else None  # [L, Hkv, G, T, n+T]
        scores = self.new_scores(probs)  # [L, Hkv, n + T] float64
        keep = np.ones(stream.shape, dtype=bool)
        evict = n + T - n_after  # per (layer, KV head)
        if evict:
            ranked = np.where(self.protected(stream), np.inf, scores)
            if evict == 1:  # decode: the lowest score goes; among equal lowest scores, the oldest (O(n), no sort)
                lowest = ranked == ranked.min(axis=-1, keepdims=True)
                worst = np.where(lowest, stream, np.iinfo(np.int64).max).argmin(axis=-1)[..., None]  # [L, Hkv, 1]
            else:
                worst = np.lexsort((stream, ranked), axis=-1)[..., :evict]  # lowest score first; ties: older first
            np.put_along_axis(keep, worst, False, axis=-1)

        k = np.stack([self._staged[layer][0] for layer in range(L)])  # [L, T, Hkv, D]
        v = np.stack([self._staged[layer][1] for layer in range(L)])
        if self.positions == "cache":  # store keys before RoPE: undo the rotation at their chunk position
            k = apply_rope(k.reshape(L * T, -1, k.shape[-1]), rotation(np.tile(-(n + np.arange(T)), L),
                                                                       self.inv_freq)).reshape(k.shape)
        self.score[:, :, :n] = scores[:, :, :n]  # the held tokens' updated scores (evicted slots: overwritten)
        # Free slots: evicted held ones, then empty ones up to n_after. Each (layer, KV head) frees as many slots as
        # it keeps chunk tokens, so the two lists of (layer, head, index), both in row order, pair up one to one.
        free = np.concatenate([~keep[:, :, :n], np.ones(keep.shape[:2] + (n_after - n,), dtype=bool)], axis=-1)
        layers, heads, slots = np.nonzero(free)
        layers_c, heads_c, idx = np.nonzero(keep[:, :, n:])
        assert np.array_equal(layers, layers_c) and np.array_equal(heads, heads_c), "slots and tokens must pair up"
        self.keys[layers, heads, :, slots] = k[layers, idx, heads]  # [m, D]
        self.values[layers, heads, slots] = v[layers, idx, heads]
        self.slot_token[layers, heads, slots] = chunk_tokens[idx]
        self.score[layers, heads, slots] = scores[layers, heads, n + idx]
        self.held, self.seen = n_after, self.seen + T
        if self.positions == "cache":  # rank of each held token among its KV head's held tokens, in stream order
            self.rank[:, :, :n_after] = np.argsort(np.argsort(self.slot_token[:, :, :n_after], axis=-1), axis=-1)
        self._staged.clear()
        self._probs.clear()

    # --- the policy ---------------------------------------------------------------------------------------------

    def keep_count(self, n: int, T: int) -> int:
        """How many of the n held + T new tokens stay: all of them, up to the C slots."""
        return min(self.capacity, n + T)

    def new_scores(self, probs: np.ndarray | None) -> np.ndarray:
        """Every layer's probabilities [L, Hkv, G, T, n + T] (None if not asked for) -> [L, Hkv, n + T] float64
        scores of the held and the chunk tokens."""
        raise NotImplementedError

    def protected(self, stream: np.ndarray) -> np.ndarray:
        """[L, Hkv, n + T] stream indices -> bools: candidates that are never evicted."""
        return np.zeros(stream.shape, dtype=bool)

    # --- helpers ------------------------------------------------------------------------------------------------

    def _rotate_to_rank(self, keys: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """Unrotated keys [Hkv, D, n] -> rotated at their ranks [Hkv, n]: x * cos + (x with halves swapped) * sin."""
        Hkv, D, n = keys.shape
        cos = self.rank_cos[rank].transpose(0, 2, 1)  # [Hkv, D, n]
        sin = self.rank_sin[rank].transpose(0, 2, 1)
        swapped = keys.reshape(Hkv, 2, D // 2, n)[:, ::-1].reshape(Hkv, D, n)  # [x2, x1]
        return keys * cos + swapped * sin

    def retained(self) -> np.ndarray:
        """Stream indices of the held tokens, [layers, Hkv, n], sorted along the last axis (each KV head of each
        layer keeps its own)."""
        return np.sort(self.slot_token[:, :, :self.held], axis=-1)


class H2OCache(ScoredCache):
    """H2O: keep the `heavy` tokens that received the most attention so far, plus the `recent` newest.

    score(j) = sum over the queries that saw j (every chunk since j arrived) and over the G query heads of the KV
    head of p(query -> j). Budget N = heavy + recent; `recent` counts the current token, as the sink cache's window
    does, so between chunks the cache holds the heavy hitters and the recent - 1 newest. A heavy hitter is chosen
    among the candidates older than those (H2O's `select_hh_scores = hh_score[:, :seq_len - recent_size]`).
    heavy = 0 is window attention (with text positions).
    """

    def __init__(self, config: LlamaConfig, budget: int, heavy: int | None = None, positions: str = "text"):
        super().__init__(config, budget, positions)
        heavy = self.budget // 2 if heavy is None else heavy
        self.heavy = _check_int("heavy", heavy, 0)
        if self.heavy > self.budget - 1:
            raise CacheError(f"heavy must be at most budget - 1 = {self.budget - 1} (the current token takes one "
                             f"place of the budget), got heavy={heavy} with budget={self.budget}")
        self.recent = self.budget - self.heavy

    def new_scores(self, probs):
        received = probs.sum(axis=(2, 3), dtype=np.float64)  # [L, Hkv, n + T]: over the G heads and the T queries
        received[:, :, :self.held] += self.score[:, :, :self.held]
        return received

    def protected(self, stream):
        r = self.recent - 1  # the newest r candidates of each KV head
        if r == 0:
            return np.zeros(stream.shape, dtype=bool)
        threshold = np.partition(stream, -r, axis=-1)[..., -r, None]  # [L, Hkv, 1] the r-th newest stream index
        return stream >= threshold


class TOVACache(ScoredCache):
    """TOVA: over budget, drop the tokens the current query attends to least, averaged over the layer's H heads.

    score(j) = mean over the H query heads of p(last query of the chunk -> j); one ranking per layer, so every KV
    head keeps the same tokens. Nothing is protected: even the current token can go (as in TOVA's `reduce`).
    """

    def new_scores(self, probs):
        last = probs[:, :, :, -1, :].mean(axis=(1, 2), dtype=np.float64)  # [L, n + T]: the last query, all H heads
        return np.repeat(last[:, None], probs.shape[1], axis=1)  # [L, Hkv, n + T]: the same for every KV head


class SnapKVCache(ScoredCache):
    """SnapKV: compress the prompt once, pin it, then keep a window of the most recent tokens beside it.

    The first chunk fed is the prompt (P tokens). If P > capacity, its last w queries vote for its earlier keys:
    vote(j) = sum over those w queries and the G query heads of a KV head of p(query -> j), averaged along the
    keys over `kernel` neighbours (SnapKV's default `avgpool`, so the neighbours of a chosen token tend to be
    chosen too). Each KV head keeps its `capacity - w` best-voted tokens among the first P - w, plus the last w.
    A prompt of at most `capacity` tokens is kept whole. The kept prompt is then pinned (like sinks) and the
    tokens after it go through a window of the `window` most recent, the current one included, so a token attends
    to at most capacity + window tokens. Keys keep their text positions by default, as in the original (which
    caches keys after RoPE and never re-rotates them).

    In ScoredCache's terms: the budget is capacity + window, a pinned token scores +inf, any other token its
    stream index (the oldest goes first). Attention probabilities are needed for the prompt only.
    """

    def __init__(self, config: LlamaConfig, capacity: int, window: int, w: int = 32, kernel: int = 5,
                 positions: str = "text"):
        self.w = _check_int("w (the observation window)", w, 1)
        self.prompt_capacity = _check_int("capacity", capacity, self.w,
                                          f" (w = {self.w} of it is the observation window)")
        self.kernel = _check_int("kernel", kernel, 1)
        if self.kernel % 2 == 0:
            raise CacheError(f"kernel must be odd (the votes are averaged around each key), got {kernel}")
        self.window = _check_int("window", window, 1, " (the current token is part of the window)")
        super().__init__(config, self.prompt_capacity + self.window, positions)

    def keep_count(self, n, T):
        compress = self.seen == 0 and T > self.prompt_capacity
        return self.prompt_capacity if compress else super().keep_count(n, T)

    def new_scores(self, probs):
        n, T, (L, Hkv) = self.held, self.T, self.keys.shape[:2]
        scores = np.concatenate([self.score[:, :, :n],
                                 np.broadcast_to(self.seen + np.arange(T, dtype=float), (L, Hkv, T))], axis=-1)
        if self.seen == 0:  # the prompt: what is kept of it is pinned
            scores[:] = -np.inf
            for layer in range(L):
                kept = snapkv_select(probs[layer, :, :, -self.w:], self.prompt_capacity, self.w, self.kernel) \
                    if T > self.prompt_capacity else np.broadcast_to(np.arange(T), (Hkv, T))
                np.put_along_axis(scores[layer], kept, np.inf, axis=-1)
        return scores

    def end(self):
        super().end()
        self.wants_attention = False  # after the prompt, a window beside a pinned block: no probabilities needed


def snapkv_select(votes: np.ndarray, capacity: int, w: int, kernel: int) -> np.ndarray:
    """The prompt tokens SnapKV keeps, per KV head: probs [Hkv, G, w, P] of the last w queries -> [Hkv, capacity]
    token indices, ascending: the capacity - w best-voted of the first P - w (votes averaged over `kernel`
    neighbours) and the last w."""
    Hkv, G, _, P = votes.shape
    vote = votes.sum(axis=(1, 2), dtype=np.float64)[:, :P - w]  # [Hkv, P - w]
    half = kernel // 2
    padded = np.pad(vote, ((0, 0), (half, half)))  # zeros, counted in the mean (torch's avg_pool1d default)
    pooled = np.lib.stride_tricks.sliding_window_view(padded, kernel, axis=-1).mean(axis=-1)  # [Hkv, P - w]
    order = np.lexsort((np.broadcast_to(np.arange(P - w), (Hkv, P - w)), -pooled), axis=-1)  # best first; ties: older
    best = np.sort(order[:, :capacity - w], axis=-1)
    return np.concatenate([best, np.broadcast_to(np.arange(P - w, P), (Hkv, w))], axis=1)
