"""What the child process runs on a student's code: one task per kind of request, returning plain arrays.

A task takes the child's context (`ctx.student`: the student's graded objects; `ctx.plugged()`: minisink's own code
using them) and inputs the grader sent, and returns a dict of arrays. Tasks never compute an expected answer:
the grader (grading.py and the checks modules) does that, in its own process, and only compares. This module
imports minisink's runtime modules, which in the child are loaded with the graded definitions removed
(sandbox.py), and nothing of minisink.reference or the checks.
"""

from __future__ import annotations

import numpy as np

from minisink.cache import KVBlock
from minisink.rope import Rotation, rotation
from minisink.tiny import tiny_model


def feed(model, ids, cache, chunks=None) -> np.ndarray:
    """Logits [N, V] of `ids` fed through `cache` in pieces of the given sizes (default: one token at a time)."""
    sizes = chunks or [1] * len(ids)
    bounds = np.cumsum([0] + list(sizes))
    return np.concatenate([model.forward(ids[a:b], cache) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


def _cache_class(ctx, name):
    """The student's class `name` if it is graded, else minisink.cache's."""
    import minisink.cache

    return getattr(ctx.student, name, None) or getattr(minisink.cache, name)


# --- assignments 1-4: a tiny model fed through a cache, minisink's code running the student's pieces ----------

def run_model(ctx, sizes: dict, seed: int, ids, chunks=None, cache="FullCache", cache_args=None, new_cache=None):
    """Logits of tiny_model(seed, **sizes) fed `ids` in `chunks`, minisink using the student's graded objects; the
    cache is `cache` (the student's class if graded) or, with `new_cache` a policy name, minisink's factory's:
    minisink.spec.new_cache(model, new_cache, **cache_args). Also returns the cache's retained() after the last
    chunk."""
    from minisink import spec

    model = tiny_model(seed, **sizes)[0]
    with ctx.plugged():
        c = spec.new_cache(model, new_cache, **(cache_args or {})) if new_cache else \
            _cache_class(ctx, cache)(model.config, **(cache_args or {}))
        logits = feed(model, np.asarray(ids), c, chunks)
        return {"logits": logits, "retained": np.asarray(c.retained(), dtype=np.int64)}


def task_rms_norm(ctx, x, weight, eps):
    return {"out": ctx.student.rms_norm(x, weight, eps)}


def task_rotation(ctx, positions, inv_freq):
    r = ctx.student.rotation(positions, inv_freq)
    return {"cos": r.cos, "sin": r.sin}


def task_apply_rope(ctx, x, positions, inv_freq, cos=None, sin=None):
    """The student's apply_rope, at the grader's rotation (cos, sin given) or at the student's own."""
    r = Rotation(cos, sin) if cos is not None else ctx.student.rotation(positions, inv_freq)
    return {"out": ctx.student.apply_rope(x, r)}


def task_attention(ctx, q, n_kv_heads, n_blocks, with_probs, **arrays):
    """The student's attention over blocks sent as arrays: keys_i, values_i, and optional mask_i, cos_i, sin_i."""
    blocks = []
    for i in range(n_blocks):
        rot = Rotation(arrays[f"cos_{i}"], arrays[f"sin_{i}"]) if arrays.get(f"cos_{i}") is not None else None
        blocks.append(KVBlock(arrays[f"keys_{i}"], arrays[f"values_{i}"], arrays.get(f"mask_{i}"), rot))
    result = ctx.student.attention(q, blocks, n_kv_heads, with_probs=with_probs) if with_probs else \
        ctx.student.attention(q, blocks, n_kv_heads)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise TypeError(f"attention must return (output, probabilities or None), got {type(result).__name__}")
    return {"out": result[0], "probs": result[1]}


def task_retained(ctx, sizes, seed, ids, chunks, n_sink, window):
    """retained() and the key storage's shape after each chunk (renumber=False)."""
    model = tiny_model(seed, **sizes)[0]
    cache = ctx.student.SinkCache(model.config, n_sink, window, False)
    out, start = {}, 0
    with ctx.plugged():
        for i, size in enumerate(chunks):
            model.forward(np.asarray(ids[start:start + size]), cache)
            start += size
            out[f"retained_{i}"] = np.asarray(cache.retained(), dtype=np.int64)
            out[f"storage_{i}"] = np.asarray(getattr(getattr(cache, "keys", None), "shape", ()), dtype=np.int64)
    return out


# --- assignment 5: the student's mask in a small chunked evaluator ---------------------------------------------

class BandedCache:
    """A cache that keeps every key at its stream position and lets `visibility` (the student's banded mask)
    decide what each query sees: with S sinks and a window W it is the sink cache at text positions."""

    wants_attention = False

    def __init__(self, config, n_sink, window, visibility):
        self.n_sink, self.window, self.visibility = n_sink, window, visibility
        self.inv_freq = config.inv_freq()
        shape = (config.num_key_value_heads, config.head_dim)
        self.keys = [np.zeros((shape[0], shape[1], 0), np.float32) for _ in range(config.num_hidden_layers)]
        self.values = [np.zeros((shape[0], 0, shape[1]), np.float32) for _ in range(config.num_hidden_layers)]
        self.seen = 0

    def begin(self, T):
        stream = np.arange(self.seen + T)  # every token so far: key j is stream index j
        visible = np.asarray(self.visibility(stream[self.seen:], stream, self.n_sink, self.window))
        if visible.shape != (T, self.seen + T) or visible.dtype != bool:
            raise TypeError(f"banded_visibility returned {visible.dtype} {visible.shape}, expected bool "
                            f"{(T, self.seen + T)}")
        self.T, self.staged = T, {}
        self.mask = np.where(visible, np.float32(0), np.float32(-np.inf)).astype(np.float32)  # [T, seen + T]
        return rotation(stream[self.seen:], self.inv_freq)

    def blocks(self, layer, k, v):
        keys = np.concatenate([self.keys[layer], k.transpose(1, 2, 0)], axis=-1)  # [Hkv, D, seen + T]
        values = np.concatenate([self.values[layer], v.transpose(1, 0, 2)], axis=1)  # [Hkv, seen + T, D]
        self.staged[layer] = keys, values
        return [KVBlock(keys, values, self.mask)]

    def end(self):
        for layer, (keys, values) in self.staged.items():
            self.keys[layer], self.values[layer] = keys, values
        self.seen += self.T

    def retained(self):
        return np.arange(self.seen)


def task_visibility(ctx, query_stream, key_stream, n_sink, window):
    return {"visible": np.asarray(ctx.student.banded_visibility(query_stream, key_stream, n_sink, window))}


def task_nll(ctx, logits, targets):
    return {"nll": ctx.student.token_nll(logits, targets)}


def task_evaluate(ctx, seed, ids, chunks, n_sink, window):
    """The chunked evaluator with the student's mask and score: NLL of tokens 1..N-1."""
    model = tiny_model(seed)[0]
    cache = BandedCache(model.config, n_sink, window, ctx.student.banded_visibility)
    nll, start = [], 0
    for size in chunks:
        piece = ids[start:start + size]
        nll.append(np.asarray(ctx.student.token_nll(model.forward(piece, cache), ids[start + 1:start + 1 + size])))
        start += size
    return {"nll": np.concatenate(nll)}


# --- assignment 6 ------------------------------------------------------------------------------------------------

def task_sink_attention(ctx, q, k, v, sink_logits, visible=None):
    result = ctx.student.sink_attention(q, k, v, sink_logits, visible)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise TypeError(f"sink_attention must return (output, probabilities), got {type(result).__name__}")
    return {"out": result[0], "probs": result[1]}


# --- assignment 7: the student's H2O cache behind the model -------------------------------------------------------

def task_h2o(ctx, sizes, seed, ids, chunks, budget, heavy):
    """Logits of the stream and, after each chunk, retained() [layers, Hkv, n] and the key storage's shape."""
    model = tiny_model(seed, **sizes)[0]
    cache = ctx.student.H2OCache(model.config, budget, heavy)
    out, logits, start = {}, [], 0
    for i, size in enumerate(chunks):
        logits.append(model.forward(np.asarray(ids[start:start + size]), cache))
        start += size
        out[f"retained_{i}"] = np.asarray(cache.retained(), dtype=np.int64)
        out[f"storage_{i}"] = np.asarray(getattr(getattr(cache, "keys", None), "shape", ()), dtype=np.int64)
    out["logits"] = np.concatenate(logits)
    return out


# --- assignment 8: calibration statistics ---------------------------------------------------------------------

def task_sink_scores(ctx, q, sink_keys):
    return {"a": ctx.student.sink_scores(q, sink_keys)}


def task_sigma_lme(ctx, a):
    return {"sigma": ctx.student.sigma_lme(a)}


def task_sigma_mass(ctx, a, mass, rest):
    return {"sigma": ctx.student.sigma_mass(a, mass, rest)}


def task_sink_value(ctx, sink_probs, values):
    return {"value": ctx.student.sink_value(sink_probs, values)}


def task_calibrate(ctx, sizes, seed, ids, cache, sinks):
    model = tiny_model(seed, **sizes)[0]
    result = ctx.student.calibrate(model, np.asarray(ids), cache, sinks)
    if not (isinstance(result, tuple) and len(result) == 3):
        raise TypeError(f"calibrate must return (sigma_lme, sigma_mass, values), got {type(result).__name__}")
    return dict(zip(["lme", "mass", "values"], result, strict=True))


# --- assignment 9: the backward pass of attention ---------------------------------------------------------------

def task_attention_backward(ctx, q, k, v, d_out, sink_logits=None):
    result = ctx.student.attention_backward(q, k, v, sink_logits, d_out)
    if not (isinstance(result, tuple) and len(result) == 4):
        raise TypeError(f"attention_backward must return (d_q, d_k, d_v, d_sink_logits), got {type(result).__name__}")
    return dict(zip(["d_q", "d_k", "d_v", "d_sink_logits"], result, strict=True))


TASKS = {
    1: {"rms_norm": task_rms_norm, "rotation": task_rotation, "apply_rope": task_apply_rope, "model": run_model},
    2: {"attention": task_attention, "model": run_model},
    3: {"model": run_model, "retained": task_retained},
    4: {"model": run_model, "retained": task_retained},
    5: {"visibility": task_visibility, "nll": task_nll, "evaluate": task_evaluate},
    6: {"attention": task_sink_attention},
    7: {"h2o": task_h2o},
    8: {"sink_scores": task_sink_scores, "sigma_lme": task_sigma_lme, "sigma_mass": task_sigma_mass,
        "sink_value": task_sink_value, "calibrate": task_calibrate},
    9: {"attention_backward": task_attention_backward},
}
