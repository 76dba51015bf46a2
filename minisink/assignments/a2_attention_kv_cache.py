"""Assignment 2 checks: GQA attention and the full KV cache (model.py: attention; cache.py: FullCache).

Oracles: a per-head float64 loop (minisink/reference.py::loop_attention), torch's scaled_dot_product_attention and
transformers' LlamaForCausalLM (with torch), and the tiny model's one-shot logits computed here.
"""

from __future__ import annotations

import numpy as np

from minisink.cache import FullCache, KVBlock, causal_mask
from minisink.reference import loop_attention
from minisink.rope import Rotation, rotation

from .common import CASES, Fail, close, model_case, random_chunks, run, run_model, torch_or_skip, transformers_logits


# --- tasks: run in the child ------------------------------------------------------------------------------------

def task_attention(ctx, q, n_kv_heads, n_blocks, with_probs, **arrays):
    """The student's attention over blocks sent as arrays: keys_i, values_i, and optional mask_i, cos_i, sin_i."""
    blocks = []
    for i in range(n_blocks):
        rot = Rotation(arrays[f"cos_{i}"], arrays[f"sin_{i}"]) if arrays.get(f"cos_{i}") is not None else None
        blocks.append(KVBlock(arrays[f"keys_{i}"], arrays[f"values_{i}"], arrays.get(f"mask_{i}"), rot))
    result = ctx.student.attention(q, blocks, n_kv_heads, with_probs=with_probs) if with_probs else \
        ctx.student.attention(q, blocks, n_kv_heads)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise TypeError(f"attention must return (output, probabilities or None), got {type(result).__name__}")
    return {"out": result[0], "probs": result[1]}


TASKS = {"attention": task_attention, "model": run_model}


# --- checks: run in the grader -------------------------------------------------------------------------------

def random_blocks(rng, T, Hkv, D, n_blocks, rotate):
    blocks = []
    for _ in range(n_blocks):
        L = int(rng.integers(1, 6))
        mask = None
        if rng.random() < 0.6:
            visible = rng.random((T, L)) < 0.7
            mask = np.where(visible, np.float32(0), np.float32(-np.inf)).astype(np.float32)
        rot = rotation(-rng.integers(0, 50, T), 10000.0 ** (-np.arange(0, D, 2) / D)) \
            if rotate and rng.random() < 0.5 else None
        blocks.append(KVBlock(rng.standard_normal((Hkv, D, L)).astype(np.float32),
                              rng.standard_normal((Hkv, L, D)).astype(np.float32), mask, rot))
    if blocks[0].mask is not None:
        blocks[0].mask[:, 0] = 0  # every query sees at least one key
    return blocks


def attention_request(q, blocks, n_kv_heads, with_probs):
    arrays = {}
    for i, b in enumerate(blocks):
        arrays.update({f"keys_{i}": b.keys, f"values_{i}": b.values, f"mask_{i}": b.mask})
        if b.query_rotation is not None:
            arrays.update({f"cos_{i}": b.query_rotation.cos, f"sin_{i}": b.query_rotation.sin})
    return run("attention", q=q, n_kv_heads=n_kv_heads, n_blocks=len(blocks), with_probs=with_probs, **arrays)


def _check_attention(n_blocks, rotate):
    for seed in range(CASES):
        rng = np.random.default_rng(seed)
        Hkv, G, T = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 5))
        D = int(rng.choice([4, 8]))
        q = rng.standard_normal((T, Hkv * G, D)).astype(np.float32)
        blocks = random_blocks(rng, T, Hkv, D, n_blocks if n_blocks else int(rng.integers(1, 4)), rotate)
        where = (f"T={T}, H={Hkv * G}, Hkv={Hkv}, D={D}, blocks of L={[b.keys.shape[2] for b in blocks]}"
                 f"{' with masks/query rotations' if rotate else ''}, seed={seed}")
        want_out, want_probs = loop_attention(q, blocks, Hkv)
        got = yield attention_request(q, blocks, Hkv, with_probs=True)
        close("output [T, H * D]", got["out"], want_out, 1e-4, where)
        close("probabilities [Hkv, G, T, sum L]", got["probs"], want_probs, 1e-5, where)
        got = yield attention_request(q, blocks, Hkv, with_probs=False)
        if got["probs"] is not None:
            raise Fail(f"{where}: without with_probs=True, attention must return (output, None)")
        close("output [T, H * D] (with_probs=False)", got["out"], want_out, 1e-4, where)


