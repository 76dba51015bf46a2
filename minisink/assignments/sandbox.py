"""The child process that runs a student's code. It never holds an answer to copy.

    python -I minisink/assignments/sandbox.py SETTINGS FOLDER     (started by grading.py, never by hand)

What it does, in order, before any of the student's code runs:
1. An import guard goes first on `sys.meta_path`: of minisink, only the modules the assignment's tasks need can
   be imported (never minisink.reference, the checks, the grader, the teachers' package), and the library files
   that hold what is graded are loaded from their skeleton: the graded functions and methods are compiled with a
   body that raises. The library's answer is never compiled in this process, so no search of live objects
   (gc, stack frames, module dicts) can find it.
2. The student's files are read and compiled (not run), then an audit hook (PEP 578) is installed that refuses,
   for the rest of the process's life: opening a file of the minisink package or the teachers' package (so none
   can be run as code), /proc, /dev or /sys (no writing to the grader's terminal through /proc/PID/fd), or any
   file for writing; starting, killing or signalling a process; ctypes; the gc's object lists; sockets.
3. The student's files run (imported), and the child reports where each graded function was defined.
Then it serves requests from the grader over a pipe: a task name (tasks.py) and its inputs in, the outputs out,
as plain arrays (frames.py). The student's prints go to a log file the grader shows labelled as theirs; the
terminal is not among the child's open files.

What it does not: contain a determined attacker. The audit hook runs inside the process it guards, and CPython's
audit hooks are not a security boundary; limits on memory and time are set by the grader. The grader's verdicts
never depend on this process telling the truth: inputs and expected answers are made, and compared, in the grader.
"""

from __future__ import annotations

import errno
import importlib.abc
import importlib.util
import os
import sys
import traceback
import types
from contextlib import contextmanager
from pathlib import Path

LIBRARY_STUB = "minisink's own "  # the message a stubbed library function raises (explain() recognizes it)
REFUSED_EVENTS = ("os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.system", "os.exec", "os.kill",
                  "os.killpg", "os.startfile", "subprocess.Popen", "pty.spawn", "signal.pthread_kill",
                  "gc.get_objects", "gc.get_referrers", "gc.get_referents", "socket.connect", "socket.bind",
                  "socket.sendto", "os.remove", "os.rename", "os.rmdir", "os.truncate", "os.symlink", "os.link",
                  "os.chmod", "os.chown", "os.mkdir", "os.utime", "shutil.rmtree", "sys.addaudithook")
REFUSED_IMPORTS = ("_posixsubprocess", "subprocess", "multiprocessing", "_ctypes", "ctypes", "cffi", "socket",
                   "_socket", "pty")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class Refused(PermissionError):
    """Something the grader does not let a submission do."""


# --- 1. the import guard -----------------------------------------------------------------------------------------

class StubLoader(importlib.abc.Loader):
    """Loads a minisink module from its source with the graded definitions' bodies replaced by a raise."""

    def __init__(self, path: Path, qualnames: list[str], stub_source):
        self.path, self.qualnames, self.stub_source = path, qualnames, stub_source

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        text = self.stub_source(self.path.read_text(encoding="utf-8"), self.qualnames,
                                todo=LIBRARY_STUB + "{} is not available while grading: write your own")
        exec(compile(text, str(self.path), "exec"), module.__dict__)


class ImportGuard(importlib.abc.MetaPathFinder):
    """minisink.* only from `allowed`, the modules in `stubbed` from their skeleton; the teachers' package never."""

    def __init__(self, package: Path, allowed: set[str], stubbed: dict[str, list[str]], number: int, stub_source):
        self.package, self.allowed, self.stubbed, self.number = package, allowed, stubbed, number
        self.stub_source = stub_source

    def find_spec(self, name, path=None, target=None):
        if name == "minisink_teachers" or name.startswith("minisink_teachers."):
            raise ImportError(f"{name} is the teachers' package: a submission may not use it")
        if not name.startswith("minisink."):
            return None
        if name not in self.allowed:
            raise ImportError(f"{name} is not available while grading assignment {self.number}: it holds the "
                              f"reference or the grader (use only the minisink modules the assignment names)")
        if name in self.stubbed:
            file = self.package.joinpath(*name.split(".")[1:]).with_suffix(".py")
            return importlib.util.spec_from_loader(name, StubLoader(file, self.stubbed[name], self.stub_source),
                                                   origin=str(file))
        return None


