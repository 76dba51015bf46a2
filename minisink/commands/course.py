"""`minisink assignment`: the course's assignments (docs/assignments/), written out and graded."""

from __future__ import annotations


def add_assignment(sub):
    p = sub.add_parser("assignment", help="course assignments: write a skeleton, grade students' files",
                       description="new N DIR: the assignment's source file(s) with the functions to write stubbed "
                                   "out, and its text; grade N DIR [DIR ...]: every check, PASS/FAIL/SKIP, exit code "
                                   "0 iff every check ran and passed")
    p.add_argument("action", choices=["new", "grade"])
    p.add_argument("number", type=int, help="the assignment: 1 RMSNorm + RoPE, 2 GQA attention + KV cache, "
                                            "3 ring buffer with sinks, 4 positions within the cache, "
                                            "5 banded masks, 6 sink logit, 7 TOVA/H2O eviction")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="the student's folder (grade: one or more)")
    p.add_argument("--solution", action="store_true", help="new: write the reference bodies instead of TODOs")
    p.add_argument("--force", action="store_true", help="new: replace files that differ (a student's work is lost)")
    p.add_argument("--csv", metavar="FILE", help="grade: also write submission,check,result,message rows here")
    p.add_argument("--time-limit", type=float, default=60.0, metavar="SECONDS",
                   help="grade: wall-clock limit per check (default 60)")
    p.add_argument("--memory-limit", type=int, default=2048, metavar="MB",
                   help="grade: address-space limit of the process running the student's code (default 2048)")
    p.set_defaults(func=cmd_assignment)


def cmd_assignment(args):
    from .. import assignments
    from ..assignments.grading import Limits

    try:
        if args.action == "new":
            if len(args.dirs) != 1:
                raise ValueError("new writes one folder: give exactly one DIR")
            for path, what in assignments.new(args.number, args.dirs[0], solution=args.solution, force=args.force):
                print(f"{what} {path}" + (" (your previous version is gone)" if what == "replaced" else ""))
            if not args.solution:
                print(f"implement the TODOs, then: minisink assignment grade {args.number} {args.dirs[0]}")
            return
        limits = Limits(seconds=args.time_limit, memory_mb=args.memory_limit)
        ok = assignments.grade_class(args.number, args.dirs, csv_path=args.csv, limits=limits)
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    if not ok:
        raise SystemExit(1)
