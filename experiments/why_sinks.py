"""The experiments of docs/05-why-sinks-exist.md: is the sink only a share of the softmax denominator?

    python experiments/why_sinks.py --out runs/why              # calibrate, then every `minisink ppl` run
    python experiments/why_sinks.py --out runs/why --report     # the markdown tables of docs/results.md

Every step is one `minisink` command, printed before it runs (so any one can be redone by hand); a run whose file
exists is skipped, so an interrupted script resumes. The sink logits are calibrated on the second half of the KJV
(`minisink calibrate` reads only that half) and every perplexity is measured on its first TOKENS tokens.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

TOKENS = 4000  # tokens per run (a shared 2-core machine); inside the 8192-token pre-training length, so dense is fair
CACHES = (256, 1024)
CALIBRATION_TOKENS = {256: 2048, 1024: 4096}  # calibration queries: the tokens after the first C
ESTIMATORS = ("lme", "mass")
NEWLINES = ["--sink-prefix", "\n"] * 4  # four "\n" tokens (the paper's Table 1); "\n\n\n\n" is one token here


def calibrations(out: Path) -> dict[str, list[str]]:
    return {f"sigma_{c}_{e}.npz": ["calibrate", "--corpus", "kjv", "--sinks", "4", "--window", str(c - 4),
                                   "--tokens", str(CALIBRATION_TOKENS[c]), "--estimator", e,
                                   "--out", str(out / f"sigma_{c}_{e}.npz")]
            for c in CACHES for e in ESTIMATORS}


def ppl_runs(out: Path) -> dict[str, list[str]]:
    """name -> `minisink ppl` arguments, in the order they run (the most telling first)."""
    runs = {}
    for c in CACHES:
        window = ["--policy", "window", "--window", str(c)]
        runs[f"window_{c}"] = window
        runs[f"sink_{c}"] = ["--policy", "sink", "--sinks", "4", "--window", str(c - 4)]
        runs[f"window_{c}_zero"] = window + ["--sink-logits", "zero"]
        for e in ESTIMATORS:
            runs[f"window_{c}_{e}"] = window + ["--sink-logits", str(out / f"sigma_{c}_{e}.npz")]
        runs[f"window_{c}_mass_value"] = runs[f"window_{c}_mass"] + ["--sink-value"]
        runs[f"sink_{c}_newlines"] = ["--policy", "sink", "--window", str(c - 4)] + NEWLINES
    runs["dense"] = ["--policy", "dense"]
    runs["dense_zero"] = ["--policy", "dense", "--sink-logits", "zero"]
    runs["dense_mass"] = ["--policy", "dense", "--sink-logits", str(out / "sigma_1024_mass.npz")]
    for c in CACHES:  # the rest, if there is time
        runs[f"window_{c}_lme_value"] = runs[f"window_{c}_lme"] + ["--sink-value"]
        runs[f"sink_{c}_endoftext"] = ["--policy", "sink", "--window", str(c - 1), "--sink-prefix", "<|endoftext|>"]
    runs["dense_lme"] = ["--policy", "dense", "--sink-logits", str(out / "sigma_1024_lme.npz")]
    return {name: ["ppl", "--corpus", "kjv", "--tokens", str(TOKENS), *args, "--out", str(out / f"{name}.npz")]
            for name, args in runs.items()}


def shell_word(arg: str) -> str:
    """`arg` as typed in bash: a newline as $'\\n', anything else special in single quotes."""
    if "\n" in arg:
        return "$'" + arg.replace("\n", "\\n") + "'"
    return arg if arg and all(ch.isalnum() or ch in "-_./=:" for ch in arg) else "'" + arg + "'"


def run(out: Path, only: list[str] | None):
    out.mkdir(parents=True, exist_ok=True)
    steps = {**calibrations(out), **{f"{k}.npz": v for k, v in ppl_runs(out).items()}}
    for name, args in steps.items():
        if (out / name).exists() or (only and name.removesuffix(".npz") not in only):
            continue
        print("$ minisink " + " ".join(shell_word(a) for a in args), flush=True)
        subprocess.run([sys.executable, "-m", "minisink.cli", *args, "--no-progress"] if args[0] == "ppl"
                       else [sys.executable, "-m", "minisink.cli", *args], check=True)


def ppl(out: Path, name: str, first: int = 1) -> float | None:
    """Perplexity of tokens first..TOKENS-1 of a run (None if it has not run). The first TOKENS tokens of a longer
    run are a TOKENS-token run: a token's NLL depends only on the stream before it."""
    path = out / f"{name}.npz"
    if not path.exists():
        return None
    with np.load(path) as z:  # nll[i] is the NLL of token i + 1
        return float(np.exp(z["nll"][first - 1:TOKENS - 1].mean()))


def report(out: Path) -> str:
    """Markdown tables: per cache size, each variant's perplexity and the share of the window-to-sink gap it
    closes, (ppl_window - ppl_variant) / (ppl_window - ppl_sink), over all tokens and over the tokens after the
    first C (the only ones where the window has evicted anything)."""
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    lines = []
    for c in CACHES:
        lines += [f"\nTotal cache {c} (KJV, first {TOKENS} tokens; \"after {c}\": tokens {c}..{TOKENS - 1}):\n",
                  f"| variant | perplexity | gap closed | perplexity after {c} | gap closed after {c} |",
                  "|---|---|---|---|---|"]
        rows = [(f"window 0 + {c}", f"window_{c}"), ("window + softmax1 (sigma = 0)", f"window_{c}_zero")]
        for e in ESTIMATORS:
            rows += [(f"window + sigma ({e})", f"window_{c}_{e}"),
                     (f"window + sigma ({e}) + sink value", f"window_{c}_{e}_value")]
        rows += [(f"4 sinks + {c - 4}", f"sink_{c}"), (f'4 "\\n" sinks + {c - 4} (prefix)', f"sink_{c}_newlines"),
                 (f"1 <\\|endoftext\\|> sink + {c - 1} (prefix)", f"sink_{c}_endoftext"),
                 ("dense (full cache)", "dense")]
        for label, name in rows:
            cells = [label]
            for first in (1, c):
                w, s, p = (ppl(out, n, first) for n in (f"window_{c}", f"sink_{c}", name))
                gap = None if None in (p, w, s) or w == s else (w - p) / (w - s)
                cells += [fmt(p), "-" if gap is None else f"{gap:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["\nThe escape valve on the full cache (dense, same tokens):\n", "| dense variant | perplexity |",
              "|---|---|"]
    for label, name in [("plain softmax", "dense"), ("softmax1 (sigma = 0)", "dense_zero"),
                        *[(f"sigma ({e}, calibrated for 1024)", f"dense_{e}") for e in ESTIMATORS]]:
        lines.append(f"| {label} | {fmt(ppl(out, name))} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*", help="run only these steps (names without .npz)")
    parser.add_argument("--report", action="store_true", help="print the tables instead of running")
    args = parser.parse_args()
    if args.report:
        print(report(args.out))
    else:
        run(args.out, args.only)


if __name__ == "__main__":
    main()
