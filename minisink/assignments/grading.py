"""Grading: read the student's files, run every check against a child process that holds their code, report.

What it does, for one submission (a folder):
1. reads the student's files as text and checks them with `ast` (nothing of theirs runs in this process): every
   graded function or class is defined in its file, with the graded methods in the class body, and no file
   imports minisink's own implementation of what is graded, the grader's oracles, or code at run time
   (exec, eval, __import__, importlib, sys.modules);
2. starts the child (sandbox.py) under a memory limit and a CPU-time limit, and gives every check a wall-clock
   deadline. A check that the child cannot answer (it raised, exited, crashed, ran out of time or memory) FAILs
   with what happened; the next check gets a fresh child;
3. runs the checks here: their oracles and comparisons never touch an object the student's code could change.
A check passes only by running and matching; SKIP (an optional oracle is missing) is reported and is not a pass:
`grade` is True only when every check ran and passed.

What it does not: stop a student who copies minisink's source into their file (the library is the reference, in
plain sight), or contain a file that attacks the machine (see sandbox.py).
"""

from __future__ import annotations

import ast
import csv
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import minisink

from ..atomic import atomic_write
from .common import Fail, Run, Skip
from .sandbox import decode, encode

ROOT = Path(minisink.__file__).resolve().parent.parent  # the folder minisink is imported from (for the child)
LOG_BYTES = 64 * 2**20  # the largest file the child may write (its log of the student's prints included)
DYNAMIC = {"exec", "eval", "compile", "__import__", "importlib", "runpy", "reload"}


@dataclass(frozen=True)
class Limits:
    """Per submission: each check's wall-clock time, and the child's address space."""

    seconds: float = 60.0
    memory_mb: int = 2048

    def __post_init__(self):
        if not (self.seconds > 0 and self.seconds < 1e6):
            raise ValueError(f"the time limit must be a positive number of seconds, got {self.seconds}")
        if not 64 <= self.memory_mb <= 2**20:
            raise ValueError(f"the memory limit must be 64 MB or more, got {self.memory_mb}")


@dataclass
class Result:
    check: str
    result: str  # PASS, FAIL or SKIP
    message: str = ""


# --- 1. the student's source, read as text -------------------------------------------------------------------------

def _module_of(node) -> str | None:
    """'minisink.cache' for `from minisink.cache import ...` / `import minisink.cache`; None otherwise."""
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return node.module
    return None


