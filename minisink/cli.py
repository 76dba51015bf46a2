"""The `minisink` command: a thin layer over the library, no logic of its own.

    minisink generate "Once upon a time"                       greedy continuation through a 4 + 1020 sink cache
    minisink generate --chat "What is the capital of France?"  one chat turn
    minisink generate --max-new-tokens 100000 "..."            stream forever in constant memory
    minisink chat                                              multi-turn chat through a sink cache (stdin works)
    minisink chat --session talk.npz                           the same, saved after every turn, resumed next time
    minisink bench                                             speed and memory figures, as ratios in one run
    minisink ppl --corpus kjv --tokens 20000 --sinks 4 --window 252   per-token NLL of a long stream
    minisink attn --plot runs/attn                             attention sink mass per layer and head (Fig. 2)
    minisink calibrate --corpus kjv --sinks 4 --window 252 --out sigma.npz   a sink logit per head (docs/07)
    minisink ppl --corpus kjv --tokens 8000 --policy window --window 256 --sink-logits sigma.npz   window + sink logit
    minisink streameval --task passkey --window 252 --distance 100   questions along a stream
    minisink tune --text notes.txt --budget-mb 32                the best cache within a memory budget
    minisink assignment new 3 hw3/ ; minisink assignment grade 3 hw3/    course assignments (docs/assignments/)
    minisink fetch                                             the default model (also: python weights_fetch.py)

Each command lives in minisink/commands/: one `add_<cmd>(subparsers)` beside one `cmd_<cmd>(args)`. This file
declares what they share, once: --model, the cache flags (minisink/spec.py says what they mean), the sampling flags,
the sink-logit flags, the argument types; and `main`, which turns every error into one line on stderr.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path


class UsageError(Exception):
    """Flags that do not go together (argparse checks each flag alone): exit status 2, as argparse's own errors."""


# --- --model ---------------------------------------------------------------------------------------------------


def add_model_option(p):
    p.add_argument("--model", help="a Hugging Face model folder (default: the one `minisink fetch` writes)")


def model_dir(args) -> Path:
    from .fetch import default_model_dir  # one place knows where the weights live

    path = Path(args.model) if args.model else default_model_dir()
    if not (path / "config.json").is_file():
        hint = ("run `minisink fetch` first to fetch the default model" if not args.model
                else "pass a Hugging Face model folder (config.json, tokenizer.json, model.safetensors)")
        raise SystemExit(f"error: no model at {path}: {hint}")
    return path


def load(args):
    """(model, tokenizer) of --model."""
    import minisink

    path = model_dir(args)
    return minisink.load_model(path), minisink.load_tokenizer(path)


# --- the cache flags: the same on every command that streams through a cache -----------------------------------

CACHE_POLICIES = ("dense", "sink", "window", "recompute", "h2o", "tova")


def add_cache_options(p, several_budgets: bool = False):
    """--policy, --sinks, --window, --budget, --heavy, --no-renumber; what they mean and their defaults are
    minisink/spec.py's (docs/11-cli-tour.md repeats them)."""
    p.add_argument("--policy", "--mode", choices=CACHE_POLICIES, default=None,
                   help="the cache: sink (the default: S sinks + W recent), window (W recent), dense (every token), "
                        "recompute (sliding window with re-computation, O(W^2) per token), h2o, tova (keep what "
                        "attention points at, within a budget; token by token)")
    p.add_argument("--sinks", type=int_at_least(0), help="sink tokens S, pinned (sink: default 4; recompute: 0)")
    p.add_argument("--window", type=int_at_least(1),
                   help="recent tokens W, the current one included, NOT counting the sinks (default 1024 - S: "
                        "the paper's 4 + 1020)")
    p.add_argument("--budget", type=int_at_least(2), nargs="+" if several_budgets else None,
                   help="h2o, tova: tokens a query attends to, itself included (default 1024)"
                        + ("; several budgets run together in one pass (--out runs/h2o.npz then writes "
                           "runs/h2o_64.npz, ...)" if several_budgets else ""))
    p.add_argument("--heavy", type=int_at_least(0), help="h2o: heavy hitters among the budget (default half of it)")
    p.add_argument("--no-renumber", action="store_true",
                   help="sink, window: keep positions in the text instead of positions within the cache: with sinks, "
                        "the paper's ablation; with --sinks 0 it changes nothing (RoPE sees only distances)")


