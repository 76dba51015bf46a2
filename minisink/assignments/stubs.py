"""Stubbing: a source file with some function bodies replaced by a raise, signatures and docstrings kept.

Used twice: for a student's skeleton (the body raises `NotImplementedError("TODO: name")`) and, in the child that
runs a student's code (sandbox.py), for the minisink files that hold what is graded (the library's answer is never
compiled there). Imports nothing of minisink: the child loads this file by path before minisink is imported.
"""

from __future__ import annotations

import ast
import re
import textwrap


def _find(tree: ast.Module, qualname: str) -> list[ast.FunctionDef]:
    """The def of `name` or `Class.method` at the top level of a module; for a class name, every method in it."""
    *cls, name = qualname.split(".")
    body = tree.body
    if cls:
        body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls[0]).body
    node = next(n for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name)
    if isinstance(node, ast.ClassDef):
        return [n for n in node.body if isinstance(n, ast.FunctionDef)]
    return [node]


def stub_source(source: str, qualnames: list[str], hints: dict[str, str] | None = None,
                todo: str = "TODO: {}") -> str:
    """`source` with the body of every function in `qualnames` (a class name: all its methods) replaced by
    `raise NotImplementedError(todo.format(qualname))`. The signature and the docstring stay; relative imports
    become absolute."""
    lines = source.splitlines(keepends=True)
    tree = ast.parse(source)
    stubs = []
    for qualname in qualnames:
        for fn in _find(tree, qualname):
            name = qualname if fn.name == qualname.split(".")[-1] else f"{qualname}.{fn.name}"
            body = fn.body
            has_doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str)
            first = body[0].end_lineno if has_doc else fn.body[0].lineno - 1  # last line kept (1-based)
            if not has_doc and fn.lineno == body[0].lineno:
                raise ValueError(f"{name}: a one-line def cannot be stubbed")
            indent = " " * body[0].col_offset
            hint = textwrap.fill((hints or {}).get(name, ""), 116 - len(indent), initial_indent=indent + "# ",
                                 subsequent_indent=indent + "# ")
            stub = (hint + "\n" if hint else "") + f'{indent}raise NotImplementedError("{todo.format(name)}")\n'
            stubs.append((first, fn.end_lineno, stub))
    for first, last, stub in sorted(stubs, reverse=True):  # bottom up, so earlier line numbers stay valid
        lines[first:last] = [stub]
    return absolute_imports("".join(lines))


def absolute_imports(source: str) -> str:
    return re.sub(r"^from \.(\w*)", lambda m: f"from minisink{'.' + m.group(1) if m.group(1) else ''}",
                  source, flags=re.MULTILINE)
