"""Grading: read the student's files, run every check against a child process that holds their code, report.

What it does, for one submission (a folder):
1. reads the student's files as text and checks them with `ast` (nothing of theirs runs in this process): every
   graded function or class is defined in its file, with the graded methods in the class body, and no file
   imports minisink's own implementation of what is graded, a minisink module the child does not offer (the
   references, the evaluator, the calibration, the graders) or code at run time (exec, eval, __import__,
   importlib, sys.modules);
2. starts the child (sandbox.py) under a memory limit and a CPU-time limit, with pipes for its input and output,
   its printing going to a log file, and none of the grader's terminal among its files; it holds no answer (the
   graded library code is compiled there with raising bodies) and refuses processes, files, ctypes and run-time
   code. Every check has a wall-clock deadline. A check the child cannot answer (it raised, exited, crashed, ran
   out of time or memory) FAILs with what happened; the next check gets a fresh child;
3. runs the checks here: their inputs, their expected values (oracles) and their comparisons never touch an
   object the student's code could reach. The inputs come from seeds derived from the student's id (`--student`,
   or the folder's name), so each student's numbers differ and a failure can be reproduced;
4. after each child, ends every process the submission started: this process is a child subreaper (Linux
   prctl PR_SET_CHILD_SUBREAPER), so a double fork and setsid() leaves the orphan here, where it is found and
   killed. A submission that left one running gets no points (its grade is marked invalid);
5. only then reports, and writes the CSV (atomically: a temporary file renamed).
A check that passes earns its points; SKIP (an optional oracle, torch, is not installed here) earns none and
costs none: the total counts only the checks that ran, and the report names the ones that did not.

What it does not: stop a student who copies minisink's source into their file (the library is the reference, in
plain sight), or stand in for a container (see sandbox.py and docs/assignments/TEACHERS.md).
"""

from __future__ import annotations

import ast
import csv
import ctypes
import hashlib
import json
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import minisink

from ..atomic import atomic_write
from . import PACKAGE, RUNTIME
from .common import Fail, Run, Skip
from .frames import decode, encode

ROOT = PACKAGE.parent  # the folder minisink is imported from (for the child)
SANDBOX = Path(__file__).resolve().parent / "sandbox.py"
LOG_BYTES = 64 * 2**20  # the largest file the child may write (its log of the student's prints included)
SHOWN_LINES = 8  # the last lines of a submission's own output shown in its report
DYNAMIC = {"exec", "eval", "compile", "__import__", "importlib", "runpy", "reload"}
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


@dataclass(frozen=True)
class Limits:
    """Per submission: each check's wall-clock time, and the child's address space."""

    seconds: float = 60.0
    memory_mb: int = 2048

    def __post_init__(self):
        if not (self.seconds > 0 and self.seconds < 1e6):
            raise ValueError(f"the time limit must be a positive number of seconds, got {self.seconds} "
                             f"(--time-limit)")
        if not 64 <= self.memory_mb <= 2**20:
            raise ValueError(f"the memory limit must be 64 MB or more, got {self.memory_mb} (--memory-limit)")


@dataclass
class Result:
    check: str
    result: str  # PASS, FAIL or SKIP
    message: str = ""
    points: int = 1  # what the check is worth; earned only by a PASS


@dataclass
class Grade:
    """One submission's grade: every check's result, the submission's own output, and whether it is valid."""

    student: str
    assignment: int
    title: str
    folder: Path
    seed: int
    results: list[Result] = field(default_factory=list)
    output: list[str] = field(default_factory=list)  # the last lines the submission printed (its own, labelled)
    invalid: str = ""  # why the grade is void (a process the submission started outlived it)

    @property
    def points(self) -> int:
        return 0 if self.invalid else sum(r.points for r in self.results if r.result == "PASS")

    @property
    def total(self) -> int:
        return sum(r.points for r in self.results if r.result != "SKIP")

    @property
    def failed(self) -> list[str]:
        return [r.check for r in self.results if r.result == "FAIL"]

    @property
    def skipped(self) -> list[str]:
        return [r.check for r in self.results if r.result == "SKIP"]

    @property
    def ok(self) -> bool:
        return not self.invalid and not self.failed and self.total > 0


