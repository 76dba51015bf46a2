"""Hidden checks: the same properties as the public checks, graded the same way, on inputs that no skeleton, no
public check and no student run shows (seeds base + 500 ..., where the public checks use base ... base + 300).

minisink's grader adds these after the public checks when this package is installed (grading.checks_of), under
titles that start with "hidden:". They run in the grader, like every check; the child never sees this module.
"""

from __future__ import annotations

import importlib

from minisink import assignments

OFFSET = 500  # public checks use seeds base .. base + 300 (see each checks module)


def _shifted(check):
    def hidden(base):
        return check(base + OFFSET)
    return hidden


def _hidden(number: int) -> list:
    """Every check of assignment `number` worth 2 points or more (the ones that tie it together), on new inputs."""
    module = importlib.import_module(f"minisink.assignments.{assignments.get(number).checks}")
    return [(f"{title} (new inputs)", points, _shifted(check)) for title, points, check in module.CHECKS
            if points >= 2]


HIDDEN = {number: _hidden(number) for number in assignments.ASSIGNMENTS}