def inspect_source(a, file: str, source: str) -> list[str]:
    """Problems in one student file, found without running it (see the module docstring, step 1)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        return [f"{file} line {e.lineno}: SyntaxError: {e.msg}"]
    problems = []
    graded = {q.split(".")[0] for qs in a.todo.values() for q in qs}
    own = a.todo.get(file, [])
    defined_here = {q.split(".")[0] for q in own}
    forbidden_names = set(a.forbidden_names) | defined_here
    closed = ("minisink.reference", "minisink.assignments", *a.forbidden_modules)
    minisink_aliases = set()  # local names bound to minisink modules (import minisink.cache as c -> c)
    for node in ast.walk(tree):
        line = f"{file} line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "minisink" or alias.name.startswith("minisink."):
                    minisink_aliases.add(alias.asname or alias.name.split(".")[0])
                if any(alias.name == c or alias.name.startswith(c + ".") for c in closed):
                    problems.append(f"{line}: imports {alias.name}, the grader's reference (not allowed)")
                if alias.name.split(".")[0] in DYNAMIC:
                    problems.append(f"{line}: imports {alias.name} (code loaded at run time is not allowed)")
        elif isinstance(node, ast.ImportFrom):
            module = _module_of(node) or ""
            if module.split(".")[0] in DYNAMIC:
                problems.append(f"{line}: imports from {module} (code loaded at run time is not allowed)")
            if module == "minisink" or module.startswith("minisink."):
                for alias in node.names:
                    full = f"{module}.{alias.name}"
                    if any(full == c or full.startswith(c + ".") or module == c or module.startswith(c + ".")
                           for c in closed):
                        problems.append(f"{line}: imports {full}, the grader's reference (not allowed)")
                    elif alias.name in forbidden_names:
                        problems.append(f"{line}: imports {alias.name} from {module}: that is minisink's own "
                                        f"{alias.name}, the answer being graded; write your own")
                    elif alias.name != "*" and f"{module}.{alias.name}" in {f"minisink.{m}" for m in _modules()}:
                        minisink_aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.Name) and node.id in DYNAMIC:
            problems.append(f"{line}: uses {node.id} (code loaded at run time is not allowed)")
        elif isinstance(node, ast.Attribute) and node.attr == "modules" and isinstance(node.value, ast.Name) \
                and node.value.id == "sys":
            problems.append(f"{line}: uses sys.modules (not allowed in a graded file)")
    for node in ast.walk(tree):  # minisink.cache.SinkCache, c.SinkCache with c a minisink module
        if isinstance(node, ast.Attribute) and node.attr in graded | set(a.forbidden_names):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in minisink_aliases:
                problems.append(f"{file} line {node.lineno}: uses minisink's own {node.attr}, the answer being "
                                f"graded; write your own")
    problems += _check_definitions(file, tree, own, minisink_aliases)
    return problems


def _modules() -> set[str]:
    return {p.stem for p in Path(minisink.__file__).parent.glob("*.py")} | {"assignments"}


def _check_definitions(file: str, tree: ast.Module, qualnames: list[str], minisink_aliases: set[str]) -> list[str]:
    """Each graded name is defined once at the top level by def/class (never rebound), graded methods in the body,
    no base class taken from minisink."""
    problems = []
    for top in dict.fromkeys(q.split(".")[0] for q in qualnames):
        binds = [n for n in tree.body if top in _bound_names(n)]
        defs = [n for n in binds if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == top]
        if not defs:
            problems.append(f"{file}: no top-level `def {top}` or `class {top}` (the grader takes {top} from here)")
            continue
        if len(binds) > 1:
            problems.append(f"{file} line {binds[-1].lineno}: {top} is bound again after its definition")
        node = defs[0]
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                root = base
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in minisink_aliases | {"minisink"}:
                    problems.append(f"{file} line {node.lineno}: class {top} derives from minisink's own code")
            methods = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            for q in qualnames:
                if q.startswith(top + ".") and q.split(".")[1] not in methods:
                    problems.append(f"{file}: class {top} has no `def {q.split('.')[1]}` in its body")
    for node in ast.walk(tree):  # SinkCache.begin = ... anywhere
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
        for t in targets:
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and \
                    t.value.id in {q.split(".")[0] for q in qualnames}:
                problems.append(f"{file} line {node.lineno}: {t.value.id}.{t.attr} is replaced after its definition")
    return problems


def _bound_names(node) -> set[str]:
    """Names a top-level statement binds."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {a.asname or a.name.split(".")[0] for a in node.names}
    names = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            names.add(n.id)
    return names


def inspect_submission(a, folder: Path) -> list[str]:
    problems = []
    for file in a.todo:
        path = folder / file
        if not path.is_file():
            problems.append(f"{path} is missing (minisink assignment new {a.number} {folder} writes it)")
            continue
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            problems.append(f"{path} cannot be read: {e}")
            continue
        problems += inspect_source(a, file, source)
    return problems


# --- 2. the child --------------------------------------------------------------------------------------------------

class ChildGone(Exception):
    """The child cannot answer: it exited, crashed, timed out, or broke the protocol."""


class StudentError(Exception):
    """The student's code raised; the message says where and what."""


