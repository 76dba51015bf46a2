"""`minisink attn` and `minisink bench`: where attention goes, and how fast the caches run."""

from __future__ import annotations

import sys
from pathlib import Path

from ..atomic import check_output_path
from ..cli import UsageError, add_model_option, int_at_least, load, model_dir, read_text_file


def add_attn(sub):
    p = sub.add_parser("attn", help="attention on the first token (the sink), per layer and head; plots")
    p.add_argument("--prompt", help="the text to look at (default: a ~100-token English paragraph)")
    p.add_argument("--text", help="read the prompt from this file instead")
    p.add_argument("--heads", action="store_true", help="print every head, not a summary per layer")
    p.add_argument("--first-query", type=int_at_least(0), default=4,
                   help="average over queries from this index on (the first ones can only look back at token 0)")
    p.add_argument("--plot", metavar="DIR", help="write attention_maps.png and sink_mass.png into DIR (matplotlib); "
                                                 "with the flags below also sink_metric.png, massive_activations.png")
    add_model_option(p)
    p.add_argument("--sink-metric", type=int_at_least(1), metavar="N",
                   help="Gu et al.'s sink metric on N samples of 64 tokens (of --samples-from, default the KJV)")
    p.add_argument("--massive", type=int_at_least(1), metavar="N",
                   help="massive activations of the prompt per layer (Sun et al.), and the zero/mean intervention's "
                        "perplexity on N samples of 256 tokens")
    p.add_argument("--samples-from", dest="corpus_text", metavar="FILE",
                   help="the text the samples are drawn from (default: the KJV)")
    p.set_defaults(func=cmd_attn)


def cmd_attn(args):
    from .. import anatomy
    from .. import attention_maps as am

    if args.prompt is not None and args.text is not None:
        raise UsageError("give the text to look at once: --prompt TEXT or --text FILE")
    if args.plot:  # a file where the folder should be, or a read-only one: now, not after the table
        check_output_path(Path(args.plot) / "attention_maps.png", "--plot")
    text = read_text_file(args.text) if args.text else (am.DEFAULT_PROMPT if args.prompt is None else args.prompt)
    if not text.strip():
        raise SystemExit(f"error: {'--prompt' if args.text is None else args.text} holds no text (only whitespace): "
                         "nothing to look at")
    model, tok = load(args)
    ids = tok.encode_stream(text)
    try:
        probs = am.capture(model, ids)
        mass = am.sink_mass(probs, args.first_query)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    uniform = am.uniform_mass(len(ids), args.first_query)
    print(f"attention on the first token, averaged over queries {args.first_query}..{len(ids) - 1} "
          f"of a {len(ids)}-token prompt")
    print(am.format_table(mass, uniform, heads=args.heads))
    if args.plot:
        try:
            maps = am.plot_maps(probs, Path(args.plot) / "attention_maps.png")
            heat = am.plot_sink_mass(mass, Path(args.plot) / "sink_mass.png", uniform)
        except ImportError as e:
            raise SystemExit(f"error: {e}") from None
        except OSError as e:
            raise SystemExit(f"error: cannot write the plots into {args.plot} ({e.strerror or e})") from None
        print(f"wrote {maps} and {heat}")
    if not (args.sink_metric or args.massive):
        return
    if args.corpus_text:
        samples_text = read_text_file(args.corpus_text)
    else:
        from ..corpus import fetch_kjv

        samples_text = read_text_file(fetch_kjv(progress=sys.stderr.isatty()))
    try:
        reports, plots = anatomy.reports(model, tok, samples_text, ids, args.sink_metric, args.massive, args.plot)
    except (ValueError, ImportError) as e:
        raise SystemExit(f"error: {e}") from None
    for report in reports:
        print("\n" + report)
    if plots:
        print("wrote " + " and ".join(map(str, plots)))


def add_bench(sub):
    p = sub.add_parser("bench", help="prefill/decode speed, the memory floor, sink vs full vs recompute")
    add_model_option(p)
    p.add_argument("--quick", action="store_true", help="skip the 20,000-token stream and the transformers run")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args):
    from ..bench import run_bench

    run_bench(model_dir(args), quick=args.quick)
