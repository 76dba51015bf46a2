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

from .cache import RecomputeWindow
from .model import PREFILL_CHUNK, attention, linear
from .rope import Rotation


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


def logits(model, token_ids, cache) -> np.ndarray:
    """Logits [T, V] of T new tokens appended to `cache`: `model.forward(token_ids, cache)`, or, for the recompute
    baseline, which is no cache the model could attend over (see RecomputeWindow), its own fresh forwards. The one
    place that tells the two apart."""
    if isinstance(cache, RecomputeWindow):
        return cache.logits(model, np.asarray(token_ids))
    return model.forward(token_ids, cache)


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
        nll[start:stop] = token_nll(logits(model, piece, cache), targets)  # [T]
        if progress:
            progress(stop)
    return nll


def forward_together(model, token_ids, caches) -> np.ndarray:
    """One new token for each of B streams, each through its own cache: ids [B] -> logits [B, V] (float32).

    The model's own decoder (`Llama.decoder`) with the B streams' tokens as its B rows: every matrix product is
    one [B, d_model] @ W for all of them (decode is memory-bound, so B streams read the weights once instead of B
    times, and B policies cost little more than one), and only attention, the `attend` seam, goes per stream,
    through its own cache (and its `observe`). Row b equals `model.forward([token_ids[b]], caches[b])`
    (tests/test_eviction.py)."""
    Hkv = model.config.num_key_value_heads
    ids = np.asarray(token_ids, dtype=np.int64)
    rotations = [cache.begin(1) for cache in caches]  # each stream's next position, [1, 1, D] each
    rotation = Rotation(np.concatenate([r.cos for r in rotations]), np.concatenate([r.sin for r in rotations]))

    def attend(n, q, k, v):  # q [B, H, D], k and v [B, Hkv, D]: row b is stream b's token
        out = np.empty((len(caches), q.shape[1] * q.shape[2]), dtype=np.float32)  # [B, H * D]
        for b, cache in enumerate(caches):
            observe = getattr(cache, "wants_attention", False)
            out[b], probs = attention(q[b:b + 1], cache.blocks(n, k[b:b + 1], v[b:b + 1]), Hkv, observe,
                                      **model.attention_options(n))
            if observe:
                cache.observe(n, probs)  # [Hkv, H // Hkv, 1, sum of L]
        return out

    hidden = model.decoder(model.embed_tokens[ids], rotation, attend)  # [B, d_model]
    for cache in caches:
        cache.end()
    return linear(hidden, model.lm_head, None)  # [B, V]


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
