"""`minisink bench`: speed and memory, reported as ratios measured in one run (these machines are noisy).

What it measures on a model folder (the default model unless told otherwise), each a median of several runs:
- load time; prefill tokens/s on a 512-token prompt; decode ms/token for 128 tokens after a short prompt;
- the memory floor of decode: the same weight matrices pushed through plain matrix-vector products and nothing
  else (decode is memory-bound: every weight is read once per token); decode is reported as a multiple of it;
- transformers' float32 Llama on the same weights, same threads, same prompt (when transformers is installed), with
  its eager attention (`attn_implementation="eager"`, the baseline of the targets) and with SDPA (its default);
- the sink cache (4 + 1020) at stream positions ~1,100 and ~20,000, the full cache at the same number of cached
  tokens and at ~2,000, the recompute baseline at cache 1024; process memory (RSS) along the stream;
- H2O and TOVA (eviction.py) at a budget of 1024 against the sink cache 4 + 1020, interleaved.
What it does not: assert anything. Targets are printed beside the figures; tests check correctness, not speed.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from .model import linear, load_model

PREFILL_TOKENS, DECODE_TOKENS, SHORT_PROMPT = 512, 128, 16
EVALUATOR_CHUNKS = (128, 256)  # chunk sizes the evaluator is timed at


def median_ms(samples) -> float:
    return 1000 * statistics.median(samples)


def rss_mb() -> float:
    """Resident memory of this process now, in MB (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def prompt_ids(n: int, vocab_size: int, seed: int = 0) -> np.ndarray:
    """Speed does not depend on which tokens: random ids, away from the control tokens (the first ids)."""
    return np.random.default_rng(seed).integers(min(100, vocab_size // 2), vocab_size, n)


def floor_pass(model) -> float:
    """Seconds for one pass of every weight matrix through a matrix-vector product: decode's memory floor."""
    x = {}
    start = time.perf_counter()
    for layer in model.layers:
        for w in (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj):
            if w.shape[1] not in x:
                x[w.shape[1]] = np.ones((1, w.shape[1]), dtype=np.float32)
            linear(x[w.shape[1]], w, None)
    linear(np.ones((1, model.lm_head.shape[1]), dtype=np.float32), model.lm_head, None)
    return time.perf_counter() - start


def decode_steps(model, cache, n: int, floor: bool = False):
    """Time n single-token forwards (and, if asked, a floor pass after each, so both see the same noise)."""
    steps, floors = [], []
    for token in prompt_ids(n, model.config.vocab_size, seed=1):
        start = time.perf_counter()
        model.forward([int(token)], cache)
        steps.append(time.perf_counter() - start)
        if floor:
            floors.append(floor_pass(model))
    return steps, floors


def bench_minisink(path, repeats: int = 3) -> dict:
    loads = []
    for _ in range(repeats):
        start = time.perf_counter()
        model = load_model(path)
        loads.append(time.perf_counter() - start)
    ids = prompt_ids(PREFILL_TOKENS, model.config.vocab_size)
    prefill = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.forward(ids, model.new_cache())
        prefill.append(time.perf_counter() - start)
    steps, floors = [], []
    for _ in range(repeats):
        cache = model.new_cache()
        model.forward(ids[:SHORT_PROMPT], cache)
        s, f = decode_steps(model, cache, DECODE_TOKENS, floor=True)
        steps += s
        floors += f
    return {"model": model, "load_s": statistics.median(loads), "prefill_tok_s": PREFILL_TOKENS / statistics.median(prefill),
            "decode_ms": median_ms(steps), "floor_ms": median_ms(floors)}


def bench_transformers(path, attention: str, repeats: int = 3) -> dict | None:
    """transformers' Llama with the given `attn_implementation` ("eager": its plain PyTorch attention; "sdpa":
    torch's fused scaled_dot_product_attention, its default)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        return None
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attention).eval()
    vocab = model.config.vocab_size
    ids = torch.tensor(prompt_ids(PREFILL_TOKENS, vocab))[None]
    prefill, steps = [], []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            model(ids, use_cache=False)
            prefill.append(time.perf_counter() - start)
        for _ in range(repeats):
            cache = model(ids[:, :SHORT_PROMPT], use_cache=True).cache
            for token in prompt_ids(DECODE_TOKENS, vocab, seed=1):  # the tokens minisink's decode_steps feeds
                token = torch.tensor([[int(token)]])
                start = time.perf_counter()
                cache = model(token, cache=cache, use_cache=True).cache
                steps.append(time.perf_counter() - start)
    return {"attention": model.config._attn_implementation,  # what transformers actually ran
            "prefill_tok_s": PREFILL_TOKENS / statistics.median(prefill), "decode_ms": median_ms(steps)}


def fill(model, cache, n: int):
    """Stream n tokens into a cache in prefill chunks (exact for every cache: see model.forward)."""
    model.forward(prompt_ids(n, model.config.vocab_size, seed=2), cache)


def bench_caches(model, quick: bool) -> dict:
    """Decode cost of the sink cache along a long stream, against the full cache and the recompute baseline."""
    S, W = 4, 1020
    out = {}
    sink = model.new_cache(n_sink=S, window=W)
    fill(model, sink, 1100)
    out["sink_1100_ms"] = median_ms(decode_steps(model, sink, 32)[0])
    out["rss_1100_mb"], out["sink_cache_mb"] = rss_mb(), (sink.keys.nbytes + sink.values.nbytes) / 2**20
    full = model.new_cache()
    fill(model, full, S + W)
    out["full_1024_ms"] = median_ms(decode_steps(model, full, 32)[0])
    fill(model, full, 2000 - (S + W) - 32)
    out["full_2000_ms"] = median_ms(decode_steps(model, full, 32)[0])
    del full
    if not quick:
        fill(model, sink, 20000 - 1100 - 32)
        out["sink_20000_ms"] = median_ms(decode_steps(model, sink, 32)[0])
        out["rss_20000_mb"] = rss_mb()
    recompute = model.new_cache(window=S + W, recompute=True)
    for token in prompt_ids(S + W - 1, model.config.vocab_size, seed=2):  # it holds ids: fill it without forwards
        recompute.remember(token)
    out["recompute_1024_ms"] = median_ms(decode_steps(model, recompute, 3)[0])
    return out


def bench_evaluator(model, single: int = 256, chunks: int = 3, sizes=EVALUATOR_CHUNKS) -> dict:
    """The fast exact evaluator (evaluate.stream_nll) on a sink cache 4 + 1020 in steady state (filled past 1,024):
    ms per token fed token by token (`single` steps) against fed in chunks of each size (`chunks` of them).
    Both score every token (log-softmax included); tests/test_evaluate.py shows they give the same NLLs."""
    from .evaluate import stream_nll

    cache = model.new_cache(n_sink=4, window=1020)
    fill(model, cache, 1100)
    ids = prompt_ids(single + 1, model.config.vocab_size, seed=3)
    start = time.perf_counter()
    stream_nll(model, ids, cache, chunk=1)
    out = {"token_ms": 1000 * (time.perf_counter() - start) / single}
    for size in sizes:
        ids = prompt_ids(chunks * size + 1, model.config.vocab_size, seed=4)
        start = time.perf_counter()
        stream_nll(model, ids, cache, chunk=size)
        out[size] = 1000 * (time.perf_counter() - start) / (chunks * size)
    return out


def bench_eviction(model, budget: int = 1024, rounds: int = 24) -> dict:
    """Decode ms/token of the policies that read attention (eviction.py) against the sink cache, all at a total
    budget of `budget` tokens and filled past it: one step of each cache in turn per round (interleaved, so they
    see the same machine noise), medians; and the ratio of each to the sink cache."""
    caches = {"sink": model.new_cache(n_sink=4, window=budget - 4), "h2o": model.new_cache(policy="h2o", budget=budget),
              "tova": model.new_cache(policy="tova", budget=budget)}
    for cache in caches.values():
        fill(model, cache, budget + 76)
    steps = {name: [] for name in caches}
    for token in prompt_ids(rounds, model.config.vocab_size, seed=5):
        for name, cache in caches.items():
            start = time.perf_counter()
            model.forward([int(token)], cache)
            steps[name].append(time.perf_counter() - start)
    ms = {name: median_ms(s) for name, s in steps.items()}
    return {**ms, **{f"{name}/sink": ms[name] / ms["sink"] for name in ("h2o", "tova")}}


def print_transformers(path, m: dict):
    """transformers' figures and minisink's speed ratios to them: the targets are set against its eager model."""
    for attention in ("eager", "sdpa"):
        t = bench_transformers(path, attention)
        if t is None:
            print("transformers not installed: pip install 'minisink[oracle]' for the comparison")
            return
        target = attention == "eager"
        print(f"transformers fp32, {t['attention'] + ' attention':<15} prefill {t['prefill_tok_s']:.1f} tok/s, "
              f"decode {t['decode_ms']:.2f} ms/token")
        print(f"  prefill speed ratio     {m['prefill_tok_s'] / t['prefill_tok_s']:7.2f} x" +
              ("        (target >= 1.0)" if target else ""))
        print(f"  decode speed ratio      {t['decode_ms'] / m['decode_ms']:7.2f} x" +
              ("        (target >= 1.5)" if target else ""))


def run_bench(path, quick: bool = False):
    print(f"minisink bench on {path} (medians; ratios are measured in this run)\n")
    m = bench_minisink(path)
    model = m["model"]
    print(f"load                      {m['load_s']:7.2f} s          (target < 2 s)")
    print(f"prefill, 512 tokens       {m['prefill_tok_s']:7.1f} tok/s")
    print(f"decode, short context     {m['decode_ms']:7.2f} ms/token = {1000 / m['decode_ms']:.1f} tok/s")
    print(f"memory floor (matvecs)    {m['floor_ms']:7.2f} ms/token")
    print(f"  decode / floor          {m['decode_ms'] / m['floor_ms']:7.3f} x        (target <= 1.11)")
    if not quick:
        print_transformers(path, m)
    c = bench_caches(model, quick)
    print(f"\nsink cache 4+1020 ({c['sink_cache_mb']:.0f} MB of keys and values, fixed at construction)")
    print(f"  decode at ~1,100        {c['sink_1100_ms']:7.2f} ms/token   RSS {c['rss_1100_mb']:.0f} MB")
    if "sink_20000_ms" in c:
        print(f"  decode at ~20,000       {c['sink_20000_ms']:7.2f} ms/token   RSS {c['rss_20000_mb']:.0f} MB")
        print(f"  20,000 / 1,100          {c['sink_20000_ms'] / c['sink_1100_ms']:7.3f} x        (target <= 1.1)")
        print(f"  memory 20,000 / 1,100   {c['rss_20000_mb'] / c['rss_1100_mb']:7.3f} x        (target within 5%)")
    print(f"full cache, 1,024 cached  {c['full_1024_ms']:7.2f} ms/token")
    print(f"  sink speed / full       {c['full_1024_ms'] / c['sink_1100_ms']:7.2f} x        (target >= 0.9)")
    print(f"full cache, ~2,000 cached {c['full_2000_ms']:7.2f} ms/token")
    print(f"recompute, window 1024    {c['recompute_1024_ms']:7.1f} ms/token")
    print(f"  recompute / sink        {c['recompute_1024_ms'] / c['sink_1100_ms']:7.1f} x        (target >= 20)")
    v = bench_eviction(model)
    print(f"\npolicies that read attention, budget 1024, decode (interleaved with the sink cache, medians)")
    for name in ("h2o", "tova"):
        print(f"  {name:<5} {v[name]:7.2f} ms/token = {v[name + '/sink']:.2f} x the sink cache's {v['sink']:.2f}"
              "  (target <= 1.5)")
    e = bench_evaluator(model)
    print(f"\nevaluator, sink cache 4+1020 in steady state (stream_nll: the same NLLs either way)")
    print(f"  token by token          {e['token_ms']:7.2f} ms/token")
    for size in EVALUATOR_CHUNKS:
        print(f"  chunks of {size:<4}          {e[size]:7.2f} ms/token = {e['token_ms'] / e[size]:.1f} x faster"
              "  (target >= 10)")
