"""The sink's anatomy: how much attention the first token draws, and the massive activations behind it.

What it does:
- The sink metric of Gu et al. 2024 ("When Attention Sink Emerges in Language Models", arXiv 2410.10781), as
  sail-sg/Attention-Sink's `compute_attention_sink` computes it. For a sample of T tokens, layer l, head h and
  key k (0-based here; the paper's k = 1 is key 0), the importance score is the attention key k receives averaged
  over the queries that can see it: alpha_k = 1/(T - k) sum_{i >= k} A_ik. Head (l, h) has a sink at k if
  alpha_k > eps; Sink_k = the share of (sample, layer, head) triples that do, as a percentage. The paper's
  settings: T = 64, eps = 0.3, k = the first token. `sink_metric_per_layer` is the same share per layer.
- Massive activations (Sun et al. 2024, "Massive Activations in Large Language Models", arXiv 2402.17762): per
  layer, the largest |entries| of the residual stream (each layer's output, through `Llama.forward`'s
  `layer_hook`), their token positions and dimensions, against the median |entry|. An entry is massive when it is
  above MASSIVE_MIN and MASSIVE_RATIO times the layer's median (their working definition).
- Their intervention: at the layer where massive activations first appear, set them to zero, or to their mean
  over other samples, and measure the perplexity (`Intervention` is a layer_hook).

What it does not: the models of either paper (we measure SmolLM2-135M; their figures are for 7B-scale models),
or any training. Plots need matplotlib (the `plot` extra), imported only there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .attention_maps import _pyplot, _save, capture
from .evaluate import perplexity, token_nll
from .spec import new_cache

SINK_TOKENS, SINK_EPS = 64, 0.3  # Gu et al.'s T and epsilon
MASSIVE_MIN, MASSIVE_RATIO = 100.0, 1000.0  # Sun et al.: |x| > 100 and about 1000x the median


# --- Gu et al. 2024: the sink metric -------------------------------------------------------------------------------

def importance(probs: list[np.ndarray]) -> np.ndarray:
    """Attention probabilities, per layer [H, T, T] (row = query) -> alpha [layers, H, T]: key k's attention
    averaged over the T - k queries that see it (the queries before k put 0 on it)."""
    A = np.stack(probs).astype(np.float64)  # [layers, H, T, T]
    T = A.shape[-1]
    return A.sum(axis=-2) / np.arange(T, 0, -1)  # divide key k's column sum by T - k


def sink_metric(alphas: np.ndarray, eps: float = SINK_EPS) -> np.ndarray:
    """alpha [samples, layers, H, T] -> Sink_k^eps [T] in percent: the share of (sample, layer, head) with
    alpha_k > eps. Sink_1 in the paper is element 0."""
    return 100 * (alphas > eps).mean(axis=(0, 1, 2))


def sink_metric_per_layer(alphas: np.ndarray, eps: float = SINK_EPS, key: int = 0) -> np.ndarray:
    """[layers] in percent: per layer, the share of (sample, head) whose attention on `key` exceeds eps."""
    return 100 * (alphas[..., key] > eps).mean(axis=(0, 2))


def samples(tokenizer, text: str, n: int, length: int = SINK_TOKENS) -> list[np.ndarray]:
    """n samples of `length` token ids, each from the start of a line, the lines evenly spaced through `text`."""
    lines = [i for i, line in enumerate(text.splitlines(keepends=True)) if len(line) > 1]
    if not 1 <= n <= len(lines):  # checked before anything is built: n = 10**11 would ask linspace for 800 GB
        raise ValueError(f"asked for {n} samples, and the text has {len(lines)} lines to start them at: ask for "
                         f"1 to {len(lines)} samples, or give a longer text")
    starts = np.cumsum([0] + [len(line) for line in text.splitlines(keepends=True)])
    out = []
    for i in np.linspace(0, len(lines) - 1, n + 2, dtype=int)[1:-1]:
        start = starts[lines[i]]
        ids = tokenizer.encode_stream(text[start:start + 16 * length])[:length]
        if len(ids) < length:
            raise ValueError(f"a sample of the text has fewer than {length} tokens: give a longer text")
        out.append(np.asarray(ids))
    return out


def sample_alphas(model, token_samples) -> np.ndarray:
    """[samples, layers, H, T]: `importance` of each sample's dense attention (one forward each)."""
    return np.stack([importance(capture(model, ids)) for ids in token_samples])


# --- Sun et al. 2024: massive activations --------------------------------------------------------------------------

def hidden_states(model, ids) -> np.ndarray:
    """The residual stream after every layer of one dense forward: [layers, T, d_model] float32."""
    states = []
    model.forward(np.asarray(ids), new_cache(model), layer_hook=lambda n, x: states.append(x.copy()))
    return np.stack(states)


