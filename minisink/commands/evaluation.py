"""`minisink ppl`, `calibrate`, `streameval`, `tune`: long texts and streams scored through caches."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import (UsageError, add_cache_options, add_model_option, add_sink_options, add_text_options,
                   apply_sink_options, cache_spec, int_at_least, load, model_dir, positive_float, read_text,
                   read_text_file)


def say(message: str):
    print(message, file=sys.stderr, flush=True)


def add_ppl(sub):
    from ..model import PREFILL_CHUNK

    p = sub.add_parser("ppl", help="stream a long text through a cache policy, record every token's NLL")
    add_text_options(p)
    p.add_argument("--tokens", type=int_at_least(2), help="score the first N tokens (default: the whole text)")
    add_cache_options(p, several_budgets=True)
    p.add_argument("--chunk", type=int_at_least(1), default=PREFILL_CHUNK,
                   help=f"tokens per forward of the evaluator (default {PREFILL_CHUNK}; 1 = token by token; "
                        "any chunk gives the same NLLs)")
    p.add_argument("--out", help="write the per-token NLL and the settings: .npz (default) or .csv")
    add_model_option(p)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar on stderr (default: when stderr is a terminal; needs tqdm)")
    add_sink_options(p)
    p.set_defaults(func=cmd_ppl)


def cmd_ppl(args):
    from .. import ppl
    from ..calibrate import check_split, sink_notes
    from ..corpus import load_text_ids

    text, source = read_text(args)
    model, tok = load(args)
    prefix = apply_sink_options(model, tok, args)
    if prefix and args.sinks is None and (args.policy or "sink") == "sink":
        args.sinks = len(prefix)  # the prefix is the sinks (the paper's Table 1)
    specs = [cache_spec(args, budget=b) for b in (args.budget or [None])]
    if len(specs) > 1 and args.heavy is not None:
        raise UsageError("--heavy goes with one --budget (several budgets are each split evenly)")
    if len(specs) > 1 and prefix:
        raise UsageError("--sink-prefix goes with one run, not several --budget values")
    try:
        ids = load_text_ids(tok, text, args.tokens)
        if len(ids) < 2:
            raise ValueError(f"{source} holds {len(ids)} token(s): at least 2 are needed")
        if args.out:  # fail now, not after a run of hours
            ppl.check_out(args.out, len(ids))
        check_split(args.calibration, args.sink_logits, source, len(tok.decode(ids.tolist())))
        progress = args.progress if args.progress is not None else sys.stderr.isatty()
        if len(specs) > 1:  # several budgets, one pass over the text
            runs = ppl.run_ppl_budgets(model, ids, specs, progress=progress)
        else:
            runs = [ppl.run_ppl(model, ids, specs[0], args.chunk, progress=progress, say=say, prefix=prefix or None)]
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{source}: {runs[0].tokens} tokens")
    for run in runs:
        run.notes += sink_notes(args.sink_logits, args.calibration, args.sink_value, prefix)
        print(run.summary())
        if args.out:
            out = Path(args.out)
            if len(runs) > 1:  # runs/h2o.npz -> runs/h2o_64.npz, runs/h2o_128.npz, ...
                out = out.with_name(f"{out.stem}_{run.window}{out.suffix}")
            try:
                print(f"wrote {ppl.save_run(run, out, source=source, model=str(model_dir(args)))}")
            except OSError as e:
                raise SystemExit(f"error: cannot write {out} ({e.strerror or e}); the summary above is all that "
                                 f"is left of this run") from None


def add_calibrate(sub):
    p = sub.add_parser("calibrate", help="a sink logit per layer and head from a calibration text (no training)",
                       description="Streams the second half of the text (the first is for evaluation) through "
                                   "a sink cache (--sinks S --window W) and estimates one sink logit per layer and "
                                   "head: docs/07-why-sinks-exist.md")
    add_text_options(p, "a plain UTF-8 text file (its second half is read)")
    p.add_argument("--tokens", type=int_at_least(2), default=4096, help="calibration tokens (default 4096)")
    add_cache_options(p)
    p.add_argument("--cache", type=int_at_least(2),
                   help="deprecated: the total cache S + W; give --window W (the window excludes the sinks)")
    p.add_argument("--estimator", choices=["lme", "mass"], default="mass",
                   help="which estimate is saved as sink_logits (both are saved as sink_logits_NAME)")
    p.add_argument("--out", required=True, help="the .npz to write")
    add_model_option(p)
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args):
    from ..calibrate import CalibrationError, calibrate, format_table, split_text
    from ..corpus import load_text_ids

    from ..atomic import check_output_path

    check_output_path(args.out, "--out")  # a directory, a file in the way, a read-only folder: now, not after the run
    if args.cache is not None:
        if args.window is not None:
            raise UsageError("--cache is the old spelling of --sinks + --window: give --window alone")
        sinks = 4 if args.sinks is None else args.sinks
        if args.cache <= sinks:
            raise UsageError(f"--cache {args.cache} leaves no window beside {sinks} sinks: give --window W")
        args.window = args.cache - sinks
        say(f"note: --cache {args.cache} is deprecated: the same cache is --sinks {sinks} --window {args.window} "
            "(the window excludes the sinks, in every command)")
    spec = cache_spec(args)
    if spec.policy != "sink" or spec.sinks < 1 or not spec.renumber:
        raise UsageError(f"calibrate streams through a sink cache with at least one sink (--sinks S >= 1 "
                         f"--window W, positions within the cache), not {spec}")
    text, source = read_text(args)
    model, tok = load(args)
    start, end = split_text(text)
    try:
        ids = load_text_ids(tok, text[start:end], args.tokens)
        cal = calibrate(model, ids, spec.sinks + spec.window, spec.sinks,
                        meta={"source": source, "char_start": start, "char_end": end, "tokens": len(ids)})
        print(f"{source}: calibration part, characters {start}..{end}, {len(ids)} tokens, cache {spec}")
        print(format_table(cal))
        print(f"wrote {cal.save(args.out, args.estimator)} (sink_logits: estimator {args.estimator})")
    except (CalibrationError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


def add_streameval(sub):
    p = sub.add_parser("streameval", help="questions along an endless stream (the paper's StreamEval, rebuilt)")
    p.add_argument("--task", choices=["passkey", "lines"], default="passkey",
                   help="passkey: recall a 5-digit key D tokens later; lines: the value of the line D lines back")
    add_cache_options(p)
    p.add_argument("--distance", type=int_at_least(1), default=100,
                   help="tokens (passkey) or lines (lines) from fact to question (default 100)")
    p.add_argument("--queries", type=int_at_least(1), default=10, help="questions along the stream (default 10)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the keys and values")
    p.add_argument("--out", help="write every query to this CSV")
    add_model_option(p)
    p.set_defaults(func=cmd_streameval)


def cmd_streameval(args):
    from .. import streameval as se
    from ..atomic import check_output_path

    if args.out:
        check_output_path(args.out, "--out")  # before the run, not after it (a directory once died at the rename)

    if args.policy in ("h2o", "tova") and args.window is not None and args.budget is None:
        # streameval used to give h2o and tova a budget of sinks + window: say so, and run that budget
        old = (4 if args.sinks is None else args.sinks) + args.window
        say(f"note: streameval --policy {args.policy} --window W is deprecated: the budget is --budget N now; "
            f"running --budget {old} (the old sinks + window)")
        args.budget, args.window, args.sinks = old, None, None
    elif args.policy == "window":  # it used to keep sinks + W tokens (4 + 252 by default)
        old = (4 if args.sinks is None else args.sinks) + (252 if args.window is None else args.window)
        say(f"note: streameval --policy window now keeps --window W recent tokens, as every command does (it used "
            f"to keep sinks + W): for the cache these flags used to give, give --window {old}")
    spec = cache_spec(args)
    model, tok = load(args)

    def report(q, right, asked):
        mark = "right" if q.correct else "wrong"
        print(f"query {q.index + 1:3d} at token {q.position:6d}: expected {q.expected}, answered "
              f"{q.answer.strip()[:16]!r:18} {mark:5}  running {right}/{asked}", flush=True)

    say(f"cache {spec}")
    try:
        results = se.run_streameval(model, tok, args.task, spec, args.distance, args.queries, args.seed, report,
                                    progress=say if sys.stderr.isatty() else None)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(se.accuracy_line(results))
    if args.out:
        settings = {"task": args.task, "cache": str(spec), "policy": spec.policy, "sinks": spec.sinks,
                    "window": spec.window, "budget": spec.budget, "distance": args.distance,
                    "queries": args.queries, "seed": args.seed}
        print(f"wrote {se.save_csv(results, args.out, settings)}")


def add_tune(sub):
    p = sub.add_parser("tune", help="the best cache within a memory budget, measured on your own text")
    p.add_argument("--text", required=True, help="a plain UTF-8 text file like the ones you will stream")
    p.add_argument("--budget-mb", type=positive_float, required=True, help="memory for keys and values, in MB")
    p.add_argument("--tokens", type=int_at_least(2), default=2000,
                   help="score the first N tokens of the text (default 2000)")
    p.add_argument("--tolerance", type=positive_float, default=0.01,
                   help="recommend the smallest cache within this relative perplexity of the best (default 0.01)")
    add_model_option(p)
    p.set_defaults(func=cmd_tune)


def cmd_tune(args):
    from .. import tune
    from ..corpus import load_text_ids

    try:
        tune.check_budget(args.budget_mb)  # before the model loads: a budget beyond the memory is refused at once
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    text = read_text_file(args.text)
    model, tok = load(args)

    def progress(done, total, s):
        print(f"[{done}/{total}] {s.name:<16} {s.memory_mb:7.1f} MB  perplexity {s.perplexity:8.3f}  "
              f"{s.tokens_per_s:7.1f} tok/s", file=sys.stderr, flush=True)

    try:
        ids = load_text_ids(tok, text, args.tokens)
        if len(ids) < 2:
            raise ValueError(f"{args.text} holds {len(ids)} token(s): at least 2 are needed")
        settings = tune.sweep(model, ids, args.budget_mb, progress=progress)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{args.text}: {len(ids)} tokens, caches within {args.budget_mb:g} MB of keys and values\n")
    print("Pareto front (nothing else is smaller, better and faster at once):")
    print(tune.format_table(tune.pareto(settings)))
    best = tune.recommend(settings, args.tolerance)
    print(f"\nrecommended: {best.name} ({best.memory_mb:.1f} MB, perplexity {best.perplexity:.3f}): the smallest "
          f"cache within {args.tolerance:.0%} of the best perplexity measured")
    print(f"use it: minisink chat --sinks {best.sinks} --window {best.window}")