class Child:
    """One child process holding the student's code (sandbox.py), with limits."""

    def __init__(self, a, folder: Path, limits: Limits, log_dir: Path):
        self.limits, self.folder = limits, folder
        memory = limits.memory_mb * 2**20
        cpu = int(limits.seconds * (len(a_checks(a)) + 1)) + 1  # CPU seconds over the child's whole life

        def limit():  # in the child, before Python starts: hard limits it cannot raise
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            resource.setrlimit(resource.RLIMIT_FSIZE, (LOG_BYTES, LOG_BYTES))  # endless printing fills no disk

        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   PYTHONDONTWRITEBYTECODE="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1")
        self.log = open(log_dir / f"child-{time.monotonic_ns()}.log", "w+b")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "minisink.assignments.sandbox", str(a.number), str(folder)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, cwd=log_dir, env=env,
            preexec_fn=limit, start_new_session=True)
        os.set_blocking(self.process.stdin.fileno(), False)  # writes wait in select(), under the deadline

    def hello(self) -> dict:
        """Wait for the child to import the student's files; -> its report (origins), or ChildGone."""
        header, _ = self._receive(time.monotonic() + self.limits.seconds, "while importing your files")
        if not header.get("ok"):
            raise StudentError(str(header.get("error")))
        return header

    def call(self, request: Run, deadline: float) -> dict:
        arrays = {k: v for k, v in request.inputs.items() if isinstance(v, np.ndarray)}
        params = {k: v for k, v in request.inputs.items() if not isinstance(v, np.ndarray)}
        frame = memoryview(encode({"task": request.task, "params": params}, arrays))
        fd = self.process.stdin.fileno()
        while frame:  # a child that stops reading cannot block the grader past the deadline
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                self.kill()
                raise ChildGone(f"timed out: the grading process took no input for {self.limits.seconds:g} s")
            try:
                frame = frame[os.write(fd, frame[:1 << 16]):]
            except BlockingIOError:
                continue
            except OSError:
                raise ChildGone(self._death("before this check")) from None
        header, outputs = self._receive(deadline, "during this check")
        if not header.get("ok"):
            raise StudentError(str(header.get("error")))
        return outputs

    def _receive(self, deadline: float, when: str):
        fd = self.process.stdout.fileno()

        def read(n):
            chunks, got = [], 0
            while got < n:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    self.kill()
                    raise ChildGone(f"timed out: no answer within {self.limits.seconds:g} s {when} "
                                    f"(an endless loop? a very slow implementation?)")
                chunk = os.read(fd, min(n - got, 1 << 20))
                if not chunk:
                    raise ChildGone(self._death(when))
                chunks.append(chunk)
                got += len(chunk)
            return b"".join(chunks)

        try:
            return decode(read)
        except ChildGone:
            raise
        except Exception as e:  # noqa: BLE001: whatever the child sent, the grader goes on
            self.kill()
            raise ChildGone(f"the grading process sent something unreadable {when} ({e}): did your code write "
                            f"to standard output's file descriptor directly?") from e

    def _death(self, when: str) -> str:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.process.wait()
        if code < 0:
            name = signal.Signals(-code).name
            why = {"SIGXCPU": "the CPU time limit", "SIGKILL": "killed (out of time or memory)",
                   "SIGXFSZ": f"it wrote more than {LOG_BYTES // 2**20} MB (printing in a loop?)",
                   "SIGSEGV": "a crash (segmentation fault)"}.get(name, name)
            what = f"the grading process was stopped by {name} {when}: {why}"
        else:
            what = f"the grading process ended with exit code {code} {when}: graded code must return, not exit"
        last = self._log_tail()
        return what + (f" (last output: {last})" if last else "")

    def _log_tail(self) -> str:
        self.log.flush()
        self.log.seek(0)
        lines = [line.strip() for line in self.log.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1][:200] if lines else ""

    def kill(self):
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # its whole session: it may have started others
            except ProcessLookupError:
                pass
        self.process.wait()

    def close(self):
        for f in (self.process.stdin, self.process.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.kill()
        self.log.close()


def a_checks(a) -> list:
    import importlib

    return importlib.import_module(f"minisink.assignments.{a.checks}").CHECKS


# --- 3. the checks, here -------------------------------------------------------------------------------------------

def run_check(check, child: Child, seconds: float):
    """Drive one check: send each request it yields to the child, hand the outputs back, until it returns (a
    pass) or raises (Fail, Skip, StudentError, ChildGone). All its requests share one deadline."""
    deadline = time.monotonic() + seconds
    gen = check()
    try:
        request = next(gen)
        while True:
            request = gen.send(child.call(request, deadline))
    except StopIteration:
        pass


def grade_submission(a, folder, limits: Limits = Limits()) -> list[Result]:
    """Every check of assignment `a` on the files in `folder` -> one Result per check (and per problem found
    before any check could run)."""
    folder = Path(folder).resolve()
    checks = a_checks(a)
    problems = inspect_submission(a, folder)
    if problems:
        return [Result("the files can be graded", "FAIL", p) for p in problems] + \
               [Result(title, "FAIL", "not run: fix the problem(s) above first") for title, _ in checks]
    results = []
    with tempfile.TemporaryDirectory(prefix="minisink-grade-") as tmp:
        child, refusal = None, None
        for title, check in checks:
            if refusal:
                results.append(Result(title, "FAIL", refusal))
                continue
            if child is None:  # a fresh child: it imports the student's files and says where each graded piece is
                child = Child(a, folder, limits, Path(tmp))
                try:
                    refusal = _origins_refused(a, folder, child.hello())
                except (StudentError, ChildGone) as e:
                    refusal = str(e)
                if refusal:
                    results.append(Result(title, "FAIL", refusal))
                    continue
            try:
                run_check(check, child, limits.seconds)
                results.append(Result(title, "PASS"))
            except Skip as e:
                results.append(Result(title, "SKIP", str(e)))
            except (Fail, StudentError) as e:
                results.append(Result(title, "FAIL", str(e)))
            except ChildGone as e:
                results.append(Result(title, "FAIL", str(e)))
                child.close()
                child = None
            except Exception as e:  # noqa: BLE001: outputs of the wrong kind (a missing name, a list of arrays...)
                results.append(Result(title, "FAIL", f"your outputs could not be checked: {type(e).__name__}: {e}"))
        if child:
            child.close()
    return results


def _origins_refused(a, folder: Path, hello: dict) -> str | None:
    """A message if a graded function or method was not defined in the student's file (e.g. minisink's own)."""
    origins = hello.get("origins") or {}
    for file, qualnames in a.todo.items():
        for q in qualnames:
            where = origins.get(q)
            if not isinstance(where, str) or Path(where).resolve() != (folder / file).resolve():
                return (f"{q} is not defined in your {file} (it comes from {where}): the grader grades your code, "
                        f"not minisink's own")
    return None


def report(a, folder, results: list[Result], out=print) -> bool:
    """Print one line per check and a summary; True iff every check ran and passed."""
    out(f"minisink assignment {a.number}: {a.title}, grading {Path(folder).resolve()}")
    for r in results:
        out(f"  {r.result}  {r.check}" + (f"\n        {r.message}" if r.message else ""))
    passed = sum(r.result == "PASS" for r in results)
    skipped = sum(r.result == "SKIP" for r in results)
    ok = passed == len(results)
    out(f"{passed} of {len(results)} checks passed" + (f", {skipped} skipped (not a pass)" if skipped else "") +
        (": well done" if ok else ""))
    return ok


def write_csv(rows: list[tuple[str, Result]], path) -> Path:
    """submission, check, result, message: one row per check per submission; written to a temporary name, then
    renamed, so the file is never half-written."""
    path = Path(path)
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["submission", "check", "result", "message"])
        writer.writerows([submission, r.check, r.result, r.message] for submission, r in rows)
    return path

