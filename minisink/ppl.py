"""`minisink ppl`: a long text through one cache, the NLL of every token, a summary and an .npz/.csv of the run.

`run_ppl` streams the ids through the cache of a spec (minisink/spec.py) with evaluate.stream_nll, the fast exact
evaluator; `run_ppl_budgets` runs several h2o/tova budgets in one pass (evaluate.stream_nll_together); `save_run`
writes a run atomically. `renumber=False` (`--no-renumber`) keeps positions in the text: with sinks that is the
paper's ablation; with no sinks it gives the same NLLs exactly (a window's distances are the same in the text and
in the cache, and RoPE sees only distances): a lesson, not an ablation (docs chapter 05).

What it does not: batch several texts, or evaluate the recompute baseline fast (it is O(W^2) per token by design).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_write, check_output_path
from .cache import available_memory, kv_bytes_per_token
from .evaluate import perplexity, stream_nll, stream_nll_together
from .model import PREFILL_CHUNK
from .spec import BY_ATTENTION, CacheSpec, new_cache

MEMORY_SHARE = 0.5  # dense attention uses at most this share of MemAvailable, leaving the rest as headroom


def dense_token_limit(config, chunk: int = PREFILL_CHUNK, available: int | None = None) -> int | None:
    """How many tokens dense attention can stream within MEMORY_SHARE of the available memory (None: unknown).

    Per cached token: its keys and values (kv_bytes_per_token), counted 3 times because FullCache grows by doubling
    and copies while it grows; plus the chunk's scores, chunk * H floats per key (attention makes them once and
    works on them in place)."""
    available = available_memory() if available is None else available
    if available is None:
        return None
    per_token = 3 * kv_bytes_per_token(config) + min(chunk, PREFILL_CHUNK) * config.num_attention_heads * 4
    return int(MEMORY_SHARE * available // per_token)


@dataclass
class PplRun:
    """One `minisink ppl` run: the per-token NLL and everything needed to reproduce it."""

    nll: np.ndarray  # [N - 1] nats, float64: NLL of token i + 1 given the stream up to token i
    spec: CacheSpec
    chunk: int
    seconds: float
    notes: list[str] = field(default_factory=list)  # what was truncated or estimated, for the summary

    @property
    def tokens(self) -> int:
        return len(self.nll) + 1

    @property
    def mode(self) -> str:
        return self.spec.policy

    @property
    def sinks(self) -> int:
        return self.spec.sinks

    @property
    def window(self) -> int | None:
        """The window W, or for h2o and tova the budget N (what a run file stores as `window`)."""
        return self.spec.budget if self.spec.policy in BY_ATTENTION else self.spec.window

    @property
    def renumber(self) -> bool:
        return self.spec.renumber

    @property
    def heavy(self) -> int | None:
        """h2o: the heavy hitters kept among the budget."""
        return self.spec.options.get("heavy", self.spec.budget // 2) if self.spec.policy == "h2o" else None

    def settings(self) -> dict:
        return {"mode": self.mode, "sinks": self.sinks, "window": -1 if self.window is None else self.window,
                "renumber": self.renumber, "chunk": self.chunk, "tokens": self.tokens, "seconds": self.seconds,
                **({} if self.heavy is None else {"heavy": self.heavy})}

    def summary(self, last: int = 1000) -> str:
        lines = [f"{self.spec}, {self.tokens} tokens, chunk {self.chunk}",
                 f"  perplexity               {perplexity(self.nll):10.3f}   (mean NLL {np.mean(self.nll):.4f} nats)"]
        if len(self.nll) > last:
            lines.append(f"  perplexity, last {last:<6}  {perplexity(self.nll[-last:]):10.3f}")
        lines.append(f"  speed                    {len(self.nll) / max(self.seconds, 1e-9):10.1f} tokens/s "
                     f"({self.seconds:.1f} s)")
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def run_ppl(model, ids, spec: CacheSpec | str = "sink", chunk: int = PREFILL_CHUNK, progress: bool = False,
            say: Callable[[str], None] | None = None, prefix=None, **fields) -> PplRun:
    """Stream `ids` through the cache of `spec` (a CacheSpec, or a policy name with the spec's fields: sinks,
    window, budget, renumber, heavy) and record every token's NLL (see evaluate.stream_nll).

    dense stops at `dense_token_limit` tokens if the text is longer (a note says so). recompute runs one dense
    forward over the window per token: an estimate of its cost is passed to `say` before it starts. h2o and tova
    decide which tokens to keep after every token, so they are fed token by token (a chunk of T tokens would make
    one decision for all T: a different computation, see eviction.py).
    `prefix` (token ids) is fed before the text and never scored, so the NLLs are those of the same text tokens
    as without it: the paper's Table 1, where the sinks are a fixed prefix such as four "\\n" (a sink spec given by
    name then defaults to as many sinks as the prefix has tokens)."""
    ids = np.asarray(ids, dtype=np.int64)
    skip = 0 if prefix is None else len(prefix)
    if isinstance(spec, str):
        if skip and spec == "sink" and fields.get("sinks") is None:
            fields["sinks"] = skip
        spec = CacheSpec.parse(spec, **fields)
    elif fields:
        raise ValueError("give a CacheSpec or a policy name with its fields, not both")
    if skip:
        ids = np.concatenate([np.asarray(prefix, dtype=np.int64), ids])
    cache = new_cache(model, spec)
    notes = [f"a prefix of {skip} tokens was fed first and not scored"] if skip else []
    if spec.policy in BY_ATTENTION:
        chunk = 1
    if spec.policy == "dense":
        ids = dense_ids(model.config, ids, chunk, notes)
    first_chunk = None
    if spec.policy == "recompute":
        # One fresh forward per token anyway: chunk 1 keeps the progress bar moving. But the first sinks + window
        # tokens, fed as one chunk, are one dense forward (nothing is evicted yet: RecomputeWindow.forward).
        held = spec.sinks + spec.window
        chunk, first_chunk = 1, min(held, len(ids) - 1)
        start = time.perf_counter()
        model.forward(ids[:min(len(ids), held)], new_cache(model, "dense"))
        step = time.perf_counter() - start
        steps = 1 + len(ids) - 1 - first_chunk  # the first chunk's one forward, then one per token
        estimate = f"recompute: ~{step:.2f} s per token once the window is full, ~{step * steps / 60:.1f} min for " \
                   f"{len(ids)} tokens (O(W^2) per token; --tokens limits it)"
        notes.append(estimate)
        if say:
            say(estimate)
    bar = _progress_bar(len(ids) - 1, progress, spec.policy)
    start = time.perf_counter()
    try:
        nll = stream_nll(model, ids, cache, chunk, bar.update_to if bar else None, first_chunk)[skip:]  # the text's
    finally:
        if bar:
            bar.close()
    return PplRun(nll, spec, chunk, time.perf_counter() - start, notes)


def dense_ids(config, ids: np.ndarray, chunk: int, notes: list[str]) -> np.ndarray:
    """The ids dense attention can stream in the memory available (all of them, or the first ones, with a note)."""
    limit = dense_token_limit(config, chunk)
    if limit is not None and limit < 2:
        raise ValueError(f"not enough memory for dense attention (MemAvailable {available_memory()} bytes)")
    per_token = kv_bytes_per_token(config)
    if limit is not None and len(ids) > limit:
        notes.append(f"dense truncated to {limit} of {len(ids)} tokens: more would not fit in memory "
                     f"({per_token / 1024:.0f} KiB of keys and values per token, "
                     f"MemAvailable {available_memory() / 2**30:.1f} GiB)")
        ids = ids[:limit]
    notes.append(f"dense keys and values: {len(ids) * per_token / 2**20:.0f} MiB for {len(ids)} tokens")
    if len(ids) > config.max_position_embeddings:
        notes.append(f"the stream passes the model's pre-training length ({config.max_position_embeddings} tokens)")
    return ids


def run_ppl_budgets(model, ids, specs: list[CacheSpec], progress: bool = False) -> list[PplRun]:
    """`run_ppl` of several h2o or tova specs (one per budget) in one pass over the text (stream_nll_together:
    the same NLLs as separate runs, for about the cost of one)."""
    if any(s.policy not in BY_ATTENTION for s in specs):
        raise ValueError(f"several budgets in one pass are for {' and '.join(BY_ATTENTION)}; got "
                         f"{', '.join(s.policy for s in specs)}")
    ids = np.asarray(ids, dtype=np.int64)
    caches = [new_cache(model, s) for s in specs]
    bar = _progress_bar(len(ids) - 1, progress, f"{specs[0].policy} x{len(specs)}")
    start = time.perf_counter()
    try:
        nll = stream_nll_together(model, ids, caches, bar.update_to if bar else None)
    finally:
        if bar:
            bar.close()
    seconds = time.perf_counter() - start
    note = f"{len(specs)} budgets in one pass of {seconds:.0f} s (weights read once per token for all)"
    return [PplRun(row, s, 1, seconds, [note]) for row, s in zip(nll, specs, strict=True)]


def _progress_bar(total: int, enabled: bool, desc: str):
    """A tqdm bar on stderr with an `update_to(n)` method, or None (disabled, or tqdm not installed)."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    bar = tqdm(total=total, desc=desc, unit="tok", file=sys.stderr, dynamic_ncols=True)
    bar.update_to = lambda n: bar.update(n - bar.n)
    return bar


def check_out(path, n_tokens: int) -> None:
    """Raise an OutputError now if `save_run` could not write a run of `n_tokens` to `path` later
    (atomic.check_output_path: a directory, a file in the way of a folder, a read-only folder, a full disk)."""
    check_output_path(path, "--out", need_bytes=24 * n_tokens + 4096)  # a .csv line per token is ~20 bytes at most


def save_run(run: PplRun, path, source: str = "", model: str = "") -> Path:
    """Write the run to `path`, atomically (minisink/atomic.py). `.csv`: a `# key=value` header and
    one `token,nll` row per scored token (token = its index in the stream); anything else: a .npz with `nll` and
    every setting as a 0-d array."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**run.settings(), "source": source, "model": model}
    if path.suffix == ".csv":
        with atomic_write(path, "w") as f:
            f.writelines(f"# {k}={v}\n" for k, v in meta.items())
            f.write("token,nll\n")
            f.writelines(f"{i + 1},{x:.6f}\n" for i, x in enumerate(run.nll))
    else:
        with atomic_write(path) as f:  # a file object: np.savez would append .npz to a bare name
            np.savez(f, nll=run.nll, **{k: np.asarray(v) for k, v in meta.items()})
    return path
