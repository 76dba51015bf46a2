"""BLAS threads for decode on a machine that is never idle: time both choices, keep the faster, check again later.

No fixed thread count is right both on a quiet machine and beside a busy process (the measurements, and why the
mean step time and not the median: docs/performance.md, "A busy machine"), so the decode loop measures:
`ThreadChooser` times a few steps at each thread count, keeps the one with the lower mean step time, runs on it
for a while (16 steps, doubling up to 1024 while the choice holds), then probes again, judging the count it ran on
by every step since the last choice.

What it does not: touch the forward pass (the model knows nothing of threads), or choose threads for a prefill
(large matrix products, where more threads pay even on a loaded machine). The thread count does not change the
numbers (tests/test_threads.py checks that the logits are bitwise the same with 1 or 2 threads).
`threadpoolctl` (the scikit-learn developers' library) switches the BLAS's threads at run time.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from contextlib import contextmanager


# A probe step this many times slower than the fastest step since the last choice ends its thread count's probe:
# probing costs the steps run at the slower count (docs/performance.md, "A busy machine").
ABANDON = 3.0
# The count that ran the period is kept unless another's mean is at least this much lower: a probe sees only a few
# steps of the other count (beside a busy process, 2 threads' slow steps are one in several), so a near-tie keeps
# the count whose mean was measured over the whole period.
SWITCH_MARGIN = 0.10


class ThreadChooser:
    """The decision alone, fed step times (so tests can feed it any timings): which thread count to run next.

    `next_threads()` says how many threads the next step runs on; `record(threads, seconds)` reports how long it
    took. A probe runs the candidates interleaved, `probes` steps each; then the count with the lowest mean step
    time since the last choice wins, if by SWITCH_MARGIN over the count that ran the period (which is judged by
    the period's steps as well, so its occasional slow steps count).
    """

    def __init__(self, choices, probes: int = 2, period: int = 16, max_period: int = 1024):
        self.choices = sorted(set(choices))  # e.g. [1, 2] on a 2-core machine
        self.probes, self.first_period, self.max_period = probes, period, max_period
        self.best = self.choices[0] if len(self.choices) == 1 else None  # None: not measured yet
        self.period = period  # steps to run on `best` before the next probe
        self.plan: deque[int] = deque(self.choices * probes if len(self.choices) > 1 else [])  # steps of a probe
        self.times: dict[int, list[float]] = {n: [] for n in self.choices}  # step times since the last choice
        self.countdown = 0  # steps left on `best` before the next probe

    def next_threads(self) -> int:
        return self.plan[0] if self.plan else self.best

    def record(self, threads: int, seconds: float):
        if len(self.choices) == 1:
            return
        self.times[threads].append(seconds)
        if self.plan:  # a probe step
            self.plan.popleft()
            if seconds > ABANDON * min(min(t) for t in self.times.values() if t):
                self.plan = deque(n for n in self.plan if n != threads)  # clearly slower: no more steps of it
            if not self.plan:
                self._decide()
        else:
            self.countdown -= 1
            if self.countdown <= 0:
                self.plan.extend(self.choices * self.probes)

    def _decide(self):
        means = {n: statistics.fmean(t) for n, t in self.times.items() if t}
        best = min(means, key=means.get)
        if self.best in means and means[best] > (1 - SWITCH_MARGIN) * means[self.best]:
            best = self.best  # not clearly faster: keep the count measured over the period
        # Same answer again: the machine is steady, check less often. A change: check again soon.
        self.period = min(2 * self.period, self.max_period) if best == self.best else self.first_period
        self.best, self.countdown = best, self.period
        self.times = {n: [] for n in self.choices}


def candidate_threads(available: int) -> list[int]:
    """1, all but one (what is left beside one busy process), all."""
    return sorted({1, max(1, available - 1), available})


def blas_threads() -> int:
    """The BLAS's thread count now (1 if threadpoolctl finds no BLAS in this process)."""
    from threadpoolctl import threadpool_info

    return max([lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"], default=1)


@contextmanager
def decode_threads(threads="auto"):
    """Around a decode loop: yields `step`, a context manager to wrap each decode step in.

    threads="auto": a ThreadChooser over candidate_threads(the BLAS's current count); an int: that many threads;
    None: leave the BLAS alone. The BLAS's thread count is restored on exit.
    """
    if threads is None:
        yield _untouched
        return
    from threadpoolctl import ThreadpoolController

    blas = ThreadpoolController().select(user_api="blas")
    if not blas.lib_controllers:  # a NumPy without a BLAS threadpoolctl knows: nothing to choose
        yield _untouched
        return
    original = blas.lib_controllers[0].num_threads
    chooser = ThreadChooser(candidate_threads(original) if threads == "auto" else [int(threads)])
    current = [original]

    @contextmanager
    def step():
        n = chooser.next_threads()
        if n != current[0]:
            blas.limit(limits=n)  # about 0.3 ms; only when the choice changes
            current[0] = n
        start = time.perf_counter()
        yield
        chooser.record(n, time.perf_counter() - start)

    try:
        yield step
    finally:
        if current[0] != original:
            blas.limit(limits=original)


@contextmanager
def _untouched():
    yield
