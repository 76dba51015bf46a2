"""Assignment 8: calibrate a sink logit and a sink value per head from attention statistics, without training.

A text streams through a sink cache of S sinks + (C - S) recent tokens. Once more than C tokens have gone by, a
query sees the S sinks and its window: those are the calibration queries (N of them). For each layer, query head h
and calibration query i, with s_ij = q_i . k_j / sqrt(D):

    a_i = log sum_{j<S} exp(s_ij)        the sinks' combined score (sinks at cache positions 0..S-1, query at C - 1)
    m_i = sum_{j<S} p_ij                 the attention the sinks take
    r_i = sum_{j>=S} p_ij                the attention the window takes (m_i + r_i = 1)
    z_i = a_i + log r_i - log m_i        log sum_{j>=S} exp(s_ij): the rest of the softmax denominator

Two estimates of one sink logit sigma per head, to stand in for the sinks once they are gone:

    sigma_lme:  sigma = log mean_i exp(a_i)                           (the log-mean-exp of the sinks' score)
    sigma_mass: mean_i exp(sigma) / (exp(sigma) + exp(z_i)) = mean_i m_i    (the sink takes the sinks' mass)

and the sinks' value: value_h = sum_i sum_{j<S} p_ij v_j / sum_i m_i (the attention-weighted mean of the sink
tokens' values). `collect` (given) streams a text through the model and returns the statistics per layer;
`calibrate` (given) puts the pieces together. minisink/calibrate.py is the library's version: the grader compares.

Symbols: L layers, H query heads, Hkv KV heads (query head h reads KV head h // G, G = H // Hkv), D head width,
S sinks, N calibration queries.
"""

from __future__ import annotations

import numpy as np

from minisink.model import linear, rms_norm
from minisink.rope import apply_rope, rotation
from minisink.spec import new_cache


