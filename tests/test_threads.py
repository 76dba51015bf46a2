"""BLAS threads for decode (minisink/threads.py): the choice, fed made-up step times; the BLAS restored after the
loop; the tokens the same whatever the threads; the bench's busy-machine case runs and cleans up."""

import numpy as np
import pytest

from minisink import bench
from minisink.generate import generate
from minisink.threads import ThreadChooser, blas_threads, candidate_threads, decode_threads
from minisink.spec import new_cache
from tiny import tiny_model

QUIET = {1: 0.045, 2: 0.030}  # seconds per step: alone, 2 threads are faster (1 thread ~45% slower)
BUSY = {1: 0.050, 2: 0.100}  # beside a busy process, 2 threads wait for the held core (0.30x vs 0.6x of quiet)


def run(chooser, machine_at, steps, start=0):
    """Feed the chooser `steps` decode steps whose times come from machine_at(step); return the threads used."""
    used = []
    for i in range(start, start + steps):
        n = chooser.next_threads()
        chooser.record(n, machine_at(i)[n])
        used.append(n)
    return used


def test_quiet_keeps_two_threads_and_probes_less_and_less():
    chooser = ThreadChooser([1, 2])
    used = run(chooser, lambda i: QUIET, 5000)
    assert used[:4] == [1, 2, 1, 2]  # the first probe, interleaved
    assert set(used[4:20]) == {2} and used[20:24] == [1, 2, 1, 2]  # then 16 steps on the faster, a probe
    assert set(used[24:56]) == {2} and used[56:60] == [1, 2, 1, 2]  # the same answer: twice as long before the next
    assert chooser.period == 1024  # steady: the period doubled up to its cap
    assert used[-2000:].count(1) <= 2 * 2  # at most two probes' worth of 1-thread steps in the last 2000


def test_a_busy_neighbour_switches_to_one_thread_within_a_period_and_back_when_it_leaves():
    chooser = ThreadChooser([1, 2])
    run(chooser, lambda i: QUIET, 300)
    period = chooser.period  # steps between probes when the neighbour arrives (doubled twice by now)
    used = run(chooser, lambda i: BUSY, 400, start=300)
    switched = next(i for i in range(len(used)) if set(used[i:i + 20]) == {1})  # the 1-thread run starts
    assert period == 256 and switched <= period + 4, switched  # at the next probe at the latest
    assert set(used[-100:]) <= {1, 2} and used[-100:].count(2) <= 4  # busy: 1 thread, but for probes
    back = run(chooser, lambda i: QUIET, 600, start=700)
    assert back[-100:].count(2) >= 96  # quiet again: back to 2 threads


def test_one_noisy_probe_step_costs_one_short_period():
    """One hiccup at 2 threads (a page fault, a time slice) can make a probe choose 1 thread; the next probe, one
    short period later, judges 1 thread by that period's steps too, and goes back to 2."""
    chooser = ThreadChooser([1, 2], probes=3)
    times = iter([0.045, 0.080, 0.045, 0.030, 0.045, 0.030])  # probe order 1, 2, 1, 2, 1, 2; one 2-thread hiccup
    for _ in range(6):
        n = chooser.next_threads()
        chooser.record(n, next(times))
    assert chooser.best == 1 and chooser.period == 16  # the mean counts the hiccup
    used = run(chooser, lambda i: QUIET, 16 + 6)
    assert used[:16] == [1] * 16 and chooser.best == 2


def test_spiky_two_thread_steps_lose_to_steady_one_thread_steps():
    """Beside a busy process (measured here): most 2-thread steps take about as long as a 1-thread step, one in
    five takes 4x longer, when the core OpenBLAS's second thread waits for is taken. 2 threads then cost 1.6x in
    total; a median of a few steps sees only ordinary ones. The chooser settles on 1 thread, probing 2 now and then."""
    def busy(i):
        return {1: 0.051, 2: 0.200 if i % 5 == 4 else 0.050}

    used = run(ThreadChooser([1, 2]), busy, 2000)
    assert used[-1000:].count(2) <= 2 * 2 and used[-1000:].count(1) >= 996
    assert used.count(2) <= 40  # a few short periods at most before it settles


def test_a_far_slower_probe_step_ends_that_counts_probe():
    """Heavy load: 2 threads 10x slower than 1 (measured here). One such step is enough; the probe's cost stays one
    slow step instead of `probes` of them."""
    chooser = ThreadChooser([1, 2], probes=3)
    used = run(chooser, lambda i: {1: 0.17, 2: 1.70}, 5)
    assert used == [1, 2, 1, 1, 1] and chooser.best == 1


def test_a_fixed_count_never_probes():
    chooser = ThreadChooser([3])
    assert set(run(chooser, lambda i: BUSY | {3: 1.0}, 500)) == {3}


def test_candidates():
    assert candidate_threads(1) == [1]
    assert candidate_threads(2) == [1, 2]
    assert candidate_threads(8) == [1, 7, 8]  # beside one busy process, 7 of 8 cores are free


@pytest.mark.parametrize("threads", ["auto", 1, None])
def test_decode_restores_the_blas_threads_and_gives_the_same_tokens(threads):
    model, before = tiny_model(), blas_threads()
    prompt = np.arange(3, 12)
    want = list(generate(model, prompt, new_cache(model), 40, threads=None))
    assert list(generate(model, prompt, new_cache(model), 40, threads=threads)) == want
    assert blas_threads() == before
    with pytest.raises(RuntimeError), decode_threads(threads) as step:
        with step():
            raise RuntimeError("interrupted mid-step")
    assert blas_threads() == before


@pytest.mark.real
def test_one_or_two_threads_give_bitwise_the_same_logits(real_model):
    """What makes the automatic choice safe: it changes the speed, never the numbers (OpenBLAS splits the rows of
    a product over its threads, not the sums)."""
    ids = np.arange(100, 120)
    out = []
    for n in (1, 2):
        with decode_threads(n) as step:
            cache = new_cache(real_model, "sink", sinks=4, window=8)
            logits = [real_model.forward(ids[:12], cache)]
            for t in ids[12:]:
                with step():
                    logits.append(real_model.forward([int(t)], cache))
        out.append(np.concatenate(logits))
    np.testing.assert_array_equal(out[0], out[1])


def children() -> set[int]:
    """Live child processes of this one (Linux /proc)."""
    from pathlib import Path

    return {int(pid) for f in Path("/proc/self/task").glob("*/children") for pid in f.read_text().split()}


def test_bench_busy_machine_runs_and_kills_its_spinner():
    before = children()
    figures = bench.bench_busy_machine(tiny_model(), tokens=8, rounds=1)
    assert all(figures[k] > 0 for k in ("quiet", "busy", "busy_fixed")), figures
    assert figures["default_threads"] == blas_threads()
    assert children() == before  # the spinning child is gone
