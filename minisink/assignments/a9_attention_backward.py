"""Assignment 9 checks: the backward pass of causal attention with a sink logit (attention_backward.py:
attention_backward).

Oracles, computed here, in the grader: minisink's own backward (minisink/backward.py: `attention_forward` saves,
`attention_backward` walks back; itself checked against torch autograd in the test suite), and, independently of
any backward, float64 central differences of the scalar sum(out * d_out) through minisink's training forward. No
torch needed.
"""

from __future__ import annotations

import numpy as np

from minisink.backward import attention_backward, attention_forward

from .common import CASES, Fail, close, run

NAMES = ("d_q", "d_k", "d_v", "d_sink_logits")


def backward_case(rng, sink=True, score_scale=1.0, T=None):
    Hkv, G, D = int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.choice([4, 8]))
    T = T or int(rng.integers(1, 9))
    q = (score_scale * rng.standard_normal((T, Hkv * G, D))).astype(np.float32)
    k, v = rng.standard_normal((2, T, Hkv, D)).astype(np.float32)
    sigma = (2 * rng.standard_normal(Hkv * G)).astype(np.float32) if sink else None
    d_out = rng.standard_normal((T, Hkv * G, D)).astype(np.float32)
    where = f"T={T}, H={Hkv * G}, Hkv={Hkv}, D={D}, " + \
        (f"sink logits {np.round(sigma, 2).tolist()}" if sink else "no sink (plain softmax)")
    return q, k, v, sigma, d_out, where


def reference(q, k, v, sigma, d_out):
    """minisink.backward on one sample, in float64: (d_q, d_k, d_v, d_sink_logits or None)."""
    variant = "softmax" if sigma is None else "sink-logit"
    q, k, v, d_out = (x.astype(np.float64) for x in (q, k, v, d_out))
    _, saved = attention_forward(q, k, v, 1, variant, None if sigma is None else sigma.astype(np.float64))
    return attention_backward(d_out.reshape(len(d_out), -1), saved)


def _compare(q, k, v, sigma, d_out, where, want=None, tol=1e-4):
    got = yield run("attention_backward", q=q, k=k, v=v, sink_logits=sigma, d_out=d_out)
    want = want or reference(q, k, v, sigma, d_out)
    for name, w in zip(NAMES, want, strict=True):
        if w is None:
            if got.get(name) is not None:
                raise Fail(f"{where}: {name} must be None when there is no sink, got an array")
            continue
        close(f"{name} {list(w.shape)}", got[name], w, tol * max(1.0, float(np.abs(w).max())), where)


def check_reference(base):
    for seed in range(base, base + CASES):
        yield from _compare(*backward_case(np.random.default_rng(seed)))


def check_plain_softmax(base):
    for seed in range(base, base + CASES):
        yield from _compare(*backward_case(np.random.default_rng(100 + seed), sink=False))


def central_differences(q, k, v, sigma, d_out, eps=1e-6):
    """d(sum(out * d_out)) / d(each input), float64, one coordinate at a time: no backward involved."""
    inputs = [x.astype(np.float64) for x in (q, k, v)] + ([] if sigma is None else [sigma.astype(np.float64)])
    variant = "softmax" if sigma is None else "sink-logit"

    def loss(xs):
        out, _ = attention_forward(xs[0], xs[1], xs[2], 1, variant, xs[3] if sigma is not None else None)
        return float((out.reshape(d_out.shape) * d_out).sum())

    grads = []
    for x in inputs:
        g = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            saved = x[i]
            x[i] = saved + eps
            up = loss(inputs)
            x[i] = saved - eps
            down = loss(inputs)
            x[i] = saved
            g[i] = (up - down) / (2 * eps)
        grads.append(g)
    return grads + ([None] if sigma is None else [])


def check_finite_differences(base):
    for seed in range(base, base + 3):
        q, k, v, sigma, d_out, where = backward_case(np.random.default_rng(200 + seed), T=4)
        want = central_differences(q, k, v, sigma, d_out)
        yield from _compare(q, k, v, sigma, d_out, where + " (against float64 central differences)", want, 1e-3)


def check_one_token(base):
    """T = 1: the query sees only itself; without a sink its probability is 1, so d_q and d_k are 0."""
    for seed in range(base, base + 2):
        for sink in (True, False):
            yield from _compare(*backward_case(np.random.default_rng(300 + seed), sink=sink, T=1))


def check_large_scores(base):
    for seed in range(base, base + CASES):
        q, k, v, _, d_out, where = backward_case(np.random.default_rng(400 + seed), score_scale=30.0)
        sigma = np.random.default_rng(seed).choice([-80.0, 80.0, 250.0], q.shape[1]).astype(np.float32)
        yield from _compare(q, k, v, sigma, d_out, where.split(", sink")[0] + f", large scores, sink logits "
                            f"{sigma.tolist()}")


CHECKS = [  # (title, points, check)
    ("attention_backward equals minisink's backward (random heads, GQA, causal, sink logits)", 3, check_reference),
    ("without a sink (sink_logits None) it is the plain softmax backward", 1, check_plain_softmax),
    ("the gradients equal float64 central differences of sum(out * d_out)", 2, check_finite_differences),
    ("one token: a query that sees only itself", 1, check_one_token),
    ("scores and sink logits in the hundreds stay finite and exact", 1, check_large_scores),
]
