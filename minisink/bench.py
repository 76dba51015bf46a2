"""`minisink bench`: speed and memory, reported as ratios measured in one run (these machines are noisy).

It opens with the speed table of the cases users spend their time in (each a ratio within this run, with its
target), then the details. What it measures on a model folder (the default model unless told otherwise), each a
median of several runs:
- decode with a full 4 + 1020 sink cache against decode at a 16-token context, token by token interleaved; and the
  attention part of the full-cache step against reading the cache's keys and values once (its read floor);
- load time, with and without the check that every weight is finite; prefill tokens/s on a 512-token prompt;
  decode ms/token for 128 tokens after a short prompt;
- the memory floor of decode: the same weight matrices pushed through plain matrix-vector products and nothing
  else (decode is memory-bound: every weight is read once per token); decode is reported as a multiple of it;
- transformers' float32 Llama on the same weights, same threads, same prompt (when transformers is installed), with
  its eager attention (`attn_implementation="eager"`, the baseline of the targets) and with SDPA (its default);
- the sink cache (4 + 1020) at stream positions ~1,100 and ~20,000, the full cache at the same number of cached
  tokens and at ~2,000, the recompute baseline at cache 1024; process memory (RSS) along the stream;
- decode beside one busy process (a child spinning in a loop) against quiet, with the automatic choice of BLAS
  threads (threads.py), and with the BLAS's default thread count fixed for comparison.
- H2O and TOVA (eviction.py) at a budget of 1024 against the sink cache 4 + 1020, interleaved.
What it does not: assert anything. Targets are printed beside the figures; tests check correctness, not speed.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time
from pathlib import Path

import numpy as np

from .config import LlamaConfig
from .evaluate import logits
from .model import Llama, attention, linear, load_model
from .rope import apply_rope
from .weights import load_weights
from .spec import new_cache

PREFILL_TOKENS, DECODE_TOKENS, SHORT_PROMPT = 512, 128, 16
EVALUATOR_CHUNKS = (128, 256)  # chunk sizes the evaluator is timed at


def median_ms(samples) -> float:
    return 1000 * statistics.median(samples)


def rss_mb() -> float:
    """Resident memory of this process now, in MiB (Linux /proc; 0 elsewhere)."""
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
        logits(model, [int(token)], cache)  # the recompute baseline too
        steps.append(time.perf_counter() - start)
        if floor:
            floors.append(floor_pass(model))
    return steps, floors


def load_unchecked(path):
    """load_model without the check that every weight is finite: what that check costs is load_model's time
    minus this one's."""
    config = LlamaConfig.from_file(Path(path))
    return Llama(config, load_weights(path, config, check_finite=False))


def bench_minisink(path, repeats: int = 3) -> dict:
    loads, unchecked = [], []
    for _ in range(2 * repeats + 1):  # interleaved, so both see the same noise
        for load, times in ((load_model, loads), (load_unchecked, unchecked)):
            model = None  # one model in memory at a time
            start = time.perf_counter()
            model = load(path)
            times.append(time.perf_counter() - start)
    ids = prompt_ids(PREFILL_TOKENS, model.config.vocab_size)
    prefill = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.forward(ids, new_cache(model))
        prefill.append(time.perf_counter() - start)
    steps, floors = [], []
    for _ in range(repeats):
        cache = new_cache(model)
        model.forward(ids[:SHORT_PROMPT], cache)
        s, f = decode_steps(model, cache, DECODE_TOKENS, floor=True)
        steps += s
        floors += f
    return {"model": model, "load_s": statistics.median(loads), "unchecked_load_s": statistics.median(unchecked),
            "prefill_tok_s": PREFILL_TOKENS / statistics.median(prefill),
            "decode_ms": median_ms(steps), "floor_ms": median_ms(floors)}