def sink_scores(q: np.ndarray, sink_keys: np.ndarray) -> np.ndarray:
    """a [H, N] float64: log sum_j exp(q_i . k_j / sqrt(D)) over the S sink keys, for each head and query.
    q [N, H, D] (already rotated); sink_keys [Hkv, S, D] (already rotated). Exact for scores in the hundreds."""
    N, H, D = q.shape
    k = np.repeat(sink_keys, H // sink_keys.shape[0], axis=0).astype(np.float64)  # [H, S, D]
    s = np.einsum("nhd,hsd->hns", q.astype(np.float64), k) / np.sqrt(D)  # [H, N, S]
    top = s.max(axis=-1)  # [H, N]
    return top + np.log(np.exp(s - top[..., None]).sum(axis=-1))


def sigma_lme(a: np.ndarray) -> np.ndarray:
    """[H, N] -> [H] float64: log mean_i exp(a_i), exact for a in the hundreds."""
    top = a.max(axis=-1, keepdims=True)  # [H, 1]
    return (top + np.log(np.exp(a - top).mean(axis=-1, keepdims=True)))[:, 0]


def sigma_mass(a: np.ndarray, mass: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """[H, N] each -> [H] float64: the sigma with mean_i 1 / (1 + exp(z_i - sigma)) = mean_i m_i, where
    z_i = a_i + log r_i - log m_i. Accurate to 1e-6 (the left side increases with sigma: bisect)."""
    z = a + np.log(np.maximum(rest, 1e-300)) - np.log(np.maximum(mass, 1e-300))  # [H, N]
    target = np.clip(mass.mean(axis=-1), 1e-12, 1 - 1e-12)  # [H]
    logit = np.log(target / (1 - target))
    lo, hi = z.min(axis=-1) + logit - 1, z.max(axis=-1) + logit + 1  # every term below / above the target
    for _ in range(100):
        mid = (lo + hi) / 2
        above = (1 / (1 + np.exp(z - mid[:, None]))).mean(axis=-1) > target
        lo, hi = np.where(above, lo, mid), np.where(above, mid, hi)
    return (lo + hi) / 2


def sink_value(sink_probs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """sink_probs [H, N, S] (each query's probability on each sink), values [Hkv, S, D] -> [H, D] float64: the
    sinks' values averaged with the attention they received."""
    H = sink_probs.shape[0]
    weight = sink_probs.sum(axis=1, dtype=np.float64)  # [H, S]
    v = np.repeat(values, H // values.shape[0], axis=0).astype(np.float64)  # [H, S, D]
    return (weight[..., None] * v).sum(axis=1) / np.maximum(weight.sum(axis=-1), 1e-30)[:, None]


# --- given: the statistics of a stream, and the whole calibration ----------------------------------------------

def collect(model, ids, cache: int, sinks: int, chunk: int = 128) -> list[dict]:
    """Stream `ids` through new_cache(model, "sink", sinks=sinks, window=cache - sinks) in chunks; per layer, the
    calibration queries' statistics: q [N, H, D] (rotated at cache position cache - 1), sink_keys and
    sink_values [Hkv, S, D] (keys rotated at 0..S-1), sink_probs [H, N, S], rest [H, N]."""
    c = model.config
    H, Hkv, D, L = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.num_hidden_layers
    kv_cache = new_cache(model, "sink", sinks=sinks, window=cache - sinks)
    stats = [{"q": [], "sink_probs": [], "rest": []} for _ in range(L)]
    for start in range(0, len(ids), chunk):
        piece = ids[start:start + chunk]
        inputs, probs = [model.embed_tokens[piece]], []  # each layer's input rows [T, d_model]
        model.forward(piece, kv_cache, attention_probs=probs,
                      layer_hook=lambda n, x, inputs=inputs: inputs.append(x.copy()))
        steady = np.arange(start, start + len(piece)) >= cache  # queries that see the sinks and a full window
        for n, layer in enumerate(model.layers):
            qkv = linear(rms_norm(inputs[n], layer.input_layernorm, c.rms_norm_eps), layer.qkv_proj, layer.qkv_bias)
            if start == 0:  # the first chunk holds the sinks (chunk >= sinks)
                k = apply_rope(qkv[:sinks, H * D:(H + Hkv) * D].reshape(sinks, Hkv, D),
                               rotation(np.arange(sinks), c.inv_freq()))  # [S, Hkv, D]
                stats[n]["sink_keys"] = k.transpose(1, 0, 2)
                stats[n]["sink_values"] = qkv[:sinks, (H + Hkv) * D:].reshape(sinks, Hkv, D).transpose(1, 0, 2)
            if steady.any():
                q = qkv[steady, :H * D].reshape(-1, H, D)
                stats[n]["q"].append(apply_rope(q, rotation(np.full(len(q), cache - 1), c.inv_freq())))
                p = probs[n][:, steady]  # [H, N_chunk, keys]: the sink block comes first
                stats[n]["sink_probs"].append(p[..., :sinks])
                stats[n]["rest"].append(p[..., sinks:].sum(axis=-1, dtype=np.float64))
    return [{"q": np.concatenate(s["q"]), "sink_keys": s["sink_keys"], "sink_values": s["sink_values"],
             "sink_probs": np.concatenate(s["sink_probs"], axis=1), "rest": np.concatenate(s["rest"], axis=1)}
            for s in stats]


def calibrate(model, ids, cache: int, sinks: int):
    """-> (sigma_lme [L, H], sigma_mass [L, H], values [L, H, D]) of a text streamed through a sink cache."""
    lme, mass, values = [], [], []
    for s in collect(model, ids, cache, sinks):
        a = sink_scores(s["q"], s["sink_keys"])
        m = s["sink_probs"].sum(axis=-1, dtype=np.float64)  # [H, N]
        lme.append(sigma_lme(a))
        mass.append(sigma_mass(a, m, s["rest"]))
        values.append(sink_value(s["sink_probs"], s["sink_values"]))
    return np.stack(lme), np.stack(mass), np.stack(values)
