"""Skeletons: the reference source with the assignment's function bodies replaced by a TODO.

The reference is minisink's own file (assignments 1-4) or a file of solutions/ (5-7). A skeleton keeps the
signatures, the docstrings of the functions to write (they say what to compute, with shapes; never how) and the
rest of the file; the module docstring of a library file is replaced by a short header, because it explains the
solution. Relative imports become absolute (`from minisink.cache import ...`), so the file runs from any folder.
`write` never replaces a student's edited file unless asked to (`force`), and says what it replaced."""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

from ..atomic import atomic_write
from . import DOCS, PACKAGE


def _find(tree: ast.Module, qualname: str) -> ast.FunctionDef:
    """The def of `name` or `Class.method` at the top level of a module."""
    *cls, name = qualname.split(".")
    body = tree.body
    if cls:
        body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls[0]).body
    return next(n for n in body if isinstance(n, ast.FunctionDef) and n.name == name)


def stub_source(source: str, qualnames: list[str], hints: dict[str, str] | None = None) -> str:
    """`source` with the body of every function in `qualnames` replaced by `raise NotImplementedError("TODO: ...")`.

    The signature and the docstring stay; relative imports become absolute."""
    lines = source.splitlines(keepends=True)
    tree = ast.parse(source)
    stubs = []
    for qualname in qualnames:
        fn = _find(tree, qualname)
        body = fn.body
        has_doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str)
        first = body[0].end_lineno if has_doc else fn.body[0].lineno - 1  # last line kept (1-based)
        if not has_doc and fn.lineno == body[0].lineno:
            raise ValueError(f"{qualname}: a one-line def cannot be stubbed")
        indent = " " * body[0].col_offset
        hint = textwrap.fill((hints or {}).get(qualname, ""), 116 - len(indent), initial_indent=indent + "# ",
                             subsequent_indent=indent + "# ")
        stub = (hint + "\n" if hint else "") + f'{indent}raise NotImplementedError("TODO: {qualname}")\n'
        stubs.append((first, fn.end_lineno, stub))
    for first, last, stub in sorted(stubs, reverse=True):  # bottom up, so earlier line numbers stay valid
        lines[first:last] = [stub]
    return absolute_imports("".join(lines))


def absolute_imports(source: str) -> str:
    return re.sub(r"^from \.(\w*)", lambda m: f"from minisink{'.' + m.group(1) if m.group(1) else ''}",
                  source, flags=re.MULTILINE)


def skeleton_text(a, file: str, solution: bool) -> str:
    """The text of one of assignment `a`'s files: the reference (`solution`) or the skeleton."""
    source = (a.source / file).read_text(encoding="utf-8")
    if solution:
        return absolute_imports(source)
    text = stub_source(source, a.todo[file], a.hints)
    if a.source == PACKAGE:  # a copy of minisink's own file: its module docstring explains the solution
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


def write(a, folder, solution: bool = False, force: bool = False) -> list[tuple[Path, str]]:
    """Write assignment `a`'s files (skeleton or reference) and its text into `folder` -> [(path, what happened)]:
    "wrote", "unchanged", or "replaced" (only with `force`). Without `force`, a file that exists and differs from
    what would be written (a student's work, most likely) is never replaced: ValueError, naming every such file."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file: give a folder for the assignment's files")
    texts = {file: skeleton_text(a, file, solution) for file in a.todo}
    doc = DOCS / a.doc
    texts["README.md"] = doc.read_text(encoding="utf-8") if doc.is_file() else \
        f"# Assignment {a.number}: {a.title}\n\nSee docs/assignments/{a.doc} in the minisink repository.\n"
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