def bench_sink_logits(model, n: int = DECODE_TOKENS) -> dict:
    """Decode with and without sink logits (docs/07-why-sinks-exist.md), interleaved step by step on two caches
    after the same short prompt, so both see the same noise: median ms/token of each."""
    c = model.config
    sigma = np.random.default_rng(5).normal(3, 1, (c.num_hidden_layers, c.num_attention_heads)).astype(np.float32)
    ids = prompt_ids(SHORT_PROMPT, c.vocab_size)
    caches = {"default": new_cache(model), "sink_logits": new_cache(model)}
    times = {name: [] for name in caches}
    saved = model.sink_logits
    try:
        for name, cache in caches.items():
            model.sink_logits = sigma if name == "sink_logits" else None
            model.forward(ids, cache)
        for token in prompt_ids(n, c.vocab_size, seed=1):
            for name, cache in caches.items():
                model.sink_logits = sigma if name == "sink_logits" else None
                start = time.perf_counter()
                model.forward([int(token)], cache)
                times[name].append(time.perf_counter() - start)
    finally:
        model.sink_logits = saved
    return {name: median_ms(t) for name, t in times.items()}


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
    sink = new_cache(model, "sink", sinks=S, window=W)
    fill(model, sink, 1100)
    out["sink_1100_ms"] = median_ms(decode_steps(model, sink, 32)[0])
    out["rss_1100_mb"], out["sink_cache_mb"] = rss_mb(), (sink.keys.nbytes + sink.values.nbytes) / 2**20
    full = new_cache(model)
    fill(model, full, S + W)
    out["full_1024_ms"] = median_ms(decode_steps(model, full, 32)[0])
    fill(model, full, 2000 - (S + W) - 32)
    out["full_2000_ms"] = median_ms(decode_steps(model, full, 32)[0])
    del full
    if not quick:
        fill(model, sink, 20000 - 1100 - 32)
        out["sink_20000_ms"] = median_ms(decode_steps(model, sink, 32)[0])
        out["rss_20000_mb"] = rss_mb()
    recompute = new_cache(model, "recompute", window=S + W)
    for token in prompt_ids(S + W - 1, model.config.vocab_size, seed=2):  # it holds ids: fill it without forwards
        recompute.remember(token)
    out["recompute_1024_ms"] = median_ms(decode_steps(model, recompute, 3)[0])
    return out


def attention_step(model, cache, rng) -> float:
    """Seconds for the attention part of one decode step: `begin`, then per layer the cache's blocks and
    `attention` for random q, k, v. No `end`, so the cache holds what it held (the cache protocol)."""
    c = model.config
    H, Hkv, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    q, k, v = (rng.standard_normal((c.num_hidden_layers, 1, n, D)).astype(np.float32) for n in (H, Hkv, Hkv))
    start = time.perf_counter()
    rotation = cache.begin(1)
    for layer in range(c.num_hidden_layers):
        attention(apply_rope(q[layer], rotation), cache.blocks(layer, apply_rope(k[layer], rotation), v[layer]), Hkv)
    return time.perf_counter() - start


def read_pass(cache) -> float:
    """Seconds to read a cache's keys and values once, each layer's through one matrix-vector product: the floor
    of attention over all of them."""
    keys, values = cache.keys, cache.values  # [layers, Hkv, D, slots], [layers, Hkv, slots, D]
    x_k, x_v = np.ones(keys.shape[-1], np.float32), np.ones(values.shape[1] * values.shape[2], np.float32)
    start = time.perf_counter()
    for layer in range(len(keys)):
        keys[layer].reshape(-1, keys.shape[-1]) @ x_k
        x_v @ values[layer].reshape(-1, values.shape[-1])
    return time.perf_counter() - start