# --- 2. the audit hook ---------------------------------------------------------------------------------------------

def install_audit_hook(closed_dirs: tuple[str, ...]):
    """Refuse, from now on, what a graded submission has no business doing (module docstring, step 2). Reading
    minisink's files is refused, so no file of the package can be run as code (exec, importlib, runpy: each
    must open it first); the library modules the tasks need were loaded before."""

    def closed(path) -> bool:
        real = os.path.realpath(os.fsdecode(path))
        if real in ("/dev/null", "/dev/urandom"):
            return False
        return real.startswith(("/proc/", "/dev/", "/sys/")) or any(real.startswith(d) for d in closed_dirs)

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
            if not isinstance(path, (str, bytes, os.PathLike)) or writes or closed(path):
                raise Refused(f"opening {path!r}{' for writing' if writes else ''} is not allowed while grading")
        elif event == "import":
            if args[0].split(".")[0] in REFUSED_IMPORTS:
                raise Refused(f"importing {args[0]} is not allowed while grading")
        elif event in REFUSED_EVENTS or event.startswith("ctypes."):
            raise Refused(f"{event} is not allowed while grading (no processes, signals, files, sockets, ctypes)")

    sys.addaudithook(hook)


# --- 3. the student's files, and the context tasks run in ---------------------------------------------------------

class Context:
    """What a task sees: the student's graded objects, and a way to run minisink with them plugged in."""

    def __init__(self, student: types.SimpleNamespace, sites: list[tuple[object, str]]):
        self.student = student
        self.sites = sites  # (module, name): where minisink holds a (stubbed) graded object

    @contextmanager
    def plugged(self):
        """Inside: minisink's own code uses the student's object for every graded name."""
        saved = [(module, name, getattr(module, name)) for module, name in self.sites]
        try:
            for module, name in self.sites:
                setattr(module, name, getattr(self.student, name))
            yield
        finally:
            for module, name, obj in saved:
                setattr(module, name, obj)


def graded_sites(names: set[str]) -> list[tuple[object, str]]:
    """Every loaded minisink module that holds a graded name (its own, stubbed, or imported from another)."""
    return [(m, name) for key, m in list(sys.modules.items()) if key == "minisink" or key.startswith("minisink.")
            for name in sorted(names) if isinstance(m, types.ModuleType) and name in m.__dict__]


def compile_student(number: int, folder: Path, todo: dict[str, list[str]]) -> list[tuple[str, Path, object]]:
    """(module name, path, code) of each student file, compiled but not run."""
    out = []
    for file in todo:
        path = folder / file
        out.append((f"minisink_student_{number}_{Path(file).stem}", path,
                    compile(path.read_bytes(), str(path), "exec", dont_inherit=True)))
    return out


def run_student(compiled, todo: dict[str, list[str]], given: list[str]) -> tuple[types.SimpleNamespace, dict]:
    """Run the student's files; -> (their graded top-level objects and the `given` ones, {qualname: file its code
    comes from})."""
    found, origins = {}, {}
    for (name, path, code), qualnames in zip(compiled, todo.values(), strict=True):
        module = types.ModuleType(name)
        module.__file__ = str(path)
        sys.modules[name] = module  # dataclasses look their module up while the file runs
        exec(code, module.__dict__)
        found.update({g: module.__dict__[g] for g in given if g in module.__dict__})
        for qualname in qualnames:
            top, *method = qualname.split(".")
            obj = getattr(module, top, None)
            found[top] = obj
            fn = getattr(obj, method[0], None) if method else obj
            code_of = getattr(fn, "__code__", None)
            origins[qualname] = code_of.co_filename if code_of is not None else repr(type(fn).__name__)
    return types.SimpleNamespace(**found), origins


