"""Course assignments: write a skeleton for a student, grade the student's files with the checks the reference passes.

    minisink assignment new 3 hw3/               hw3/cache.py (SinkCache's methods raise NotImplementedError) + README
    minisink assignment new 3 hw3/ --solution    the same files with the reference bodies (what a teacher grades first)
    minisink assignment grade 3 hw3/ [more/ ...] PASS/FAIL/SKIP per check; exit code 0 iff every check ran and passed
    minisink assignment grade 3 class/*/ --csv grades.csv     a whole class: submission, check, result, message

What it does. A skeleton is a source file in which the bodies of the assignment's functions and methods are
replaced by `raise NotImplementedError("TODO: name")` (signatures and everything else kept), generated with `ast`
from the reference solution: minisink's own files for assignments 1-4 (so the skeleton never drifts from the code
the chapters teach), small self-contained files in solutions/ for 5-7 (skeleton.py). Grading treats the student's
files as untrusted code: they run in a child process with time and memory limits (sandbox.py), which returns plain
arrays; the oracles and the comparisons run in the grader (grading.py). Each assignment's checks are one module.

What it does not: stop a student who copies minisink's own source (it is the reference, and it is public), or
sandbox the file system. TEACHERS.md in docs/assignments/ says what is checked and how.

The assignments (docs/assignments/ has the text of each):
    1  RMSNorm and RoPE                 model.py: rms_norm; rope.py: rotation, apply_rope
    2  GQA attention with a KV cache    model.py: attention; cache.py: FullCache.begin/blocks/end
    3  the ring buffer with sinks       cache.py: SinkCache.begin/blocks/end/retained (graded at positions in the text)
    4  positions within the cache       cache.py: SinkCache.begin (graded with renumber=True: the sink block's rotation)
    5  the evaluator's banded masks     banded.py: banded_visibility, token_nll
    6  attention with a sink logit      sink_attention.py: sink_attention
    7  eviction by attention (TOVA, H2O) eviction.py: tova_victim, h2o_victim
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import minisink

PACKAGE = Path(minisink.__file__).resolve().parent
SOLUTIONS = Path(__file__).resolve().parent / "solutions"
DOCS = PACKAGE.parent / "docs" / "assignments"  # present in a source checkout (and an editable install)


@dataclass(frozen=True)
class Assignment:
    number: int
    title: str
    doc: str  # file name in docs/assignments/
    todo: dict[str, list[str]]  # student file -> the functions / Class.methods whose bodies the student writes
    checks: str  # the module of minisink.assignments with its CHECKS (run in the grader) and TASKS (in the child)
    source: Path = PACKAGE  # where the reference files are: minisink itself, or SOLUTIONS
    forbidden_names: tuple[str, ...] = ()  # other library objects that answer the assignment (stood in for)
    forbidden_modules: tuple[str, ...] = ()  # library modules a submission may not import
    hints: dict[str, str] | None = None  # Class.method -> a comment put above its TODO (what, never how)


ASSIGNMENTS = {a.number: a for a in [
    Assignment(1, "RMSNorm and RoPE", "01-rmsnorm-rope.md",
               {"model.py": ["rms_norm"], "rope.py": ["rotation", "apply_rope"]}, "a1_rmsnorm_rope"),
    Assignment(2, "GQA attention with a KV cache", "02-attention-kv-cache.md",
               {"model.py": ["attention"], "cache.py": ["FullCache.begin", "FullCache.blocks", "FullCache.end"]},
               "a2_attention_kv_cache",
               hints={"FullCache.begin": "Once per chunk of T new tokens: plan where they go and what each of them "
                      "may see; return the rotation at their positions. Change nothing the cache holds until end()."}),
    Assignment(3, "the ring buffer with pinned sinks", "03-ring-buffer.md",
               {"cache.py": ["SinkCache.begin", "SinkCache.blocks", "SinkCache.end", "SinkCache.retained"]},
               "a3_ring_buffer",
               hints={"SinkCache.begin": "Once per chunk of T new tokens: plan which become sinks and which go to "
                      "the window, and what each query may see; return the rotation of the new tokens. Assignment 3 "
                      "grades renumber=False (set self.sink_rotation = None); assignment 4 does the rest. The "
                      "library's decode shortcuts (self.decode_slot, self.one_block) are optional: set them to "
                      "None and False."}),
    Assignment(4, "positions within the cache", "04-cache-positions.md",
               {"cache.py": ["SinkCache.begin"]}, "a4_cache_positions",
               hints={"SinkCache.begin": "Your begin from assignment 3, now for renumber=True as well: "
                      "self.sink_rotation is a Rotation, or None when no query needs one."}),
    Assignment(5, "the streaming evaluator's banded masks", "05-banded-masks.md",
               {"banded.py": ["banded_visibility", "token_nll"]}, "a5_banded_masks", source=SOLUTIONS),
    Assignment(6, "attention with a sink logit", "06-sink-logit.md",
               {"sink_attention.py": ["sink_attention"]}, "a6_sink_logit", source=SOLUTIONS,
               forbidden_names=("attention",)),
    Assignment(7, "eviction by attention: TOVA and H2O", "07-eviction.md",
               {"eviction.py": ["tova_victim", "h2o_victim"]}, "a7_eviction", source=SOLUTIONS,
               forbidden_modules=("minisink.eviction",)),
]}


def get(number: int) -> Assignment:
    if number not in ASSIGNMENTS:
        raise ValueError(f"there is no assignment {number}: choose one of {', '.join(map(str, ASSIGNMENTS))}")
    return ASSIGNMENTS[number]


def grade(number: int, folder, out=print, limits=None) -> bool:
    """Grade one student's folder and print the report; True iff every check ran and passed."""
    from .grading import Limits, grade_submission, report

    a = get(number)
    return report(a, folder, grade_submission(a, folder, limits or Limits()), out)


def grade_class(number: int, folders, csv_path=None, out=print, limits=None) -> bool:
    """Grade several folders (one report each) and, with `csv_path`, write every result into one CSV."""
    from .grading import Limits, grade_submission, report, write_csv

    a, rows, all_ok = get(number), [], True
    for folder in folders:
        results = grade_submission(a, folder, limits or Limits())
        all_ok &= report(a, folder, results, out)
        rows += [(str(folder), r) for r in results]
    if csv_path:
        out(f"wrote {write_csv(rows, csv_path)}")
    return all_ok


def new(number: int, folder, solution: bool = False, force: bool = False) -> list[Path]:
    """Write assignment `number`'s skeleton (or, with `solution`, the reference files) and its text into `folder`.
    Refuses to replace a file that differs from what it would write, unless `force` (skeleton.py)."""
    from .skeleton import write

    return write(get(number), folder, solution, force)