def bench_full_step(model, n: int = 64) -> dict:
    """Decode with a full 4 + 1020 sink cache against decode at a 16-token context (the bench's short-context
    decode, a fresh 16-token prompt every 16 tokens), one token of each in turn so that both see the same noise;
    then the attention part of the full-cache step against its read floor, also in turn, each right after a pass
    over the weights, so that both read the keys and values from memory, as a decode step does."""
    sink = new_cache(model, "sink", sinks=4, window=1020)
    fill(model, sink, 1100)
    full, short, attn, read = [], [], [], []
    rng = np.random.default_rng(5)
    for i, token in enumerate(prompt_ids(n, model.config.vocab_size, seed=1)):
        if i % SHORT_PROMPT == 0:
            context = new_cache(model)
            model.forward(prompt_ids(SHORT_PROMPT, model.config.vocab_size), context)
        for cache, times in ((sink, full), (context, short)):
            start = time.perf_counter()
            model.forward([int(token)], cache)
            times.append(time.perf_counter() - start)
        floor_pass(model)  # 513 MiB through the caches, as a decode step's weights
        attn.append(attention_step(model, sink, rng))
        floor_pass(model)
        read.append(read_pass(sink))
    return {"full_ms": median_ms(full), "short_ms": median_ms(short), "attention_ms": median_ms(attn),
            "read_ms": median_ms(read), "kv_mb": (sink.keys.nbytes + sink.values.nbytes) / 2**20}


def bench_evaluator(model, single: int = 256, chunks: int = 3, sizes=EVALUATOR_CHUNKS) -> dict:
    """The fast exact evaluator (evaluate.stream_nll) on a sink cache 4 + 1020 in steady state (filled past 1,024):
    ms per token fed token by token (`single` steps) against fed in chunks of each size (`chunks` of them).
    Both score every token (log-softmax included); tests/test_evaluate.py shows they give the same NLLs."""
    from .evaluate import stream_nll

    cache = new_cache(model, "sink", sinks=4, window=1020)
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


# The busy neighbour: `while True: pass`, checking every million turns that its parent is alive, so that it does not
# outlive a bench that is killed.
SPINNER = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    for _ in range(10**6): pass\n"


def bench_busy_machine(model, tokens: int = 64, rounds: int = 2) -> dict:
    """Decode (short context, `generate` with its automatic BLAS thread choice, threads.py) beside one busy
    process, a child spinning `while True: pass` for the duration, against the same decode with nothing beside it;
    and, for comparison, busy with the BLAS's own default thread count fixed. Interleaved, medians of ms/token."""
    import subprocess
    import sys

    from .generate import generate
    from .threads import blas_threads

    default = blas_threads()

    def decode_ms(threads) -> float:
        ids = prompt_ids(SHORT_PROMPT, model.config.vocab_size)
        steps = generate(model, ids, new_cache(model), tokens + 1, threads=threads)
        next(steps)  # the prompt is in
        start = time.perf_counter()
        for _ in steps:
            pass
        return 1000 * (time.perf_counter() - start) / tokens

    out = {"quiet": [], "busy": [], "busy_fixed": []}
    for _ in range(rounds):
        out["quiet"].append(decode_ms("auto"))
        spinner = subprocess.Popen([sys.executable, "-c", SPINNER])
        try:
            out["busy"].append(decode_ms("auto"))
            out["busy_fixed"].append(decode_ms(default))
        finally:
            spinner.kill()
            spinner.wait()
    return {name: statistics.median(ms) for name, ms in out.items()} | {"default_threads": default}


def bench_eviction(model, budget: int = 1024, rounds: int = 24) -> dict:
    """Decode ms/token of the policies that read attention (eviction.py) against the sink cache, all at a total
    budget of `budget` tokens and filled past it: one step of each cache in turn per round (interleaved, so they
    see the same machine noise), medians; and the ratio of each to the sink cache."""
    caches = {"sink": new_cache(model, "sink", sinks=4, window=budget - 4),
              "h2o": new_cache(model, "h2o", budget=budget), "tova": new_cache(model, "tova", budget=budget)}
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


