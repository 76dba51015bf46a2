"""Assignment 1 checks: RMSNorm and RoPE (model.py: rms_norm; rope.py: rotation, apply_rope).

Oracles: transformers' LlamaRMSNorm and apply_rotary_pos_emb (with torch), minisink's own functions and a tiny
model's logits computed here (in the grader), and RoPE's defining property (scores depend only on distance).
"""

from __future__ import annotations

import numpy as np

from minisink.cache import FullCache
from minisink.rope import Rotation, apply_rope, rotation

from .common import CASES, close, model_case, run, run_model, torch_or_skip, transformers_logits


# --- tasks: run in the child, on the student's functions ------------------------------------------------------

def task_rms_norm(ctx, x, weight, eps):
    return {"out": ctx.student.rms_norm(x, weight, eps)}


def task_rotation(ctx, positions, inv_freq):
    r = ctx.student.rotation(positions, inv_freq)
    return {"cos": r.cos, "sin": r.sin}


def task_apply_rope(ctx, x, positions, inv_freq, cos=None, sin=None):
    """The student's apply_rope, at the grader's rotation (cos, sin given) or at the student's own."""
    r = Rotation(cos, sin) if cos is not None else ctx.student.rotation(positions, inv_freq)
    return {"out": ctx.student.apply_rope(x, r)}


TASKS = {"rms_norm": task_rms_norm, "rotation": task_rotation, "apply_rope": task_apply_rope, "model": run_model}


# --- checks: run in the grader --------------------------------------------------------------------------------

def inv_freq_for(D, theta=10000.0):
    return theta ** (-np.arange(0, D, 2, dtype=np.float64) / D)


def check_rms_norm_transformers():
    torch = torch_or_skip()
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    for seed in range(CASES):
        rng = np.random.default_rng(seed)
        T, d = int(rng.integers(1, 6)), int(rng.choice([4, 48, 576]))
        x = (rng.standard_normal((T, d)) * 10.0 ** rng.integers(-2, 3)).astype(np.float32)
        w = (1 + 0.3 * rng.standard_normal(d)).astype(np.float32)
        norm = LlamaRMSNorm(d, eps=1e-5)
        with torch.no_grad():
            norm.weight.copy_(torch.from_numpy(w))
            want = norm(torch.from_numpy(x)).numpy()
        got = (yield run("rms_norm", x=x, weight=w, eps=1e-5))["out"]
        close("rms_norm(x, weight, 1e-5)", got, want, 1e-4 * max(1, np.abs(want).max()),
              f"T={T}, d_model={d}, seed={seed}")


def check_rms_norm_reference():
    for seed in range(CASES):
        rng = np.random.default_rng(seed)
        T, d, eps = int(rng.integers(1, 6)), int(rng.integers(2, 40)), float(rng.choice([1e-5, 1e-6, 0.1]))
        x = rng.standard_normal((T, d)).astype(np.float32)
        x[0] *= 1e-4  # a tiny row, where eps matters
        w = (1 + 0.3 * rng.standard_normal(d)).astype(np.float32)
        want = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps) * w  # the formula, float64
        got = (yield run("rms_norm", x=x, weight=w, eps=eps))["out"]
        close("rms_norm(x, weight, eps)", got, want, 1e-5, f"T={T}, d_model={d}, eps={eps}, seed={seed}")


def check_rotation():
    for seed in range(CASES):
        rng = np.random.default_rng(seed)
        D = int(rng.choice([4, 8, 64]))
        start = int(rng.choice([0, 1000, 10**7]))
        positions = start + np.sort(rng.integers(0, 50, int(rng.integers(1, 6))))
        got = yield run("rotation", positions=positions, inv_freq=inv_freq_for(D))
        want = rotation(positions, inv_freq_for(D))
        where = f"positions={positions.tolist()}, D={D}, seed={seed}"
        close("rotation(...).cos", got["cos"], want.cos, 1e-5, where)
        close("rotation(...).sin", got["sin"], want.sin, 1e-5, where + " (the layout of Rotation.sin)")


