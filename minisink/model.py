"""The Llama forward pass in NumPy, float32: token ids + a cache -> logits.

What it does: embedding, then per decoder layer RMSNorm -> grouped-query attention with RoPE -> residual ->
RMSNorm -> SwiGLU MLP -> residual, then a final RMSNorm and the LM head (Touvron et al. 2023; the same computation
as transformers' `LlamaForCausalLM`, which the tests compare against). Prefill (many tokens) and decode (one) are
the same code: `forward` takes any number of new tokens and a cache, and returns their logits.
What it does not: batching, quantized weights, training. Which keys a query sees, and at which positions, is not
decided here but by the cache (cache.py): the model asks it, per layer, for the blocks of keys and values to attend
over.

Symbols in shape comments: T new tokens, L keys in a block, H query heads, Hkv key/value heads, G = H // Hkv query
heads per KV head, D head width, d_model hidden size, I MLP width, V vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from itertools import accumulate
from pathlib import Path

import numpy as np

from .cache import Cache, CacheError, FullCache, KVBlock, RecomputeWindow, SinkCache
from .config import LlamaConfig
from .eviction import new_eviction_cache
from .rope import Rotation, apply_rope
from .weights import checking_finite, load_weights

# Long inputs are fed in chunks of this many tokens, so score matrices stay small. Each query of a chunk sees the
# cache plus the chunk, so a 512-token prompt fed as 2 x 256 computes 3/4 of the causal scores a single chunk
# would (the upper-right quarter is never formed): about 15% faster overall, measured here.
PREFILL_CHUNK = 256
# Chunks longer than this many queries are attended in tiles (attention_in_tiles), so that the scores no query of
# a tile sees (a fifth of a 256-token chunk's against a 4 + 1020 sink cache) are never formed.
QUERY_TILE = 64


class InputError(ValueError):
    """Token ids that the model cannot take."""


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x [T, d_model] / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019): [T, d_model] -> [T, d_model]."""
    mean_square = np.vecdot(x, x, keepdims=True) / x.shape[-1]  # [T, 1]: each row's dot product with itself
    return x * (weight / np.sqrt(mean_square + eps))


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x). With h = x / 2, sigmoid(x) = (1 + tanh(h)) / 2, so silu(x) = h + h * tanh(h): the same
    function in four array operations, and no exp() to overflow."""
    h = 0.5 * x
    return h + h * np.tanh(h)


def softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis. Subtracting the row max first keeps exp() from overflowing. (`attention` does
    the same steps in place on its scores, and leaves the division by the row sums for last.)"""
    e = scores - scores.max(axis=-1, keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(axis=-1, keepdims=True)
    return e


# Up to this many rows, `linear` computes (weight @ x.T).T: the same product, which OpenBLAS splits over its threads
# along the weight's rows, where x @ weight.T with a few rows runs on one (docs/performance.md, "A few rows").
FEW_ROWS = 16


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """x [N, in] @ weight[out, in].T (+ bias [out]) -> [N, out]. Weights keep PyTorch's [out, in] layout."""
    y = (weight @ x.T).T if 1 < len(x) <= FEW_ROWS else x @ weight.T
    return y if bias is None else y + bias


@dataclass
class Layer:
    """One decoder block: its weights, and `__call__`, the block's computation, which every forward runs (one stream,
    a batch of streams, calibration, the training forward of minisink/backward.py).

    q/k/v and gate/up are fused: one matrix product instead of three (or two), the same numbers. Their rows are the
    checkpoint's q_proj, k_proj, v_proj (and gate_proj, up_proj) stacked. The four matrices are views into one
    array per layer, not four allocations (docs/performance.md, "Memory pages").
    """

    input_layernorm: np.ndarray  # [d_model]
    qkv_proj: np.ndarray  # [(H + 2 Hkv) * D, d_model] = concat(q_proj, k_proj, v_proj)
    qkv_bias: np.ndarray | None  # [(H + 2 Hkv) * D] when attention_bias
    o_proj: np.ndarray  # [d_model, H * D]
    o_bias: np.ndarray | None  # [d_model] when attention_bias
    post_attention_layernorm: np.ndarray  # [d_model]
    gate_up_proj: np.ndarray  # [2 I, d_model] = concat(gate_proj, up_proj)
    gate_up_bias: np.ndarray | None  # [2 I] when mlp_bias
    down_proj: np.ndarray  # [d_model, I]
    down_bias: np.ndarray | None  # [d_model] when mlp_bias
    config: LlamaConfig  # the head counts and widths, rms_norm_eps

    @classmethod
    def from_weights(cls, w: dict[str, np.ndarray], n: int, config: LlamaConfig) -> "Layer":
        p = f"model.layers.{n}."
        groups = {"qkv_proj": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
                  "o_proj": ["self_attn.o_proj"],
                  "gate_up_proj": ["mlp.gate_proj", "mlp.up_proj"],
                  "down_proj": ["mlp.down_proj"]}
        parts = {key: [w[p + name + ".weight"] for name in names] for key, names in groups.items()}  # [out, in] each
        buffer = np.concatenate([m.ravel() for group in parts.values() for m in group])  # the layer's one allocation
        matrices, start = {}, 0
        for key, group in parts.items():  # a group's matrices, rows stacked, are one slice of the buffer
            rows, cols = sum(len(m) for m in group), group[0].shape[1]
            matrices[key] = buffer[start:start + rows * cols].reshape(rows, cols)
            start += rows * cols

        def bias(names, present):
            return np.concatenate([w[p + name + ".bias"] for name in names]) if present else None

        return cls(
            input_layernorm=w[p + "input_layernorm.weight"],
            qkv_bias=bias(groups["qkv_proj"], config.attention_bias),
            o_bias=bias(groups["o_proj"], config.attention_bias),
            post_attention_layernorm=w[p + "post_attention_layernorm.weight"],
            gate_up_bias=bias(groups["gate_up_proj"], config.mlp_bias),
            down_bias=bias(groups["down_proj"], config.mlp_bias),
            config=config,
            **matrices,
        )

    def attention_inputs(self, x: np.ndarray, rotation: Rotation) -> tuple[np.ndarray, ...]:
        """The rows x [N, d_model] -> (h, q, k, v): h = input_layernorm(x) [N, d_model], and the queries [N, H, D],
        keys [N, Hkv, D] (both rotated by `rotation`) and values [N, Hkv, D] attention takes."""
        c = self.config
        N, H, Hkv, D = len(x), c.num_attention_heads, c.num_key_value_heads, c.head_dim
        h = rms_norm(x, self.input_layernorm, c.rms_norm_eps)  # [N, d_model]
        qkv = linear(h, self.qkv_proj, self.qkv_bias)  # [N, (H + 2 Hkv) * D]
        qk = apply_rope(qkv[:, :(H + Hkv) * D].reshape(N, H + Hkv, D), rotation)  # q and k heads at once
        v = qkv[:, (H + Hkv) * D:].reshape(N, Hkv, D)
        return h, qk[:, :H], qk[:, H:], v

    def __call__(self, x: np.ndarray, rotation: Rotation, attend, saved: dict | None = None) -> None:
        """The block on the residual stream x [N, d_model], updated in place: x += attention(RMSNorm(x)), then
        x += MLP(RMSNorm(x)). The N rows are tokens: a chunk of one stream, the next token of B streams, or B
        training samples of T tokens (N = B * T); which keys each row's query sees is `attend`'s business.

        rotation: the rows' RoPE angles ([N, 1, D]). attend(q [N, H, D], k [N, Hkv, D], v [N, Hkv, D]), q and k
        rotated -> the attention output [N, H * D]. `saved`, a dict or None: the training forward's, filled with
        what the backward pass needs (minisink/backward.py); inference passes None and pays nothing for it."""
        c = self.config
        h_attn, q, k, v = self.attention_inputs(x, rotation)
        out = attend(q, k, v)  # [N, H * D]
        if saved is not None:
            saved.update(x_in=x.copy(), h_attn=h_attn, q=q, k=k, v=v, out=out)
        x += linear(out, self.o_proj, self.o_bias)  # [N, d_model]

        h_mlp = rms_norm(x, self.post_attention_layernorm, c.rms_norm_eps)
        gate_up = linear(h_mlp, self.gate_up_proj, self.gate_up_bias)  # [N, 2 I]
        width = c.intermediate_size  # I
        act = silu(gate_up[:, :width]) * gate_up[:, width:]  # [N, I] SwiGLU: silu(gate) * up
        if saved is not None:
            saved.update(x_mid=x.copy(), h_mlp=h_mlp, gate_up=gate_up, act=act)
        x += linear(act, self.down_proj, self.down_bias)  # [N, d_model]


def attention(q: np.ndarray, blocks: list[KVBlock], n_kv_heads: int, with_probs: bool = False,
              sink_logits: np.ndarray | None = None, sink_values: np.ndarray | None = None,
              sigmoid_bias: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Grouped-query attention of T queries over the cache's blocks, one softmax across all of them.

    q [T, H, D], rotated, unscaled -> (output [T, H * D], probabilities [Hkv, G, T, sum of L] if `with_probs`,
    else None). Query head h uses KV head h // G, as in transformers' `repeat_kv`: the G query heads of a KV head
    are stacked into one matrix, so each KV head costs one matrix product.

    The scores are the largest array of a layer ([Hkv, G*T, sum of L]; only the logits [T, V] are larger), so they
    are made once and the softmax works on them in place: each block's scores are written into their columns, the
    row max is subtracted, exp is taken, and instead of dividing every score by its row sum, the output is divided
    (a [G*T, D] array, not [G*T, L]: the same numbers, one pass less over the scores).

    `sink_logits` [H] (sigma, one per query head; -inf: no sink) is a virtual key that every query sees with the
    same score and no value, as in gpt-oss: p_ij = exp(s_ij) / (sum_k exp(s_ik) + exp(sigma_h)), so the row can
    put less than 1 on the real keys. sigma = 0 is softmax-off-by-one. `sink_values` [H, D], optional, gives the
    virtual key a value after all: exp(sigma_h) * value_h joins the numerator (docs/05-why-sinks-exist.md).

    `sigmoid_bias` b, for a model trained with sigmoid attention (Gu et al. 2024, arXiv 2410.10781, Sec. 7): no
    softmax at all, each weight on its own, p_ij = sigmoid(s_ij + b), 0 where masked; nothing makes a row sum to 1.
    """
    T, H, D = q.shape
    if T > QUERY_TILE:  # a long chunk: tiles of queries, each skipping the keys none of its queries sees
        return attention_in_tiles(q, blocks, n_kv_heads, with_probs, sink_logits, sink_values, sigmoid_bias)
    G = H // n_kv_heads
    q = q * np.float32(D ** -0.5)  # the 1/sqrt(D) score scale, applied once to the queries
    widths = [block.values.shape[1] for block in blocks]
    columns = [slice(start, start + L) for start, L in zip(accumulate(widths, initial=0), widths)]
    scores = np.empty((n_kv_heads, G * T, sum(widths)), dtype=np.float32)  # [Hkv, G*T, sum L]
    for block, cols in zip(blocks, columns):
        qb = q if block.query_rotation is None else apply_rope(q, block.query_rotation)
        qb = qb.reshape(T, n_kv_heads, G, D).transpose(1, 2, 0, 3).reshape(n_kv_heads, G * T, D)
        s = np.matmul(qb, block.keys, out=scores[:, :, cols])  # [Hkv, G*T, L], written into its columns
        if block.mask is not None:
            s = s.reshape(n_kv_heads, G, T, -1)  # a view, so the mask [T, L] broadcasts over heads
            s += block.mask
    if sigmoid_bias is not None:  # sigmoid(x) = (1 + tanh(x / 2)) / 2, in place; a masked -inf gives exactly 0
        scores += np.float32(sigmoid_bias)
        scores *= 0.5
        weights = np.tanh(scores, out=scores)
        weights += 1
        weights *= 0.5
        out = sum(weights[:, :, cols] @ block.values for block, cols in zip(blocks, columns))  # [Hkv, G*T, D]
        out = out.reshape(n_kv_heads, G, T, D).transpose(2, 0, 1, 3).reshape(T, H * D)
        return out, weights.reshape(n_kv_heads, G, T, -1) if with_probs else None
    top = scores.max(axis=-1, keepdims=True)  # [Hkv, G*T, 1]
    if sink_logits is not None:  # the sink is one more column: the max is over it too, so exp() cannot overflow
        sigma = np.repeat(sink_logits.reshape(n_kv_heads, G, 1), T, axis=1)  # [Hkv, G*T, 1], row g*T + t
        top = np.maximum(top, sigma)
    scores -= top
    weights = np.exp(scores, out=scores)  # the softmax numerators, in place
    total = weights.sum(axis=-1, keepdims=True)  # [Hkv, G*T, 1] the denominators
    out = weights[:, :, columns[0]] @ blocks[0].values  # [Hkv, G*T, D]
    for block, cols in zip(blocks[1:], columns[1:]):
        out += weights[:, :, cols] @ block.values
    if sink_logits is not None:
        sink = np.exp(sigma - top)  # [Hkv, G*T, 1] the sink's numerator, 0 where sigma = -inf
        total += sink
        if sink_values is not None:
            out += sink * np.repeat(sink_values.reshape(n_kv_heads, G, 1, D), T, axis=2).reshape(n_kv_heads, -1, D)
    out /= total
    out = out.reshape(n_kv_heads, G, T, D).transpose(2, 0, 1, 3).reshape(T, H * D)  # head h = kv * G + g
    probs = (weights / total).reshape(n_kv_heads, G, T, -1) if with_probs else None
    return out, probs


def attention_in_tiles(q: np.ndarray, blocks: list[KVBlock], n_kv_heads: int, with_probs: bool = False,
                       sink_logits: np.ndarray | None = None, sink_values: np.ndarray | None = None,
                       sigmoid_bias: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """`attention`, QUERY_TILE queries at a time: the same numbers, without the scores no query sees.

    A query's softmax involves only its own row of scores, so the queries can be taken in tiles. In a long chunk
    many keys are hidden from a whole tile (the chunk's later tokens from its first queries; in a sink cache, the
    ring's oldest tokens from its last ones): each block is cut, per tile, to the keys some query of the tile sees,
    and split so that its mask is added only over the keys that some query of the tile does not see. Results are
    written back in the full layout ([T, H * D]; probabilities [Hkv, G, T, sum of L], zero where masked)."""
    T, H, D = q.shape
    widths = [block.values.shape[1] for block in blocks]
    out = np.empty((T, H * D), dtype=np.float32)
    probs = np.zeros((n_kv_heads, H // n_kv_heads, T, sum(widths)), dtype=np.float32) if with_probs else None
    for start in range(0, T, QUERY_TILE):
        rows = slice(start, min(start + QUERY_TILE, T))
        pieces = [(column + a, piece) for column, block in zip(accumulate(widths, initial=0), blocks)
                  for a, piece in visible_pieces(block, rows)]  # (first column in the full layout, KVBlock)
        out[rows], p = attention(q[rows], [piece for _, piece in pieces], n_kv_heads, with_probs, sink_logits,
                                 sink_values, sigmoid_bias)
        if with_probs:
            for (column, piece), start_p in zip(pieces, accumulate([pc.values.shape[1] for _, pc in pieces],
                                                                   initial=0)):
                L = piece.values.shape[1]
                probs[:, :, rows, column:column + L] = p[:, :, :, start_p:start_p + L]
    return out, probs


def visible_pieces(block: KVBlock, rows: slice) -> list[tuple[int, KVBlock]]:
    """The keys of `block` that some query in `rows` sees, as (first key, KVBlock for those queries) pieces: keys
    every one of them sees (no mask), and the keys some of them do not see (the mask). Keys no query sees are left
    out."""
    rotation = block.query_rotation and Rotation(block.query_rotation.cos[rows], block.query_rotation.sin[rows])
    if block.mask is None:
        return [(0, KVBlock(block.keys, block.values, None, rotation))]
    mask = block.mask[rows]  # [tile, L]
    seen = np.flatnonzero((mask == 0).any(axis=0))  # keys some query sees
    if not len(seen):
        return []
    first, last = seen[0], seen[-1] + 1
    hidden = np.flatnonzero((mask[:, first:last] != 0).any(axis=0)) + first  # keys some query does not see
    if not len(hidden):
        spans = [(first, last, False)]
    else:  # keys every query sees, then the span that needs the mask, then keys every query sees again
        a, b = hidden[0], hidden[-1] + 1
        spans = [(first, a, False), (a, b, True), (b, last, False)]
    return [(a, KVBlock(block.keys[:, :, a:b], block.values[:, a:b], mask[:, a:b] if masked else None, rotation))
            for a, b, masked in spans if b > a]


class Llama:
    """A Llama-family causal language model. `forward(token_ids, cache)` -> logits [T, V] for the T new tokens."""

    def __init__(self, config: LlamaConfig, weights: dict[str, np.ndarray]):
        self.config = config
        self.embed_tokens = weights["model.embed_tokens.weight"]  # [V, d_model]
        self.layers = [Layer.from_weights(weights, n, config) for n in range(config.num_hidden_layers)]
        self.norm = weights["model.norm.weight"]  # [d_model]
        # Tied embeddings (SmolLM2): the LM head is the embedding matrix itself.
        self.lm_head = self.embed_tokens if config.tie_word_embeddings else weights["lm_head.weight"]  # [V, d_model]
        self.sink_logits = None  # [layers, H] float32 or None: a sink logit per head (see `attention`)
        self.sink_values = None  # [layers, H, D] float32 or None: the sink's value, used only with sink_logits
        if config.attention_variant == "sink-logit":  # trained sinks, one per layer and query head (gpt-oss)
            self.sink_logits = np.stack([weights[f"model.layers.{n}.self_attn.sinks"]
                                         for n in range(config.num_hidden_layers)])
        elif config.attention_variant == "softmax1":  # softmax-off-by-one: a sink logit of 0 in every head
            self.sink_logits = np.zeros((config.num_hidden_layers, config.num_attention_heads), dtype=np.float32)

    @property
    def sink_logits(self) -> np.ndarray | None:
        """sigma [num_hidden_layers, num_attention_heads] float32, or None (plain softmax, the default). Every
        forward uses it, whatever the cache; -inf turns one head's sink off, 0 everywhere is softmax-off-by-one."""
        return self._sink_logits

    @sink_logits.setter
    def sink_logits(self, sigma):
        c = self.config
        self._sink_logits = _checked("sink_logits", sigma, (c.num_hidden_layers, c.num_attention_heads),
                                     allow_minus_inf=True)

    @property
    def sink_values(self) -> np.ndarray | None:
        """The sink's value vector [num_hidden_layers, num_attention_heads, head_dim] float32, or None (the sink
        adds no value, as in gpt-oss). An experiment of docs/05-why-sinks-exist.md; ignored without sink_logits."""
        return self._sink_values

    @sink_values.setter
    def sink_values(self, values):
        c = self.config
        self._sink_values = _checked("sink_values", values, (c.num_hidden_layers, c.num_attention_heads, c.head_dim),
                                     allow_minus_inf=False)

    def attention_options(self, n: int) -> dict:
        """What layer n's `attention` takes beside the queries and the keys: its sink logits and values, or the
        sigmoid variant's bias (config.attention_variant)."""
        if self.config.attention_variant == "sigmoid":
            return {"sigmoid_bias": self.config.sigmoid_bias}
        if self._sink_logits is None:
            return {}
        return {"sink_logits": self._sink_logits[n],
                "sink_values": None if self._sink_values is None else self._sink_values[n]}

    def parameters(self) -> dict[str, np.ndarray]:
        """Every trained array by its Hugging Face name, as a writable view into the model's own storage: q_proj,
        k_proj and v_proj are row slices of the fused qkv_proj (gate_proj and up_proj of gate_up_proj), so an
        optimizer that updates these in place updates the model. Tied embeddings: no `lm_head.weight`."""
        c = self.config
        H, Hkv, D, width = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size
        params = {"model.embed_tokens.weight": self.embed_tokens}
        for n, layer in enumerate(self.layers):
            p = f"model.layers.{n}."
            projections = {"self_attn.q_proj": (layer.qkv_proj, layer.qkv_bias, 0, H * D),
                           "self_attn.k_proj": (layer.qkv_proj, layer.qkv_bias, H * D, (H + Hkv) * D),
                           "self_attn.v_proj": (layer.qkv_proj, layer.qkv_bias, (H + Hkv) * D, (H + 2 * Hkv) * D),
                           "self_attn.o_proj": (layer.o_proj, layer.o_bias, 0, c.hidden_size),
                           "mlp.gate_proj": (layer.gate_up_proj, layer.gate_up_bias, 0, width),
                           "mlp.up_proj": (layer.gate_up_proj, layer.gate_up_bias, width, 2 * width),
                           "mlp.down_proj": (layer.down_proj, layer.down_bias, 0, c.hidden_size)}
            params[p + "input_layernorm.weight"] = layer.input_layernorm
            for name, (weight, bias, first, stop) in projections.items():
                params[p + name + ".weight"] = weight[first:stop]  # rows first..stop-1: a view
                if bias is not None:
                    params[p + name + ".bias"] = bias[first:stop]
            params[p + "post_attention_layernorm.weight"] = layer.post_attention_layernorm
            if c.attention_variant == "sink-logit":
                params[p + "self_attn.sinks"] = self._sink_logits[n]  # [H], a view
        params["model.norm.weight"] = self.norm
        if not c.tie_word_embeddings:
            params["lm_head.weight"] = self.lm_head
        return params

    def new_cache(self, n_sink: int | None = None, window: int | None = None, *, recompute: bool = False,
                  renumber: bool = True, position_offset: int = 0, policy: str | None = None, **options):
        """A fresh cache. No arguments: the full cache (dense attention). `window=W`: window attention;
        `n_sink=S, window=W`: the StreamingLLM sink cache; `recompute=True`: sliding window with re-computation.
        `policy="h2o"` (budget, heavy, positions), `"tova"` (budget, positions), `"snapkv"` (capacity, window, w,
        kernel): the caches that read attention (eviction.py)."""
        if policy is not None:
            return new_eviction_cache(self.config, policy, **options, **({} if window is None else {"window": window}))
        if recompute:
            if window is None:
                raise CacheError("recompute=True needs a window size: new_cache(window=W, recompute=True)")
            return RecomputeWindow(self.config, window, n_sink or 0)
        if n_sink is None and window is None:
            return FullCache(self.config, position_offset)
        if window is None:
            raise CacheError(f"a sink cache needs a window: new_cache(n_sink={n_sink}, window=W) with W >= 1")
        return SinkCache(self.config, n_sink or 0, window, renumber, position_offset)

    def forward(self, token_ids, cache: Cache, attention_probs: list | None = None, layer_hook=None, *,
                last: int | None = None) -> np.ndarray:
        """Logits [T, V] (float32) for T new token ids, which are appended to `cache`; with `last=n`, the logits
        [n, V] of the last n tokens only (the LM head, a [V, d_model] product per row and the largest of the model,
        is applied to those rows alone: the recompute baseline wants one row per forward).

        Inputs longer than PREFILL_CHUNK are fed in chunks; that is exact, because attention is causal and every
        cache gives the same logits for any chunking. Each chunk is committed whole or not at all: if a chunk
        raises (or Ctrl-C), the cache holds exactly the chunks before it (the exception's note says how many
        tokens). If `attention_probs` is a list, each layer's attention probabilities [H, T_chunk, keys] are appended
        to it, chunk after chunk: layers x chunks arrays for an input longer than PREFILL_CHUNK (keys in the cache's
        block order: see attention_maps.py, which takes one chunk).
        If `layer_hook` is given, `layer_hook(n, x)` is called with each layer's output, the residual stream
        x [T, d_model] of the chunk after layer n: it may read it (copy it: x is updated in place) or change it
        (anatomy.py reads the massive activations and sets them to zero or to their mean).
        """
        token_ids = self._check_ids(token_ids)
        first = len(token_ids) - (len(token_ids) if last is None else last)  # the first row whose logits are wanted
        logits = np.empty((len(token_ids) - first, len(self.lm_head)), dtype=np.float32)  # [T or last, V]
        for start in range(0, len(token_ids), PREFILL_CHUNK):
            chunk = token_ids[start:start + PREFILL_CHUNK]
            try:
                x = self.forward_chunk(chunk, cache, attention_probs, layer_hook)  # [chunk, d_model]
            except BaseException as e:
                if start:  # the earlier chunks were committed
                    e.add_note(f"minisink: the cache holds the first {start} of these {len(token_ids)} tokens")
                raise
            wanted = max(first - start, 0)  # the chunk's first row among the wanted ones
            if wanted < len(chunk):  # the LM head, written straight into the wanted rows
                np.matmul(x[wanted:], self.lm_head.T, out=logits[start + wanted - first:start + len(chunk) - first])
        return logits

    def forward_chunk(self, token_ids: np.ndarray, cache: Cache, attention_probs: list | None = None,
                      layer_hook=None) -> np.ndarray:
        """The decoder on one chunk of one stream: ids [T] -> final hidden states [T, d_model] (after the last
        RMSNorm); `forward` multiplies them by the LM head. The cache decides which keys each query sees, and at
        which positions: `begin` gives the chunk's rotation, `blocks` the keys and values per layer, `end` commits."""
        H, Hkv = self.config.num_attention_heads, self.config.num_key_value_heads
        T = len(token_ids)
        rotation = cache.begin(T)  # the cache decides the new tokens' positions; nothing changes until `end`
        observe = getattr(cache, "wants_attention", False)  # eviction policies (eviction.py) read the attention

        def attend(n, q, k, v):  # layer n: the chunk's queries over the blocks the cache gives
            out, probs = attention(q, cache.blocks(n, k, v), Hkv, observe or attention_probs is not None,
                                   **self.attention_options(n))  # [T, H * D]
            if observe:
                cache.observe(n, probs)  # [Hkv, G, T, sum of L]
            if attention_probs is not None:
                attention_probs.append(probs.reshape(H, T, -1))
            return out

        x = self.embed_tokens[token_ids]  # [T, d_model], a copy (array indexing): the residual stream
        hidden = self.decoder(x, rotation, attend, layer_hook)
        cache.end()  # commit: only now do the chunk's tokens join the cache
        return hidden

    def decoder(self, x: np.ndarray, rotation: Rotation, attend, layer_hook=None,
                saved: dict | None = None) -> np.ndarray:
        """Every decoder layer on the residual stream x [N, d_model] (updated in place), then the final RMSNorm:
        -> [N, d_model]. `attend(n, q, k, v)` is layer n's attention (see `Layer.__call__`): the one place where
        the callers differ (one stream through its cache, B streams through theirs, a training batch).
        `layer_hook(n, x)` sees each layer's output. `saved`, a dict or None: the training forward's; it gets
        saved["layers"], one dict per layer (what `Layer.__call__` saves), and saved["x_final"], x before the
        final norm."""
        if saved is not None:
            saved["layers"] = []
        for n, layer in enumerate(self.layers):
            layer_saved = None if saved is None else {}
            layer(x, rotation, partial(attend, n), layer_saved)
            if saved is not None:
                saved["layers"].append(layer_saved)
            if layer_hook is not None:
                layer_hook(n, x)
        if saved is not None:
            saved["x_final"] = x.copy()
        return rms_norm(x, self.norm, self.config.rms_norm_eps)  # [N, d_model]

    def _check_ids(self, token_ids) -> np.ndarray:
        ids = np.asarray(token_ids)
        if ids.ndim != 1 or ids.size == 0:
            raise InputError(f"token_ids must be a non-empty 1-D sequence of ints, got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise InputError(f"token_ids must be integers, got dtype {ids.dtype}")
        bad = ids[(ids < 0) | (ids >= self.config.vocab_size)]
        if bad.size:
            raise InputError(f"token id {int(bad[0])} is out of range for a vocabulary of {self.config.vocab_size} "
                             "(ids must be in 0..vocab_size-1: was the text encoded with this model's tokenizer?)")
        return ids.astype(np.int64)


def _checked(name: str, array, shape: tuple, allow_minus_inf: bool) -> np.ndarray | None:
    """None, or `array` if it is a float32 array of `shape` with no NaN and no +inf (-inf only if allowed)."""
    if array is None:
        return None
    if not isinstance(array, np.ndarray) or array.dtype != np.float32:
        raise InputError(f"{name} must be a float32 NumPy array of shape {shape}, got "
                         f"{getattr(array, 'dtype', type(array).__name__)}: convert it with np.asarray(x, np.float32)")
    if array.shape != shape:
        raise InputError(f"{name} must have shape {shape} (layers, query heads{', head_dim' * (len(shape) == 3)}) "
                         f"for this model, got {array.shape}: was it made for another model?")
    bad = np.isnan(array) | (array == np.inf)
    if not allow_minus_inf:
        bad |= array == -np.inf
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        allowed = "finite or -inf (no sink)" if allow_minus_inf else "finite"
        raise InputError(f"{name}{list(where)} is {array[where]}: every entry must be {allowed}")
    return array


def load_model(path: str | Path) -> Llama:
    """Config + weights from a Hugging Face model folder (config.json, model.safetensors or shards)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no model folder at {path}: run `python weights_fetch.py` to fetch the default "
                                "model, or pass the path of a Hugging Face model folder")
    config = LlamaConfig.from_file(path)
    weights = load_weights(path, config, check_finite=False)
    with checking_finite(weights, path):  # on another thread while the model copies its weights into place
        return Llama(config, weights)
