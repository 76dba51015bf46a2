"""Where attention goes: the attention sink, measured (Xiao et al. 2024, Sec. 3.1, Fig. 2).

What it does: `capture` runs one dense forward over a prompt and keeps every layer's attention probabilities
[H, T, T]; `sink_mass` reduces them to the share of attention each head puts on the first token; `format_table`
prints it per layer; `plot_maps` and `plot_sink_mass` draw the paper's Fig. 2 analog (the average attention map of
a few layers) and a layer x head heatmap of the sink mass.

The sink mass of head h in layer l is the attention probability on token 0, averaged over the queries t >= 4
(FIRST_QUERY). The first few queries are left out because they have almost nothing else to look at: query 0 puts all
of its attention on token 0 whatever the model does. The yardstick is uniform attention, which would give token 0
a share of 1 / (t + 1) at query t: `uniform_mass` averages that over the same queries.

What it does not: attention over a sink cache (the keys would be in the cache's block order: sinks, ring, chunk),
or any batching. Matplotlib is needed only for the plots, and imported only there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .model import PREFILL_CHUNK
from .spec import new_cache

FIRST_QUERY = 4  # queries before this one are left out of the sink mass (they see too few tokens to tell)
PLOT_LAYERS = (0, 1, 2, 15, 29)  # the layers drawn by plot_maps (those that exist)
PLOT_HINT = "matplotlib is needed for plots: pip install 'minisink[plot]'"

DEFAULT_PROMPT = (
    "The lighthouse stood at the end of a long stone pier, and every evening the keeper climbed its narrow stairs "
    "to light the lamp. Ships passing in the dark relied on its steady beam to find the harbor entrance and avoid "
    "the rocks that lay hidden beneath the waves. In winter the storms were fierce, and spray reached the windows "
    "at the top of the tower. The keeper kept a logbook of every vessel he saw, noting its name, its direction, "
    "and the state of the sea, so that the harbor master could read the record each morning."
)


def capture(model, token_ids) -> list[np.ndarray]:
    """Attention probabilities of one dense forward over `token_ids`: per layer, [H, T, T] float32, row t = query t
    over keys 0..T-1 (zero above the diagonal). One chunk, so every key of the prompt is in the single block."""
    ids = np.asarray(token_ids)
    if not 1 <= len(ids) <= PREFILL_CHUNK:
        raise ValueError(f"attention maps take 1..{PREFILL_CHUNK} tokens in one forward, got {len(ids)}")
    probs: list[np.ndarray] = []
    model.forward(ids, new_cache(model), attention_probs=probs)
    T = len(ids)
    for p in probs:
        assert p.shape == (model.config.num_attention_heads, T, T), p.shape
    return probs


def sink_mass(probs: list[np.ndarray], first_query: int = FIRST_QUERY) -> np.ndarray:
    """[layers, H]: the attention on token 0, averaged over the queries first_query..T-1."""
    T = probs[0].shape[1]
    if T <= first_query:
        raise ValueError(f"need more than {first_query} tokens to measure sink mass, got {T}")
    return np.stack([p[:, first_query:, 0].mean(axis=1) for p in probs])  # [layers, H]


def uniform_mass(T: int, first_query: int = FIRST_QUERY) -> float:
    """The sink mass uniform attention would give: 1 / (t + 1) averaged over queries t = first_query..T-1."""
    return float(np.mean(1.0 / (np.arange(first_query, T) + 1)))


def format_table(mass: np.ndarray, uniform: float, heads: bool = False) -> str:
    """A text table of the sink mass: per layer mean, min and max over heads (heads=True: every head)."""
    L, H = mass.shape
    if heads:
        lines = ["layer " + " ".join(f"  h{h:<3d}" for h in range(H)) + "    mean"]
        lines += [f"{n:5d} " + " ".join(f"{m:6.3f}" for m in row) + f"  {row.mean():6.3f}"
                  for n, row in enumerate(mass)]
    else:
        lines = ["layer    mean     min     max   heads > 0.5"]
        lines += [f"{n:5d}  {row.mean():6.3f}  {row.min():6.3f}  {row.max():6.3f}   {int((row > 0.5).sum()):3d} of {H}"
                  for n, row in enumerate(mass)]
    deeper = f"; layers >= 2: {mass[2:].mean():.3f}" if L > 2 else ""  # the first two layers rarely hold a sink
    lines.append(f"all    {mass.mean():6.3f}  (uniform attention would give {uniform:.3f}{deeper})")
    return "\n".join(lines)


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(PLOT_HINT) from e
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_maps(probs: list[np.ndarray], path, layers=PLOT_LAYERS, tokens: int | None = None) -> Path:
    """The Fig. 2 analog: per chosen layer, the attention map averaged over heads [T, T], log color scale, with the
    sink's column (key 0) set off from the axis and marked by a red triangle above it.
    `tokens` crops to the first that many queries and keys (None: the whole prompt)."""
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    layers = [n for n in layers if n < len(probs)]
    fig, axes = plt.subplots(1, len(layers), figsize=(2.6 * len(layers), 2.8), squeeze=False)
    for ax, n in zip(axes[0], layers, strict=True):
        avg = probs[n].mean(axis=0)[:tokens, :tokens]  # [T, T], averaged over heads
        T = len(avg)
        shown = np.where(np.tril(np.ones_like(avg, dtype=bool)), np.maximum(avg, 1e-4), np.nan)
        im = ax.imshow(shown, norm=LogNorm(vmin=1e-4, vmax=1), cmap="viridis", interpolation="nearest")
        # The sink is key 0, the map's first column: at the image's edge the axis line hides it, so leave a margin
        # of empty plot to its left and point at it from above.
        margin = max(2.0, 0.04 * T)
        ax.set_xlim(-0.5 - margin, T - 0.5)
        ax.set_ylim(T - 0.5, -0.5 - margin)
        ax.plot([0], [-0.5 - margin / 2], marker="v", color="red", markersize=5, clip_on=False)
        ax.set_title(f"layer {n}", fontsize=9)
        ax.set_xlabel("key", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("query", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="attention (log)")
    return _save(fig, plt, path)


def plot_sink_mass(mass: np.ndarray, path, uniform: float | None = None) -> Path:
    """A heatmap of the sink mass, layers x heads, on a 0..1 scale."""
    plt = _pyplot()
    L, H = mass.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.35 * H, 0.8 + 0.16 * L))
    im = ax.imshow(mass, vmin=0, vmax=1, cmap="magma", aspect="auto", interpolation="nearest")
    ax.set_xlabel("head", fontsize=8)
    ax.set_ylabel("layer", fontsize=8)
    ax.set_xticks(range(H))
    ax.tick_params(labelsize=7)
    title = "attention on the first token"
    ax.set_title(title + (f" (uniform: {uniform:.3f})" if uniform is not None else ""), fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _save(fig, plt, path)


def _save(fig, plt, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path