def cache_spec(args, budget=None):
    """The CacheSpec of the cache flags (minisink/spec.py), or an error that names the flag to change. Without
    --policy: sink (with --budget or --heavy: an error, they need --policy h2o or tova)."""
    from .cache import CacheError
    from .spec import CacheSpec

    policy = args.policy or "sink"
    if budget is None:
        budget = args.budget[0] if isinstance(args.budget, list) else args.budget
    if (args.budget is not None or args.heavy is not None) and policy not in ("h2o", "tova"):
        raise UsageError("--budget and --heavy go with --policy h2o or tova (the sink cache takes --sinks "
                         "and --window)")
    if args.heavy is not None and policy != "h2o":
        raise UsageError("--heavy is H2O's split of the budget: use it with --policy h2o")
    options = {"heavy": args.heavy} if policy == "h2o" else {}
    try:
        return CacheSpec.parse(policy, args.sinks, args.window, budget, not args.no_renumber, **options)
    except CacheError as e:
        raise UsageError(flag_names(str(e))) from None


def flag_names(message: str) -> str:
    """A CacheSpec message in the command line's words (`renumber=False` is `--no-renumber`)."""
    return message.replace("renumber=False", "--no-renumber")


# --- sampling --------------------------------------------------------------------------------------------------


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


def make_sampler(args):
    from .generate import Sampler

    if args.temperature == 0:  # greedy: a seed, top-k or top-p would be silently ignored
        given = [f"--{n.replace('_', '-')}" for n in ("seed", "top_k", "top_p") if getattr(args, n) is not None]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise UsageError(f"{' and '.join(given)} only {verb} when sampling: add --temperature T (T > 0), "
                             f"or drop {' and '.join(given)} for greedy decoding")
    return Sampler(args.temperature, args.top_k, args.top_p, args.seed)


# --- sink logits, sink prefix (docs/07-why-sinks-exist.md) -----------------------------------------------------


def add_sink_options(p):
    p.add_argument("--sink-logits", metavar="zero|FILE.npz",
                   help="a sink logit per layer and head: zero (softmax-off-by-one) or a file from "
                        "`minisink calibrate`")
    p.add_argument("--sink-value", action="store_true",
                   help="the sink also adds the calibrated sinks' mean value vector (needs --sink-logits FILE.npz)")
    p.add_argument("--sink-prefix", metavar="TEXT", action="append",
                   help="feed TEXT first (repeat the flag for several pieces, each encoded on its own: "
                        "--sink-prefix $'\\n' four times is four newline tokens); sink mode then pins these tokens")


def apply_sink_options(model, tok, args) -> list[int]:
    """Set the model's sink logits (and values) from the flags, keep the calibration file's contents in
    args.calibration (None without one); return the sink prefix's token ids ([] if none)."""
    from .calibrate import CalibrationError, encode_prefix, set_sink_logits

    if args.sink_value and args.sink_logits in (None, "zero"):
        raise UsageError("--sink-value needs --sink-logits FILE.npz (a file from `minisink calibrate`)")
    try:
        args.calibration = set_sink_logits(model, args.sink_logits, args.sink_value)
        return encode_prefix(tok, args.sink_prefix or [])
    except CalibrationError as e:
        raise SystemExit(f"error: {e}") from None


# --- texts -------------------------------------------------------------------------------------------------------


