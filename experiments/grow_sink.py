"""The experiments of docs/08-growing-a-sink.md: train tiny Llamas in NumPy and test why a first-token sink emerges.

    python experiments/grow_sink.py train --out runs/grow             # every `minisink train` run (printed first)
    python experiments/grow_sink.py train --out runs/grow --only class   # just the class preset's seeds
    python experiments/grow_sink.py report --out runs/grow --plot docs/img/grow_sink.png   # tables and figure

Runs (each one `minisink train` command; a finished run is skipped, an interrupted one resumed with --resume):
- class_sS: the class preset (Bigram-Backcopy, 1 layer, 1 head, width 256, sequence 64, batch 64, lr 2e-3) for
  seeds 0, 1, 2: emergence is a distribution over seeds, so never one run alone.
- var_V: the same preset, seed 0, for each attention variant but softmax (class_s0 is softmax's).
- kjv_V: the natural-text half, small, for every variant: a 2-layer, width-128 Llama on a 2048-token BPE of the
  KJV's first 90%, sequences of 128, batches of 16; its held-out perplexity through the same caches (W = 64).
- knob_*: Gu et al.'s cheap knobs on the same task, seed 0: weight decay 0 and 0.5, learning rate 1e-3, and the
  amount of data (a fixed training set of 3,200 or 320 samples, revisited: the preset draws 32,000 fresh ones).
Report:
- emergence: per seed, Sink_1 (Gu et al., eps 0.3), the non-trigger queries' attention on BOS (Guo et al.) and the
  loss against the training step (train_log.jsonl);
- Table 3 at toy scale: per variant, the streaming loss on Bigram-Backcopy streams STREAM_LEN tokens long (4x the
  training length) with caches dense, 0 + W, 1 + (W - 1), 4 + (W - 4), W = WINDOW (below the training length),
  on the copy targets (after a trigger) and the bigram targets apart, counted once the window is full;
- the causal table: which variant grew a first-token sink, and which loses when the first token is evicted.
Each training run takes minutes on 2 cores when the machine is quiet (far more when it is shared).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

SEEDS = (0, 1, 2)
VARIANTS = ("softmax1", "sink-logit", "sink-token", "sigmoid")
STEPS = 500  # the class preset's; the variants in docs/results.md ran 400 (--steps 400)
WINDOW, STREAM_LEN, STREAMS = 32, 256, 8  # the cache's W (training length 64), stream length, streams per variant
KNOBS = {"knob_wd0": ["--weight-decay", "0"], "knob_wd05": ["--weight-decay", "0.5"], "knob_lr1e-3": ["--lr", "1e-3"],
         "knob_data3200": ["--samples", "3200"], "knob_data320": ["--samples", "320"]}  # the preset sees 32,000
KJV = ["--layers", "2", "--hidden", "128", "--heads", "2", "--seq-len", "128", "--batch", "16", "--bpe-vocab", "2048"]
SINK_AT = 0.5  # a BOS sink: non-trigger queries put more than half their attention on BOS (Guo et al.'s criterion)


def runs(only: str | None) -> dict[str, list[str]]:
    """run folder name -> `minisink train` arguments (without --out)."""
    out = {}
    if only in (None, "class"):
        out.update({f"class_s{s}": ["--preset", "class", "--seed", str(s)] for s in SEEDS})
    if only in (None, "variants"):
        out.update({f"var_{v}": ["--preset", "class", "--variant", v, "--seed", "0"] for v in VARIANTS})
    if only in (None, "kjv"):  # the natural-text half, small enough for a laptop: every variant
        out.update({f"kjv_{v}": ["--data", "text", "--variant", v, *KJV] for v in ("softmax", *VARIANTS)})
    if only in (None, "knobs"):
        out.update({name: ["--preset", "class", "--seed", "0", *flags] for name, flags in KNOBS.items()})
    return out


def train_all(out: Path, only: str | None, steps: int) -> None:
    for name, args in runs(only).items():
        folder = out / name
        log = folder / "train_log.jsonl"
        lines = log.read_text().splitlines() if log.is_file() else []
        if lines and json.loads(lines[-1])["step"] >= steps:
            print(f"# {name}: done")
            continue
        resume = ["--resume"] if (folder / "checkpoint.safetensors").is_file() else []
        cmd = ["minisink", "train", *(resume or args), "--steps", str(steps), "--save-every", "50",
               "--out", str(folder)]
        print(" ".join(cmd), flush=True)
        subprocess.run([sys.executable, "-m", "minisink.cli", *cmd[1:]], check=True)


def read_log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def emergence_table(out: Path, every: int = 50) -> str:
    """Per seed of the class preset: Sink_1 / BOS mass of non-trigger queries / mean loss of the last `every` steps."""
    logs = {s: read_log(out / f"class_s{s}") for s in SEEDS if (out / f"class_s{s}" / "train_log.jsonl").is_file()}
    lines = ["| step | " + " | ".join(f"seed {s}: Sink_1 %, BOS mass, loss" for s in logs) + " |",
             "|---|" + "---|" * len(logs)]
    last = max(r["step"] for log in logs.values() for r in log)
    for step in range(every, last + 1, every):
        cells = []
        for log in logs.values():
            by_step = {r["step"]: r for r in log}
            probe = by_step.get(step, {})
            losses = [r["loss"] for r in log if step - every < r["step"] <= step]
            cells.append(f"{probe.get('sink1', float('nan')):.0f}, {probe.get('bos_mass', [float('nan')])[0]:.2f}, "
                         f"{np.mean(losses):.3f}" if losses else "-")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    firsts = []
    for s, log in logs.items():
        hit = next((r["step"] for r in log if r.get("bos_mass", [0])[0] > SINK_AT), None)
        firsts.append(f"seed {s}: {'none by step ' + str(log[-1]['step']) if hit is None else 'step ' + str(hit)}")
    return "\n".join(lines) + f"\n\nFirst probe with BOS mass > {SINK_AT}: " + "; ".join(firsts) + "."


def knob_table(out: Path, every: int = 50) -> str:
    """Gu et al.'s knobs against the preset (class_s0): when a BOS sink first formed, and where each run ended."""
    names = ["class_s0", *KNOBS]
    lines = ["| run | flags | first BOS mass > 0.5 | at the end: Sink_1 %, BOS mass, loss |", "|---|---|---|---|"]
    for name in names:
        if not (out / name / "train_log.jsonl").is_file():
            continue
        log = read_log(out / name)
        probes = [r for r in log if "bos_mass" in r]
        hit = next((r["step"] for r in probes if r["bos_mass"][0] > SINK_AT), None)
        loss = np.mean([r["loss"] for r in log[-every:]])
        flags = " ".join(KNOBS.get(name, ["(the preset)"]))
        end = f"{probes[-1]['sink1']:.0f}, {probes[-1]['bos_mass'][0]:.2f}, {loss:.3f} (step {log[-1]['step']})"
        lines.append(f"| {name} | {flags} | {'none' if hit is None else 'step ' + str(hit)} | {end} |")
    return "\n".join(lines)


