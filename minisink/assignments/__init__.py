"""Course assignments: write a skeleton for a student, grade the student's files with the checks the reference passes.

    minisink assignment new 3 hw3/               hw3/cache.py (SinkCache's methods raise NotImplementedError),
                                                 README.md (the text) and ANSWERS.md (the written questions)
    minisink assignment new 3 key/ --solution    the reference files (5-8: needs the teachers' package)
    minisink assignment grade 3 hw3/ [--student ID]          points per check and a total; exit 0 iff all ran passed
    minisink assignment grade 3 class/*/ --csv grades.csv    a class: one row per student (id, points, total, ...)

What it does. A skeleton is a source file in which the bodies of the assignment's functions and methods are
replaced by `raise NotImplementedError("TODO: name")` (signatures and docstrings kept). For assignments 1-4 it is
made from minisink's own file (the chapters teach that code: the library is the answer, in plain sight); for 5-8
it ships in skeletons/, made from the reference solutions, which do not ship: they, the answers to the written
questions and the hidden checks are the teachers' package (teachers/ in the repository, `pip install ./teachers`).
Grading runs the student's files in a child process that never holds an answer (sandbox.py) and computes every
expected value, and every verdict, in the grader (grading.py). Each assignment's checks are one module.

What it does not: stop a student who copies minisink's own source (the library is public), or contain a hostile
file the way a container would. docs/assignments/TEACHERS.md says what is checked, how, and what is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import minisink

PACKAGE = Path(minisink.__file__).resolve().parent
SKELETONS = Path(__file__).resolve().parent / "skeletons"  # assignments 5-8: made from the teachers' solutions
DOCS = PACKAGE.parent / "docs" / "assignments"  # present in a source checkout (and an editable install)
# The minisink modules a child may import: what the tasks need to run a tiny model. Never minisink.reference,
# evaluate, calibrate, anatomy, or the graders (their answers or expected values).
RUNTIME = ("minisink", "minisink.cache", "minisink.config", "minisink.eviction", "minisink.model", "minisink.rope",
           "minisink.spec", "minisink.tiny", "minisink.weights", "minisink.assignments", "minisink.assignments.frames",
           "minisink.assignments.tasks")
EVICTION = ["ScoredCache", "H2OCache", "TOVACache", "SnapKVCache", "snapkv_select"]  # the library's answers to 7


@dataclass(frozen=True)
class Assignment:
    number: int
    title: str
    doc: str  # file name in docs/assignments/
    todo: dict[str, list[str]]  # student file -> the functions / Class.methods whose bodies the student writes
    checks: str  # the module of minisink.assignments with its CHECKS (run in the grader)
    minutes: tuple[int, int]  # a student's time, measured by solving it from the skeleton (TEACHERS.md)
    library: bool = True  # True: the student's files are copies of minisink's own (1-4); else in skeletons/
    forbidden_names: tuple[str, ...] = ()  # other library objects that answer the assignment (stubbed in the child)
    forbidden_modules: tuple[str, ...] = ()  # library modules a submission may not import
    stubbed: dict[str, list[str]] | None = None  # minisink file -> more the child loads stubbed (besides todo)
    hints: dict[str, str] | None = None  # Class.method -> a comment put above its TODO (what, never how)
    given: tuple[str, ...] = ()  # functions of the student's file the tasks call that are not graded

    def stubbed_modules(self) -> dict[str, list[str]]:
        """minisink module name -> the definitions the child compiles with a raising body."""
        files = {f: list(q) for f, q in self.todo.items()} if self.library else {}
        for f, q in (self.stubbed or {}).items():
            files[f] = files.get(f, []) + q
        return {f"minisink.{Path(f).stem}": q for f, q in files.items()}


ASSIGNMENTS = {a.number: a for a in [
    Assignment(1, "RMSNorm and RoPE", "01-rmsnorm-rope.md",
               {"model.py": ["rms_norm"], "rope.py": ["rotation", "apply_rope"]}, "a1_rmsnorm_rope", (90, 120),
               stubbed={"eviction.py": ["ScoredCache._rotate_to_rank"]}),  # RoPE written out for rotated ranks
    Assignment(2, "GQA attention with a KV cache", "02-attention-kv-cache.md",
               {"model.py": ["attention"], "cache.py": ["FullCache.begin", "FullCache.blocks", "FullCache.end"]},
               "a2_attention_kv_cache", (180, 240),
               hints={"FullCache.begin": "Once per chunk of T new tokens: plan where they go and what each of them "
                      "may see; return the rotation at their positions. Change nothing the cache holds until end()."}),
    Assignment(3, "the ring buffer with pinned sinks", "03-ring-buffer.md",
               {"cache.py": ["SinkCache.begin", "SinkCache.blocks", "SinkCache.end", "SinkCache.retained"]},
               "a3_ring_buffer", (180, 300),
               hints={"SinkCache.begin": "Once per chunk of T new tokens: plan which become sinks and which go to "
                      "the window, and what each query may see; return the rotation of the new tokens. Assignment 3 "
                      "grades renumber=False (set self.sink_rotation = None); assignment 4 does the rest. The "
                      "library's decode shortcuts (self.decode_slot, self.one_block) are optional: set them to "
                      "None and False."}),
    Assignment(4, "positions within the cache", "04-cache-positions.md",
               {"cache.py": ["SinkCache.begin"]}, "a4_cache_positions", (60, 120),
               hints={"SinkCache.begin": "Your begin from assignment 3, now for renumber=True as well: "
                      "self.sink_rotation is a Rotation, or None when no query needs one."}),
    Assignment(5, "the streaming evaluator's banded masks", "05-banded-masks.md",
               {"banded.py": ["banded_visibility", "token_nll"]}, "a5_banded_masks", (90, 120), library=False),
    Assignment(6, "attention with a sink logit", "06-sink-logit.md",
               {"sink_attention.py": ["sink_attention"]}, "a6_sink_logit", (60, 120), library=False,
               forbidden_names=("attention",), stubbed={"model.py": ["attention"]}),
    Assignment(7, "an eviction policy behind the cache interface: H2O", "07-eviction.md",
               {"h2o.py": ["H2OCache.begin", "H2OCache.blocks", "H2OCache.observe", "H2OCache.end",
                           "H2OCache._keep", "H2OCache.retained"]}, "a7_eviction", (180, 240), library=False,
               forbidden_modules=("minisink.eviction",), stubbed={"eviction.py": EVICTION}),
    Assignment(8, "calibrating a sink logit and a sink value", "08-calibration.md",
               {"calibration.py": ["sink_scores", "sigma_lme", "sigma_mass", "sink_value"]}, "a8_calibration",
               (120, 180), library=False, given=("calibrate",)),
    Assignment(9, "the backward pass of attention", "09-attention-backward.md",
               {"attention_backward.py": ["attention_backward"]}, "a9_attention_backward", (120, 180),
               library=False),
]}


def get(number: int) -> Assignment:
    if number not in ASSIGNMENTS:
        raise ValueError(f"there is no assignment {number}: choose one of {', '.join(map(str, ASSIGNMENTS))}")
    return ASSIGNMENTS[number]


def grade(number: int, folders, *, student: str | None = None, csv_path=None, out=print, limits=None) -> bool:
    """Grade each folder (one report each; the student id is `student`, or the folder's name, and seeds the
    checks' random inputs) and, with `csv_path`, write one row per student. True iff every submission passed
    every check that could run here."""
    from .grading import Limits, grade_submission, report, write_csv

    a, grades = get(number), []
    folders = list(folders)
    if student is not None and len(folders) != 1:
        raise ValueError("--student names one student: give exactly one DIR (a class is graded by folder name)")
    if csv_path is not None and (Path(csv_path).is_dir() or not Path(csv_path).parent.is_dir()):
        raise ValueError(f"--csv {csv_path}: give a file name in an existing folder (checked before grading)")
    for folder in folders:
        g = grade_submission(a, folder, limits or Limits(), student)
        report(g, out)
        grades.append(g)
    if csv_path:
        out(f"wrote {write_csv(grades, csv_path)}")
    return all(g.ok for g in grades)


def new(number: int, folder, solution: bool = False, force: bool = False) -> list[Path]:
    """Write assignment `number`'s skeleton (or, with `solution`, the reference files) and its text into `folder`.
    Refuses to replace a file that differs from what it would write, unless `force` (skeleton.py)."""
    from .skeleton import write

    return write(get(number), folder, solution, force)