def read_text_file(path) -> str:
    """The UTF-8 text of `path`, or an error that says what is wrong with the file."""
    from .corpus import read_text

    try:
        return read_text(path)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def read_text(args) -> tuple[str, str]:
    """(text, source) of --text FILE or --corpus kjv."""
    if (args.text is None) == (args.corpus is None):
        raise UsageError("give the text to score: --text FILE or --corpus kjv (one of them)")
    if args.text is not None:  # its resolved path: the calibration guard compares it, however it was typed
        text, source = read_text_file(args.text), str(Path(args.text).resolve())
    else:
        from . import corpus

        path = corpus.fetch_kjv(progress=sys.stderr.isatty())
        text, source = read_text_file(path), f"kjv ({path})"
    if not text.strip():
        raise SystemExit(f"error: {source} holds no text (only whitespace): nothing to score")
    return text, source


def add_text_options(p, text_help="a plain UTF-8 text file to score"):
    p.add_argument("--text", help=text_help)
    p.add_argument("--corpus", choices=["kjv"], help="a fetched corpus (kjv: the King James Bible)")


# --- argument types: every value is checked where argparse reads it, so each subcommand gets the same checks and
# a bad value ends in argparse's one-line "minisink CMD: error: argument --x: ..." instead of deep in NumPy.


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


def threads_option(text: str):
    """--threads: "auto" or a number of BLAS threads from 1 to the machine's cores (more only slows BLAS down, and
    a number past a C int reached threadpoolctl as a ctypes OverflowError: the deep profile found it)."""
    if text == "auto":
        return text
    cores = os.cpu_count() or 1
    if not text.isdigit() or not 1 <= int(text) <= cores:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number of threads from 1 to {cores} (the cores of "
                                         f"this machine), got {text!r}")
    return int(text)


# --- the parser and main -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from .commands import COMMANDS  # after this module is whole: the commands import the options above

    parser = argparse.ArgumentParser(prog="minisink", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


SIZE_FLAGS = ("--window", "--budget", "--tokens", "--chunk", "--distance", "--queries", "--max-new-tokens",
              "--budget-mb", "--sink-metric", "--massive")  # what an out-of-memory error suggests making smaller


def command_flags(parser: argparse.ArgumentParser, command: str) -> set[str]:
    """Every flag of subcommand `command` (so that a message names only flags the command has)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {flag for action in sub._actions for flag in action.option_strings}


def main(argv=None) -> int:
    """Run the command; errors end in one line `minisink: error: ...` on stderr, never in a traceback.

    Exit status (docs/11-cli-tour.md): 0 done; 1 the input or the environment is wrong (a file, a model folder, a
    session, a size that does not fit in memory, a disk: a `SystemExit("error: ...")` of a command's own check,
    raised again with the "minisink: " prefix so that in-process callers can catch it, or a library error: config,
    weights, tokenizer, cache, sampling, fetch, session, calibration, output path); 2 usage: argparse's errors and
    flags that do not go together (UsageError); 130 interrupted (Ctrl-C)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from . import CacheError, ConfigError, InputError, WeightsError
    from .atomic import OutputError
    from .calibrate import CalibrationError
    from .fetch import FetchError
    from .generate import SamplingError
    from .session import SessionError
    from .tokenizer import TokenizerError

    try:
        args.func(args)
    except UsageError as e:  # as argparse does: the message on stderr, then SystemExit(2)
        print(f"minisink {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except (CacheError, ConfigError, InputError, WeightsError, SamplingError, TokenizerError, FetchError,
            SessionError, CalibrationError, OutputError) as e:
        print(f"minisink: error: {e}", file=sys.stderr)
        return 1
    except SystemExit as e:
        if isinstance(e.code, str):
            raise SystemExit(f"minisink: {e.code if e.code.startswith('error: ') else 'error: ' + e.code}") from None
        raise
    except MemoryError:
        smaller = [f for f in SIZE_FLAGS if f in command_flags(parser, args.command)]
        fix = f"give a smaller {' or '.join(smaller)}" if smaller else "free some memory, or use a larger machine"
        print(f"minisink: error: out of memory: {fix}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("minisink: interrupted: nothing half-written is left (every file is written whole or not at all)",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