def print_transformers(path, m: dict) -> dict | None:
    """transformers' figures and minisink's speed ratios to them: the targets are set against its eager model.
    Returns the eager figures (None without transformers)."""
    eager = None
    for attention_name in ("eager", "sdpa"):
        t = bench_transformers(path, attention_name)
        if t is None:
            print("transformers not installed: pip install 'minisink[oracle]' for the comparison")
            return None
        target = attention_name == "eager"
        eager = t if target else eager
        print(f"transformers fp32, {t['attention'] + ' attention':<15} prefill {t['prefill_tok_s']:.1f} tok/s, "
              f"decode {t['decode_ms']:.2f} ms/token")
        print(f"  prefill speed ratio     {m['prefill_tok_s'] / t['prefill_tok_s']:7.2f} x" +
              ("        (target >= 1.0)" if target else ""))
        print(f"  decode speed ratio      {t['decode_ms'] / m['decode_ms']:7.2f} x" +
              ("        (target >= 1.5)" if target else ""))
    return eager


def print_speed_table(m: dict, f: dict, e: dict, b: dict, eager: dict | None):
    """The cases users spend their time in, each a ratio measured in this run against its target."""
    chunk = 256 if 256 in e else max(e.keys() - {"token_ms"})
    rows = [
        ("decode, full 4+1020 sink cache / 16-token context", f["full_ms"] / f["short_ms"], "<= 1.12",
         f"{f['full_ms']:.2f} / {f['short_ms']:.2f} ms"),
        (f"  its attention / reading its K, V once ({f['kv_mb']:.0f} MiB)", f["attention_ms"] / f["read_ms"], "<= 2",
         f"{f['attention_ms']:.2f} / {f['read_ms']:.2f} ms"),
        (f"chunked evaluator (4+1020, chunks of {chunk}) / prefill, tok/s", (1000 / e[chunk]) / m["prefill_tok_s"],
         ">= 0.75", f"{1000 / e[chunk]:.0f} / {m['prefill_tok_s']:.0f} tok/s"),
        ("decode beside one busy process / quiet", b["quiet"] / b["busy"], ">= 0.45",
         f"{b['busy']:.2f} / {b['quiet']:.2f} ms"),
        ("prefill, 512 tokens / transformers eager",
         None if eager is None else m["prefill_tok_s"] / eager["prefill_tok_s"], ">= 1.0",
         "needs transformers (and no --quick)" if eager is None else
         f"{m['prefill_tok_s']:.0f} / {eager['prefill_tok_s']:.0f} tok/s"),
        ("decode, short context / memory floor", m["decode_ms"] / m["floor_ms"], "<= 1.15",
         f"{m['decode_ms']:.2f} / {m['floor_ms']:.2f} ms"),
    ]
    print(f"{'case':<58} {'ratio':>7}   target    figures")
    for name, ratio, target, figures in rows:
        print(f"{name:<58} {'n/a' if ratio is None else f'{ratio:.3f}':>7}   {target:<9} {figures}")


