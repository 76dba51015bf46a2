"""The `minisink` command: a thin layer over the library, no logic of its own.

    minisink generate "Once upon a time"                       greedy continuation, full cache
    minisink generate --chat "What is the capital of France?"  one chat turn
    minisink generate --sinks 4 --window 1020 --max-new-tokens 100000 "..."   stream forever in constant memory
    minisink chat                                              multi-turn chat through a sink cache (stdin works)
    minisink bench                                             speed and memory figures, as ratios in one run
    minisink ppl --corpus kjv --tokens 20000 --mode sink --sinks 4 --window 252   per-token NLL of a long stream
    minisink attn --plot docs/img                              attention sink mass per layer and head (Fig. 2)
    minisink calibrate --corpus kjv --cache 256 --out sigma.npz   a sink logit per head (docs/05-why-sinks-exist.md)
    minisink ppl --corpus kjv --tokens 8000 --mode window --window 256 --sink-logits sigma.npz   window + sink logit
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
    ids = apply_sink_options(model, tok, args) + ids  # a sink prefix comes first: the sinks are whatever is first
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
    prefix = apply_sink_options(model, tok, args)
    if prefix:
        model.forward(prefix, cache)  # the sink prefix comes before the first turn
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


def read_text(args) -> tuple[str, str]:
    """(text, source) of --text FILE or --corpus kjv."""
    if (args.text is None) == (args.corpus is None):
        raise SystemExit("error: give the text to score: --text FILE or --corpus kjv")
    if args.text is not None:
        try:
            return Path(args.text).read_text(encoding="utf-8"), args.text
        except (OSError, UnicodeDecodeError) as e:
            raise SystemExit(f"error: cannot read {args.text}: {e}")
    import weights_fetch

    path = weights_fetch.fetch_kjv(progress=sys.stderr.isatty())
    return path.read_text(encoding="utf-8"), f"kjv ({path})"


def cmd_ppl(args):
    from .evaluate import load_text_ids, run_ppl, save_run

    text, source = read_text(args)
    model, tok = load(args)
    try:
        prefix = apply_sink_options(model, tok, args, source)
        ids = load_text_ids(tok, text, args.tokens)
        if len(ids) < 2:
            raise ValueError(f"{source} holds {len(ids)} token(s): at least 2 are needed")
        check_calibration_split(args, source, len(tok.decode(ids.tolist())))
        progress = args.progress if args.progress is not None else sys.stderr.isatty()
        say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
        run = run_ppl(model, ids, args.mode, args.sinks, args.window, not args.no_renumber, args.chunk,
                      progress=progress, say=say, prefix=prefix or None)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    run.notes += sink_notes(args, prefix)
    print(f"{source}: {run.tokens} tokens")
    print(run.summary())
    if args.out:
        print(f"wrote {save_run(run, args.out, source=source, model=str(model_dir(args)))}")


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
    if args.sink_metric or args.massive:
        anatomy_reports(model, tok, ids, args)


def anatomy_reports(model, tok, ids, args):
    """`attn --sink-metric N` / `--massive N`: docs/05-why-sinks-exist.md (samples from --corpus or the KJV)."""
    from . import anatomy

    if args.corpus_text:
        try:
            text = Path(args.corpus_text).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise SystemExit(f"error: cannot read {args.corpus_text}: {e}")
    else:
        import weights_fetch

        text = weights_fetch.fetch_kjv(progress=sys.stderr.isatty()).read_text(encoding="utf-8")
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
    add_sink_options(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="a multi-turn chat whose whole history streams through a sink cache")
    add_model_options(p, sinks_help="pinned sink tokens (default 4, window 1020)")
    add_sampling_options(p)
    p.add_argument("--system", help="a system message (default: the model's own)")
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
    p.add_argument("--tokens", type=int, help="score the first N tokens (default: the whole text)")
    p.add_argument("--mode", choices=["dense", "window", "recompute", "sink"], default="sink",
                   help="dense: full cache; window: the last W tokens; recompute: sliding window with "
                        "re-computation, O(W^2) per token; sink: S sinks + W recent (default)")
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
    add_sink_options(p)
    p.set_defaults(func=cmd_ppl)

    p = sub.add_parser("calibrate", help="a sink logit per layer and head from a calibration text (no training)",
                       description="Streams the second half of the text (the first is for evaluation) through "
                                   "a sink cache and estimates one sink logit per layer and head: "
                                   "docs/05-why-sinks-exist.md")
    p.add_argument("--text", help="a plain UTF-8 text file (its second half is read)")
    p.add_argument("--corpus", choices=["kjv"], help="a fetched corpus (kjv: the King James Bible)")
    p.add_argument("--tokens", type=int, default=4096, help="calibration tokens (default 4096)")
    p.add_argument("--cache", type=int, default=1024, help="the total cache to calibrate for (default 1024)")
    p.add_argument("--sinks", type=int, default=4, help="the sinks whose attention the logit takes over (default 4)")
    p.add_argument("--estimator", choices=["lme", "mass"], default="mass",
                   help="which estimate is saved as sink_logits (both are saved as sink_logits_NAME)")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument("--model", help="a Hugging Face model folder (default: the fetched one)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("attn", help="attention on the first token (the sink), per layer and head; plots")
    p.add_argument("--prompt", help="the text to look at (default: a ~100-token English paragraph)")
    p.add_argument("--text", help="read the prompt from this file instead")
    p.add_argument("--heads", action="store_true", help="print every head, not a summary per layer")
    p.add_argument("--first-query", type=int, default=4,
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