@dataclass
class Massive:
    """The largest |activations| of each layer's output, over one or more samples."""

    top: np.ndarray  # [layers, k] the k largest |entries|
    position: np.ndarray  # [layers, k] their token positions
    dim: np.ndarray  # [layers, k] their hidden dimensions
    median: np.ndarray  # [layers] median |entry|

    def is_massive(self) -> np.ndarray:
        """[layers, k] bools: above MASSIVE_MIN and MASSIVE_RATIO x the layer's median."""
        return (self.top > MASSIVE_MIN) & (self.top > MASSIVE_RATIO * self.median[:, None])

    def first_layer(self) -> int | None:
        """The first layer whose largest activation is massive (None: none is)."""
        hits = np.flatnonzero(self.is_massive()[:, 0])
        return int(hits[0]) if len(hits) else None


def massive_activations(states: np.ndarray, k: int = 3) -> Massive:
    """states [layers, T, d_model] -> the k largest |entries| per layer, where they are, and the median."""
    a = np.abs(states).reshape(len(states), -1)  # [layers, T * d_model]
    order = np.argsort(a, axis=1)[:, ::-1][:, :k]
    position, dim = np.unravel_index(order, states.shape[1:])
    return Massive(np.take_along_axis(a, order, axis=1), position, dim, np.median(a, axis=1))


def format_massive(m: Massive, tokens: list[str] | None = None) -> str:
    """A table: per layer, the top entries as value (position, dim), the median, the ratio top / median."""
    lines = ["layer   top |x| (token position, dim)" + " " * 38 + "median   top/median"]
    for n in range(len(m.top)):
        top = zip(m.top[n], m.position[n], m.dim[n], strict=True)  # (|x|, token position, dim) of each of the top k
        cells = "  ".join(f"{v:8.1f} ({p:3d},{d:4d})" for v, p, d in top)
        flag = "  massive" if m.is_massive()[n, 0] else ""
        lines.append(f"{n:5d}   {cells}   {m.median[n]:6.3f}   {m.top[n, 0] / m.median[n]:8.0f}{flag}")
    if tokens is not None:
        where = sorted({int(p) for p in m.position[m.is_massive()]})
        lines.append("massive at token positions " + ", ".join(f"{p} {tokens[p]!r}" for p in where))
    return "\n".join(lines)


class Intervention:
    """A layer_hook: after `layer`, the massive entries of `dims` (|x| > MASSIVE_MIN and MASSIVE_RATIO x that
    layer output's median) are set to `values` [len(dims)] (zeros: Sun et al.'s "set to zero"; their means over
    other samples: "set to mean"). `changed` counts the entries it set."""

    def __init__(self, layer: int, dims, values):
        self.layer, self.dims = layer, np.asarray(dims)
        self.values = np.asarray(values, dtype=np.float32)
        self.changed = 0

    def __call__(self, n: int, x: np.ndarray):
        if n != self.layer:
            return
        cols = x[:, self.dims]  # [T, k], a copy
        hit = (np.abs(cols) > MASSIVE_MIN) & (np.abs(cols) > MASSIVE_RATIO * np.median(np.abs(x)))
        x[:, self.dims] = np.where(hit, self.values, cols)
        self.changed += int(hit.sum())


def massive_means(model, token_samples, layer: int, dims) -> np.ndarray:
    """The mean of the massive entries of `dims` at `layer`, over `token_samples` (where they are massive)."""
    dims = np.asarray(dims)
    total, count = np.zeros(len(dims)), np.zeros(len(dims))
    for ids in token_samples:
        out = hidden_states(model, ids)[layer]  # [T, d_model]
        x = out[:, dims]  # [T, k]
        hit = (np.abs(x) > MASSIVE_MIN) & (np.abs(x) > MASSIVE_RATIO * np.median(np.abs(out)))
        total += np.where(hit, x, 0).sum(axis=0)
        count += hit.sum(axis=0)
    return (total / np.maximum(count, 1)).astype(np.float32)


def intervention_ppl(model, token_samples, hook=None) -> float:
    """Perplexity of the samples (each its own dense forward), with `hook` as the layer_hook."""
    nll = [token_nll(model.forward(ids[:-1], new_cache(model), layer_hook=hook), ids[1:]) for ids in token_samples]
    return perplexity(np.concatenate(nll))


# --- plots ---------------------------------------------------------------------------------------------------------