def bench_training_step(quick: bool, repeats: int = 3, layers: int = 1, hidden: int = 256, heads: int = 1,
                        seq_len: int = 64, batch: int = 64) -> dict:
    """One training step (forward + backward + clipping + AdamW) of the class preset's model (docs/08-growing-a-sink.md)
    on a random batch: minisink against transformers' eager LlamaForCausalLM with torch.optim.AdamW on the same
    weights, batch and BLAS threads (torch's part skipped with --quick or without torch), interleaved; and
    minisink's peak memory during the step (tracemalloc: NumPy reports its allocations to it; the weights and
    AdamW's moments exist before it) against an estimate from the shapes: the gradients (one float per parameter),
    each layer's saved activations (about 11 [N, d_model] arrays, gate_up [N, 2I] and act [N, I], the attention
    probabilities and scores [B, H, T, T]), the logits and their softmax [N, V]."""
    import tracemalloc

    from .config import LlamaConfig
    from .train import AdamW, TrainSettings, clip_grad_norm, init_weights, loss_and_grads, model_config

    s = TrainSettings(layers=layers, hidden=hidden, heads=heads, seq_len=seq_len, batch=batch)
    raw = model_config(s, 67, 65, None)  # Guo et al.'s 67 symbols
    config = LlamaConfig.from_dict(raw)
    weights = init_weights(config, np.random.default_rng(0))
    ids = np.random.default_rng(1).integers(0, 65, (batch, seq_len + 1))  # [B, T + 1]
    model = Llama(config, {k: v.copy() for k, v in weights.items()})
    opt = AdamW(model.parameters())

    def ours():
        loss, grads = loss_and_grads(model, ids)
        clip_grad_norm(grads, 1.0)
        opt.step(grads, 1e-3)

    theirs = None
    if not quick:
        try:
            import torch
            from transformers import LlamaConfig as HFConfig
            from transformers import LlamaForCausalLM
        except ImportError:
            torch = None
        if torch is not None:
            torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
            hf = LlamaForCausalLM(HFConfig(**{k: v for k, v in raw.items() if k != "attention_variant"},
                                           attn_implementation="eager")).float()
            hf.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
            torch_opt = torch.optim.AdamW(hf.parameters(), lr=1e-3)
            t_ids = torch.from_numpy(ids)

            def theirs():
                out = hf(input_ids=t_ids[:, :-1], labels=t_ids[:, :-1])  # shifted inside: same targets as ours
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
                torch_opt.step()
                torch_opt.zero_grad()

    times = {"ours": [], "theirs": []}
    for _ in range(repeats + 1):  # the first round warms both up and is not counted
        for name, step in (("ours", ours), ("theirs", theirs)):
            if step is not None:
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    ours()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    N, d, width, V = batch * seq_len, hidden, config.intermediate_size, config.vocab_size
    P = sum(w.size for w in weights.values())
    per_layer = 11 * N * d + 3 * N * width + 2 * batch * heads * seq_len * seq_len  # saved activations, in floats
    estimate = 4 * (P + layers * per_layer + 2 * N * V)  # bytes: gradients, activations, logits and softmax
    tokens = batch * seq_len
    return {"ours_tok_s": tokens / statistics.median(times["ours"][1:]),
            "theirs_tok_s": tokens / statistics.median(times["theirs"][1:]) if times["theirs"] else None,
            "peak_mb": peak / 2 ** 20, "estimate_mb": estimate / 2 ** 20,
            "shape": f"{layers} layer, width {hidden}, {heads} head, batch {batch} x {seq_len} tokens"}


def print_training_step(quick: bool) -> None:
    t = bench_training_step(quick, repeats=1, batch=8) if quick else bench_training_step(quick)
    print(f"\ntraining step ({t['shape']}: forward + backward + AdamW, docs/08-growing-a-sink.md)")
    print(f"  minisink                {t['ours_tok_s']:7.0f} tokens/s")
    if t["theirs_tok_s"] is None:
        print("  transformers eager      skipped (--quick, or torch/transformers not installed)")
    else:
        print(f"  transformers eager      {t['theirs_tok_s']:7.0f} tokens/s")
        print(f"  minisink / torch        {t['ours_tok_s'] / t['theirs_tok_s']:7.2f} x        (target >= 0.8)")
    print(f"  peak memory of a step   {t['peak_mb']:7.1f} MB   estimate from the shapes {t['estimate_mb']:.1f} MB "
          f"(activations, gradients, logits; the weights and AdamW's moments exist before the step)")


