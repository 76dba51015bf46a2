"""The `minisink` command: a thin layer over the library, no logic of its own.

    minisink generate "Once upon a time"                       greedy continuation, full cache
    minisink generate --chat "What is the capital of France?"  one chat turn
    minisink generate --sinks 4 --window 1020 --max-new-tokens 100000 "..."   stream forever in constant memory
    minisink chat                                              multi-turn chat through a sink cache (stdin works)
    minisink bench                                             speed and memory figures, as ratios in one run
    minisink ppl --corpus kjv --tokens 20000 --mode sink --sinks 4 --window 252   per-token NLL of a long stream
    minisink attn --plot docs/img                              attention sink mass per layer and head (Fig. 2)
    minisink streameval --task passkey --policy sink --window 252 --distance 100   questions along a stream
    minisink tune --text notes.txt --budget-mb 32                the best cache within a memory budget
    minisink assignment new 3 hw3/ ; minisink assignment grade 3 hw3/    course assignments (docs/assignments/)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def default_model_dir() -> Path:
    from weights_fetch import default_model_dir as fetched_dir  # one place knows where the weights live

    return fetched_dir()


def model_dir(args) -> Path:
    path = Path(args.model) if args.model else default_model_dir()
    if not (path / "config.json").is_file():
        hint = ("run `python weights_fetch.py` first to fetch the default model" if not args.model
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


def make_sampler(args):
    from .generate import Sampler

    return Sampler(args.temperature, args.top_k, args.top_p, args.seed)


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

    model, tok = load(args)
    cache = make_cache(model, args)
    prompt = tok.chat_prompt([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
    ids = tok.encode(prompt)
    if not ids:
        raise SystemExit("error: the prompt is empty")
    stop = {tok.eos_token_id} if args.chat else set()
    decoder = tok.stream_decoder()
    progress = Progress(cache, args.progress if args.progress is not None else sys.stderr.isatty())
    for token in generate(model, ids, cache, args.max_new_tokens, make_sampler(args), stop):
        if token in stop:
            break
        sys.stdout.write(decoder.step(token))
        sys.stdout.flush()
        progress.step()
    sys.stdout.write(decoder.flush() + "\n")
    progress.show(end="\n")


def cmd_chat(args):
    from .generate import Chat

    model, tok = load(args)
    cache = make_cache(model, args, default_sinks=4, default_window=1020)
    chat = Chat(model, tok, cache, make_sampler(args), system=args.system)
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
        if args.progress or interactive:
            held = len(cache.retained())
            print(f"[turn {chat.turns} | {chat.fed} tokens streamed | cache holds {held}]", file=sys.stderr)


def cmd_bench(args):
    from .bench import run_bench

    run_bench(model_dir(args), quick=args.quick)


def cmd_ppl(args):
    from .evaluate import load_text_ids, run_ppl, run_ppl_budgets, save_run

    if (args.text is None) == (args.corpus is None):
        raise SystemExit("error: give the text to score: --text FILE or --corpus kjv")
    if args.text is not None:
        try:
            text, source = Path(args.text).read_text(encoding="utf-8"), args.text
        except (OSError, UnicodeDecodeError) as e:
            raise SystemExit(f"error: cannot read {args.text}: {e}")
    else:
        import weights_fetch

        path = weights_fetch.fetch_kjv(progress=sys.stderr.isatty())
        text, source = path.read_text(encoding="utf-8"), f"kjv ({path})"
    model, tok = load(args)
    try:
        ids = load_text_ids(tok, text, args.tokens)
        if len(ids) < 2:
            raise ValueError(f"{source} holds {len(ids)} token(s): at least 2 are needed")
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
            runs = run_ppl_budgets(model, ids, args.mode, args.budget, progress=progress)
        else:
            runs = [run_ppl(model, ids, args.mode, args.sinks, window, not args.no_renumber, args.chunk,
                            progress=progress, say=say, heavy=args.heavy)]
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    print(f"{source}: {runs[0].tokens} tokens")
    for run in runs:
        print(run.summary())
        if args.out:
            out = Path(args.out)
            if len(runs) > 1:  # runs/h2o.npz -> runs/h2o_64.npz, runs/h2o_128.npz, ...
                out = out.with_name(f"{out.stem}_{run.window}{out.suffix}")
            print(f"wrote {save_run(run, out, source=source, model=str(model_dir(args)))}")


def cmd_attn(args):
    from . import attention_maps as am

    model, tok = load(args)
    text = Path(args.text).read_text(encoding="utf-8") if args.text else (args.prompt or am.DEFAULT_PROMPT)
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
        print(f"wrote {maps} and {heat}")


def cmd_assignment(args):
    from . import assignments

    try:
        if args.action == "new":
            for path in assignments.new(args.number, args.dir, solution=args.solution):
                print(f"wrote {path}")
            if not args.solution:
                print(f"implement the TODOs, then: minisink assignment grade {args.number} {args.dir}")
            return
        ok = assignments.grade(args.number, args.dir)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    if not ok:
        raise SystemExit(1)


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

    try:
        text = Path(args.text).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"error: cannot read {args.text}: {e}")
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
    p.add_argument("--model", help="a Hugging Face model folder (default: the one weights_fetch.py writes)")
    p.add_argument("--sinks", type=int, help=sinks_help)
    p.add_argument("--window", type=int, help="recent tokens kept in the cache (with --sinks 0: window attention)")


def add_sampling_options(p, max_new_tokens=256):
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (the default) is greedy")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int, help="seed for sampling (temperature > 0)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress line on stderr (default: when stderr is a terminal)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minisink", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="stream a continuation (or a chat answer) to stdout")
    p.add_argument("prompt")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    add_model_options(p)
    add_sampling_options(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="a multi-turn chat whose whole history streams through a sink cache")
    add_model_options(p, sinks_help="pinned sink tokens (default 4, window 1020)")
    add_sampling_options(p)
    p.add_argument("--system", help="a system message (default: the model's own)")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("bench", help="prefill/decode speed, the memory floor, sink vs full vs recompute")
    p.add_argument("--model", help="a Hugging Face model folder (default: the fetched one)")
    p.add_argument("--quick", action="store_true", help="skip the 20,000-token stream and the transformers run")
    p.set_defaults(func=cmd_bench)

    from .model import PREFILL_CHUNK

    p = sub.add_parser("ppl", help="stream a long text through a cache policy, record every token's NLL")
    p.add_argument("--text", help="a plain UTF-8 text file to score")
    p.add_argument("--corpus", choices=["kjv"], help="a fetched corpus (kjv: the King James Bible)")
    p.add_argument("--tokens", type=int, help="score the first N tokens (default: the whole text)")
    p.add_argument("--mode", choices=["dense", "window", "recompute", "sink", "h2o", "tova"], default="sink",
                   help="dense: full cache; window: the last W tokens; recompute: sliding window with "
                        "re-computation, O(W^2) per token; sink: S sinks + W recent (default); h2o, tova: keep "
                        "what attention points at (token by token)")
    p.add_argument("--budget", type=int, nargs="+",
                   help="h2o, tova: tokens kept, the current one included (default 1024); several budgets run "
                        "together in one pass (--out runs/h2o.npz then writes runs/h2o_64.npz, ...)")
    p.add_argument("--heavy", type=int, help="h2o: heavy hitters among the budget (default half of it)")
    p.add_argument("--sinks", type=int, help="sink tokens (sink: default 4; recompute: default 0)")
    p.add_argument("--window", type=int, help="recent tokens kept (default: 1024 minus the sinks)")
    p.add_argument("--no-renumber", action="store_true",
                   help="ablation: keep positions in the text instead of positions within the cache")
    p.add_argument("--chunk", type=int, default=PREFILL_CHUNK,
                   help=f"tokens per forward of the evaluator (default {PREFILL_CHUNK}; 1 = token by token; "
                        "any chunk gives the same NLLs)")
    p.add_argument("--out", help="write the per-token NLL and the settings: .npz (default) or .csv")
    p.add_argument("--model", help="a Hugging Face model folder (default: the fetched one)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar on stderr (default: when stderr is a terminal; needs tqdm)")
    p.set_defaults(func=cmd_ppl)

    p = sub.add_parser("streameval", help="questions along an endless stream (the paper's StreamEval, rebuilt)")
    p.add_argument("--task", choices=["passkey", "lines"], default="passkey",
                   help="passkey: recall a 5-digit key D tokens later; lines: the value of the line D lines back")
    p.add_argument("--policy", choices=["dense", "window", "sink", "recompute", "h2o", "tova"], default="sink",
                   help="the cache (window: S + W recent tokens; h2o, tova: a budget of S + W tokens)")
    p.add_argument("--sinks", type=int, default=4, help="sink tokens (default 4)")
    p.add_argument("--window", type=int, default=252, help="recent tokens kept (default 252)")
    p.add_argument("--distance", type=int, default=100, help="tokens (passkey) or lines (lines) from fact to "
                                                             "question (default 100)")
    p.add_argument("--queries", type=int, default=10, help="questions along the stream (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the keys and values")
    p.add_argument("--out", help="write every query to this CSV")
    p.add_argument("--model", help="a Hugging Face model folder (default: the fetched one)")
    p.set_defaults(func=cmd_streameval)

    p = sub.add_parser("tune", help="the best cache within a memory budget, measured on your own text")
    p.add_argument("--text", required=True, help="a plain UTF-8 text file like the ones you will stream")
    p.add_argument("--budget-mb", type=float, required=True, help="memory for keys and values, in MB")
    p.add_argument("--tokens", type=int, default=2000, help="score the first N tokens of the text (default 2000)")
    p.add_argument("--tolerance", type=float, default=0.01,
                   help="recommend the smallest cache within this relative perplexity of the best (default 0.01)")
    p.add_argument("--model", help="a Hugging Face model folder (default: the fetched one)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("attn", help="attention on the first token (the sink), per layer and head; plots")
    p.add_argument("--prompt", help="the text to look at (default: a ~100-token English paragraph)")
    p.add_argument("--text", help="read the prompt from this file instead")
    p.add_argument("--heads", action="store_true", help="print every head, not a summary per layer")
    p.add_argument("--first-query", type=int, default=4,
                   help="average over queries from this index on (the first ones can only look back at token 0)")
    p.add_argument("--plot", metavar="DIR", help="write attention_maps.png and sink_mass.png into DIR (matplotlib)")
    p.add_argument("--model", help="a Hugging Face model folder (default: the fetched one)")
    p.set_defaults(func=cmd_attn)

    p = sub.add_parser("assignment", help="course assignments: write a skeleton, grade a student's files",
                       description="new N DIR: the assignment's source file(s) with the functions to write stubbed "
                                   "out, and its text; grade N DIR: every check, PASS/FAIL, exit code 0 iff all pass")
    p.add_argument("action", choices=["new", "grade"])
    p.add_argument("number", type=int, help="the assignment: 1 RMSNorm + RoPE, 2 GQA attention + KV cache, "
                                            "3 ring buffer with sinks, 4 positions within the cache")
    p.add_argument("dir", help="the student's folder")
    p.add_argument("--solution", action="store_true", help="new: write the reference bodies instead of TODOs")
    p.set_defaults(func=cmd_assignment)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from . import CacheError, ConfigError, InputError, WeightsError
    from .generate import SamplingError
    from .tokenizer import TokenizerError

    try:
        args.func(args)
    except (CacheError, ConfigError, InputError, WeightsError, SamplingError, TokenizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
