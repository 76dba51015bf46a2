"""Tables and plots of docs/results.md from the runs that experiments/run_all.py wrote.

    python experiments/make_report.py --runs runs/ --img docs/img    # prints the markdown tables, writes the PNGs

Perplexities are exp(mean NLL) over the stated stretch of tokens. Stretches are given as token indices in the
stream (the NLL of token i is predicted from tokens 0..i-1). Runs of different lengths share their first tokens:
the NLL of a token depends only on the stream before it, so the first 8,000 tokens of a 20,000-token run are an
8,000-token run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = 8192  # SmolLM2's pre-training context length
SMOOTH = 256  # tokens in the sliding mean of the log-perplexity plot


def load(runs: Path, name: str) -> np.ndarray | None:
    """Per-token NLL, indexed by token: nll[i] is the NLL of token i (nll[0], the first token, is nan)."""
    path = runs / f"{name}.npz"
    if not path.exists():
        return None
    with np.load(path) as z:
        return np.concatenate([[np.nan], z["nll"]])


def ppl(nll, start, stop=None) -> str:
    if nll is None:
        return "-"
    part = nll[max(start, 1):stop]
    part = part[np.isfinite(part)]
    if stop is not None and len(nll) < stop or len(part) == 0:
        return "-"
    return f"{np.exp(part.mean()):.2f}"


def table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def running_mean(nll, width=SMOOTH):
    x = nll[1:]
    c = np.concatenate([[0], np.cumsum(x)])
    return np.arange(width, len(x) + 1), (c[width:] - c[:-width]) / width  # token index, mean NLL of the window


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_policies(runs: Path, img: Path, names):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for name, label, style in names:
        nll = load(runs, name)
        if nll is not None and len(nll) > SMOOTH + 1:
            x, y = running_mean(nll)
            ax.plot(x, y, style, lw=1, label=label)
    ax.axvline(PRETRAIN, color="gray", lw=0.8, ls=":")
    ax.text(PRETRAIN, ax.get_ylim()[0], " 8192: pre-training length", fontsize=7, va="bottom", color="gray")
    ax.set_xlabel("tokens streamed (KJV)")
    ax.set_ylabel(f"log perplexity (mean NLL, last {SMOOTH} tokens)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    return save(fig, plt, img)


def plot_latency(lat, img: Path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 2.8))
    C = lat["cache"]
    axes[0].plot(C, 1000 * lat["recompute_s"], "o-", label="sliding window + recompute")
    axes[0].plot(C, 1000 * lat["sink_s"], "o-", label="sink cache (4 + C - 4)")
    axes[0].set_ylabel("ms per token")
    axes[1].plot(C, lat["recompute_bytes"] / 2**20, "o-", label="recompute")
    axes[1].plot(C, lat["sink_bytes"] / 2**20, "o-", label="sink cache")
    axes[1].set_ylabel("memory of a step, MB")
    for ax in axes:
        ax.set_xlabel("cache size C (tokens)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, plt, img)


def save(fig, plt, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=ROOT / "runs")
    p.add_argument("--img", type=Path, default=ROOT / "docs" / "img")
    args = p.parse_args(argv)
    R = args.runs
    out = []

    # Fig. 3: the policies at a total cache of 256
    policies = [("dense", "dense (full cache)", "C3-"), ("window_256", "window attention, 256", "C1-"),
                ("recompute_256", "sliding window + recompute, 256", "C2-"),
                ("sink_4_252", "StreamingLLM, 4 sinks + 252", "C0-")]
    rec = load(R, "recompute_256")
    rec_end = len(rec) if rec is not None else 400
    rows = []
    for name, label, _ in policies:
        nll = load(R, name)
        n = 0 if nll is None else len(nll)
        rows.append([label, n, ppl(nll, 257, rec_end), ppl(nll, 1, PRETRAIN), ppl(nll, PRETRAIN, 20000),
                     ppl(nll, 1, n) if n else "-"])
    out.append("### Four policies, total cache 256 (KJV)\n\n" + table(
        ["policy", "tokens run", f"ppl, tokens 257-{rec_end - 1}", "ppl, tokens 1-8191", "ppl, 8192-19999",
         "ppl, all run"], rows))
    print("wrote", plot_policies(R, args.img / "policies.png", [x for x in policies if x[0] != "recompute_256"]
                                 + [policies[2]]), file=sys.stderr)

    # Table 2: sink count at 256 in total
    rows = []
    for S in (0, 1, 2, 4, 8):
        name = "window_256" if S == 0 else f"sink_{S}_{256 - S}"
        nll = load(R, name)
        rows.append([S, 256 - S, ppl(nll, 1, 8000), ppl(nll, 257, 8000)])
    out.append("### Sink count, S + W = 256, first 8,000 tokens\n\n" + table(
        ["sinks S", "window W", "ppl, tokens 1-7999", "ppl, tokens 257-7999 (cache full)"], rows))

    # Table 6: cache size
    rows = []
    for W in (124, 252, 508, 1020):
        nll = load(R, f"sink_4_{W}")
        rows.append([f"4 + {W}", ppl(nll, 1, 8000), ppl(nll, 1025, 8000)])
    out.append("### Cache size, 4 sinks + W, first 8,000 tokens\n\n" + table(
        ["cache", "ppl, tokens 1-7999", "ppl, tokens 1025-7999"], rows))

    # sinks x renumbering
    rows = []
    for S, on, off in ((0, "window_256", "window_256_textpos"), (4, "sink_4_252", "sink_4_252_textpos")):
        a, b = load(R, on), load(R, off)
        n = min(len(a), len(b)) if a is not None and b is not None else 0
        diff = f"{np.nanmax(np.abs(a[:n] - b[:n])):.2g}" if n else "-"
        rows.append([S, "cache (paper)", ppl(a, 1, PRETRAIN), ppl(a, PRETRAIN, 20000), ppl(a, 19000, 20000), ""])
        rows.append([S, "text (ablation)", ppl(b, 1, PRETRAIN), ppl(b, PRETRAIN, 20000), ppl(b, 19000, 20000), diff])
    out.append("### Sinks x position renumbering, total cache 256\n\n" + table(
        ["sinks", "positions", "ppl, 1-8191", "ppl, 8192-19999", "ppl, 19000-19999", "max abs NLL difference"], rows))
    print("wrote", plot_policies(R, args.img / "renumbering.png", [
        ("sink_4_252", "4 sinks + 252, positions within the cache", "C0-"),
        ("sink_4_252_textpos", "4 sinks + 252, positions in the text", "C3-"),
        ("window_256", "window 256 (either numbering)", "C1-")]), file=sys.stderr)

    # Fig. 10: latency and memory
    lat_path = R / "latency.npz"
    if lat_path.exists():
        with np.load(lat_path) as z:
            lat = {k: z[k] for k in z.files}
        rows = [[int(c), f"{1000 * s:.1f}", f"{1000 * r:.0f}", f"{r / s:.1f}x", f"{sb / 2**20:.1f}",
                 f"{rb / 2**20:.1f}"] for c, s, r, sb, rb in
                zip(lat["cache"], lat["sink_s"], lat["recompute_s"], lat["sink_bytes"], lat["recompute_bytes"])]
        out.append("### Per-token latency and memory of a decode step\n\n" + table(
            ["cache C", "sink ms/token", "recompute ms/token", "recompute / sink", "sink MB", "recompute MB"], rows))
        print("wrote", plot_latency(lat, args.img / "latency.png"), file=sys.stderr)
    print("\n\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