def student_seed(student: str) -> int:
    """The base seed of a student's random inputs: the same id, the same numbers (a failure can be reproduced)."""
    return int.from_bytes(hashlib.sha256(student.encode()).digest()[:3], "big") * 1000


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
    closed = tuple(m for m in _library_modules() if m not in allowed_modules(a)) + ("minisink.assignments",)
    minisink_aliases = set()  # local names bound to minisink modules (import minisink.cache as c -> c)
    for node in ast.walk(tree):
        line = f"{file} line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "minisink" or alias.name.startswith("minisink."):
                    minisink_aliases.add(alias.asname or alias.name.split(".")[0])
                if any(alias.name == c or alias.name.startswith(c + ".") for c in closed):
                    problems.append(f"{line}: imports {alias.name}, not available while grading (the reference "
                                    f"or the grader)")
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
                        problems.append(f"{line}: imports {full}, not available while grading (the reference "
                                        f"or the grader)")
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


def _library_modules() -> tuple[str, ...]:
    return tuple(f"minisink.{m}" for m in sorted(_modules()) if m not in ("__init__", "__main__", "assignments"))


def allowed_modules(a) -> tuple[str, ...]:
    """The minisink modules assignment `a`'s child may import (and a submission may import from)."""
    return tuple(m for m in RUNTIME if m not in a.forbidden_modules)


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


# --- 2. the child, and every process it starts -----------------------------------------------------------------

class ChildGone(Exception):
    """The child cannot answer: it exited, crashed, timed out, or broke the protocol."""


class StudentError(Exception):
    """The student's code raised; the message says where and what."""


def become_subreaper() -> bool:
    """Make this process the one that orphans of its descendants are re-parented to (Linux 3.4+), so a
    double-forked, setsid() process the submission started cannot escape the sweep. False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process visible in /proc."""
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue  # it ended meanwhile
            out[int(entry.name)] = int(stat[stat.rindex(b")") + 2:].split()[1])
    return out


def sweep(roots: set[int], known: set[int]) -> list[int]:
    """Kill every process descended from `roots`, and every child of this process not in `known` (orphans
    re-parented here); reap those that are ours. -> the pids found alive (empty: nothing survived)."""
    found = []
    for _ in range(100):  # a fork between the scan and the kill is caught by the next scan
        parents = _parents()
        children: dict[int, list[int]] = {}
        for pid, ppid in parents.items():
            children.setdefault(ppid, []).append(pid)
        todo = [p for p in roots if p in parents] + [p for p in children.get(os.getpid(), []) if p not in known]
        alive = set()
        while todo:
            pid = todo.pop()
            if pid not in alive:
                alive.add(pid)
                todo += children.get(pid, [])
        live = [p for p in alive if not _zombie(p)]
        found += [p for p in live if p not in found and p not in roots]
        for pid in live:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        reaped = False
        for pid in alive:
            if parents.get(pid) == os.getpid():
                try:
                    os.waitpid(pid, 0)
                    reaped = True
                except ChildProcessError:
                    pass
        if not live and not reaped:
            return found
        time.sleep(0.01)
    return found


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True  # gone
    return stat[stat.rindex(b")") + 2:].split()[0] in (b"Z", b"X")


def _our_children() -> set[int]:
    return {pid for pid, ppid in _parents().items() if ppid == os.getpid()}


