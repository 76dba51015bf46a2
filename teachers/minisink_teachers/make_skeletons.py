"""Write minisink/assignments/skeletons/ from the solutions here: python -m minisink_teachers.make_skeletons"""

from __future__ import annotations

from pathlib import Path

from minisink import assignments
from minisink.assignments.skeleton import make_skeleton

SOLUTIONS = Path(__file__).resolve().parent / "solutions"


def main() -> None:
    for a in assignments.ASSIGNMENTS.values():
        if a.library:
            continue
        for file in a.todo:
            path = assignments.SKELETONS / file
            path.write_text(make_skeleton(a, file, (SOLUTIONS / file).read_text(encoding="utf-8")), encoding="utf-8")
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