def rope_inputs(seed):
    rng = np.random.default_rng(seed)
    T, heads, D = int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.choice([4, 8, 64]))
    x = rng.standard_normal((T, heads, D)).astype(np.float32)
    positions = np.sort(rng.integers(0, 2000, T))
    return x, positions, inv_freq_for(D), f"T={T}, heads={heads}, D={D}, positions={positions.tolist()}, seed={seed}"


def check_apply_rope_transformers():
    torch = torch_or_skip()
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    for seed in range(CASES):
        x, positions, inv_freq, where = rope_inputs(seed)
        angles = positions[:, None] * inv_freq[None, :]
        emb = np.concatenate([angles, angles], axis=-1)  # [T, D]: transformers' layout
        cos, sin = (torch.from_numpy(f(emb).astype(np.float32))[None] for f in (np.cos, np.sin))
        q = torch.from_numpy(x.transpose(1, 0, 2))[None]  # [1, heads, T, D]
        want, _ = apply_rotary_pos_emb(q, q, cos, sin)
        got = (yield run("apply_rope", x=x, positions=positions, inv_freq=inv_freq))["out"]
        close("apply_rope(x, rotation(positions))", got, want[0].numpy().transpose(1, 0, 2), 1e-4, where)


def check_apply_rope_reference():
    for seed in range(CASES):
        x, positions, inv_freq, where = rope_inputs(seed)
        r = rotation(positions, inv_freq)
        got = (yield run("apply_rope", x=x, positions=positions, inv_freq=inv_freq, cos=r.cos, sin=r.sin))["out"]
        close("apply_rope(x, the grader's rotation)", got, apply_rope(x, r), 1e-5, where)


def check_rope_relative():
    for seed in range(CASES):
        rng = np.random.default_rng(seed)
        D = int(rng.choice([8, 64]))
        q, k = rng.standard_normal((2, 1, 1, D)).astype(np.float32)
        pq, pk = int(rng.integers(0, 100)), int(rng.integers(0, 100))
        shift = int(rng.choice([1, 1000, 10**7]))
        scores = []
        for a, b in [(pq, pk), (pq + shift, pk + shift)]:
            qr = (yield run("apply_rope", x=q, positions=np.array([a]), inv_freq=inv_freq_for(D, 1e5)))["out"]
            kr = (yield run("apply_rope", x=k, positions=np.array([b]), inv_freq=inv_freq_for(D, 1e5)))["out"]
            scores.append(float((np.asarray(qr, dtype=np.float64) * kr).sum()))
        close("q.k after shifting both positions", scores[1], scores[0], 1e-3 * D,
              f"query at {pq}, key at {pk}, shift {shift}, D={D}, seed={seed} (float64 angles?)")


def check_model():
    for seed in range(3):
        sizes, model, raw, weights, ids = model_case(seed)
        want = model.forward(ids, FullCache(model.config))
        got = (yield run("model", sizes=sizes, seed=seed, ids=ids, plug=["rms_norm", "rotation", "apply_rope"]))
        where = f"tiny model {sizes}, 12 tokens, seed={seed}"
        close("logits with your functions", got["logits"], want, 1e-4, where)
    try:
        torch_or_skip()
    except Exception:  # noqa: BLE001: transformers is a second oracle here, not the only one
        return
    close("logits with your functions vs transformers' LlamaForCausalLM", got["logits"],
          transformers_logits(raw, weights, ids), 1e-3, where)


CHECKS = [
    ("rms_norm equals transformers' LlamaRMSNorm", check_rms_norm_transformers),
    ("rms_norm equals the formula (eps matters on a tiny row)", check_rms_norm_reference),
    ("rotation: cos/sin [T, 1, D] equal the reference, also at position 10**7", check_rotation),
    ("apply_rope(x, rotation(p)) equals transformers' apply_rotary_pos_emb (rotate halves)",
     check_apply_rope_transformers),
    ("apply_rope with the grader's rotation equals the reference", check_apply_rope_reference),
    ("RoPE is relative: shifting query and key by the same amount keeps q.k", check_rope_relative),
    ("the tiny model with your rms_norm/rotation/apply_rope gives the reference logits (and transformers')",
     check_model),
]
