"""Assignment 8 checks: calibrating a sink logit and a sink value (calibration.py: sink_scores, sigma_lme,
sigma_mass, sink_value).

Oracles, computed here: the formulas in float64 on random statistics (a log-sum-exp, a log-mean-exp, the mass
equation solved by minisink/calibrate.py::fit_mass, the weighted mean), and, end to end, minisink's own
`calibrate` (minisink/calibrate.py) on a tiny random model: the student's `calibrate`, built from their four
functions, must give the same sigma per estimator and the same sink values within a tolerance.
"""

from __future__ import annotations

import numpy as np

from minisink.calibrate import calibrate, fit_mass
from minisink.tiny import tiny_model

from .common import CASES, Fail, close, random_sizes, run


def logsumexp(x, axis):
    top = x.max(axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.exp(x - top).sum(axis=axis))


def check_sink_scores(base):
    for seed in range(base, base + CASES):
        rng = np.random.default_rng(seed)
        Hkv, G, N, S, D = (int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 9)),
                           int(rng.integers(1, 5)), int(rng.choice([4, 8])))
        scale = float(rng.choice([1.0, 30.0]))  # scores in the hundreds: the log-sum-exp must take the max out
        q = (scale * rng.standard_normal((N, Hkv * G, D))).astype(np.float32)
        k = (scale * rng.standard_normal((Hkv, S, D))).astype(np.float32)
        kh = np.repeat(k, G, axis=0).astype(np.float64)  # [H, S, D]
        want = logsumexp(np.einsum("nhd,hsd->hns", q.astype(np.float64), kh) / np.sqrt(D), -1)  # [H, N]
        got = (yield run("sink_scores", q=q, sink_keys=k))["a"]
        close("a = sink_scores(q, sink_keys) [H, N]", got, want, 1e-4 * max(1.0, scale ** 2),
              f"N={N}, H={Hkv * G}, Hkv={Hkv}, S={S}, D={D}, scale {scale:g}, seed={seed}")


def check_sigma_lme(base):
    for seed in range(base, base + CASES):
        rng = np.random.default_rng(seed)
        H, N = int(rng.integers(1, 5)), int(rng.integers(1, 40))
        a = rng.standard_normal((H, N)) * float(rng.choice([1.0, 10.0])) + float(rng.choice([0.0, 300.0]))
        want = logsumexp(a, -1) - np.log(N)
        got = (yield run("sigma_lme", a=a))["sigma"]
        close("sigma_lme(a) [H]", got, want, 1e-6 * max(1.0, np.abs(want).max()), f"H={H}, N={N}, seed={seed}")


def mass_case(rng):
    H, N = int(rng.integers(1, 5)), int(rng.integers(1, 40))
    a = rng.standard_normal((H, N)) * 2
    mass = rng.uniform(0.01, 0.99, (H, N))
    if rng.random() < 0.3:
        mass[:, 0] = 1e-9  # a query that barely looks at the sinks
    return a, mass, 1 - mass, f"H={H}, N={N}"


def check_sigma_mass(base):
    for seed in range(base, base + CASES):
        rng = np.random.default_rng(seed)
        a, mass, rest, where = mass_case(rng)
        z = a + np.log(rest) - np.log(mass)
        want = fit_mass(z, mass.mean(axis=-1))
        got = (yield run("sigma_mass", a=a, mass=mass, rest=rest))["sigma"]
        close("sigma_mass(a, mass, rest) [H]", got, want, 1e-4, f"{where}, seed={seed}")
        took = (1 / (1 + np.exp(z - np.asarray(got, dtype=np.float64)[:, None]))).mean(axis=-1)
        if not np.allclose(took, mass.mean(axis=-1), atol=1e-4):
            raise Fail(f"{where}, seed={seed}: with your sigma the sink takes {np.round(took, 4).tolist()} of the "
                       f"attention on average, the sinks took {np.round(mass.mean(axis=-1), 4).tolist()}")


def check_sink_value(base):
    for seed in range(base, base + CASES):
        rng = np.random.default_rng(seed)
        Hkv, G, N, S, D = (int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 9)),
                           int(rng.integers(1, 5)), int(rng.choice([4, 8])))
        p = rng.dirichlet(np.ones(S + 3), (Hkv * G, N))[..., :S].astype(np.float32)  # [H, N, S]
        v = rng.standard_normal((Hkv, S, D)).astype(np.float32)
        w = p.sum(axis=1, dtype=np.float64)  # [H, S]
        want = np.einsum("hs,hsd->hd", w, np.repeat(v, G, axis=0).astype(np.float64)) / w.sum(-1, keepdims=True)
        got = (yield run("sink_value", sink_probs=p, values=v))["value"]
        close("sink_value(sink_probs, values) [H, D]", got, want, 1e-5,
              f"N={N}, H={Hkv * G}, Hkv={Hkv}, S={S}, D={D}, seed={seed}")


def check_calibrate(base):
    for seed in range(base, base + 3):
        rng = np.random.default_rng(seed)
        sizes = random_sizes(rng)
        model, raw, _ = tiny_model(seed, **sizes)
        sinks = int(rng.integers(1, 5))
        cache = sinks + int(rng.integers(4, 17))
        ids = rng.integers(0, raw["vocab_size"], cache + int(rng.integers(20, 120)))
        want = calibrate(model, ids, cache, sinks)
        got = yield run("calibrate", sizes=sizes, seed=seed, ids=ids, cache=cache, sinks=sinks)
        where = f"tiny model {sizes}, {len(ids)} tokens, cache {cache} with {sinks} sinks, seed={seed}"
        close("sigma_lme [L, H] vs minisink calibrate's", got["lme"], want.sink_logits["lme"], 1e-3, where)
        close("sigma_mass [L, H] vs minisink calibrate's", got["mass"], want.sink_logits["mass"], 1e-3, where)
        close("sink values [L, H, D] vs minisink calibrate's", got["values"], want.sink_values, 1e-4, where)


CHECKS = [  # (title, points, check)
    ("sink_scores: the log-sum-exp of the sink scores per head (GQA), exact for scores in the hundreds", 1,
     check_sink_scores),
    ("sigma_lme: the log-mean-exp of a, exact for a in the hundreds", 1, check_sigma_lme),
    ("sigma_mass: the virtual sink takes, on average, the attention the sinks took", 2, check_sigma_mass),
    ("sink_value: the sinks' values weighted by the attention they received", 1, check_sink_value),
    ("calibrate on a tiny model equals minisink's calibrate (both estimators and the values)", 3, check_calibrate),
]
