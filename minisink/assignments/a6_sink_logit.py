"""Assignment 6 checks: attention with a sink logit (sink_attention.py: sink_attention).

Oracles, computed here: the float64 formula p_ij = exp(s_ij) / (sum_k exp(s_ik) + exp(sigma_h)), head by head
(minisink/reference.py::sink_attention), and, with torch, transformers' gpt-oss attention (its learned `sinks`).
"""

from __future__ import annotations

import numpy as np

from minisink.reference import sink_attention

from .common import CASES, Fail, close, run, torch_or_skip


def task_attention(ctx, q, k, v, sink_logits, visible=None):
    result = ctx.student.sink_attention(q, k, v, sink_logits, visible)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise TypeError(f"sink_attention must return (output, probabilities), got {type(result).__name__}")
    return {"out": result[0], "probs": result[1]}


TASKS = {"attention": task_attention}


def attention_case(rng, score_scale=1.0, sink=None, masked=True):
    Hkv, G, T, L, D = (int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 5)),
                       int(rng.integers(1, 7)), int(rng.choice([4, 8])))
    q = (score_scale * rng.standard_normal((T, Hkv * G, D))).astype(np.float32)
    k, v = rng.standard_normal((2, L, Hkv, D)).astype(np.float32)
    sigma = (2 * rng.standard_normal(Hkv * G) if sink is None else np.full(Hkv * G, sink)).astype(np.float32)
    visible = rng.random((T, L)) < 0.7 if masked and rng.random() < 0.7 else None
    where = f"T={T}, L={L}, H={Hkv * G}, Hkv={Hkv}, D={D}, sink logits {np.round(sigma, 2).tolist()}"
    return q, k, v, sigma, visible, where + (", masked" if visible is not None else "")


def _compare(q, k, v, sigma, visible, where, tol=1e-5):
    got = yield run("attention", q=q, k=k, v=v, sink_logits=sigma, visible=visible)
    want_out, want_probs = sink_attention(q, k, v, sigma, visible)
    close("probabilities [H, T, L]", got["probs"], want_probs, tol, where)
    close("output [T, H, D]", got["out"], want_out, 10 * tol, where)


def check_formula():
    for seed in range(CASES):
        yield from _compare(*attention_case(np.random.default_rng(seed)), )


def check_softmax1_and_plain():
    for seed in range(CASES):
        rng = np.random.default_rng(100 + seed)
        sink = [0.0, -np.inf][seed % 2]  # softmax1 (Miller 2023), and no sink: ordinary attention
        q, k, v, sigma, _, where = attention_case(rng, sink=sink, masked=False)
        yield from _compare(q, k, v, sigma, None, where)


def check_nothing_visible():
    rng = np.random.default_rng(7)
    q, k, v, sigma, _, where = attention_case(rng, sink=0.0, masked=False)
    visible = np.ones((q.shape[0], k.shape[0]), dtype=bool)
    visible[0] = False  # the first query sees no key at all: all its probability goes to the sink
    got = yield run("attention", q=q, k=k, v=v, sink_logits=sigma, visible=visible)
    if got["out"] is None or not np.all(np.isfinite(got["out"])):
        raise Fail(f"{where}, query 0 sees no key: the output must be finite (all probability on the sink: 0)")
    close("output of a query that sees no key", got["out"][0], np.zeros_like(q[0]), 1e-6, where)
    yield from _compare(q, k, v, sigma, visible, where + ", query 0 sees nothing")


def check_large_logits():
    for seed in range(CASES):
        rng = np.random.default_rng(200 + seed)
        q, k, v, _, visible, where = attention_case(rng, score_scale=40.0)  # scores of several hundred
        sigma = rng.choice([-90.0, 90.0, 300.0], q.shape[1]).astype(np.float32)
        yield from _compare(q, k, v, sigma, visible, where + f", large scores, sink logits {sigma.tolist()}", 1e-4)


def check_gpt_oss():
    torch = torch_or_skip()
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward
    for seed in range(CASES):
        q, k, v, sigma, visible, where = attention_case(np.random.default_rng(300 + seed))
        module = torch.nn.Module()
        module.sinks = torch.from_numpy(sigma)
        module.num_key_value_groups = q.shape[1] // k.shape[1]
        mask = None if visible is None else \
            torch.from_numpy(np.where(visible, 0, -np.inf).astype(np.float32))[None, None]
        with torch.no_grad():
            qkv = (torch.from_numpy(a.transpose(1, 0, 2))[None] for a in (q, k, v))
            out, probs = eager_attention_forward(module.eval(), *qkv, mask, scaling=q.shape[2] ** -0.5)
        got = yield run("attention", q=q, k=k, v=v, sink_logits=sigma, visible=visible)
        close("output vs transformers' gpt-oss eager attention (sinks)", got["out"], out[0].numpy(), 1e-4, where)
        close("probabilities vs gpt-oss", got["probs"], probs[0].numpy(), 1e-5, where)


CHECKS = [
    ("sink_attention equals the float64 formula (random heads, GQA, masks, sink logits)", check_formula),
    ("sink logit 0 is softmax1; sink logit -inf is ordinary attention", check_softmax1_and_plain),
    ("a query that sees no key puts everything on the sink: output 0", check_nothing_visible),
    ("scores and sink logits in the hundreds stay finite and exact", check_large_logits),
    ("sink_attention equals transformers' gpt-oss attention with learned sinks", check_gpt_oss),
]