def massive(folder: Path) -> str:
    """Sun et al.'s massive activations (chapter 05's measure) on the folder's first probe stream: the largest
    |entry| of the last layer's output against its median, and the token position it sits at."""
    from minisink.anatomy import hidden_states, massive_activations

    model, ids, _ = streams(folder)
    m = massive_activations(hidden_states(model, ids[0, :64]))
    return f"{m.top[-1, 0] / m.median[-1]:.0f}x at {int(m.position[-1, 0])}"


def plot_emergence(out: Path, path: Path) -> Path:
    """BOS mass of non-trigger queries (top) and the loss (bottom) against the step, one line per run of class_s*
    and var_*: the figure of docs/results.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.5, 4.5), sharex=True)
    for folder in [f for f in sorted(out.glob("class_s*")) + sorted(out.glob("var_*")) if f.is_dir()]:
        log = read_log(folder)
        probes = [r for r in log if "bos_mass" in r]
        label = folder.name.replace("class_s", "softmax, seed ").replace("var_", "")
        style = "-" if folder.name.startswith("class") else "--"
        top.plot([r["step"] for r in probes], [r["bos_mass"][0] for r in probes], style, label=label)
        steps = np.array([r["step"] for r in log])
        loss = np.convolve([r["loss"] for r in log], np.ones(10) / 10, mode="same")  # a 10-step running mean
        bottom.plot(steps[5:-5], loss[5:-5], style, lw=1)
    top.axhline(SINK_AT, color="gray", lw=0.5)
    top.set_ylabel("attention on BOS\n(non-trigger queries)", fontsize=8)
    bottom.set_ylabel("training loss", fontsize=8)
    bottom.set_xlabel("step (batch 64 x 64 tokens)", fontsize=8)
    top.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def streams(folder: Path):
    """(model, ids [STREAMS, STREAM_LEN], copy-target mask [STREAMS, STREAM_LEN - 1]) for a trained folder: fresh
    Bigram-Backcopy streams (a generator no run uses), the sink token first for the sink-token variant."""
    import minisink
    from minisink.corpus import fetch_kjv
    from minisink.data import BigramBackcopy

    model = minisink.load_model(folder)
    sink_token = model.config.attention_variant == "sink-token"
    data = BigramBackcopy(Path(fetch_kjv(progress=False)).read_text(encoding="utf-8"), sink_token)
    ids = data.batch(np.random.default_rng(12345), STREAMS, STREAM_LEN - 1)  # [STREAMS, STREAM_LEN]
    return model, ids, data.trigger_mask(ids[:, :-1])


def streaming_losses(folder: Path) -> dict[str, tuple[float, float]]:
    """cache -> (mean NLL on copy targets, on bigram targets), targets at positions >= WINDOW only."""
    from minisink import new_cache
    from minisink.evaluate import stream_nll

    model, ids, copy = streams(folder)
    caches = {"dense": lambda: new_cache(model),
              f"0+{WINDOW}": lambda: new_cache(model, "window", window=WINDOW),
              f"1+{WINDOW - 1}": lambda: new_cache(model, "sink", sinks=1, window=WINDOW - 1),
              f"4+{WINDOW - 4}": lambda: new_cache(model, "sink", sinks=4, window=WINDOW - 4)}
    result = {}
    for name, make in caches.items():
        nll = np.stack([stream_nll(model, row, make()) for row in ids])  # [STREAMS, STREAM_LEN - 1]
        late = np.zeros_like(copy)
        late[:, WINDOW:] = True  # the targets predicted once the window is full
        result[name] = (float(nll[late & copy].mean()), float(nll[late & ~copy].mean()))
    return result


def row_sum(folder: Path, length: int = 64) -> float:
    """The attention a non-trigger query puts on real keys (its row sum), averaged over the first `length` tokens of
    the streams, layers and heads: 1 for softmax; below 1 when a sink logit (softmax1, sink-logit) takes the rest;
    anything for sigmoid, which does not normalize."""
    from minisink.attention_maps import capture

    model, ids, copy = streams(folder)
    sums, keep = [], []
    for row, is_copy in zip(ids[:, :length], copy[:, :length], strict=True):
        A = np.stack(capture(model, row))  # [layers, H, T, T]
        sums.append(A.sum(axis=-1))  # [layers, H, T]
        queries = ~is_copy
        queries[:2] = False  # the sink token / BOS themselves
        keep.append(queries)
    sums, keep = np.stack(sums), np.stack(keep)  # [streams, layers, H, T], [streams, T]
    return float(sums.transpose(1, 2, 0, 3)[..., keep].mean())


def held_out_text_ppl(folder: Path, window: int = 64, length: int = 512, n: int = 8) -> dict[str, float]:
    """A model trained with --data text (on the KJV): perplexity of n held-out streams of `length` tokens (BOS
    first, from the text's held-out tail, which training never saw) through caches dense, 0 + W, 1 + (W - 1),
    4 + (W - 4), on the tokens predicted once the window is full."""
    import minisink
    from minisink import new_cache
    from minisink.corpus import fetch_kjv
    from minisink.data import HELD_OUT
    from minisink.evaluate import stream_nll

    model, tok = minisink.load_model(folder), minisink.load_tokenizer(folder)
    text = Path(fetch_kjv(progress=False)).read_text(encoding="utf-8")
    cut = int(len(text) * (1 - HELD_OUT))
    ids = np.asarray(tok.encode(text[text.rfind("\n", 0, cut) + 1:]))  # the held-out tail, as TextData splits it
    prefix = tok.stream_start  # BOS (and a sink-token model's sink first), as every training sample began
    starts = np.linspace(0, len(ids) - length, n, dtype=int)
    rows = [np.concatenate([prefix, ids[a:a + length - len(prefix)]]) for a in starts]
    caches = {"dense": lambda: new_cache(model), f"0+{window}": lambda: new_cache(model, "window", window=window),
              f"1+{window - 1}": lambda: new_cache(model, "sink", sinks=1, window=window - 1),
              f"4+{window - 4}": lambda: new_cache(model, "sink", sinks=4, window=window - 4)}
    return {name: float(np.exp(np.concatenate([stream_nll(model, row, make())[window:] for row in rows]).mean()))
            for name, make in caches.items()}


def final_probe(folder: Path) -> dict:
    """The log's probe at the step of the folder's weights (its last checkpoint; a run may still be going)."""
    from minisink.train import CHECKPOINT, read_checkpoint

    step = int(read_checkpoint(folder / CHECKPOINT)[1]["step"])
    return next(r for r in read_log(folder) if r["step"] == step and "sink1" in r)


def table3(out: Path) -> str:
    names = {"softmax": "class_s0", **{v: f"var_{v}" for v in VARIANTS}}
    header = ["dense", f"0+{WINDOW}", f"1+{WINDOW - 1}", f"4+{WINDOW - 4}"]
    lines = ["| variant | step | Sink_1 % | BOS mass | row sum | largest / median activation, position | "
             + " | ".join(f"{c} copy / bigram" for c in header) + " |", "|---|" * 6 + "---|" * len(header)]
    causal = ["| variant | grew a first-token sink (Sink_1 > 0 or BOS mass > 0.5) | evicting it costs (0+W vs 1+(W-1), "
              "bigram targets) |", "|---|---|---|"]
    for variant, name in names.items():
        folder = out / name
        if not (folder / "model.safetensors").is_file():
            continue
        probe, losses = final_probe(folder), streaming_losses(folder)
        mass = probe.get("bos_mass", [float("nan")])[0]
        cells = " | ".join(f"{losses[c][0]:.3f} / {losses[c][1]:.3f}" for c in header)
        lines.append(f"| {variant} | {probe['step']} | {probe['sink1']:.0f} | {mass:.2f} | {row_sum(folder):.2f} | "
                     f"{massive(folder)} | {cells} |")
        cost = losses[header[1]][1] - losses[header[2]][1]
        grew = "yes" if probe["sink1"] > 0 or mass > SINK_AT else "no"
        causal.append(f"| {variant} | {grew} (Sink_1 {probe['sink1']:.0f}%, BOS mass {mass:.2f}) | "
                      f"{cost:+.3f} nats |")
    return "\n".join(lines) + "\n\n" + "\n".join(causal)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["train", "report"])
    p.add_argument("--out", required=True, type=Path, help="the folder of the run folders")
    p.add_argument("--only", choices=["class", "variants", "kjv", "knobs"], help="train: only these runs")
    p.add_argument("--steps", type=int, default=STEPS, help=f"steps per run (default {STEPS})")
    p.add_argument("--plot", type=Path, metavar="PNG", help="report: also draw the emergence figure here")
    args = p.parse_args(argv)
    if args.action == "train":
        train_all(args.out, args.only, args.steps)
        return
    if args.plot:
        print(f"wrote {plot_emergence(args.out, args.plot)}")
    print("## Emergence (the class preset, three seeds)\n")
    print(emergence_table(args.out))
    print(f"\n## Table 3 at toy scale (Bigram-Backcopy streams of {STREAM_LEN} tokens, cache W = {WINDOW}; mean NLL "
          "in nats on the copy and the bigram targets once the window is full)\n")
    print(table3(args.out))
    print("\n## Gu et al.'s knobs (the class preset, seed 0, one flag changed)\n")
    print(knob_table(args.out))
    kjv = [f for f in sorted(args.out.glob("kjv_*")) if (f / "model.safetensors").is_file()]
    if kjv:
        print("\n## KJV (held-out streams of 512 tokens, cache W = 64; perplexity once the window is full)\n")
        for n, folder in enumerate(kjv):
            probe, ppl = final_probe(folder), held_out_text_ppl(folder)
            if n == 0:
                print("| model | step | Sink_1 % | " + " | ".join(ppl) + " |\n|---|---|---|" + "---|" * len(ppl))
            print(f"| {folder.name} | {probe['step']} | {probe['sink1']:.0f} | " +
                  " | ".join(f"{v:.2f}" for v in ppl.values()) + " |")


if __name__ == "__main__":
    main()