class Child:
    """One child process holding the student's code (sandbox.py), with limits."""

    def __init__(self, a, folder: Path, limits: Limits, log_dir: Path, n_checks: int):
        self.limits, self.folder = limits, folder
        memory = limits.memory_mb * 2**20
        cpu = int(limits.seconds * (n_checks + 1)) + 1  # CPU seconds over the child's whole life

        def limit():  # in the child, before Python starts: hard limits it cannot raise
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            resource.setrlimit(resource.RLIMIT_FSIZE, (LOG_BYTES, LOG_BYTES))  # endless printing fills no disk

        settings = json.dumps({
            "root": str(ROOT), "package": str(PACKAGE), "number": a.number, "todo": a.todo,
            "allowed": list(RUNTIME), "given": list(a.given), "stubbed": a.stubbed_modules(),
            "graded": sorted({q.split(".")[0] for qs in a.todo.values() for q in qs} | set(a.forbidden_names)),
            "closed": [str(d) for d in teachers_dirs()]})
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.log = open(log_dir / f"child-{time.monotonic_ns()}.log", "w+b")
        self.known = _our_children() if os.path.isdir("/proc") else set()
        # -I: isolated (no PYTHON* variables, no user site, not the script's folder on sys.path); close_fds (the
        # default): the child gets the two pipes and its log, never the grader's terminal.
        self.process = subprocess.Popen(
            [sys.executable, "-I", str(SANDBOX), settings, str(folder)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, cwd=log_dir, env=env,
            preexec_fn=limit, start_new_session=True, close_fds=True)
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
        except Exception as e:  # noqa: BLE001 (whatever the child sent, the grader goes on)
            self.kill()
            raise ChildGone(f"the grading process sent something unreadable {when} ({e}): did your code write "
                            f"to standard output's file descriptor directly?") from None

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
        last = self.output()[-1:]
        return what + (f" (your code's last output: {last[0][:200]})" if last else "")

    def output(self) -> list[str]:
        """The lines the child has written to its log so far (the student's prints and tracebacks), made safe to
        show: control characters (colours, carriage returns that could overwrite a line) become '?'."""
        self.log.flush()
        self.log.seek(0)
        text = self.log.read(LOG_BYTES).decode(errors="replace")
        self.log.seek(0, os.SEEK_END)
        return ["".join(c if c.isprintable() else "?" for c in line.rstrip()) for line in text.split("\n")
                if line.strip()]

    def kill(self):
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # its whole session: it may have started others
            except ProcessLookupError:
                pass
        self.process.wait()

    def close(self) -> list[int]:
        """End the child and every process it started; -> the pids of those that were still alive."""
        for f in (self.process.stdin, self.process.stdout):
            try:
                f.close()
            except OSError:
                pass
        pid = self.process.pid
        self.kill()
        survivors = sweep({pid}, self.known | {pid}) if os.path.isdir("/proc") else []
        return survivors


def teachers_dirs() -> list[Path]:
    """Where the teachers' package is imported from, if it is installed (a submission may not read it)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("minisink_teachers")
    except (ImportError, ValueError):
        return []
    return [Path(spec.origin).resolve().parent] if spec and spec.origin else []


def checks_of(a) -> list[tuple[str, int, object]]:
    """(title, points, check) of assignment `a`: its public checks, then the teachers' hidden ones if installed."""
    import importlib

    checks = list(importlib.import_module(f"minisink.assignments.{a.checks}").CHECKS)
    try:
        from minisink_teachers.hidden import HIDDEN
    except ImportError:
        return checks
    return checks + [(f"hidden: {title}", points, fn) for title, points, fn in HIDDEN.get(a.number, [])]


# --- 3. the checks, here -------------------------------------------------------------------------------------------

def run_check(check, seed: int, child: Child, seconds: float):
    """Drive one check: send each request it yields to the child, hand the outputs back, until it returns (a
    pass) or raises (Fail, Skip, StudentError, ChildGone). All its requests share one deadline."""
    deadline = time.monotonic() + seconds
    gen = check(seed)
    try:
        request = next(gen)
        while True:
            request = gen.send(child.call(request, deadline))
    except StopIteration:
        pass


def grade_submission(a, folder, limits: Limits = Limits(), student: str | None = None) -> Grade:
    """Every check of assignment `a` on the files in `folder` -> its Grade (one Result per check, and one per
    problem found before any check could run)."""
    folder = Path(folder).resolve()
    student = student or folder.name
    grade = Grade(student, a.number, a.title, folder, student_seed(student))
    checks = checks_of(a)
    problems = inspect_submission(a, folder)
    if problems:
        grade.results = [Result("the files can be graded", "FAIL", p, 0) for p in problems] + \
            [Result(title, "FAIL", "not run: fix the problem(s) above first", points) for title, points, _ in checks]
        return grade
    become_subreaper()  # where unsupported, the child's guard (no fork) and the session kill remain
    with tempfile.TemporaryDirectory(prefix="minisink-grade-") as tmp:
        child, refusal, survivors = None, None, []
        for title, points, check in checks:
            if refusal:
                grade.results.append(Result(title, "FAIL", refusal, points))
                continue
            if child is None:  # a fresh child: it imports the student's files and says where each graded piece is
                child = Child(a, folder, limits, Path(tmp), len(checks))
                try:
                    refusal = _origins_refused(a, folder, child.hello())
                except (StudentError, ChildGone) as e:
                    refusal = str(e)
                if refusal:
                    grade.results.append(Result(title, "FAIL", refusal, points))
                    continue
            try:
                run_check(check, grade.seed, child, limits.seconds)
                grade.results.append(Result(title, "PASS", "", points))
            except Skip as e:
                grade.results.append(Result(title, "SKIP", str(e), points))
            except (Fail, StudentError) as e:
                grade.results.append(Result(title, "FAIL", str(e), points))
            except ChildGone as e:
                grade.results.append(Result(title, "FAIL", str(e), points))
                grade.output += child.output()
                survivors += child.close()
                child = None
            except Exception as e:  # noqa: BLE001 (outputs of the wrong kind)
                grade.results.append(Result(title, "FAIL", f"your outputs could not be checked: {type(e).__name__}: "
                                                           f"{e}", points))
        if child:
            grade.output += child.output()
            survivors += child.close()
    grade.output = grade.output[-SHOWN_LINES:]
    if survivors:
        grade.invalid = (f"your code started {len(survivors)} process(es) that outlived it (pids "
                         f"{', '.join(map(str, survivors[:5]))}; killed): the grade is void")
    return grade


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


# --- 4. what the teacher reads ------------------------------------------------------------------------------------

def report(g: Grade, out=print) -> None:
    """One line per check with its points, the submission's own output (labelled as such), and the total."""
    out(f"minisink assignment {g.assignment}: {g.title}, grading {g.folder} (student {g.student}, seed {g.seed})")
    for r in g.results:
        earned = r.points if r.result == "PASS" else 0
        worth = f"{earned}/{r.points}" if r.result != "SKIP" else f"-/{r.points}"
        out(f"  {r.result}  {worth:>5}  {r.check}" + (f"\n        {r.message}" if r.message else ""))
    if g.output:
        out(f"  output of the submission (its last {len(g.output)} lines, not the grader's):")
        out("\n".join(f"    submission| {line[:200]}" for line in g.output))
    if g.invalid:
        out(f"  INVALID  {g.invalid}")
    if g.skipped:
        out(f"  not run here ({len(g.skipped)}, not counted: install torch and transformers, "
            f"pip install 'minisink[oracle]'): " + "; ".join(g.skipped))
    out(f"grade: {g.points} of {g.total} points, {len(g.results) - len(g.failed) - len(g.skipped)} of "
        f"{len(g.results) - len(g.skipped)} checks passed" + (": well done" if g.ok else ""))


CSV_FIELDS = ["student", "assignment", "points", "total", "failed_checks", "not_run", "invalid", "folder"]


def write_csv(grades: list[Grade], path) -> Path:
    """One row per student (CSV_FIELDS; checks separated by ' | '), written to a temporary name, then renamed, so
    the file is never half-written. Called only after every child process has ended."""
    path = Path(path)
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for g in grades:
            writer.writerow([g.student, g.assignment, g.points, g.total, " | ".join(g.failed),
                             " | ".join(g.skipped), g.invalid, str(g.folder)])
    return path
