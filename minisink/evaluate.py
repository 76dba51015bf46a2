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

`run_ppl` and `save_run` are `minisink ppl`: a text, a cache policy (dense, window, recompute, sink), the NLL of
every token, a summary and an .npz/.csv of the run. `renumber=False` (`--no-renumber`) keeps positions in the text:
with sinks that is the paper's ablation; with no sinks it gives the same NLLs exactly (a window's distances are the
same in the text and in the cache, and RoPE sees only distances): a lesson, not an ablation (docs chapter 06).

What it does not: batch several texts, or evaluate the recompute baseline fast (it is O(W^2) per token by design).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .cache import RecomputeWindow, available_memory, kv_bytes_per_token
from .model import PREFILL_CHUNK, attention, linear
from .rope import Rotation


NLL_ROWS = 8  # rows of logits per step of token_nll: 8 x 49,152 floats (1.5 MB) stay in a core's L2 cache


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, [T, V] + [T] -> [T] float64: logsumexp - the target's logit.

    The exponentials stay in float32 (after subtracting the row max, so none overflows) and are summed in float64:
    a full float64 log-softmax of [512, 49152] logits costs as much as a third of the forward pass. NLL_ROWS rows
    at a time, in one reused buffer, so that the subtraction, exp and sum read the rows from cache, not memory:
    about twice as fast as whole [T, V] passes here, the same numbers."""
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
    for start, stop in zip(starts, starts[1:] + [len(ids) - 1]):
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


# --- `minisink ppl`: a long text through one cache policy ---------------------------------------------------------

MODES = ("dense", "window", "recompute", "sink", "h2o", "tova")
SCORED = ("h2o", "tova")  # policies that read attention (eviction.py): they decide per token, so chunk 1
DEFAULT_CACHE = 1024  # default total cache for every bounded mode: sink 4 + 1020, window 1024, recompute 1024
MEMORY_SHARE = 0.5  # dense mode uses at most this share of MemAvailable, leaving the rest as headroom


def load_text_ids(tokenizer, text: str, n_tokens: int | None = None) -> np.ndarray:
    """The first `n_tokens` token ids of `text` (all of them if None), int64 [N].

    Long texts are encoded by growing prefixes rather than whole: the KJV is about a million tokens and a run
    wants the first 20,000. The prefix is cut 64 tokens past the need, so the cut cannot change the kept ids
    (byte-level BPE pre-tokenizes word by word)."""
    if n_tokens is None:
        return np.asarray(tokenizer.encode(text), dtype=np.int64)
    if n_tokens < 2:
        raise ValueError(f"--tokens must be >= 2 (the first token is only context), got {n_tokens}")
    chars = 8 * (n_tokens + 64)  # English BPE averages ~4-5 characters per token
    while True:
        ids = tokenizer.encode(text[:chars])
        if len(ids) >= n_tokens + 64 or chars >= len(text):
            return np.asarray(ids[:n_tokens], dtype=np.int64)
        chars *= 2


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
    mode: str
    sinks: int
    window: int | None
    renumber: bool
    chunk: int
    seconds: float
    notes: list[str] = field(default_factory=list)  # what was truncated or estimated, for the summary
    heavy: int | None = None  # h2o: heavy hitters kept (the budget is `window`)

    @property
    def tokens(self) -> int:
        return len(self.nll) + 1

    def settings(self) -> dict:
        return {"mode": self.mode, "sinks": self.sinks, "window": -1 if self.window is None else self.window,
                "renumber": self.renumber, "chunk": self.chunk, "tokens": self.tokens, "seconds": self.seconds,
                **({} if self.heavy is None else {"heavy": self.heavy})}

    def summary(self, last: int = 1000) -> str:
        cache = {"dense": "full cache", "window": f"window {self.window}",
                 "recompute": f"recompute, window {self.window}" + (f" + {self.sinks} sinks" if self.sinks else ""),
                 "sink": f"{self.sinks} sink{'s' * (self.sinks != 1)} + window {self.window}",
                 "h2o": f"budget {self.window} = {self.heavy} heavy + {(self.window or 0) - (self.heavy or 0)} recent",
                 "tova": f"budget {self.window}"}[self.mode]
        if self.mode in ("sink", "window") and not self.renumber:
            cache += ", text positions (no renumbering)"
        lines = [f"{self.mode}: {cache}, {self.tokens} tokens, chunk {self.chunk}",
                 f"  perplexity               {perplexity(self.nll):10.3f}   (mean NLL {np.mean(self.nll):.4f} nats)"]
        if len(self.nll) > last:
            lines.append(f"  perplexity, last {last:<6}  {perplexity(self.nll[-last:]):10.3f}")
        lines.append(f"  speed                    {len(self.nll) / max(self.seconds, 1e-9):10.1f} tokens/s "
                     f"({self.seconds:.1f} s)")
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def make_cache(model, mode: str, sinks: int | None = None, window: int | None = None, renumber: bool = True,
               heavy: int | None = None):
    """The cache of a `minisink ppl` mode -> (cache, sinks, window). Defaults: a total cache of DEFAULT_CACHE.
    For h2o and tova, `window` is the budget N (tokens a query attends to, itself included) and `heavy` H2O's
    share of it (default N // 2); they keep text positions, as the originals."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode in SCORED:
        if sinks:
            raise ValueError(f"{mode} has no sinks: it keeps what attention points at (--budget N, --heavy H)")
        if heavy is not None and mode != "h2o":
            raise ValueError("--heavy is H2O's split of the budget: use it with --mode h2o")
        window = DEFAULT_CACHE if window is None else window
        options = {"heavy": heavy} if mode == "h2o" else {}
        return model.new_cache(policy=mode, budget=window, **options), 0, window
    if mode == "dense":
        if sinks is not None or window is not None:
            raise ValueError("dense mode keeps every token: it takes neither --sinks nor --window")
        return model.new_cache(), 0, None
    if mode == "window":
        if sinks:
            raise ValueError("window mode has no sinks (it is the sink cache with --sinks 0): use --mode sink")
        window = DEFAULT_CACHE if window is None else window
        return model.new_cache(n_sink=0, window=window, renumber=renumber), 0, window
    if not renumber and mode == "recompute":
        raise ValueError("--no-renumber applies to the sink and window caches, not to recompute")
    if mode == "recompute":
        sinks = 0 if sinks is None else sinks
        window = DEFAULT_CACHE - sinks if window is None else window
        return model.new_cache(n_sink=sinks, window=window, recompute=True), sinks, window
    sinks = 4 if sinks is None else sinks
    window = DEFAULT_CACHE - sinks if window is None else window
    return model.new_cache(n_sink=sinks, window=window, renumber=renumber), sinks, window


def run_ppl(model, ids, mode: str = "sink", sinks: int | None = None, window: int | None = None,
            renumber: bool = True, chunk: int = PREFILL_CHUNK, progress: bool = False,
            say: Callable[[str], None] | None = None, prefix=None, heavy: int | None = None) -> PplRun:
    """Stream `ids` through the cache of `mode` and record every token's NLL (see `stream_nll`).

    dense stops at `dense_token_limit` tokens if the text is longer (a note says so). recompute runs one dense
    forward over the window per token: an estimate of its cost is passed to `say` before it starts. h2o and tova
    decide which tokens to keep after every token, so they are fed token by token (a chunk of T tokens would make
    one decision for all T: a different computation, see eviction.py).
    `prefix` (token ids) is fed before the text and never scored, so the NLLs are those of the same text tokens
    as without it: the paper's Table 1, where the sinks are a fixed prefix such as four "\n" (sink mode then
    defaults to as many sinks as the prefix has tokens)."""
    ids = np.asarray(ids, dtype=np.int64)
    skip = 0 if prefix is None else len(prefix)
    if skip:
        ids = np.concatenate([np.asarray(prefix, dtype=np.int64), ids])
        sinks = skip if sinks is None and mode == "sink" else sinks
    cache, sinks, window = make_cache(model, mode, sinks, window, renumber, heavy)
    notes = [f"a prefix of {skip} tokens was fed first and not scored"] if skip else []
    if mode in SCORED:
        chunk = 1
        heavy = getattr(cache, "heavy", None)
    if mode == "dense":
        limit = dense_token_limit(model.config, chunk)
        if limit is not None and limit < 2:
            raise ValueError(f"not enough memory for dense attention (MemAvailable {available_memory()} bytes)")
        if limit is not None and len(ids) > limit:
            notes.append(f"dense truncated to {limit} of {len(ids)} tokens: more would not fit in memory "
                         f"({kv_bytes_per_token(model.config) / 1024:.0f} KiB of keys and values per token, "
                         f"MemAvailable {available_memory() / 2**30:.1f} GiB)")
            ids = ids[:limit]
        notes.append(f"dense keys and values: {len(ids) * kv_bytes_per_token(model.config) / 2**20:.0f} MB "
                     f"for {len(ids)} tokens")
        if len(ids) > model.config.max_position_embeddings:
            notes.append(f"the stream passes the model's pre-training length "
                         f"({model.config.max_position_embeddings} tokens)")
    first_chunk = None
    if mode == "recompute":
        # One fresh forward per token anyway: chunk 1 keeps the progress bar moving. But the first sinks + window
        # tokens, fed as one chunk, are one dense forward (nothing is evicted yet: RecomputeWindow.forward).
        chunk, first_chunk = 1, min(sinks + window, len(ids) - 1)
        start = time.perf_counter()
        model.forward(ids[:min(len(ids), sinks + window)], model.new_cache())
        step = time.perf_counter() - start
        steps = 1 + len(ids) - 1 - first_chunk  # the first chunk's one forward, then one per token
        estimate = f"recompute: ~{step:.2f} s per token once the window is full, ~{step * steps / 60:.1f} min for " \
                   f"{len(ids)} tokens (O(W^2) per token; --tokens limits it)"
        notes.append(estimate)
        if say:
            say(estimate)
    bar = _progress_bar(len(ids) - 1, progress, f"{mode}")
    start = time.perf_counter()
    try:
        nll = stream_nll(model, ids, cache, chunk, bar.update_to if bar else None, first_chunk)[skip:]  # the text's
    finally:
        if bar:
            bar.close()
    return PplRun(nll, mode, sinks, window, renumber, chunk, time.perf_counter() - start, notes,
                  heavy if mode in SCORED else None)


def run_ppl_budgets(model, ids, mode: str, budgets: list[int], progress: bool = False) -> list[PplRun]:
    """`run_ppl` of an h2o or tova mode at several budgets in one pass over the text (`stream_nll_together`: the
    same NLLs as separate runs, for about the cost of one). H2O splits each budget evenly."""
    if mode not in SCORED:
        raise ValueError(f"several budgets in one pass are for {' and '.join(SCORED)}; got mode {mode!r}")
    ids = np.asarray(ids, dtype=np.int64)
    caches = [make_cache(model, mode, window=budget)[0] for budget in budgets]
    bar = _progress_bar(len(ids) - 1, progress, f"{mode} x{len(budgets)}")
    start = time.perf_counter()
    try:
        nll = stream_nll_together(model, ids, caches, bar.update_to if bar else None)
    finally:
        if bar:
            bar.close()
    seconds = time.perf_counter() - start
    note = f"{len(budgets)} budgets in one pass of {seconds:.0f} s (weights read once per token for all)"
    return [PplRun(row, mode, 0, budget, True, 1, seconds, [note], getattr(cache, "heavy", None))
            for row, budget, cache in zip(nll, budgets, caches)]


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
    """Raise ValueError now if `save_run` could not write a run of `n_tokens` to `path` later: a directory at the
    path, a file where a folder should be, a folder we may not write into, or a disk without room for it."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--out {path} is a directory: give a file name ending in .npz or .csv")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"--out {path}: a file is in the way of the folder {path.parent}") from None
    except OSError as e:
        raise ValueError(f"--out {path}: cannot make the folder {path.parent} ({e.strerror})") from None
    probe = path.with_name(f".{path.name}.probe-{os.getpid()}")  # save_run writes a temporary sibling first
    try:
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--out {path}: cannot write into {path.parent} ({e.strerror})") from None
    need = 24 * n_tokens + 4096  # a .csv line per token is at most ~20 bytes; the .npz 8 bytes per token
    free = shutil.disk_usage(path.parent).free
    if free < need:
        raise ValueError(f"--out {path}: {free} bytes free on that disk, the run needs about {need}")


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
