"""What every assignment's checks module uses: verdicts, comparisons, requests to the child, tiny-model helpers.

A check is a generator function run in the grader (the parent), called with the student's base seed: its random
inputs come from seeds base, base + 1, ... It builds inputs, asks the child to run the student's code on them with
`yield run(task, **inputs)` (which returns the task's output arrays), computes the answer with an oracle of its
own, and compares with `close`: it raises `Fail` with what differed and on which input, or `Skip` when an optional
oracle (torch, transformers) is not installed. A checks module's CHECKS lists (title, points, check). Tasks
(tasks.py) run in the child, on the student's objects, and return arrays; they never see an expected value.
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


def model_case(seed: int, sizes: dict | None = None, n: int = 12):
    """(sizes, the parent's own tiny model, its config dict, weights, random ids) for one seeded case."""
    rng = np.random.default_rng(seed)
    sizes = random_sizes(rng) if sizes is None else sizes
    model, raw, weights = tiny_model(seed, **sizes)
    return sizes, model, raw, weights, rng.integers(0, raw["vocab_size"], n)