def explain(e: BaseException, folder: Path) -> str:
    """One line for an exception raised by the student's code: where (their file and line) and what."""
    if isinstance(e, NotImplementedError) and str(e).startswith("TODO: "):
        return f"not implemented yet: {str(e)[6:]}"
    if isinstance(e, NotImplementedError) and str(e).startswith(LIBRARY_STUB):
        return f"{e} (the grader does not run the library's answer to what is graded)"
    if isinstance(e, SystemExit):
        return f"your code called exit({e.code!r}): a graded function must return, not end the process"
    frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).parent.resolve() == folder]
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].name})" if frames else ""
    hint = " (the grader's memory limit; see --memory-limit)" if isinstance(e, MemoryError) else \
        " (the grader's limit on what a submission writes: printing in a loop?)" \
        if getattr(e, "errno", 0) == errno.EFBIG else ""
    return f"{type(e).__name__}{where}: {e}{hint}"


def main(argv: list[str]) -> None:
    """argv: the grader's JSON settings (root, package, number, todo, allowed, stubbed, graded) and the folder."""
    import json

    settings, folder = json.loads(argv[0]), Path(argv[1]).resolve()
    number, todo, package = settings["number"], settings["todo"], Path(settings["package"])
    sys.path.insert(0, settings["root"])
    # The frames travel on private copies of stdin/stdout; the student's print() and input() get the log / nothing.
    frames_in = os.fdopen(os.dup(0), "rb")
    frames_out = os.fdopen(os.dup(1), "wb")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)
    sys.stdout.reconfigure(line_buffering=True)  # a child killed at the end loses no printed line

    # stubs.py imports nothing of minisink: it is loaded by path, so that the guard can use it before minisink
    # itself is imported (minisink/__init__.py imports cache.py and model.py, which may hold what is graded).
    spec = importlib.util.spec_from_file_location("minisink_grader_stubs", package / "assignments" / "stubs.py")
    stubs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stubs)
    sys.meta_path.insert(0, ImportGuard(package, set(settings["allowed"]), settings["stubbed"], number,
                                        stubs.stub_source))
    from minisink.assignments.frames import decode, encode
    from minisink.assignments.tasks import TASKS

    import numpy as np

    tasks = TASKS[number]
    sites = graded_sites(set(settings["graded"]))

    def reply(header, arrays=None):
        frames_out.write(encode(header, arrays or {}))
        frames_out.flush()

    def read(n):
        data = frames_in.read(n)
        if data is None or len(data) < n:
            raise EOFError
        return data

    try:
        compiled = compile_student(number, folder, todo)
    except BaseException as e:  # noqa: BLE001 (a syntax error, an unreadable file)
        reply({"ok": False, "error": f"your files do not compile: {explain(e, folder)}"})
        return
    closed = tuple(str(p) + os.sep for p in {package.resolve(), *map(Path, settings["closed"])})
    install_audit_hook(closed)
    try:
        student, origins = run_student(compiled, todo, settings["given"])
    except BaseException as e:  # noqa: BLE001 (a student file can raise or exit anything)
        reply({"ok": False, "error": f"your files do not import: {explain(e, folder)}"})
        return
    reply({"ok": True, "origins": origins})
    context = Context(student, sites)
    while True:
        try:
            header, inputs = decode(read)
        except EOFError:
            return
        try:
            with np.errstate(all="ignore"):
                outputs = tasks[header["task"]](context, **header["params"], **inputs)
            frame = encode({"ok": True}, outputs)
        except BaseException as e:  # noqa: BLE001
            frame = encode({"ok": False, "error": explain(e, folder)}, {})
        frames_out.write(frame)
        frames_out.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
