"""Hypothesis profiles, and how many examples a test with its own count draws under each.

    ci    a fixed, derandomized set of examples, the same every run (CI: `.ci/run` sets HYPOTHESIS_PROFILE=ci)
    dev   a few new random examples each run (the default of a plain `pytest`)
    deep  many new random examples (DEEP_EXAMPLES per test, a fresh seed each run): run it before submitting,
          `HYPOTHESIS_PROFILE=deep pytest` on the files with `@given`, and keep every failure it finds as an
          explicit @example, so that CI's fixed draw tries it forever after

A test that sets its own `max_examples=n` (a fuzz test that must stay quick in CI) asks `examples(n)` instead: n in
ci and dev; in deep, ten times more up to DEEP_EXAMPLES (never fewer than n).
"""

import os

from hypothesis import HealthCheck, settings

DEEP_EXAMPLES = 500
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=25, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=DEEP_EXAMPLES, deadline=None, derandomize=False, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])


def examples(n: int) -> int:
    """The example count of a test that would draw `n` in CI (see the module docstring)."""
    return max(n, min(DEEP_EXAMPLES, 10 * n)) if PROFILE == "deep" else n
