"""Per-token negative log-likelihood of a long text streamed through a cache policy (paper Sec. 4.1, Fig. 3).

What it does: `stream_nll` feeds a token stream through any cache and returns, for every token after the first, the
NLL the model gave it. Fed one token at a time this is the streaming setting itself; fed in chunks it is the same
computation, exactly, and much faster:

    The fast exact evaluator. A sink cache's chunked forward lets every query of a chunk attend over the sinks,
    the ring as it was before the chunk, and the chunk's own tokens, under a banded causal mask (key j visible to
    query i iff j is a sink or i - j < W), with each query at the position it would have had in the cache. So a
    chunk of T tokens costs one batched forward instead of T single-token forwards, and the NLLs equal those of
    token-by-token ring-buffer streaming (tests/test_evaluate.py proves it on random models and chunkings).
    Most streaming evaluations either run token by token or switch to a recomputed window; this one is neither.

`minisink ppl` (a text through one cache, its summary and its .npz/.csv) is minisink/ppl.py, built on these.

What it does not: batch several texts, or evaluate the recompute baseline fast (it is O(W^2) per token by design).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .model import PREFILL_CHUNK, attention, rms_norm, silu
from .rope import apply_rope


NLL_ROWS = 8  # rows of logits per step of token_nll: 8 x 49,152 floats stay in a core's cache (docs/performance.md)


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, [T, V] + [T] -> [T] float64: logsumexp - the target's logit.

    The exponentials stay in float32 (after subtracting the row max, so none overflows) and are summed in float64.
    NLL_ROWS rows at a time, in one reused buffer: the same numbers as whole [T, V] passes, faster (why, and what a
    float64 log-softmax would cost: docs/performance.md, "The L2 cache and the small NumPy calls")."""
    lse = np.empty(len(targets))  # [T]
    buffer = np.empty((NLL_ROWS, logits.shape[1]), dtype=np.float32)
    for start in range(0, len(targets), NLL_ROWS):
        x = logits[start:start + NLL_ROWS]  # [rows, V]
        top = x.max(axis=-1)  # [rows]
        e = np.subtract(x, top[:, None], out=buffer[:len(x)])
        np.exp(e, out=e)
        lse[start:start + len(x)] = np.log(e.sum(axis=-1, dtype=np.float64)) + top
    return lse - logits[np.arange(len(targets)), targets].astype(np.float64)


def stream_nll(model, token_ids, cache, chunk: int = PREFILL_CHUNK,
               progress: Callable[[int], None] | None = None, first_chunk: int | None = None) -> np.ndarray:
    """NLL [N - 1] (nats, float64) of tokens 1..N-1 of `token_ids`, each predicted from the stream before it as
    `cache` retains it. `chunk` tokens are fed per forward (1: token-by-token streaming), after a first chunk of
    `first_chunk` tokens if given; `progress(n)` is called with the number of tokens fed after each chunk."""
    ids = np.asarray(token_ids)
    if ids.ndim != 1 or len(ids) < 2:
        raise ValueError(f"need a 1-D stream of at least 2 token ids to score, got shape {ids.shape}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    nll = np.empty(len(ids) - 1)
    starts = list(range(first_chunk or 0, len(ids) - 1, chunk))  # the last token is only predicted, never fed
    if first_chunk:
        starts.insert(0, 0)
    for start, stop in zip(starts, starts[1:] + [len(ids) - 1], strict=True):
        piece, targets = ids[start:stop], ids[start + 1:stop + 1]
        nll[start:stop] = token_nll(model.forward(piece, cache), targets)  # [T]
        if progress:
            progress(stop)
    return nll


def forward_together(model, token_ids, caches) -> np.ndarray:
    """One new token for each of B streams, each through its own cache: ids [B] -> logits [B, V] (float32).

    The same forward pass as `Llama.forward_chunk` for T = 1, with the B streams' matrix products stacked
    ([B, d_model] @ W): decode is memory-bound, so B streams read the weights once instead of B times, and B
    policies cost little more than one. Attention stays per stream, through its own cache (and its `observe`).
    Row b equals `model.forward([token_ids[b]], caches[b])` (tests/test_eviction.py)."""
    c = model.config
    ids = np.asarray(token_ids, dtype=np.int64)
    B, H, Hkv, D = len(ids), c.num_attention_heads, c.num_key_value_heads, c.head_dim
    rotations = [cache.begin(1) for cache in caches]

    def linear(x, weight, bias):  # [B, in] -> [B, out] as W @ x.T: ~3x faster than x @ W.T for B ~ 8 (OpenBLAS)
        y = (weight @ x.T).T
        return y if bias is None else y + bias

    x = model.embed_tokens[ids]  # [B, d_model]
    for n, layer in enumerate(model.layers):
        h = rms_norm(x, layer.input_layernorm, c.rms_norm_eps)
        qkv = linear(h, layer.qkv_proj, layer.qkv_bias)  # [B, (H + 2 Hkv) * D]
        out = np.empty((B, H * D), dtype=np.float32)
        for b, cache in enumerate(caches):  # attention: each stream over its own cache
            qk = apply_rope(qkv[b, :(H + Hkv) * D].reshape(1, H + Hkv, D), rotations[b])
            v = qkv[b:b + 1, (H + Hkv) * D:].reshape(1, Hkv, D)
            observe = getattr(cache, "wants_attention", False)
            sigma, sink_v = (None, None) if model.sink_logits is None else (
                model.sink_logits[n], None if model.sink_values is None else model.sink_values[n])
            out[b], probs = attention(qk[:, :H], cache.blocks(n, qk[:, H:], v), Hkv, observe, sigma, sink_v)
            if observe:
                cache.observe(n, probs)
        x += linear(out, layer.o_proj, layer.o_bias)
        h = rms_norm(x, layer.post_attention_layernorm, c.rms_norm_eps)
        gate_up = linear(h, layer.gate_up_proj, layer.gate_up_bias)  # [B, 2 I]
        I = gate_up.shape[1] // 2
        x += linear(silu(gate_up[:, :I]) * gate_up[:, I:], layer.down_proj, layer.down_bias)
    for cache in caches:
        cache.end()
    return linear(rms_norm(x, model.norm, c.rms_norm_eps), model.lm_head, None)  # [B, V]


def stream_nll_together(model, token_ids, caches, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """NLL [B, N - 1] of one stream fed token by token through B caches at once (see `forward_together`): row b
    equals `stream_nll(model, token_ids, caches[b], chunk=1)`. For the policies that decide per token."""
    ids = np.asarray(token_ids)
    if ids.ndim != 1 or len(ids) < 2:
        raise ValueError(f"need a 1-D stream of at least 2 token ids to score, got shape {ids.shape}")
    nll = np.empty((len(caches), len(ids) - 1))
    for i in range(len(ids) - 1):
        logits = forward_together(model, np.full(len(caches), ids[i]), caches)  # [B, V]
        nll[:, i] = token_nll(logits, np.full(len(caches), ids[i + 1]))
        if progress:
            progress(i + 1)
    return nll


def perplexity(nll: np.ndarray) -> float:
    return float(np.exp(np.mean(nll)))
