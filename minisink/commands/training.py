"""`minisink train`: grow a tiny Llama in NumPy (minisink/train.py) and write it as a Hugging Face model folder.

    minisink train --preset class --seed 0 --out runs/class0      the class preset: a BOS sink in minutes
    minisink train --data text --variant softmax1 --layers 4 --hidden 256 --heads 4 --seq-len 256 --out runs/kjv
    minisink train --resume --steps 2000 --out runs/kjv             continue a run (bit for bit)

`add_train(subparsers)` registers the command, `cmd_train(args)` runs it. Errors: a clear message and exit 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

# The class preset: Guo et al.'s Bigram-Backcopy, 1 layer, 1 head, width 256, sequence 64, batch 64, AdamW lr 2e-3;
# 500 steps in about 2 minutes on 2 quiet cores, a BOS sink in 3 of 3 seeds by step 400 (docs/results.md). Run
# several seeds: a sink comes and goes before it settles.
PRESETS = {"class": dict(data="bigram-backcopy", variant="softmax", layers=1, hidden=256, heads=1, kv_heads=None,
                         seq_len=64, batch=64, steps=500, lr=2e-3, warmup=50, decay_steps=2000)}

def add_train(subparsers) -> argparse.ArgumentParser:
    from ..train import VARIANTS

    p = subparsers.add_parser(
        "train", help="train a tiny Llama in NumPy and watch a sink grow (or not): docs/08-growing-a-sink.md",
        description="Trains a small Llama with a hand-written backward pass and AdamW, and writes a Hugging Face "
                    "model folder (config.json, model.safetensors, tokenizer.json) that every other command loads "
                    "with --model, a checkpoint every --save-every steps, and train_log.jsonl.")
    p.add_argument("--preset", choices=sorted(PRESETS), help="class: Bigram-Backcopy, 1 layer, 1 head, width 256, "
                   "sequence 64, batch 64, lr 2e-3, 500 steps (flags given beside it win)")
    p.add_argument("--data", help="bigram-backcopy (Guo et al.'s synthetic task, default) or text (a BPE over "
                                  "--text or the KJV)")
    p.add_argument("--text", metavar="FILE", help="the UTF-8 text to train on, or whose character statistics "
                                                  "Bigram-Backcopy uses (default: the KJV, fetched once)")
    p.add_argument("--variant", metavar="VARIANT", help=f"attention: {', '.join(VARIANTS)} (default softmax)")
    for flag, help_ in [("layers", "decoder layers (default 1)"), ("hidden", "hidden size (default 256)"),
                        ("heads", "query heads (default 1)"), ("kv-heads", "key/value heads (default: --heads)"),
                        ("seq-len", "tokens per training sample (default 64)"),
                        ("batch", "samples per step (default 64)"),
                        ("steps", "the total number of steps, counting those of a resumed run (default 600)"),
                        ("warmup", "steps of linear learning-rate warmup (default 50)"),
                        ("decay-steps", "the step where the cosine decay reaches --min-lr (default 2000)"),
                        ("bpe-vocab", "--data text: the BPE's vocabulary size (default 4096)"),
                        ("samples", "train on a fixed set of this many samples, drawn once and revisited (the amount "
                                    "of data; default: fresh samples every step)")]:
        p.add_argument(f"--{flag}", type=_positive_int, help=help_)
    p.add_argument("--seed", type=_int_at_least_0, help="seed of the initial weights and the batches (default 0)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 2e-3)")
    p.add_argument("--min-lr", type=float, help="the learning rate's floor after the cosine decay (default 2e-4)")
    p.add_argument("--weight-decay", type=float, help="AdamW's decoupled weight decay on matrices (default 0.1)")
    p.add_argument("--clip", type=float, help="global gradient-norm limit, 0 for none (default 1.0)")
    p.add_argument("--out", required=True, metavar="DIR", help="the run folder (model, checkpoint, log)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, with its settings (only --steps may change)")
    p.add_argument("--save-every", type=_positive_int, default=100, metavar="N",
                   help="write a checkpoint every N steps (default 100)")
    p.add_argument("--probe-every", type=_positive_int, default=25, metavar="N",
                   help="measure Sink_1 every N steps, into train_log.jsonl (default 25)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar on stderr (default: when stderr is a terminal; needs tqdm)")
    p.set_defaults(func=cmd_train)
    return p


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def _int_at_least_0(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def settings_from_args(args):
    """TrainSettings from the flags: the preset's values, then the flags given; with --resume, the run's own
    settings, then --steps (any other flag given must agree with the run's)."""
    from ..train import CHECKPOINT, TrainError, TrainSettings, read_checkpoint

    # the flags that are settings (the others say how to run: --out, --resume, ...) are TrainSettings' fields
    fields = [f.name for f in dataclasses.fields(TrainSettings)]
    given = {name: getattr(args, name) for name in fields if getattr(args, name, None) is not None}
    if given.get("text") is not None:
        given["text"] = str(Path(given["text"]).resolve())
    if args.resume:
        checkpoint = Path(args.out) / CHECKPOINT
        if not checkpoint.is_file():
            raise TrainError(f"nothing to resume: {args.out} holds no {CHECKPOINT}; run without --resume first")
        saved = json.loads(read_checkpoint(checkpoint)[1]["settings"])
        for name, value in given.items():
            if name != "steps" and value != saved.get(name):
                raise TrainError(f"--{name.replace('_', '-')} {value} differs from the run's {saved.get(name)!r}: "
                                 f"--resume continues a run with its own settings (only --steps may change)")
        return TrainSettings(**{**saved, **given})
    preset = PRESETS.get(args.preset, {})
    return TrainSettings(**{**preset, **given})


def cmd_train(args) -> None:
    import sys

    from ..data import DataError
    from ..train import TrainError, train

    try:
        settings = settings_from_args(args)
        progress = sys.stderr.isatty() if args.progress is None else args.progress
        out = train(settings, args.out, resume=args.resume, save_every=args.save_every,
                    probe_every=args.probe_every, progress=progress)
    except (TrainError, DataError) as e:
        raise SystemExit(f"error: {e}") from None
    last = (Path(out) / "train_log.jsonl").read_text(encoding="utf-8").splitlines()[-1]
    record = json.loads(last)
    sink = f", Sink_1 {record['sink1']:.1f}%" if "sink1" in record else ""
    print(f"step {record['step']}: loss {record['loss']:.4f}{sink}; model folder {out} (minisink ppl/attn/generate "
          f"--model {out})")