def plot_sink_metric(per_layer: np.ndarray, path, eps: float = SINK_EPS) -> Path:
    """The sink metric per layer (percent of heads with alpha_0 > eps), a bar per layer."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.bar(range(len(per_layer)), per_layer, color="#4c72b0")
    ax.set_xlabel("layer", fontsize=8)
    ax.set_ylabel(f"% heads, alpha_0 > {eps}", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_title("sink metric of Gu et al. per layer (first token)", fontsize=9)
    ax.tick_params(labelsize=7)
    return _save(fig, plt, path)


def plot_massive(m: Massive, path) -> Path:
    """The top-3 |activations| and the median per layer, log scale (Sun et al.'s Fig. 1 style)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 2.6))
    layers = np.arange(len(m.top))
    for j, style in zip(range(m.top.shape[1]), ("o-", "s--", "^:"), strict=False):
        ax.plot(layers, m.top[:, j], style, ms=3, label=f"top {j + 1}")
    ax.plot(layers, m.median, "k-", lw=1, label="median")
    ax.set_yscale("log")
    ax.set_xlabel("layer", fontsize=8)
    ax.set_ylabel("|hidden state|", fontsize=8)
    ax.set_title("largest activations of each layer's output", fontsize=9)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    return _save(fig, plt, path)


# --- what `minisink attn --sink-metric N --massive N` prints -------------------------------------------------------

def sink_metric_report(model, tokenizer, text: str, n: int, eps: float = SINK_EPS) -> tuple[str, np.ndarray]:
    """Gu et al.'s metric on n samples of SINK_TOKENS tokens of `text` -> (a text report, per-layer percentages)."""
    alphas = sample_alphas(model, samples(tokenizer, text, n))
    metric, per_layer = sink_metric(alphas, eps), sink_metric_per_layer(alphas, eps)
    lines = [f"sink metric (Gu et al. 2024), {n} samples of {SINK_TOKENS} tokens, eps {eps}: "
             f"Sink_1 = {metric[0]:.1f}% of (sample, layer, head) put more than {eps} on the first token "
             f"(key 2: {metric[1]:.1f}%, the largest after it: {metric[1:].max():.1f}%)",
             "per layer: " + " ".join(f"{v:.0f}" for v in per_layer)]
    return "\n".join(lines), per_layer


def massive_report(model, tokenizer, text: str, prompt_ids, n: int) -> tuple[str, Massive]:
    """The massive activations of `prompt_ids`, then Sun et al.'s intervention at the first massive layer on n
    samples of 256 tokens of `text` (the mean is taken over n other samples of SINK_TOKENS tokens)."""
    m = massive_activations(hidden_states(model, prompt_ids))
    lines = [format_massive(m, [tokenizer.decode([int(i)]) for i in prompt_ids])]
    layer = m.first_layer()
    if layer is None:
        return "\n".join(lines + ["no massive activation: nothing to intervene on"]), m
    dims = sorted({int(d) for d in m.dim[layer][m.is_massive()[layer]]})
    evaluation = samples(tokenizer, text, n, 256)
    means = massive_means(model, samples(tokenizer, text, n + 1, SINK_TOKENS)[1:], layer, dims)
    lines.append(f"intervention after layer {layer} on dims {dims} (Sun et al. 2024), perplexity of {n} samples "
                 f"of 256 tokens:")
    for name, hook in [("unchanged", None), ("set to zero", Intervention(layer, dims, np.zeros(len(dims)))),
                       ("set to their mean " + str(np.round(means, 1).tolist()), Intervention(layer, dims, means))]:
        ppl = intervention_ppl(model, evaluation, hook)
        changed = f"  ({hook.changed} entries set)" if hook else ""
        lines.append(f"  {name:<40} {ppl:12.3f}{changed}")
    return "\n".join(lines), m


def reports(model, tokenizer, text: str, prompt_ids, sink_metric_samples: int = 0, massive_samples: int = 0,
            plot_dir=None) -> tuple[list[str], list[Path]]:
    """`minisink attn --sink-metric N --massive N [--plot DIR]`: the reports asked for (samples drawn from `text`)
    and, with `plot_dir`, their plots (sink_metric.png, massive_activations.png)."""
    texts, plots = [], []
    if sink_metric_samples:
        report, per_layer = sink_metric_report(model, tokenizer, text, sink_metric_samples)
        texts.append(report)
        if plot_dir:
            plots.append(plot_sink_metric(per_layer, Path(plot_dir) / "sink_metric.png"))
    if massive_samples:
        report, massive = massive_report(model, tokenizer, text, prompt_ids, massive_samples)
        texts.append(report)
        if plot_dir:
            plots.append(plot_massive(massive, Path(plot_dir) / "massive_activations.png"))
    return texts, plots
