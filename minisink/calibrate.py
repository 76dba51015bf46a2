"""Calibrate a sink logit per layer and head on a trained model, without training (docs/05-why-sinks-exist.md).

What it does: streams a calibration text through the cache we want to imitate, StreamingLLM's S sinks + (C - S)
recent tokens, and watches every layer l, query head h and steady-state query i (one that comes after the first C
tokens, so everything but the sinks and the window has been evicted). For each it records

    a_i = log sum_{j<S} exp(s_ij)     the sinks' combined score, s_ij = q_i . k_j / sqrt(D) (the sink keys at cache
                                      positions 0..S-1, the query at C - 1, where the sink cache puts them)
    m_i = sum_{j<S} p_ij              the attention the sinks take
    z_i = log sum_{j>=S} exp(s_ij)    the rest of the softmax denominator: what is left once the sinks are gone
                                      (from the probabilities: z_i = a_i + log(1 - m_i) - log m_i)

and estimates one sigma[l, h] to stand in for the sinks once they are evicted (window attention + a sink logit):

    "lme"   sigma = log mean_i exp(a_i): exp(sigma) is the sinks' average share of the denominator, in absolute
            terms (the log-mean-exp of the sink scores; with S = 1, of q . k_0 / sqrt(D)).
    "mass"  sigma solves mean_i exp(sigma) / (exp(sigma) + exp(z_i)) = mean_i m_i: the virtual sink takes, on
            average over the calibration queries, the attention the sinks took (a fit of the attention mass;
            bisection, the left side increases with sigma).

and the sinks' value, for the experiment where the sink is more than a share of the denominator:

    values[l, h] = sum_i sum_{j<S} p_ij v_j / sum_i m_i    the attention-weighted mean of the sink tokens' values

What it does not: train (StreamingLLM trains a sink token from scratch; a trained model never saw a sink logit, so
this can only show how far a constant logit gets), or anything per query (sigma is one number per head).
The calibration text must not be the evaluation text: `split_text` cuts a text in two, `minisink ppl` scores from
the start of the first part and `minisink calibrate` reads the second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .rope import rotation

ESTIMATORS = ("lme", "mass")
CALIBRATION_SHARE = 0.5  # the calibration part is the text after this share of its characters


class CalibrationError(ValueError):
    """Calibration input that cannot work (too short a text, a bad file)."""


def split_text(text: str, share: float = CALIBRATION_SHARE) -> tuple[int, int]:
    """Where the calibration part of `text` starts and ends: (start, len(text)), start = the first line break
    after `share` of the characters. Evaluation reads text[:start], calibration text[start:]: never the same
    characters (tests/test_calibrate.py checks it)."""
    cut = int(len(text) * share)
    newline = text.find("\n", cut)
    start = cut if newline < 0 else newline + 1
    return start, len(text)


@dataclass
class Calibration:
    """What `calibrate` measured, and the sink logits each estimator makes of it."""

    sink_logits: dict[str, np.ndarray]  # estimator -> [layers, H] float32
    sink_values: np.ndarray  # [layers, H, D] float32
    sink_mass: np.ndarray  # [layers, H] mean attention on the sinks, m_i averaged over the calibration queries
    cache: int  # the total cache C it was calibrated for
    sinks: int  # S
    queries: int  # steady-state queries used
    meta: dict  # source, char_start, char_end: which text it came from

    def save(self, path, estimator: str = "mass") -> Path:
        """An .npz: `sink_logits` (the chosen estimator), `sink_values`, every estimator as sink_logits_NAME, the
        sink mass and the settings. Written to a temporary name, then renamed."""
        if estimator not in self.sink_logits:
            raise CalibrationError(f"unknown estimator {estimator!r}: choose one of {', '.join(ESTIMATORS)}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"sink_logits": self.sink_logits[estimator], "sink_values": self.sink_values,
                  "sink_mass": self.sink_mass, "estimator": np.asarray(estimator), "cache": np.asarray(self.cache),
                  "sinks": np.asarray(self.sinks), "queries": np.asarray(self.queries),
                  **{f"sink_logits_{k}": v for k, v in self.sink_logits.items()},
                  **{k: np.asarray(v) for k, v in self.meta.items()}}
        with atomic_write(path) as f:  # a file object: np.savez would append .npz to a bare name
            np.savez(f, **arrays)
        return path


def load_sink_file(path) -> dict:
    """A file written by `Calibration.save` -> {"sink_logits", "sink_values", "source", "char_start", ...}."""
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise CalibrationError(f"cannot read sink logits from {path}: {e} (write one with `minisink calibrate`)")
    if "sink_logits" not in data:
        raise CalibrationError(f"{path} has no `sink_logits` array (write one with `minisink calibrate`)")
    return {k: (v.item() if v.ndim == 0 else v) for k, v in data.items()}


def sink_scores(model, layer: int, x_in: np.ndarray, sink_keys: np.ndarray, cache: int) -> np.ndarray:
    """a_i = log sum_j exp(q_i . k_j / sqrt(D)) for the queries of x_in [T, d_model] (layer `layer`'s input) over
    the sink keys [Hkv, S, D] (rotated at 0..S-1), the queries at cache position `cache` - 1: [H, T] float64.
    The queries are the layer's own (`Layer.attention_inputs`)."""
    c = model.config
    H, Hkv, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    _, q, _, _ = model.layers[layer].attention_inputs(x_in, rotation(np.full(len(x_in), cache - 1), c.inv_freq()))
    k = np.repeat(sink_keys, H // Hkv, axis=0)  # [H, S, D]: query head h uses KV head h // G
    s = np.einsum("thd,hsd->hts", q.astype(np.float64), k.astype(np.float64)) / np.sqrt(D)  # [H, T, S]
    top = s.max(axis=-1)
    return top + np.log(np.exp(s - top[..., None]).sum(axis=-1))  # [H, T]


def sink_kv(model, layer: int, x_in: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys (rotated at positions 0..S-1) and values of the S tokens of x_in [S, d_model] at `layer`:
    ([Hkv, S, D], [Hkv, S, D])."""
    _, _, k, v = model.layers[layer].attention_inputs(x_in, rotation(np.arange(len(x_in)), model.config.inv_freq()))
    return k.transpose(1, 0, 2), v.transpose(1, 0, 2)


def fit_mass(z: np.ndarray, target: np.ndarray, steps: int = 100) -> np.ndarray:
    """sigma [...] solving mean_i 1 / (1 + exp(z[..., i] - sigma)) = target [...] by bisection (float64)."""
    target = np.clip(target, 1e-12, 1 - 1e-12)
    lo = z.min(axis=-1) + np.log(target / (1 - target)) - 1  # at sigma <= min z + logit(target), every term <= target
    hi = z.max(axis=-1) + np.log(target / (1 - target)) + 1
    for _ in range(steps):
        mid = (lo + hi) / 2
        too_much = (1 / (1 + np.exp(z - mid[..., None]))).mean(axis=-1) > target
        hi, lo = np.where(too_much, mid, hi), np.where(too_much, lo, mid)
    return (lo + hi) / 2


def calibrate(model, ids, cache: int, sinks: int = 4, chunk: int = 128, meta: dict | None = None) -> Calibration:
    """Stream `ids` through a sink cache `sinks` + (`cache` - `sinks`) and estimate the sink logits (module doc).
    The queries after the first `cache` tokens are the calibration queries: there must be some."""
    c = model.config
    L, H, Hkv = c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads
    ids = np.asarray(ids, dtype=np.int64)
    if not 1 <= sinks < cache:
        raise CalibrationError(f"need 1 <= sinks < cache, got sinks={sinks}, cache={cache}")
    if len(ids) <= cache + 1:
        raise CalibrationError(f"the calibration text has {len(ids)} tokens: it needs more than the cache "
                               f"({cache}) so that some queries see the sinks with the start evicted")
    if chunk < sinks:
        raise CalibrationError(f"chunk ({chunk}) must be >= sinks ({sinks}): the first chunk must hold the sinks")
    saved = model.sink_logits  # calibrate the model as trained: no sink logits while measuring
    model.sink_logits = None
    kv_cache = model.new_cache(n_sink=sinks, window=cache - sinks)
    a, z, m = [], [], []  # per chunk: [L, H, n] each
    weight = np.zeros((L, H, sinks))  # sum_i p_ij over the calibration queries, per sink j
    keys = values = None  # [L, Hkv, S, D]
    try:
        for start in range(0, len(ids), chunk):
            piece = ids[start:start + chunk]
            states, probs = [model.embed_tokens[piece]], []  # layer inputs: the embeddings, then each layer's output
            model.forward(piece, kv_cache, attention_probs=probs, layer_hook=lambda n, x: states.append(x.copy()))
            if keys is None:  # the first chunk holds the sinks (chunk >= sinks is checked above)
                kv = [sink_kv(model, n, states[n][:sinks]) for n in range(L)]
                keys, values = np.stack([k for k, _ in kv]), np.stack([v for _, v in kv])
            steady = np.arange(start, start + len(piece)) >= cache  # queries that no longer see the start
            if not steady.any():
                continue
            for n in range(L):
                p = probs[n][:, steady]  # [H, n, keys]: block order puts the sinks first
                mass = p[..., :sinks].sum(axis=-1, dtype=np.float64)  # [H, n]
                rest = p[..., sinks:].sum(axis=-1, dtype=np.float64)
                a_n = sink_scores(model, n, states[n][steady], keys[n], cache)  # [H, n]
                a.append(a_n), m.append(mass)
                z.append(a_n + np.log(np.maximum(rest, 1e-300)) - np.log(np.maximum(mass, 1e-300)))
                weight[n] += p[..., :sinks].sum(axis=1)
    finally:
        model.sink_logits = saved
    a, z, m = (np.stack([np.concatenate(x[n::L], axis=-1) for n in range(L)]) for x in (a, z, m))  # [L, H, N]
    lme_top = a.max(axis=-1, keepdims=True)
    lme = (lme_top + np.log(np.exp(a - lme_top).mean(axis=-1, keepdims=True)))[..., 0]
    mass = fit_mass(z, m.mean(axis=-1))
    G = H // Hkv
    v = np.repeat(values, G, axis=1)  # [L, H, S, D]
    sink_values = (weight[..., None] * v).sum(axis=2) / np.maximum(weight.sum(axis=-1), 1e-30)[..., None]
    return Calibration({"lme": lme.astype(np.float32), "mass": mass.astype(np.float32)},
                       sink_values.astype(np.float32), m.mean(axis=-1).astype(np.float32), cache, sinks,
                       a.shape[-1], meta or {})


def format_table(cal: Calibration) -> str:
    """Per layer: mean sink mass and the mean sigma of each estimator over heads."""
    names = list(cal.sink_logits)
    lines = [f"calibrated for {cal.sinks} sinks + {cal.cache - cal.sinks} window on {cal.queries} queries",
             "layer  sink mass  " + "  ".join(f"sigma {n:>5}" for n in names)]
    for n, mass in enumerate(cal.sink_mass):
        lines.append(f"{n:5d}  {mass.mean():9.3f}  " + "  ".join(f"{cal.sink_logits[k][n].mean():11.2f}"
                                                           for k in names))
    return "\n".join(lines)
