"""experiments/run_all.py and make_report.py: the class preset's logic end to end on a tiny model, and the
conclusions computed from the runs' numbers (made-up runs that contradict a conclusion must make it FAIL)."""

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from minisink.cli import build_parser
from tiny import tiny_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import make_report  # noqa: E402
import run_all  # noqa: E402

# The class preset, shrunk to a tiny model: the same runs and names, streams of tens of tokens
TINY_CLASS = replace(run_all.PRESETS["class"], cache=12, long=70, short=70, recompute=30, dense=70, windows=(6, 20))


@pytest.mark.parametrize("preset", sorted(run_all.PRESETS))
def test_every_run_is_a_minisink_ppl_command(preset):
    runs = run_all.preset_runs(run_all.PRESETS[preset])
    assert len(runs) == len(set(runs)) >= 10
    for name in runs:
        ns = build_parser().parse_args(run_all.ppl_args(name, runs))
        assert ns.policy == ("window" if name.startswith("window") else name.split("_")[0])
        assert ns.no_renumber == name.endswith("_textpos")


def test_class_preset_on_a_tiny_model(tmp_path, capsys):
    """run_all's own loop writes every run of the preset; make_report reads them back and decides every
    conclusion it can (the ones past 8,192 tokens are SKIPped, and say why); the S = 0 renumbering one, which
    holds on any model, PASSes."""
    model = tiny_model(seed=0)
    runs = run_all.preset_runs(TINY_CLASS)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, TINY_CLASS.long)
    run_all.write_preset(tmp_path, TINY_CLASS)
    seconds = run_all.run_ppl_runs(model, ids, list(runs), runs, tmp_path)
    assert set(seconds) == set(runs) and all((tmp_path / f"{n}.npz").exists() for n in runs)
    capsys.readouterr()
    assert run_all.run_ppl_runs(model, ids, ["dense"], runs, tmp_path) == {}  # a second run resumes: nothing to do
    assert "exists, skipped" in capsys.readouterr().out

    preset = make_report.read_preset(tmp_path)
    assert preset == TINY_CLASS
    found = {c.claim: c for c in make_report.conclusions(tmp_path, preset)}
    past = [c for c in found.values() if "past the pre-training length" in c.claim]
    assert len(past) == 2 and all(c.verdict == "SKIP" for c in past)
    assert all(c.verdict in ("PASS", "FAIL") for c in found.values() if c not in past), found
    same = found["without sinks, positions in the text give the same numbers as positions in the cache"]
    assert same.verdict == "PASS" and "69 tokens" in same.evidence
    assert make_report.main(["--runs", str(tmp_path), "--no-plots"]) in (0, 1)
    out = capsys.readouterr().out
    assert "### Conclusions" in out and "4 sinks + 8" in out


def write_nll(runs: Path, name: str, nll: np.ndarray):
    with open(runs / f"{name}.npz", "wb") as f:
        np.savez(f, nll=nll)


@pytest.fixture
def made_up(tmp_path):
    """Made-up runs of the tiny class preset: every run scores 2 nats per token, plus what each test adds."""
    run_all.write_preset(tmp_path, TINY_CLASS)
    for name, args in run_all.preset_runs(TINY_CLASS).items():
        write_nll(tmp_path, name, np.full(run_all.build_tokens(args) - 1, 2.0))
    return tmp_path


def verdict(runs: Path, claim_start: str) -> str:
    found = [c for c in make_report.conclusions(runs, TINY_CLASS) if c.claim.startswith(claim_start)]
    assert len(found) == 1
    return found[0].verdict


def test_window_degrades_is_computed(made_up):
    C = TINY_CLASS.cache
    assert verdict(made_up, "window attention degrades") == "FAIL"  # the same numbers after eviction: no
    nll = np.full(TINY_CLASS.long - 1, 2.0)
    nll[C:] += 1.0  # window attention 1 nat worse per token from token C + 1 on: e = 2.7x
    write_nll(made_up, f"window_{C}", nll)
    assert verdict(made_up, "window attention degrades") == "PASS"
    nll[3] += 0.1  # ... but it differs before token 0 left the cache: not the claimed shape
    write_nll(made_up, f"window_{C}", nll)
    assert verdict(made_up, "window attention degrades") == "FAIL"


def test_one_sink_and_recompute_are_computed(made_up):
    C, n = TINY_CLASS.cache, TINY_CLASS.short - 1
    write_nll(made_up, f"window_{C}", np.full(n, 3.0))  # no sink: much worse
    assert verdict(made_up, "one sink recovers") == "PASS"  # 1 sink = 4 sinks = 2 nats
    write_nll(made_up, f"sink_1_{C - 1}", np.full(n, 2.5))  # one sink recovers only half (in nats)
    assert verdict(made_up, "one sink recovers") == "FAIL"
    assert verdict(made_up, "the sink cache is within a few %") == "PASS"
    write_nll(made_up, f"recompute_{C}", np.full(TINY_CLASS.recompute - 1, 1.9))  # recompute 10% better
    assert verdict(made_up, "the sink cache is within a few %") == "FAIL"


def test_missing_runs_skip_and_say_so(made_up):
    (made_up / "sink_8_4.npz").unlink()
    found = [c for c in make_report.conclusions(made_up, TINY_CLASS) if c.claim == "4 sinks are as good as 8"]
    assert found[0].verdict == "SKIP" and "sink_8_4" in found[0].evidence


def test_full_preset_tables_and_past_pretraining(tmp_path, capsys):
    """The full preset's streams pass 8,192 tokens: the tables gain their past-8,192 columns and the two
    conclusions about it are decided from the numbers (text positions 3 nats worse past 8,192: PASS; dense no
    worse than the sink cache: FAIL)."""
    full = run_all.PRESETS["full"]
    run_all.write_preset(tmp_path, full)
    for name, args in run_all.preset_runs(full).items():
        nll = np.full(run_all.build_tokens(args) - 1, 2.0)
        if name.endswith("textpos") and name.startswith("sink"):
            nll[make_report.PRETRAIN:] += 3.0
        write_nll(tmp_path, name, nll)
    found = {c.claim: c.verdict for c in make_report.conclusions(tmp_path, full)}
    assert found["with sinks, positions in the text fall apart past the pre-training length"] == "PASS"
    assert found["dense attention fails past the pre-training length, while the sink cache does not"] == "FAIL"
    assert make_report.main(["--runs", str(tmp_path), "--no-plots"]) == 1  # a FAIL: exit code 1
    assert "ppl, 8192-19999" in capsys.readouterr().out
