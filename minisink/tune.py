"""`minisink tune`: which cache fits a memory budget best, on the user's own text.

What it does: sweeps the policies the fast exact evaluator serves (window attention and the sink cache, S sinks
in SINKS) over total cache sizes from 64 tokens up to what `budget_mb` holds (keys and values: layers x 2 x Hkv x
D x 4 bytes per token, 46 KB for SmolLM2), scores the text with each (evaluate.stream_nll, fed in chunks: the same
NLLs as token by token), and prints the Pareto table (no other setting is smaller, better and faster at once)
and a recommendation: the smallest cache whose perplexity is within `tolerance` of the best one measured.
A budget is checked before anything runs: at most MEMORY_SHARE of the available memory (`--budget-mb 1e30` is
refused at once, not after allocating caches for 25 s); sizes stop at the text's length (a cache that holds the
whole text is dense attention, a larger one the same scores at more memory).
What it does not: h2o and tova (they must be fed token by token: `minisink ppl --policy h2o` scores them), nor
promise that the ranking carries over to another text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .cache import available_memory, kv_bytes_per_token
from .evaluate import perplexity, stream_nll
from .spec import new_cache

SINKS = (0, 1, 4)  # 0 is window attention
SMALLEST = 64  # tokens: the first cache size tried
MEMORY_SHARE = 0.5  # the budget may take at most this share of the available memory


@dataclass
class Setting:
    sinks: int
    window: int
    memory_mb: float  # keys and values of the cache
    perplexity: float
    tokens_per_s: float

    @property
    def name(self) -> str:
        return f"window {self.window}" if self.sinks == 0 else f"sink {self.sinks} + {self.window}"


def cache_sizes(max_tokens: int) -> list[int]:
    """64, 128, 256, ... and the largest size that fits."""
    if max_tokens < SMALLEST:
        return []
    sizes = [SMALLEST]
    while sizes[-1] * 2 <= max_tokens:
        sizes.append(sizes[-1] * 2)
    return sizes + ([max_tokens] if sizes[-1] != max_tokens else [])


def sweep(model, ids, budget_mb: float, chunk: int = 256,
          progress: Callable[[int, int, Setting], None] | None = None) -> list[Setting]:
    """Every (sinks, cache size) within the budget, scored on ids; `progress(done, total, setting)` after each."""
    check_budget(budget_mb)
    per_token = kv_bytes_per_token(model.config)
    max_tokens = int(budget_mb * 2**20 // per_token)
    sizes = cache_sizes(min(max_tokens, max(len(ids), SMALLEST)))
    if not sizes:
        raise ValueError(f"--budget-mb {budget_mb} holds {max_tokens} tokens of keys and values "
                         f"({per_token / 1024:.0f} KiB each): give at least {SMALLEST * per_token / 2**20:.1f} MB")
    plan = [(s, size) for size in sizes for s in SINKS]
    out = []
    for done, (sinks, size) in enumerate(plan, 1):
        cache = new_cache(model, "sink", sinks=sinks, window=size - sinks)
        start = time.perf_counter()
        nll = stream_nll(model, ids, cache, chunk)
        seconds = time.perf_counter() - start
        out.append(Setting(sinks, size - sinks, size * per_token / 2**20, perplexity(nll), len(nll) / seconds))
        if progress:
            progress(done, len(plan), out[-1])
    return out


def check_budget(budget_mb: float, available: int | None = None):
    """Raise a ValueError now if `budget_mb` is not a number of MB that MEMORY_SHARE of the available memory
    (`available` bytes; default: what the system says) can hold."""
    if not 0 < budget_mb < float("inf"):
        raise ValueError(f"--budget-mb must be a finite number > 0, got {budget_mb}")
    available = available_memory() if available is None else available
    if available is not None and budget_mb * 2**20 > MEMORY_SHARE * available:
        raise ValueError(f"--budget-mb {budget_mb:g} is more than {MEMORY_SHARE:.0%} of the "
                         f"{available / 2**20:,.0f} MB of memory available: give at most "
                         f"{MEMORY_SHARE * available / 2**20:,.0f}")


def pareto(settings: list[Setting]) -> list[Setting]:
    """The settings no other one beats on memory, perplexity and speed at once (not worse on all, better on one)."""
    def beats(a, b):
        no_worse = a.memory_mb <= b.memory_mb and a.perplexity <= b.perplexity and a.tokens_per_s >= b.tokens_per_s
        return no_worse and (a.memory_mb, a.perplexity, -a.tokens_per_s) != (b.memory_mb, b.perplexity, -b.tokens_per_s)
    front = [s for s in settings if not any(beats(o, s) for o in settings)]
    return sorted(front, key=lambda s: (s.memory_mb, s.perplexity))


def recommend(settings: list[Setting], tolerance: float = 0.01) -> Setting:
    """The smallest cache whose perplexity is within `tolerance` (relative) of the best measured."""
    best = min(s.perplexity for s in settings)
    good = [s for s in settings if s.perplexity <= best * (1 + tolerance)]
    return min(good, key=lambda s: (s.memory_mb, s.perplexity))


def format_table(settings: list[Setting]) -> str:
    lines = [f"{'setting':<18} {'memory MB':>10} {'perplexity':>11} {'tokens/s':>9}"]
    lines += [f"{s.name:<18} {s.memory_mb:10.1f} {s.perplexity:11.3f} {s.tokens_per_s:9.1f}" for s in settings]
    return "\n".join(lines)