def run_bench(path, quick: bool = False):
    print(f"minisink bench on {path} (medians; ratios are measured in this run)\n")
    m = bench_minisink(path)
    model = m["model"]
    f = bench_full_step(model, 32 if quick else 96)
    e = bench_evaluator(model)
    b = bench_busy_machine(model)
    details = io.StringIO()  # measured first, printed after the speed table
    with contextlib.redirect_stdout(details):
        eager = None if quick else print_transformers(path, m)
    print_speed_table(m, f, e, b, eager)
    print()
    print(f"load                      {m['load_s']:7.2f} s          (target < 2 s)")
    print(f"  the finite check's cost {m['load_s'] / m['unchecked_load_s'] - 1:+7.1%}  of a load without it "
          f"({m['unchecked_load_s']:.3f} s; target <= 5%)")
    print(f"prefill, 512 tokens       {m['prefill_tok_s']:7.1f} tok/s")
    print(f"decode, short context     {m['decode_ms']:7.2f} ms/token = {1000 / m['decode_ms']:.1f} tok/s")
    print(f"memory floor (matvecs)    {m['floor_ms']:7.2f} ms/token")
    print(f"  decode / floor          {m['decode_ms'] / m['floor_ms']:7.3f} x        (target <= 1.15: a decode step "
          "stripped to the fewest NumPy calls reached 1.15x here)")
    print(details.getvalue(), end="")
    print(f"decode, full sink cache   {f['full_ms']:7.2f} ms/token   (4+1020, interleaved with the short context)")
    print(f"  attention part          {f['attention_ms']:7.2f} ms/token   read floor {f['read_ms']:.2f} ms "
          f"({f['kv_mb']:.0f} MiB of keys and values)")
    s = bench_sink_logits(model)
    print(f"decode with sink logits   {s['sink_logits']:7.2f} ms/token = {s['sink_logits'] / s['default']:.3f} x "
          f"default ({s['default']:.2f}, interleaved)  (target <= 1.03)")
    c = bench_caches(model, quick)
    print(f"\nsink cache 4+1020 ({c['sink_cache_mb']:.0f} MiB of keys and values, fixed at construction)")
    print(f"  decode at ~1,100        {c['sink_1100_ms']:7.2f} ms/token   RSS {c['rss_1100_mb']:.0f} MiB")
    if "sink_20000_ms" in c:
        print(f"  decode at ~20,000       {c['sink_20000_ms']:7.2f} ms/token   RSS {c['rss_20000_mb']:.0f} MiB")
        print(f"  20,000 / 1,100          {c['sink_20000_ms'] / c['sink_1100_ms']:7.3f} x        (target <= 1.1)")
        print(f"  memory 20,000 / 1,100   {c['rss_20000_mb'] / c['rss_1100_mb']:7.3f} x        (target within 5%)")
    print(f"full cache, 1,024 cached  {c['full_1024_ms']:7.2f} ms/token")
    print(f"  sink speed / full       {c['full_1024_ms'] / c['sink_1100_ms']:7.2f} x        (target >= 0.9)")
    print(f"full cache, ~2,000 cached {c['full_2000_ms']:7.2f} ms/token")
    print(f"recompute, window 1024    {c['recompute_1024_ms']:7.1f} ms/token")
    print(f"  recompute / sink        {c['recompute_1024_ms'] / c['sink_1100_ms']:7.1f} x        (target >= 20)")
    print("\ndecode beside one busy process (a child spinning `while True: pass`), automatic BLAS threads")
    print(f"  quiet                   {b['quiet']:7.2f} ms/token")
    print(f"  busy                    {b['busy']:7.2f} ms/token")
    print(f"  busy / quiet speed      {b['quiet'] / b['busy']:7.2f} x        (target >= 0.45)")
    print(f"  busy, {b['default_threads']} threads fixed   {b['quiet'] / b['busy_fixed']:7.2f} x        "
          "(the BLAS's default, for comparison)")
    print_training_step(quick)
    v = bench_eviction(model)
    print("\npolicies that read attention, budget 1024, decode (interleaved with the sink cache, medians)")
    for name in ("h2o", "tova"):
        print(f"  {name:<5} {v[name]:7.2f} ms/token = {v[name + '/sink']:.2f} x the sink cache's {v['sink']:.2f}"
              "  (target <= 1.5)")
    print("\nevaluator, sink cache 4+1020 in steady state (stream_nll: the same NLLs either way)")
    print(f"  token by token          {e['token_ms']:7.2f} ms/token")
    for size in EVALUATOR_CHUNKS:
        print(f"  chunks of {size:<4}          {e[size]:7.2f} ms/token = {e['token_ms'] / e[size]:.1f} x faster"
              "  (target >= 10)")
