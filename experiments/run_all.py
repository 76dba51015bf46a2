"""Run the experiments of docs/results.md on the default model; write one .npz per run into --out (runs/).

    python experiments/run_all.py --out runs/                    # the full set (9 minutes on 2 quiet cores)
    python experiments/run_all.py --preset class --out runs/     # a classroom version: shorter streams, 2-3 minutes
    python experiments/run_all.py --out runs/ --only sink_4_252 window_256
    python experiments/make_report.py --runs runs/               # the tables, the conclusions (PASS/FAIL), plots

Two presets of the same four headline experiments (paper Fig. 3, Table 2, Table 6, and the renumbering ablation):

    full    total cache 256, streams of 20,000 tokens (past SmolLM2's 8,192-token pre-training length), the
            sink count and cache size over 8,000, recompute over 500, dense over 14,000, and the latency curve.
    class   total cache 256 too, streams of 2,048 tokens, recompute over 448: every conclusion that does not need
            a stream past 8,192 tokens, in a few minutes. make_report says which conclusions it can check.

Each perplexity run is one `minisink ppl` command, printed before it starts so that any single run can be redone
by hand; they run in this process (the model is loaded and the text tokenized once), one after the other: two at
once compete for the cores and the timings mean nothing. A run writes its .npz atomically, so an interrupted
`run_all.py` resumes where it stopped; `preset.json` in --out records which preset wrote the runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a clone without installing: minisink and weights_fetch beside us


@dataclass(frozen=True)
class Preset:
    """The sizes of one set of runs (every stream is the KJV from its first token)."""

    name: str
    cache: int  # total cache C of the policy comparison: 4 sinks + (C - 4), window C, recompute C
    long: int  # tokens of the policy runs and the renumbering runs
    short: int  # tokens of the sink-count and cache-size runs
    recompute: int  # tokens of the recompute run (O(C^2) per token: the costliest run per token)
    dense: int  # tokens of the dense run (its attention grows with the stream: quadratic in total)
    sinks: tuple[int, ...]  # the sink-count ablation at S + W = cache (S = 0 is the window run)
    windows: tuple[int, ...]  # the cache-size ablation: 4 sinks + W
    latency: bool  # also time decode steps against cache size (paper Fig. 10)


PRESETS = {
    # What a full run costs on 2 quiet cores, by the per-token figures of docs/results.md: the dense run dominates
    # (its attention grows with the stream: quadratic in total; ~10 min at 20,000 tokens), then recompute
    # (0.4 s per token at C = 256) and the three 20,000-token runs (~70 s each). So: dense over 14,000 tokens, enough
    # to show its failure (it starts near 10,000), recompute over 500 (tokens 257-499 are its steady state), and
    # the S = 0 renumbering run, identical by construction, over 8,000. Timed on 2 quiet cores: 8 min 51 s (the
    # three 20,000-token runs 50-54 s each, dense 110 s, recompute 100 s, the latency curve about 40 s).
    "full": Preset("full", cache=256, long=20000, short=8000, recompute=500, dense=14000, sinks=(1, 2, 8),
                   windows=(124, 508, 1020), latency=True),
    # The class preset keeps the full run's cache (at 128 the sink cache fell 7.5% behind recompute, against 3% at
    # 256: not the paper's conclusion) and shortens the streams. Recompute's first 256 tokens are one dense forward
    # (nothing is evicted yet: RecomputeWindow.forward); tokens 257-447 cost a 256-token forward each.
    "class": Preset("class", cache=256, long=2048, short=2048, recompute=448, dense=2048, sinks=(1, 2, 8),
                    windows=(124, 508), latency=False),
}


def preset_runs(p: Preset) -> dict[str, str]:
    """Run name -> arguments of `minisink ppl`, in the order they run: the most telling and cheapest first."""
    C = p.cache
    runs = {  # Fig. 3: the policies at one total cache size C
        f"sink_4_{C - 4}": f"--mode sink --sinks 4 --window {C - 4} --tokens {p.long}",
        f"window_{C}": f"--mode window --window {C} --tokens {p.long}",
        # renumbering: positions in the text instead of within the cache, with sinks and without
        f"sink_4_{C - 4}_textpos": f"--mode sink --sinks 4 --window {C - 4} --no-renumber --tokens {p.long}",
        f"window_{C}_textpos": f"--mode window --window {C} --no-renumber --tokens {p.short}",
    }
    for S in p.sinks:  # Table 2: sink count at a fixed total (S = 0 and 4 are runs above)
        runs[f"sink_{S}_{C - S}"] = f"--mode sink --sinks {S} --window {C - S} --tokens {p.short}"
    for W in p.windows:  # Table 6: cache size, 4 sinks + W (W = C - 4 is a run above)
        runs[f"sink_4_{W}"] = f"--mode sink --sinks 4 --window {W} --tokens {p.short}"
    runs["dense"] = f"--mode dense --tokens {p.dense}"  # dense attention, past the pre-training length in `full`
    # the quality baseline, last: it costs the most per token (a fresh forward over C tokens each)
    runs[f"recompute_{C}"] = f"--mode recompute --window {C} --tokens {p.recompute}"
    return runs


PPL_RUNS = preset_runs(PRESETS["full"])
LATENCY_SIZES = (128, 256, 512, 1024)


def ppl_args(name: str, runs: dict[str, str]) -> list[str]:
    return ["ppl", "--corpus", "kjv", *runs[name].split()]


def run_ppl_runs(model, ids, names, runs: dict[str, str], out: Path, force: bool = False, source: str = "",
                 model_name: str = "") -> dict[str, float]:
    """Each named run through `minisink ppl`'s own functions (parsed from its command line), into out/NAME.npz.
    `ids` is the stream, at least as long as the longest run. Returns the seconds each run took."""
    import numpy as np

    from minisink.cli import build_parser
    from minisink.evaluate import run_ppl, save_run

    seconds = {}
    for name in names:
        path = out / f"{name}.npz"
        if not force and path.exists():
            print(f"== {name}: {path} exists, skipped", flush=True)
            continue
        a = build_parser().parse_args(ppl_args(name, runs))
        print(f"== {name}: minisink {' '.join(ppl_args(name, runs))} --out {path}", flush=True)
        start = time.perf_counter()
        run = run_ppl(model, ids[:a.tokens], a.mode, a.sinks, a.window, not a.no_renumber, a.chunk,
                      say=lambda msg: print("   " + msg, flush=True))
        save_run(run, path, source=source, model=model_name)
        seconds[name] = time.perf_counter() - start
        print(f"   perplexity {float(np.exp(run.nll.mean())):.3f} over {run.tokens} tokens, {seconds[name]:.1f} s",
              flush=True)
    return seconds


def run_latency(model, out: Path, sink_steps: int = 16, recompute_steps: int = 3):
    """Paper Fig. 10: per-token latency and memory of a decode step, recompute vs sink cache, per cache size C.

    Sink cache: 4 sinks + C - 4, filled past C first (steady state), median of `sink_steps` single-token steps.
    Recompute: window C, its ids filled without forwards, median of `recompute_steps` steps (one dense forward
    over C tokens each). Memory: the peak of NumPy allocations during one step (tracemalloc; the weights are not
    counted) plus the cache's own arrays."""
    import statistics
    import tracemalloc

    import numpy as np

    from minisink.evaluate import logits

    rng = np.random.default_rng(0)
    ids = rng.integers(100, model.config.vocab_size, 2 * max(LATENCY_SIZES))

    def steps(cache, n):
        times, peaks = [], []
        for i in range(n):
            tracemalloc.start()
            start = time.perf_counter()
            logits(model, ids[i:i + 1], cache)  # the recompute baseline too
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


