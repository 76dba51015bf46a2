"""Quality against memory for the policies of docs/09-other-ways-to-forget.md: the table and the plot of
docs/results.md (perplexity against the total cache for window, sink 4 + rest, H2O, TOVA; dense as the line).

The runs (KJV from its first token; h2o and tova token by token, the several budgets of one mode in one pass):

    minisink ppl --corpus kjv --tokens 8000 --policy h2o --budget 64 128 256 512 --out runs/h2o.npz
    minisink ppl --corpus kjv --tokens 8000 --policy tova --budget 64 128 256 512 --out runs/tova.npz
    minisink ppl --corpus kjv --tokens 8000 --policy sink --sinks 4 --window 60 --out runs/sink_64.npz    # N - 4
    minisink ppl --corpus kjv --tokens 8000 --policy window --window 64 --out runs/window_64.npz
    ... (sink and window at 128, 256, 512 alike)
    minisink ppl --corpus kjv --tokens 8000 --policy dense --out runs/dense.npz

then `python experiments/eviction_curves.py --runs runs/ --img docs/img`. Every run is compared over the same
tokens: the longest prefix all of them scored (a run cut short is reported at its length).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

BUDGETS = (64, 128, 256, 512)
POLICIES = ("window", "sink", "h2o", "tova")


def load_runs(runs: Path) -> tuple[dict, np.ndarray | None]:
    """{(policy, budget): nll} and the dense nll (None if absent), from `{policy}_{budget}.npz` and dense.npz."""
    found = {}
    for policy in POLICIES:
        for budget in BUDGETS:
            path = runs / f"{policy}_{budget}.npz"
            if path.is_file():
                with np.load(path) as z:
                    found[policy, budget] = z["nll"]
    dense = runs / "dense.npz"
    if dense.is_file():
        with np.load(dense) as z:
            return found, z["nll"]
    return found, None


def table(found: dict, dense: np.ndarray | None, n: int) -> str:
    ppl = lambda nll: f"{np.exp(np.mean(nll[:n])):.2f}" if nll is not None and len(nll) >= n else "-"  # noqa: E731
    lines = ["| total cache | " + " | ".join(POLICIES) + " |", "|---" * (len(POLICIES) + 1) + "|"]
    for budget in BUDGETS:
        lines.append(f"| {budget} | " + " | ".join(ppl(found.get((p, budget))) for p in POLICIES) + " |")
    lines.append(f"| dense (all {n + 1}) | " + " | ".join([ppl(dense)] * len(POLICIES)) + " |")
    return "\n".join(lines)


def plot(found: dict, dense: np.ndarray | None, n: int, path: Path) -> Path:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for policy, style in zip(POLICIES, ("s:", "o-", "^-", "v-"), strict=False):
        xs = [b for b in BUDGETS if (policy, b) in found and len(found[policy, b]) >= n]
        ax.plot(xs, [np.exp(np.mean(found[policy, b][:n])) for b in xs], style, label=policy)
    if dense is not None and len(dense) >= n:
        ax.axhline(np.exp(np.mean(dense[:n])), color="k", lw=1, label="dense (every token)")
    ax.set(xscale="log", yscale="log", xlabel="total cache (tokens kept, the current one included)",
           ylabel="perplexity", title=f"SmolLM2-135M-Instruct, first {n + 1} KJV tokens")
    ax.minorticks_off()  # log axes label their minor ticks too, over the budgets
    ax.set_xticks(BUDGETS, [str(b) for b in BUDGETS])
    low, high = ax.get_ylim()
    ax.set_yticks([y for y in (3, 3.5, 4, 5, 6, 8, 10, 15, 20, 30, 50) if low <= y <= high])
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="the folder of the .npz runs")
    parser.add_argument("--img", type=Path, help="write eviction_budget.png here")
    args = parser.parse_args(argv)
    found, dense = load_runs(args.runs)
    if not found:
        raise SystemExit(f"error: no {{policy}}_{{budget}}.npz runs in {args.runs}: run the commands of the docstring")
    n = min(len(nll) for nll in found.values())
    print(f"perplexity over the first {n + 1} tokens (the longest prefix every run scored)\n")
    print(table(found, dense, n))
    if args.img:
        print("wrote", plot(found, dense, n, args.img / "eviction_budget.png"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
