"""Run every experiment of docs/results.md on the default model; write one .npz per run into --out (runs/).

    python experiments/run_all.py --out runs/            # all of them, skipping runs already written
    python experiments/run_all.py --out runs/ --only sink_4_252 window_256
    python experiments/make_report.py --runs runs/       # then the tables and plots of docs/results.md

Each perplexity run is one `minisink ppl` command (printed before it starts, so any single run can be redone by
hand); the latency run times single-token steps in this process. Runs are sequential on purpose: two at once
compete for the cores and the timings mean nothing. A run writes its .npz atomically, so an interrupted
`run_all.py` resumes where it stopped.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# tokens: past the 8192 pre-training length; the ablations; recompute (~0.5-1.5 s per token); dense
LONG, SHORT, RECOMPUTE, DENSE = 20000, 8000, 800, 20000

# name -> arguments of `minisink ppl` (all on the KJV, from its first token)
PPL_RUNS = {  # in the order they run: the most telling first
    # Fig. 3: the policies at one cache size, 256 tokens in total
    "sink_4_252": f"--mode sink --sinks 4 --window 252 --tokens {LONG}",
    "window_256": f"--mode window --window 256 --tokens {LONG}",
    # sinks x renumbering past 8192 (renumbered S = 4 and S = 0 are the two runs above)
    "sink_4_252_textpos": f"--mode sink --sinks 4 --window 252 --no-renumber --tokens {LONG}",
    # Table 2: sink count at a fixed total of 256 (S = 0 and 4 are the first two runs)
    "sink_1_255": f"--mode sink --sinks 1 --window 255 --tokens {SHORT}",
    "sink_2_254": f"--mode sink --sinks 2 --window 254 --tokens {SHORT}",
    "sink_8_248": f"--mode sink --sinks 8 --window 248 --tokens {SHORT}",
    # Table 6: cache size, 4 sinks + W (W = 252 is the first run)
    "sink_4_124": f"--mode sink --sinks 4 --window 124 --tokens {SHORT}",
    "sink_4_508": f"--mode sink --sinks 4 --window 508 --tokens {SHORT}",
    "sink_4_1020": f"--mode sink --sinks 4 --window 1020 --tokens {SHORT}",
    # the quality baseline, over the stretch it can afford
    "recompute_256": f"--mode recompute --window 256 --tokens {RECOMPUTE}",
    # window attention keeping text positions: the same numbers as renumbered (RoPE shift invariance)
    "window_256_textpos": f"--mode window --window 256 --no-renumber --tokens {LONG}",
    # dense attention past the 8192-token pre-training length
    "dense": f"--mode dense --tokens {DENSE}",
}
LATENCY_SIZES = (128, 256, 512, 1024)


def ppl_command(name: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "minisink.cli", "ppl", "--corpus", "kjv", *PPL_RUNS[name].split(),
            "--out", str(out / f"{name}.npz"), "--no-progress"]


def run_latency(out: Path, sink_steps: int = 16, recompute_steps: int = 3):
    """Paper Fig. 10: per-token latency and memory of a decode step, recompute vs sink cache, per cache size C.

    Sink cache: 4 sinks + C - 4, filled past C first (steady state), median of `sink_steps` single-token steps.
    Recompute: window C, its ids filled without forwards, median of `recompute_steps` steps (one dense forward
    over C tokens each). Memory: the peak of NumPy allocations during one step (tracemalloc; the weights are not
    counted) plus the cache's own arrays."""
    import statistics
    import tracemalloc

    import numpy as np

    import minisink
    import weights_fetch

    model = minisink.load_model(weights_fetch.default_model_dir())
    rng = np.random.default_rng(0)
    ids = rng.integers(100, model.config.vocab_size, 2 * max(LATENCY_SIZES))

    def steps(cache, n):
        times, peaks = [], []
        for i in range(n):
            tracemalloc.start()
            start = time.perf_counter()
            model.forward(ids[i:i + 1], cache)
            times.append(time.perf_counter() - start)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        return statistics.median(times), max(peaks)

    rows = []
    for C in LATENCY_SIZES:
        sink = model.new_cache(n_sink=4, window=C - 4)
        model.forward(ids[:C + 64], sink)
        sink_s, sink_peak = steps(sink, sink_steps)
        sink_bytes = sink.keys.nbytes + sink.values.nbytes
        recompute = model.new_cache(window=C, recompute=True)
        for t in ids[:C - 1]:
            recompute.remember(t)  # it holds ids only: filling it costs no forward
        rec_s, rec_peak = steps(recompute, recompute_steps)
        rows.append((C, sink_s, rec_s, sink_bytes + sink_peak, rec_peak))
        print(f"cache {C:5d}: sink {1000 * sink_s:8.1f} ms/token, recompute {1000 * rec_s:8.1f} ms/token "
              f"({rec_s / sink_s:.1f}x); memory sink {(sink_bytes + sink_peak) / 2**20:.1f} MB, "
              f"recompute {rec_peak / 2**20:.1f} MB", flush=True)
    a = np.array(rows)
    np.savez(out / "latency.npz", cache=a[:, 0], sink_s=a[:, 1], recompute_s=a[:, 2], sink_bytes=a[:, 3],
             recompute_bytes=a[:, 4])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs")
    p.add_argument("--only", nargs="*", help=f"run only these: {', '.join(PPL_RUNS)}, latency")
    p.add_argument("--force", action="store_true", help="redo runs whose .npz exists")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.only or [*PPL_RUNS][:-1] + ["latency", "dense"]
    for name in names:
        if not args.force and (args.out / f"{name}.npz").exists():
            print(f"== {name}: {args.out / name}.npz exists, skipped", flush=True)
            continue
        start = time.perf_counter()
        if name == "latency":
            print("== latency", flush=True)
            run_latency(args.out)
        else:
            cmd = ppl_command(name, args.out)
            print(f"== {name}: minisink ppl --corpus kjv {PPL_RUNS[name]}", flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT)
        print(f"   ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
