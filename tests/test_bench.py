"""`minisink bench --quick` end to end on a tiny checkpoint: it runs, and reports every figure as a number
(decode / floor, the speed ratios and the evaluator ratio among them).

Speed itself is not asserted (these machines are noisy; the targets are printed beside the figures)."""

import re

import pytest

from minisink import bench
from minisink.cli import main
from tiny import write_tiny_checkpoint

FIGURES = ["decode, full 4+1020 sink cache / 16-token context", "its attention / reading its K, V once",
           "chunked evaluator (4+1020, chunks of 256) / prefill", "decode, short context / memory floor",
           "decode, full sink cache", "attention part", "load", "prefill, 512 tokens", "decode, short context",
           "memory floor", "decode / floor",
           "decode at ~1,100", "full cache, 1,024 cached", "sink speed / full", "recompute, window 1024",
           "recompute / sink", "token by token", "chunks of 128", "chunks of 256"]


def test_bench_quick_prints_every_figure(tmp_path, capsys):
    assert main(["bench", "--quick", "--model", str(write_tiny_checkpoint(tmp_path))]) in (0, None)
    lines = capsys.readouterr().out.splitlines()
    for figure in FIGURES:
        line = next((line for line in lines if line.strip().startswith(figure)), None)
        assert line is not None, f"bench printed no '{figure}' line"
        value = float(re.search(r"-?\d+\.\d+", line.strip()[len(figure):]).group())  # the first number after it
        # a time, a speed or a ratio of two: positive, except a load, which a tiny model does in 0.00 s
        assert value > 0 or (figure == "load" and value == 0), line
    assert not any("~20,000" in line for line in lines)  # --quick skips the 20,000-token stream


def test_transformers_comparison_runs_eager_and_sdpa(tmp_path, capsys):
    """The targets are set against transformers' eager attention; SDPA, its default, is printed beside it. Each
    ratio is minisink's figure over the transformers figure printed above it."""
    pytest.importorskip("transformers")
    ours = {"prefill_tok_s": 50000.0, "decode_ms": 1.0}
    bench.print_transformers(write_tiny_checkpoint(tmp_path), ours)
    lines = capsys.readouterr().out.splitlines()
    heads = [i for i, line in enumerate(lines) if line.startswith("transformers fp32,")]
    assert [lines[i].split()[2] for i in heads] == ["eager", "sdpa"], lines  # as transformers' config reports them
    for i in heads:
        prefill, decode = map(float, re.findall(r"(\d+\.\d+) (?:tok/s|ms/token)", lines[i]))
        prefill_ratio, decode_ratio = (float(lines[i + k].split()[3]) for k in (1, 2))
        assert prefill_ratio == pytest.approx(ours["prefill_tok_s"] / prefill, rel=0.02), lines
        assert decode_ratio == pytest.approx(decode / ours["decode_ms"], rel=0.02), lines
        assert ("target" in lines[i + 1]) == (lines[i].split()[2] == "eager")  # targets on eager only
