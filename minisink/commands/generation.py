"""`minisink generate` and `minisink chat`: text through a cache, streamed to stdout."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..atomic import check_output_path
from ..cli import (add_cache_options, add_model_option, add_sampling_options, add_sink_options, apply_sink_options,
                   cache_spec, load, make_sampler)


class Progress:
    """A progress line on stderr: tokens, tokens/s, cache fill."""

    def __init__(self, cache, spec, enabled: bool, every: int = 64):
        self.cache, self.enabled, self.every = cache, enabled, every
        self.capacity = spec.tokens
        self.count, self.start = 0, time.perf_counter()
        if enabled:
            print(f"cache {spec}", file=sys.stderr)

    def step(self):
        self.count += 1
        if self.enabled and self.count % self.every == 0:
            self.show()

    def show(self, end=""):
        if not self.enabled:
            return
        rate = self.count / max(time.perf_counter() - self.start, 1e-9)
        held = len(self.cache.retained())
        sys.stderr.write(f"\r[{self.count} tokens | {rate:.1f} tok/s | cache {held}/{self.capacity or held}]{end}")
        sys.stderr.flush()


def add_generate(sub):
    p = sub.add_parser("generate", help="stream a continuation (or a chat answer) to stdout")
    p.add_argument("prompt")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    add_model_option(p)
    add_cache_options(p)
    add_sampling_options(p)
    add_sink_options(p)
    p.set_defaults(func=cmd_generate)


def cmd_generate(args):
    from ..generate import end_of_turn_ids, generate
    from ..spec import new_cache

    sampler = make_sampler(args)
    spec = cache_spec(args)
    model, tok = load(args)
    cache = new_cache(model, spec)
    prompt = tok.chat_prompt([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
    ids = tok.encode_stream(prompt)
    if len(ids) == len(tok.stream_start):
        raise SystemExit("error: the prompt is empty")
    ids = apply_sink_options(model, tok, args) + ids  # a sink prefix comes first: the sinks are whatever is first
    decoder = tok.stream_decoder()
    progress = Progress(cache, spec, args.progress if args.progress is not None else sys.stderr.isatty())
    for token in generate(model, ids, cache, args.max_new_tokens, sampler, end_of_turn_ids(tok), args.threads):
        sys.stdout.write(decoder.step(token))
        sys.stdout.flush()
        progress.step()
    sys.stdout.write(decoder.flush() + "\n")
    progress.show(end="\n")


def add_chat(sub):
    p = sub.add_parser("chat", help="a multi-turn chat whose whole history streams through a sink cache")
    add_model_option(p)
    add_cache_options(p)
    add_sampling_options(p)
    p.add_argument("--system", help="a system message (default: the model's own)")
    p.add_argument("--session", metavar="FILE",
                   help="save the conversation to FILE after every turn and resume it from FILE if it exists "
                        "(constant size with a sink cache: keys and values of S + W tokens and a few counters)")
    add_sink_options(p)
    p.set_defaults(func=cmd_chat)


def cmd_chat(args):
    from .. import session

    if sys.stdin is None or sys.stdin.closed:
        raise SystemExit("error: chat reads the conversation from stdin, which is closed: run it in a terminal, "
                         "or pipe the turns in, one per line")
    sampler = make_sampler(args)
    spec = cache_spec(args)
    model, tok = load(args)
    prefix = apply_sink_options(model, tok, args)
    chat = start_chat(model, tok, args, spec, sampler, prefix)
    cache = chat.cache
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"minisink chat (cache {spec}): an empty line or Ctrl-D quits.", file=sys.stderr)
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


def start_chat(model, tok, args, spec, sampler, prefix=()):
    """A new chat, or with --session FILE an existing one resumed from FILE (a new one if FILE does not exist)."""
    from .. import session
    from ..generate import Chat
    from ..spec import new_cache

    path = Path(args.session) if args.session else None
    if path is not None:  # a directory, a file in the way, a read-only folder: before the first turn, not after it
        check_output_path(path, "--session")
    if path is None or not path.exists():
        cache = new_cache(model, spec)
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
