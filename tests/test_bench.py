"""`minisink bench --quick` end to end on a tiny checkpoint: it runs, and reports every figure as a number
(decode / floor, the speed ratios and the evaluator ratio among them).

Speed itself is not asserted (these machines are noisy; the targets are printed beside the figures)."""

import re

from minisink.cli import main
from tiny import write_tiny_checkpoint

FIGURES = ["load", "prefill, 512 tokens", "decode, short context", "memory floor", "decode / floor",
           "decode at ~1,100", "full cache, 1,024 cached", "sink speed / full", "recompute, window 1024",
           "recompute / sink", "token by token", "chunks of 128", "chunks of 256"]


def test_bench_quick_prints_every_figure(tmp_path, capsys):
    assert main(["bench", "--quick", "--model", str(write_tiny_checkpoint(tmp_path))]) in (0, None)
    lines = capsys.readouterr().out.splitlines()
    for figure in FIGURES:
        line = next((line for line in lines if line.strip().startswith(figure)), None)
        assert line is not None, f"bench printed no '{figure}' line"
        value = float(re.search(r"\d+\.\d+", line.strip()[len(figure):]).group())  # the first number after it
        assert value >= 0, line  # a tiny model loads in 0.00 s
    assert not any("~20,000" in line for line in lines)  # --quick skips the 20,000-token stream