def check_attention_one_block():
    yield from _check_attention(1, False)


def check_attention_blocks():
    yield from _check_attention(0, True)


def check_attention_torch():
    torch = torch_or_skip()
    for seed in range(CASES):
        rng = np.random.default_rng(seed)
        Hkv, G, T, D = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 6)), 8
        q = rng.standard_normal((T, Hkv * G, D)).astype(np.float32)
        k = rng.standard_normal((T, Hkv, D)).astype(np.float32)
        v = rng.standard_normal((T, Hkv, D)).astype(np.float32)
        block = KVBlock(k.transpose(1, 2, 0).copy(), v.transpose(1, 0, 2).copy(),
                        causal_mask(np.arange(T), np.arange(T)))
        want = torch.nn.functional.scaled_dot_product_attention(
            *(torch.from_numpy(a.transpose(1, 0, 2))[None] for a in (q, k, v)), is_causal=True, enable_gqa=True)
        got = yield attention_request(q, [block], Hkv, with_probs=False)
        close("output vs torch scaled_dot_product_attention(is_causal=True, enable_gqa=True)", got["out"],
              want[0].numpy().transpose(1, 0, 2).reshape(T, -1), 1e-4, f"T={T}, H={Hkv * G}, Hkv={Hkv}, seed={seed}")


def check_full_cache_transformers():
    torch_or_skip()
    for seed in range(2):
        sizes, model, raw, weights, ids = model_case(seed, n=10)
        got = yield run("model", sizes=sizes, seed=seed, ids=ids, chunks=[6, 1, 1, 1, 1], plug=["FullCache"])
        close("logits (prefill 6, decode 4) vs transformers' LlamaForCausalLM", got["logits"],
              transformers_logits(raw, weights, ids), 1e-3, f"tiny model {sizes}, seed={seed}")


def check_full_cache_chunking():
    for seed in range(CASES):
        rng = np.random.default_rng(100 + seed)
        n = int(rng.integers(2, 25))
        sizes, model, raw, _, ids = model_case(seed, n=n)
        chunks = random_chunks(rng, n)
        got = yield run("model", sizes=sizes, seed=seed, ids=ids, chunks=chunks, plug=["FullCache"])
        close("logits", got["logits"], model.forward(ids, FullCache(model.config)), 1e-4,
              f"tiny model {sizes}, {n} tokens fed in chunks {chunks}, seed={seed}")
        if not np.array_equal(got["retained"], np.arange(n)):
            raise Fail(f"seed={seed}: retained() after {n} tokens is {got['retained']}, expected 0..{n - 1}")


def check_full_cache_offset():
    for seed in range(3):
        sizes, model, raw, _, ids = model_case(seed, sizes={}, n=10)
        got = yield run("model", sizes=sizes, seed=seed, ids=ids, chunks=[4, 1, 5], plug=["FullCache"],
                        cache_args={"position_offset": 10**7})
        close("logits at position_offset 10**7 (RoPE is relative)", got["logits"],
              model.forward(ids, FullCache(model.config)), 1e-3, f"10 tokens, seed={seed}")


def check_model():
    for seed in range(3):
        sizes, model, raw, _, ids = model_case(seed, n=14)
        got = yield run("model", sizes=sizes, seed=seed, ids=ids, chunks=[5, 1, 8], plug=["attention", "FullCache"],
                        new_cache="dense")
        close("logits through new_cache(model) with your attention and FullCache", got["logits"],
              model.forward(ids, FullCache(model.config)), 1e-4, f"tiny model {sizes}, chunks [5, 1, 8], seed={seed}")


CHECKS = [
    ("attention over one block equals a per-head loop (output and probabilities)", check_attention_one_block),
    ("attention over several blocks with masks and query rotations equals a per-head loop", check_attention_blocks),
    ("attention equals torch's scaled_dot_product_attention(enable_gqa=True)", check_attention_torch),
    ("FullCache: prefill + decode equals transformers' LlamaForCausalLM", check_full_cache_transformers),
    ("FullCache: any chunking gives the one-shot logits; retained() is every token", check_full_cache_chunking),
    ("FullCache: position_offset=10**7 changes nothing", check_full_cache_offset),
    ("your attention and FullCache plugged into new_cache(model) give the reference logits", check_model),
]
