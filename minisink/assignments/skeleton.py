"""Skeletons: the reference source with the assignment's function bodies replaced by a TODO, and what goes beside.

For assignments 1-4 the reference is minisink's own file: the skeleton is made from it when it is written, and
its module docstring is replaced by a short header (it explains the solution). For 5-8 the reference solutions
are the teachers' package (teachers/ in the repository): their skeletons ship in skeletons/, made by
`make_skeleton` (tests/test_assignments.py checks that they match the solutions). A skeleton keeps the
signatures, the docstrings of the functions to write (they say what to compute, with shapes; never how) and the
rest of the file. `write` also puts the assignment's text (README.md) and a template for the written answers
(ANSWERS.md) in the folder, and never replaces a student's edited file unless asked to (`force`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ..atomic import atomic_write
from . import DOCS, PACKAGE, SKELETONS
from .stubs import absolute_imports, stub_source


def solutions_dir() -> Path:
    """The teachers' reference solutions of assignments 5-8, or ValueError if the teachers' package is absent."""
    try:
        import minisink_teachers
    except ImportError:
        raise ValueError("the reference solutions of assignments 5-8 are the teachers' download, not part of "
                         "minisink: install it from the repository (pip install ./teachers), see "
                         "docs/assignments/TEACHERS.md") from None
    return Path(minisink_teachers.__file__).resolve().parent / "solutions"


def make_skeleton(a, file: str, source: str) -> str:
    """The skeleton of one of assignment `a`'s files, from the reference `source`."""
    text = stub_source(source, a.todo[file], a.hints)
    if a.library:  # a copy of minisink's own file: its module docstring explains the solution
        tree = ast.parse(text)
        doc = tree.body[0]
        if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str):
            lines = text.splitlines(keepends=True)
            what = ", ".join(a.todo[file])
            header = (f'"""Assignment {a.number} ({a.title}): minisink/{file} with the bodies of {what} to '
                      f'write.\n\nThe module docstring of minisink/{file} is left out here: it describes the '
                      f'solution. README.md, beside this\nfile, has the assignment.\n"""\n')
            text = header + "".join(lines[doc.end_lineno:])
    return text


def skeleton_text(a, file: str, solution: bool) -> str:
    """The text of one of assignment `a`'s files: the reference (`solution`) or the skeleton."""
    if a.library:
        source = (PACKAGE / file).read_text(encoding="utf-8")
        return absolute_imports(source) if solution else make_skeleton(a, file, source)
    if solution:
        return (solutions_dir() / file).read_text(encoding="utf-8")
    return (SKELETONS / file).read_text(encoding="utf-8")


def answers_template(a, doc: str) -> str:
    """ANSWERS.md: the assignment's "Predict, then run" questions, each with room for a prediction, what running
    it showed, and the explanation (what the rubric's explanation part grades)."""
    section = re.search(r"^### Predict, then run\n(.*?)(?=^### |\Z)", doc, flags=re.MULTILINE | re.DOTALL)
    questions = re.findall(r"^(\d+)\. (.*?)(?=^\d+\. |\Z)", section.group(1) if section else "",
                           flags=re.MULTILINE | re.DOTALL)
    out = [f"# Assignment {a.number}: answers to the written questions\n",
           "Write each prediction before you run anything; a wrong prediction with a good explanation of the "
           "surprise is worth full marks.\n"]
    for number, text in questions:
        out.append(f"## Question {number}\n\n> " + "\n> ".join(" ".join(text.split()).split("\n")) +
                   "\n\n**My prediction (before running):**\n\n\n**What running it showed:**\n\n\n"
                   "**Why:**\n\n")
    return "\n".join(out)


def write(a, folder, solution: bool = False, force: bool = False) -> list[tuple[Path, str]]:
    """Write assignment `a`'s files (skeleton or reference), its text and the answers template into `folder` ->
    [(path, what happened)]: "wrote", "unchanged", or "replaced" (only with `force`). Without `force`, a file that
    exists and differs from what would be written (a student's work, most likely) is never replaced: ValueError,
    naming every such file."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file: give a folder for the assignment's files")
    texts = {file: skeleton_text(a, file, solution) for file in a.todo}
    doc = DOCS / a.doc
    texts["README.md"] = doc.read_text(encoding="utf-8") if doc.is_file() else \
        f"# Assignment {a.number}: {a.title}\n\nSee docs/assignments/{a.doc} in the minisink repository.\n"
    texts["ANSWERS.md"] = answers_template(a, texts["README.md"])
    differ = [folder / f for f, text in texts.items()
              if (folder / f).is_file() and (folder / f).read_text(encoding="utf-8", errors="replace") != text]
    if differ and not force:
        raise ValueError(f"{', '.join(map(str, differ))} already exist{'s' * (len(differ) == 1)} and differ"
                         f"{'s' * (len(differ) == 1)} from what `new` writes (your work?): nothing was written. "
                         f"Use another folder, or --force to replace {'it' if len(differ) == 1 else 'them'} "
                         f"(the current content is lost)")
    folder.mkdir(parents=True, exist_ok=True)
    done = []
    for file, text in texts.items():
        path = folder / file
        if path.is_file() and path.read_text(encoding="utf-8", errors="replace") == text:
            done.append((path, "unchanged"))
            continue
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.write(text)
        done.append((path, "replaced" if path in differ else "wrote"))
    return done
