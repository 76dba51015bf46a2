"""What every assignment's checks module uses: verdicts, comparisons, requests to the child, tiny-model helpers.

A check is a generator function run in the grader (the parent). It builds inputs, asks the child to run the
student's code on them with `yield run(task, **inputs)` (which returns the task's output arrays), computes the
answer with an oracle of its own, and compares with `close`: it raises `Fail` with what differed and on which
input, or `Skip` when an optional oracle (torch, transformers) is not installed. Tasks are the functions of a
checks module's `TASKS`: they run in the child, on the student's objects (`ctx.student`), and return arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from minisink.tiny import tiny_model

CASES = 8  # random cases per property check


class Fail(Exception):
    """A check's verdict: what input, what differed."""


class Skip(Exception):
    """A check that could not run here (an optional oracle is missing). Not a pass."""


@dataclass
class Run:
    """A request to the child: run `task` on `inputs` (arrays, or plain JSON values)."""

    task: str
    inputs: dict = field(default_factory=dict)


def run(task: str, **inputs) -> Run:
    return Run(task, inputs)


def close(what: str, got, want, tol: float, where: str):
    """Fail unless `got` has `want`'s shape, is finite, and is within `tol` of it (max abs difference)."""
    if got is None:
        raise Fail(f"{where}: {what} is None, expected an array of shape {np.shape(want)}")
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        raise Fail(f"{where}: {what} has shape {got.shape}, expected {want.shape}")
    if not np.all(np.isfinite(got)):
        raise Fail(f"{where}: {what} holds nan or inf")
    diff = float(np.max(np.abs(got.astype(np.float64) - want))) if got.size else 0.0
    if diff > tol:
        raise Fail(f"{where}: {what} differs, max abs diff {diff:.3g} (tolerance {tol:g})")


def torch_or_skip():
    """torch, with transformers importable too; else Skip (the check needs the `oracle` extra)."""
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        raise Skip("torch/transformers not installed: pip install 'minisink[oracle]'") from None
    return torch


def transformers_logits(raw: dict, weights: dict, ids) -> np.ndarray:
    """Logits of transformers' LlamaForCausalLM holding the same weights: an implementation that is not ours."""
    import torch
    import transformers

    config = transformers.LlamaConfig(**{k: v for k, v in raw.items() if k != "model_type"})
    config._attn_implementation = "eager"
    model = transformers.LlamaForCausalLM(config).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].numpy()


def random_sizes(rng) -> dict:
    """Random tiny-model sizes (tiny_config overrides): 1-2 layers, 1-2 KV heads, 1-3 query heads each, D 4 or 8."""
    kv = int(rng.integers(1, 3))
    layers, heads, head_dim = int(rng.integers(1, 3)), kv * int(rng.integers(1, 4)), int(rng.choice([4, 8]))
    return dict(num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
                hidden_size=heads * head_dim)


def random_chunks(rng, n: int) -> list[int]:
    """Random chunk sizes (1-6) summing to n."""
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(min(rng.integers(1, 7), n - sum(sizes))))
    return sizes


def feed(model, ids, cache, chunks=None) -> np.ndarray:
    """Logits [N, V] of `ids` fed through `cache` in pieces of the given sizes (default: one token at a time)."""
    sizes = chunks or [1] * len(ids)
    bounds = np.cumsum([0] + list(sizes))
    return np.concatenate([model.forward(ids[a:b], cache) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


# --- a task shared by assignments 1-4: a tiny model fed through a cache, in the child --------------------------

def run_model(ctx, sizes: dict, seed: int, ids, chunks=None, plug=(), cache="FullCache", cache_args=None,
              new_cache=None):
    """Logits of tiny_model(seed, **sizes) fed `ids` in `chunks`, with the student's objects named in `plug` used
    by minisink itself; the cache is `cache` (the student's class if plugged) or, with `new_cache` a policy name,
    minisink's factory's: minisink.spec.new_cache(model, new_cache, **cache_args). Also returns the cache's
    retained() after the last chunk."""
    from minisink import spec

    model = tiny_model(seed, **sizes)[0]
    with ctx.plugged(*plug):
        if new_cache:
            c = spec.new_cache(model, new_cache, **(cache_args or {}))
        else:
            cls = getattr(ctx.student, cache) if cache in plug else _library(ctx, cache)
            c = cls(model.config, **(cache_args or {}))
        logits = feed(model, np.asarray(ids), c, chunks)
        return {"logits": logits, "retained": np.asarray(c.retained(), dtype=np.int64)}


def _library(ctx, name):
    """minisink.cache's class `name` as the library has it (its original, if it is graded and stood in for)."""
    import minisink.cache

    sites = ctx.sites.get(name)
    return sites[0][1] if sites else getattr(minisink.cache, name)


def model_case(seed: int, sizes: dict | None = None, n: int = 12):
    """(sizes, the parent's own tiny model, its config dict, weights, random ids) for one seeded case."""
    rng = np.random.default_rng(seed)
    sizes = random_sizes(rng) if sizes is None else sizes
    model, raw, weights = tiny_model(seed, **sizes)
    return sizes, model, raw, weights, rng.integers(0, raw["vocab_size"], n)