def write_preset(out: Path, preset: Preset):
    """out/preset.json: the preset's sizes, for make_report. Refuses to mix two presets' runs in one folder."""
    path = out / "preset.json"
    if path.exists() and json.loads(path.read_text())["name"] != preset.name:
        raise SystemExit(f"error: {out} holds runs of the {json.loads(path.read_text())['name']!r} preset; "
                         f"use another --out for --preset {preset.name}")
    path.write_text(json.dumps(asdict(preset), indent=1) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="full")
    p.add_argument("--out", type=Path, help="where the runs go (default: runs/ for full, runs-class/ for class)")
    p.add_argument("--only", nargs="*", help="run only these (names as printed; `latency` for the latency curve)")
    p.add_argument("--force", action="store_true", help="redo runs whose .npz exists")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    out = args.out or ROOT / ("runs" if preset.name == "full" else f"runs-{preset.name}")
    runs = preset_runs(preset)
    names = args.only or [*runs] + (["latency"] if preset.latency else [])
    unknown = [n for n in names if n not in runs and n != "latency"]
    if unknown:
        raise SystemExit(f"error: no run named {', '.join(unknown)} in the {preset.name} preset: {', '.join(runs)}")
    out.mkdir(parents=True, exist_ok=True)
    write_preset(out, preset)

    import minisink
    import weights_fetch
    from minisink.evaluate import load_text_ids

    start = time.perf_counter()
    model_dir = weights_fetch.default_model_dir()
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"error: no model at {model_dir}: run `python weights_fetch.py` first")
    kjv = weights_fetch.fetch_kjv(progress=sys.stderr.isatty())
    model, tok = minisink.load_model(model_dir), minisink.load_tokenizer(model_dir)
    ppl_names = [n for n in names if n != "latency"]
    longest = max((build_tokens(runs[n]) for n in ppl_names), default=2)
    ids = load_text_ids(tok, kjv.read_text(encoding="utf-8"), longest)
    print(f"preset {preset.name}: {len(names)} runs into {out}", flush=True)
    run_ppl_runs(model, ids, ppl_names, runs, out, args.force, source=f"kjv ({kjv})", model_name=str(model_dir))
    if "latency" in names and (args.force or not (out / "latency.npz").exists()):
        print("== latency", flush=True)
        lat_start = time.perf_counter()
        run_latency(model, out)
        print(f"   ({time.perf_counter() - lat_start:.0f} s)", flush=True)
    print(f"done in {time.perf_counter() - start:.0f} s; now: python experiments/make_report.py --runs {out}",
          flush=True)
    return 0


def build_tokens(args: str) -> int:
    """The --tokens of a run's arguments."""
    words = args.split()
    return int(words[words.index("--tokens") + 1])


if __name__ == "__main__":
    sys.exit(main())
