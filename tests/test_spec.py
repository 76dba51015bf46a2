"""One cache spec (minisink/spec.py): the defaults, the one meaning of "window", what a run prints, and the command
line: every command that streams through a cache reads the same flags into the same spec, and the spellings from
before the window had one meaning run with a note that names the new flags."""

import argparse

import numpy as np
import pytest

from minisink import CacheError, FullCache, RecomputeWindow, SinkCache
from minisink.cli import build_parser, cache_spec
from minisink.eviction import H2OCache, SnapKVCache, TOVACache
from minisink.spec import DEFAULT_CACHE, CacheSpec, new_cache
from tiny import tiny_model

from test_cli_experiments import checkpoint, run, text  # noqa: F401  (the tiny checkpoint and its text)


@pytest.mark.parametrize("policy, fields, sizes, shown, cls", [
    ("sink", {}, (4, 1020, None), "sink: 4 sinks + window 1020", SinkCache),
    ("sink", {"sinks": 1}, (1, 1023, None), "sink: 1 sink + window 1023", SinkCache),
    ("sink", {"sinks": 4, "window": 252, "renumber": False}, (4, 252, None),
     "sink: 4 sinks + window 252, text positions (no renumbering)", SinkCache),
    ("window", {}, (0, 1024, None), "window: window 1024", SinkCache),
    ("recompute", {}, (0, 1024, None), "recompute: recompute, window 1024", RecomputeWindow),
    ("recompute", {"sinks": 4}, (4, 1020, None), "recompute: recompute, window 1020 + 4 sinks", RecomputeWindow),
    ("dense", {}, (0, None, None), "dense: full cache", FullCache),
    ("h2o", {"heavy": 100}, (0, None, 1024), "h2o: budget 1024 = 100 heavy + 924 recent", H2OCache),
    ("tova", {"budget": 64}, (0, None, 64), "tova: budget 64", TOVACache),
    ("snapkv", {"window": 4, "capacity": 8, "w": 2}, (0, 4, None), "snapkv: prompt 8 + window 4", SnapKVCache),
])
def test_defaults_what_a_run_prints_and_the_cache_built(policy, fields, sizes, shown, cls):
    """Every bounded cache holds DEFAULT_CACHE tokens unless told otherwise; the window never counts the sinks."""
    spec = CacheSpec.parse(policy, **fields)
    assert (spec.sinks, spec.window, spec.budget) == sizes and str(spec) == shown
    cache = new_cache(tiny_model(), spec)
    assert type(cache) is cls
    if policy in ("sink", "window"):
        assert (cache.n_sink, cache.window) == sizes[:2] and spec.tokens == sum(sizes[:2])
        assert spec.tokens == DEFAULT_CACHE or "window" in fields  # the defaults: 1024 tokens in all
        assert cache.keys.shape[-1] == 2 * cache.n_sink + cache.window  # S + W slots and the sinks' working copy


def test_a_spec_and_its_policy_name_make_the_same_cache():
    model = tiny_model(seed=3)
    ids = np.random.default_rng(3).integers(0, model.config.vocab_size, 40)
    spec = CacheSpec.parse("sink", sinks=2, window=9)
    a = model.forward(ids, new_cache(model, spec))
    b = model.forward(ids, new_cache(model.config, "sink", sinks=2, window=9))  # a config works as well as a model
    np.testing.assert_array_equal(a, b)
    with pytest.raises(CacheError, match="not both"):
        new_cache(model, spec, window=4)


@pytest.mark.parametrize("policy, fields, message", [
    ("dense", {"sinks": 4}, "takes neither sinks nor a window"),
    ("window", {"sinks": 4}, "the window policy has no sinks"),
    ("h2o", {"window": 8}, "takes a budget .* not a window"),
    ("tova", {"sinks": 2}, "tova has no sinks"),
    ("sink", {"budget": 8}, "a budget goes with the h2o or tova policy"),
    ("recompute", {"renumber": False}, "renumber=False applies to the sink and window caches, not to recompute"),
    ("sink", {"heavy": 2}, "the sink cache takes no option heavy"),
    ("snapkv", {"window": 4}, "snapkv needs its prompt capacity"),
    ("lru", {}, "the cache policy must be one of"),
])
def test_what_a_policy_does_not_take_is_refused_by_name(policy, fields, message):
    with pytest.raises(CacheError, match=message):
        CacheSpec.parse(policy, **fields)


CACHE_COMMANDS = {"generate": ["w1"], "chat": [], "ppl": [], "streameval": [], "calibrate": ["--out", "x.npz"]}


def subparser(command) -> argparse.ArgumentParser:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[command]


@pytest.mark.parametrize("flags, shown", [
    ([], "sink: 4 sinks + window 1020"),
    (["--window", "252"], "sink: 4 sinks + window 252"),
    (["--sinks", "0", "--window", "256"], "sink: 0 sinks + window 256"),
    (["--policy", "window", "--window", "256"], "window: window 256"),
    (["--policy", "recompute", "--sinks", "4"], "recompute: recompute, window 1020 + 4 sinks"),
    (["--policy", "h2o", "--budget", "128", "--heavy", "32"], "h2o: budget 128 = 32 heavy + 96 recent"),
    (["--policy", "dense"], "dense: full cache"),
])
def test_every_cache_command_reads_the_same_flags_into_the_same_spec(flags, shown):
    """The cache flags are declared once: each command that streams through a cache has all of them, with the same
    defaults and the same meaning, and a run prints the same `str(spec)` for them."""
    for command, rest in CACHE_COMMANDS.items():
        args = build_parser().parse_args([command, *flags, *rest])
        assert str(cache_spec(args)) == shown, command
    options = {c: {a.dest for a in subparser(c)._actions} for c in CACHE_COMMANDS}
    shared = {"policy", "sinks", "window", "budget", "heavy", "no_renumber", "model"}
    assert all(shared <= dests for dests in options.values()), options


def test_ppl_still_takes_mode_as_the_policy():
    assert build_parser().parse_args(["ppl", "--mode", "window"]).policy == "window"


def test_the_old_meanings_run_with_a_note_naming_the_new_flags(checkpoint, text, capsys, tmp_path):  # noqa: F811
    """streameval's window policy used to keep sinks + W tokens and its h2o/tova budget was sinks + W; calibrate's
    --cache was S + W. Each still runs, and says on stderr what to give now."""
    code, out, err = run(capsys, "streameval", "--model", checkpoint, "--task", "lines", "--policy", "tova",
                         "--window", 20, "--distance", 3, "--queries", 1)
    assert code == 0 and "--budget 24" in err and "cache tova: budget 24" in err
    code, out, err = run(capsys, "streameval", "--model", checkpoint, "--task", "lines", "--policy", "window",
                         "--window", 24, "--distance", 3, "--queries", 1)
    assert code == 0 and "--window 256" in err and "cache window: window 24" in err
    code, out, err = run(capsys, "calibrate", "--model", checkpoint, "--text", text, "--cache", 32, "--tokens", 200,
                         "--out", tmp_path / "sigma.npz")
    assert code == 0 and "--sinks 4 --window 28" in err and "cache sink: 4 sinks + window 28" in out
