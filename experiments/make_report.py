"""Tables, conclusions and plots of docs/results.md from the runs that experiments/run_all.py wrote.

    python experiments/make_report.py --runs runs/                  # tables + conclusions; plots into runs/img/
    python experiments/make_report.py --runs runs/ --img docs/img   # maintainers: regenerate the committed plots

Perplexities are exp(mean NLL) over the stated stretch of tokens. Stretches are given as token indices in the
stream (the NLL of token i is predicted from tokens 0..i-1). Runs of different lengths share their first tokens:
the NLL of a token depends only on the stream before it, so the first 8,000 tokens of a 20,000-token run are an
8,000-token run.

The conclusions (the paper's claims, as this model shows them) are computed from the runs' numbers, each with the
figures it rests on and the threshold it must meet, and printed PASS, FAIL or SKIP (a run is missing, or the
preset's streams are too short for it: the class preset cannot reach past 8,192 tokens). The exit code is 1 if
any conclusion FAILs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import PRESETS, Preset  # noqa: E402  (the sizes of the runs: one definition, in run_all.py)

PRETRAIN = 8192  # SmolLM2's pre-training context length
SMOOTH = 256  # tokens in the sliding mean of the log-perplexity plot

# The thresholds of the conclusions
DEGRADES = 1.5  # window attention after eviction: at least this many times the sink cache's perplexity
RECOVERS = 0.9  # one sink recovers at least this share of the perplexity window attention loses
SAME_SINKS = 0.02  # 4 and 8 sinks within 2% of each other
NEAR_RECOMPUTE = 0.05  # the sink cache within 5% of the recompute baseline ("a few %")
IDENTICAL = 1e-4  # nats: "the same numbers" up to float32 rounding
FALLS_APART = 2.0  # past the pre-training length: at least this many times the sink cache's perplexity


def load(runs: Path, name: str) -> np.ndarray | None:
    """Per-token NLL, indexed by token: nll[i] is the NLL of token i (nll[0], the first token, is nan)."""
    path = runs / f"{name}.npz"
    if not path.exists():
        return None
    with np.load(path) as z:
        return np.concatenate([[np.nan], z["nll"]])


def ppl_value(nll, start, stop=None) -> float | None:
    """Perplexity over tokens start..stop-1 (None: the run is missing or does not reach stop)."""
    if nll is None or (stop is not None and len(nll) < stop):
        return None
    part = nll[max(start, 1):stop]
    part = part[np.isfinite(part)]
    return float(np.exp(part.mean())) if len(part) else None


def ppl(nll, start, stop=None) -> str:
    v = ppl_value(nll, start, stop)
    return "-" if v is None else f"{v:.2f}"


def table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def read_preset(runs: Path) -> Preset:
    """The preset that wrote the runs (run_all.py's preset.json); runs without one are the full preset's."""
    path = runs / "preset.json"
    if not path.exists():
        return PRESETS["full"]
    d = json.loads(path.read_text())
    return Preset(**{**d, "sinks": tuple(d["sinks"]), "windows": tuple(d["windows"])})


# --- conclusions ----------------------------------------------------------------------------------------------


@dataclass
class Conclusion:
    claim: str
    verdict: str  # PASS, FAIL or SKIP
    evidence: str  # the figures it rests on, and the threshold


def check(claim: str, figures: dict, test, evidence, needs: str) -> Conclusion:
    """SKIP (saying what it `needs`) if any figure is None: a missing run, a stream too short. Else PASS or FAIL
    by `test(**figures)`, with the figures it rests on."""
    if any(v is None for v in figures.values()):
        return Conclusion(claim, "SKIP", f"needs {needs}")
    return Conclusion(claim, "PASS" if test(**figures) else "FAIL", evidence(**figures))


def recovered(p0: float, p1: float, p4: float) -> float:
    """The share of what window attention loses (p0 against 4 sinks' p4) that one sink (p1) wins back; 0 when
    window attention loses nothing."""
    return (p0 - p1) / (p0 - p4) if p0 > p4 else 0.0


def fails_past_pretraining(claim: str, nll, label: str, sink, sink_label: str) -> Conclusion:
    """PASS if `nll`'s perplexity from token PRETRAIN to its end is at least FALLS_APART times the sink cache's."""
    end = len(nll) if nll is not None and len(nll) > PRETRAIN + 1 else None
    return check(
        claim,
        {"a": ppl_value(nll, PRETRAIN, end) if end else None, "s": ppl_value(sink, PRETRAIN, end) if end else None},
        lambda a, s: a >= FALLS_APART * s,
        lambda a, s: f"tokens {PRETRAIN}-{end - 1}: {label} {a:.2f} vs {sink_label} {s:.2f} = {a / s:.1f}x "
                     f"(needs >= {FALLS_APART}x)",
        f"streams past {PRETRAIN} tokens (the full preset)")


def conclusions(R: Path, p: Preset) -> list[Conclusion]:
    C = p.cache
    sink, window = load(R, f"sink_4_{C - 4}"), load(R, f"window_{C}")
    out = []

    # 1. Window attention is the full cache until token C, then degrades (paper Fig. 3)
    n = min(len(sink), len(window)) if sink is not None and window is not None else 0
    out.append(check(
        f"window attention degrades once token 0 leaves the cache (token {C}), not before",
        {"before": float(np.nanmax(np.abs(sink[1:C] - window[1:C]))) if n > C else None,
         "w": ppl_value(window, C + 1, n) if n > C + 1 else None,
         "s": ppl_value(sink, C + 1, n) if n > C + 1 else None},
        lambda before, w, s: before <= IDENTICAL and w >= DEGRADES * s,
        lambda before, w, s: f"tokens 1-{C - 1}: NLLs equal to {before:.1g} nats; tokens {C + 1}-{n - 1}: window "
                             f"{w:.2f} vs 4 sinks {s:.2f} = {w / s:.2f}x (needs >= {DEGRADES}x)",
        f"the runs window_{C} and sink_4_{C - 4}, past token {C + 1}"))

    # 2. One sink recovers most of it; 4 sinks are as good as 8 (paper Table 2)
    stretch = (C + 1, p.short)
    by_sinks = {S: ppl_value(window if S == 0 else load(R, f"sink_{S}_{C - S}"), *stretch) for S in (0, 1, 4, 8)}
    out.append(check(
        "one sink recovers almost all of what window attention loses",
        {"p0": by_sinks[0], "p1": by_sinks[1], "p4": by_sinks[4]},
        lambda p0, p1, p4: recovered(p0, p1, p4) >= RECOVERS,
        lambda p0, p1, p4: f"tokens {stretch[0]}-{stretch[1] - 1}: 0 sinks {p0:.2f}, 1 sink {p1:.2f}, 4 sinks "
                           f"{p4:.2f}: one sink recovers {recovered(p0, p1, p4):.0%} (needs >= {RECOVERS:.0%})",
        f"the runs window_{C}, sink_1_{C - 1} and sink_4_{C - 4}"))
    out.append(check(
        "4 sinks are as good as 8",
        {"p4": by_sinks[4], "p8": by_sinks[8]},
        lambda p4, p8: abs(p8 / p4 - 1) <= SAME_SINKS,
        lambda p4, p8: f"tokens {stretch[0]}-{stretch[1] - 1}: 4 sinks {p4:.2f}, 8 sinks {p8:.2f} "
                       f"({p8 / p4 - 1:+.1%}; needs within {SAME_SINKS:.0%})",
        f"the runs sink_4_{C - 4} and sink_8_{C - 8}"))

    # 3. The sink cache is within a few % of the recompute baseline (paper Fig. 3: 5.40 vs 5.43)
    rec = load(R, f"recompute_{C}")
    end = len(rec) if rec is not None else None
    out.append(check(
        "the sink cache is within a few % of sliding window with re-computation",
        {"s": ppl_value(sink, C + 1, end) if end else None, "r": ppl_value(rec, C + 1, end) if end else None},
        lambda s, r: abs(s / r - 1) <= NEAR_RECOMPUTE,
        lambda s, r: f"tokens {C + 1}-{end - 1}: 4 sinks {s:.2f}, recompute {r:.2f} ({s / r - 1:+.1%}; needs within "
                     f"{NEAR_RECOMPUTE:.0%})",
        f"the runs recompute_{C} and sink_4_{C - 4}"))

    # 4. A larger cache lowers perplexity (paper Table 6)
    sizes = sorted({C - 4, *p.windows})
    by_size = {W: ppl_value(load(R, f"sink_4_{W}"), 1, p.short) for W in sizes}
    out.append(check(
        "a larger cache lowers perplexity",
        {f"4+{W}": v for W, v in by_size.items()},
        lambda **v: all(a > b for a, b in zip(list(v.values()), list(v.values())[1:], strict=False)),
        lambda **v: f"tokens 1-{p.short - 1}: " + ", ".join(f"{k} {x:.2f}" for k, x in v.items())
                    + " (needs each below the one before)",
        "the runs " + ", ".join(f"sink_4_{W}" for W in sizes)))

    # 5. Renumbering: no effect without sinks (RoPE sees only distances); with sinks, text positions cost
    textpos0, textpos4 = load(R, f"window_{C}_textpos"), load(R, f"sink_4_{C - 4}_textpos")
    m = min(len(window), len(textpos0)) if window is not None and textpos0 is not None else 0
    out.append(check(
        "without sinks, positions in the text give the same numbers as positions in the cache",
        {"diff": float(np.nanmax(np.abs(window[:m] - textpos0[:m]))) if m else None},
        lambda diff: diff <= IDENTICAL,
        lambda diff: f"{m - 1} tokens, max NLL difference {diff:.2g} nats (needs <= {IDENTICAL:g})",
        f"the runs window_{C} and window_{C}_textpos"))
    inside = min(PRETRAIN, len(textpos4)) if textpos4 is not None else None
    out.append(check(
        "with sinks, positions in the text cost perplexity inside the pre-training length",
        {"t": ppl_value(textpos4, C + 1, inside) if inside else None,
         "c": ppl_value(sink, C + 1, inside) if inside else None},
        lambda t, c: t > c,
        lambda t, c: f"tokens {C + 1}-{inside - 1}: text positions {t:.2f} vs cache positions {c:.2f} "
                     f"({t / c - 1:+.1%}; needs > 0)",
        f"the runs sink_4_{C - 4} and sink_4_{C - 4}_textpos"))
    out.append(fails_past_pretraining(
        "with sinks, positions in the text fall apart past the pre-training length", textpos4, "text positions",
        sink, "cache positions"))

    # 6. Dense attention: the best while it lasts, fails past the pre-training length
    dense = load(R, "dense")
    d_in = min(PRETRAIN, len(dense)) if dense is not None else None
    out.append(check(
        "dense attention is the best policy inside the pre-training length",
        {"d": ppl_value(dense, C + 1, d_in) if d_in else None, "s": ppl_value(sink, C + 1, d_in) if d_in else None},
        lambda d, s: d < s,
        lambda d, s: f"tokens {C + 1}-{d_in - 1}: dense {d:.2f} vs 4 sinks {s:.2f}",
        f"the runs dense and sink_4_{C - 4}"))
    out.append(fails_past_pretraining(
        "dense attention fails past the pre-training length, while the sink cache does not", dense, "dense",
        sink, "4 sinks"))
    return out


def format_conclusions(found: list[Conclusion]) -> str:
    return "\n".join(f"{c.verdict:4}  {c.claim}\n      {c.evidence}" for c in found)


# --- tables and plots -----------------------------------------------------------------------------------------


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
    longest = 0
    for name, label, style in names:
        nll = load(runs, name)
        if nll is not None and len(nll) > SMOOTH + 1:
            x, y = running_mean(nll)
            ax.plot(x, y, style, lw=1, label=label)
            longest = max(longest, len(nll))
    if longest > PRETRAIN:
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


def tables(R: Path, p: Preset) -> list[str]:
    C, out = p.cache, []
    # Fig. 3: the policies at one total cache
    policies = [("dense", "dense (full cache)"), (f"window_{C}", f"window attention, {C}"),
                (f"recompute_{C}", f"sliding window + recompute, {C}"),
                (f"sink_4_{C - 4}", f"StreamingLLM, 4 sinks + {C - 4}")]
    rec = load(R, f"recompute_{C}")
    rec_end = len(rec) if rec is not None else p.recompute
    past = p.long > PRETRAIN
    rows = []
    for name, label in policies:
        nll = load(R, name)
        n = 0 if nll is None else len(nll)
        row = [label, n, ppl(nll, C + 1, rec_end), ppl(nll, 1, min(PRETRAIN, p.long))]
        rows.append(row + ([ppl(nll, PRETRAIN, p.long), ppl(nll, 1, n) if n else "-"] if past else []))
    header = ["policy", "tokens run", f"ppl, tokens {C + 1}-{rec_end - 1}",
              f"ppl, tokens 1-{min(PRETRAIN, p.long) - 1}"]
    header += [f"ppl, {PRETRAIN}-{p.long - 1}", "ppl, all run"] if past else []
    out.append(f"### Four policies, total cache {C} (KJV)\n\n" + table(header, rows))

    # Table 2: sink count at a fixed total
    rows = []
    for S in sorted({0, 4, *p.sinks}):
        nll = load(R, f"window_{C}" if S == 0 else f"sink_{S}_{C - S}")
        rows.append([S, C - S, ppl(nll, 1, p.short), ppl(nll, C + 1, p.short)])
    out.append(f"### Sink count, S + W = {C}, first {p.short:,} tokens\n\n" + table(
        ["sinks S", "window W", f"ppl, tokens 1-{p.short - 1}", f"ppl, tokens {C + 1}-{p.short - 1} (cache full)"],
        rows))

    # Table 6: cache size
    sizes = sorted({C - 4, *p.windows})
    full_from = 4 + sizes[-1] + 1
    rows = [[f"4 + {W}", ppl(load(R, f"sink_4_{W}"), 1, p.short), ppl(load(R, f"sink_4_{W}"), full_from, p.short)]
            for W in sizes]
    out.append(f"### Cache size, 4 sinks + W, first {p.short:,} tokens\n\n" + table(
        ["cache", f"ppl, tokens 1-{p.short - 1}", f"ppl, tokens {full_from}-{p.short - 1}"], rows))

    # sinks x renumbering
    rows = []
    for S, on, off in ((0, f"window_{C}", f"window_{C}_textpos"), (4, f"sink_4_{C - 4}", f"sink_4_{C - 4}_textpos")):
        a, b = load(R, on), load(R, off)
        n = min(len(a), len(b)) if a is not None and b is not None else 0
        diff = f"{np.nanmax(np.abs(a[:n] - b[:n])):.2g}" if n else "-"
        for positions, nll, d in (("cache (paper)", a, ""), ("text (ablation)", b, diff)):
            end = len(nll) if nll is not None else 0
            row = [S, positions, end, ppl(nll, 1, min(PRETRAIN, end)) if end else "-"]
            rows.append(row + ([ppl(nll, PRETRAIN, end) if end > PRETRAIN + 1 else "-",
                                ppl(nll, end - 1000, end) if end > PRETRAIN + 1 else "-"] if past else []) + [d])
    header = ["sinks", "positions", "tokens run", f"ppl, 1-{min(PRETRAIN, p.long) - 1}"]
    header += ([f"ppl, {PRETRAIN}-end", "ppl, last 1000"] if past else []) + ["max abs NLL difference"]
    out.append(f"### Sinks x position renumbering, total cache {C}\n\n" + table(header, rows))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=ROOT / "runs")
    p.add_argument("--img", type=Path, help="where the plots go (default: RUNS/img)")
    p.add_argument("--no-plots", action="store_true", help="tables and conclusions only (no matplotlib needed)")
    args = p.parse_args(argv)
    R, img = args.runs, args.img or args.runs / "img"
    preset = read_preset(R)
    C = preset.cache
    out = tables(R, preset)
    lat_path = R / "latency.npz"
    lat = None
    if lat_path.exists():  # Fig. 10: latency and memory
        with np.load(lat_path) as z:
            lat = {k: z[k] for k in z.files}
        rows = [[int(c), f"{1000 * s:.1f}", f"{1000 * r:.0f}", f"{r / s:.1f}x", f"{sb / 2**20:.1f}",
                 f"{rb / 2**20:.1f}"] for c, s, r, sb, rb in
                zip(lat["cache"], lat["sink_s"], lat["recompute_s"], lat["sink_bytes"], lat["recompute_bytes"],
                    strict=True)]
        out.append("### Per-token latency and memory of a decode step\n\n" + table(
            ["cache C", "sink ms/token", "recompute ms/token", "recompute / sink", "sink MB", "recompute MB"], rows))
    found = conclusions(R, preset)
    print(f"## The {preset.name} preset (runs in {R})\n\n" + "\n\n".join(out))
    print(f"\n### Conclusions\n\n```\n{format_conclusions(found)}\n```")
    if not args.no_plots:
        print("wrote", plot_policies(R, img / "policies.png", [
            ("dense", "dense (full cache)", "C3-"), (f"window_{C}", f"window attention, {C}", "C1-"),
            (f"sink_4_{C - 4}", f"StreamingLLM, 4 sinks + {C - 4}", "C0-"),
            (f"recompute_{C}", f"sliding window + recompute, {C}", "C2-")]), file=sys.stderr)
        print("wrote", plot_policies(R, img / "renumbering.png", [
            (f"sink_4_{C - 4}", f"4 sinks + {C - 4}, positions within the cache", "C0-"),
            (f"sink_4_{C - 4}_textpos", f"4 sinks + {C - 4}, positions in the text", "C3-"),
            (f"window_{C}", f"window {C} (either numbering)", "C1-")]), file=sys.stderr)
        if lat is not None:
            print("wrote", plot_latency(lat, img / "latency.png"), file=sys.stderr)
    return 1 if any(c.verdict == "FAIL" for c in found) else 0


if __name__ == "__main__":
    sys.exit(main())
