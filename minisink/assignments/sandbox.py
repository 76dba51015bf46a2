"""The child process that runs a student's code, and the frames it exchanges with the grader.

    python -m minisink.assignments.sandbox NUMBER FOLDER     (started by grading.py, never by hand)

What it does. The grader (the parent) starts this process with limits on memory (RLIMIT_AS) and CPU time
(RLIMIT_CPU) and a wall-clock deadline per check. Here, before the student's files are imported:
1. every minisink module is imported, and each library object that implements what is being graded (for assignment
   3, `SinkCache`; the oracles of minisink.reference and the graders themselves, whole modules) is replaced by a
   stand-in that raises a clear error when used: importing minisink's own answer gives an error, not a pass;
2. the student's files are imported, and the file each graded function or method was defined in is reported back
   (the parent refuses objects that do not come from the student's files).
Then it serves requests: a task name (a function of the assignment's checks module, `TASKS`) and its inputs,
answered with the task's outputs. Inputs and outputs are plain arrays in NumPy's .npz format (read back with
allow_pickle=False) plus a small JSON header: no Python object of the student's ever reaches the grader, and the
oracles and comparisons run in the grader, where the student's code never ran.

What it does not: sandbox the file system or the network. A student's file can do anything the user running the
grader can do; grade untrusted code in a container or as an unprivileged user.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import io
import json
import os
import pkgutil
import sys
import traceback
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np

MAX_HEADER = 1 << 20  # bytes of JSON header a frame may carry
MAX_DATA = 1 << 28  # bytes of arrays a frame may carry (256 MB)


# --- frames: [4-byte header length][JSON header][.npz bytes] -----------------------------------------------------

def encode(header: dict, arrays: dict[str, np.ndarray | None]) -> bytes:
    """One frame: the JSON header (with the names of None values) and the arrays as an .npz."""
    present = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
    for k, v in present.items():
        if v.dtype.kind not in "biuf":
            raise TypeError(f"{k} is {type(arrays[k]).__name__} of dtype {v.dtype}, expected a numeric array")
    buf = io.BytesIO()
    if present:
        np.savez(buf, **present)
    data = buf.getvalue()
    head = json.dumps({**header, "none": [k for k, v in arrays.items() if v is None], "nbytes": len(data)},
                      default=_plain).encode()
    return len(head).to_bytes(4, "big") + head + data


def _plain(x):
    """JSON for NumPy scalars (ints, floats, bools in task inputs)."""
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"{type(x).__name__} cannot go into a frame header")


def decode(read) -> tuple[dict, dict[str, np.ndarray | None]]:
    """Read one frame with `read(n) -> exactly n bytes`; arrays are loaded without pickle."""
    n = int.from_bytes(read(4), "big")
    if n > MAX_HEADER:
        raise ValueError(f"a frame header of {n} bytes (at most {MAX_HEADER})")
    header = json.loads(read(n))
    if not isinstance(header, dict) or not isinstance(header.get("nbytes"), int) or \
            not 0 <= header["nbytes"] <= MAX_DATA:
        raise ValueError("a malformed frame header")
    data = read(header["nbytes"])
    arrays = {}
    if data:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    arrays.update({k: None for k in header.get("none", [])})
    return header, arrays


# --- in the child: keep minisink's answers out of reach ------------------------------------------------------------

class ReferenceUsed(Exception):
    """The student's code used the library object that is being graded."""


class Stand_in:  # noqa: N801: a name that reads well in a traceback
    """What a graded library object is replaced by while the student's code runs."""

    def __init__(self, what: str):
        self._what = what

    def _refuse(self, *args, **kwargs):
        raise ReferenceUsed(f"{self._what} is minisink's own implementation of what is being graded: "
                            f"write your own (the grader does not run the library's answer)")

    __call__ = _refuse

    def __getattr__(self, name):
        self._refuse()

    def __mro_entries__(self, bases):
        self._refuse()


class StandInModule(types.ModuleType):
    """A module the student's code may not import (the graders and their oracles)."""

    def __getattr__(self, name):
        raise ImportError(f"{self.__name__} holds the grader's reference answers: a submission may not use it")


class Context:
    """What a task sees: the student's graded objects, and a way to run minisink with some of them plugged in."""

    def __init__(self, student: types.SimpleNamespace, sites: dict[str, list[tuple[object, object]]]):
        self.student = student
        self.sites = sites  # graded name -> [(module, the library's original object)] where a stand-in now sits

    @contextmanager
    def plugged(self, *names: str):
        """Inside: minisink's own code uses the student's object for each of `names`, and its original for every
        other graded name (the library needs them to run); outside, the stand-ins are back."""
        saved = []
        try:
            for name, places in self.sites.items():
                for module, original in places:
                    saved.append((module, name, getattr(module, name)))
                    setattr(module, name, getattr(self.student, name) if name in names else original)
            yield
        finally:
            for module, name, obj in saved:
                setattr(module, name, obj)


def import_minisink() -> list[types.ModuleType]:
    """Every module of the minisink package (those whose optional extras are missing are skipped)."""
    import minisink

    for info in pkgutil.iter_modules(minisink.__path__, "minisink."):
        if info.name not in ("minisink.cli", "minisink.__main__"):
            try:
                importlib.import_module(info.name)
            except Exception:  # noqa: BLE001: an optional extra is missing; nothing there to stand in for
                pass
    return [m for k, m in sys.modules.items() if k == "minisink" or k.startswith("minisink.")]


def stand_in(names: set[str], closed_modules: list[str]) -> dict[str, list[tuple[object, object]]]:
    """Replace each library object named in `names` by a Stand_in, and each module in `closed_modules` (and its
    submodules) by a StandInModule; return where each stand-in sits, with the original."""
    modules = import_minisink()
    closed = [k for k in sys.modules if any(k == c or k.startswith(c + ".") for c in closed_modules)]
    sites: dict[str, list] = {name: [] for name in names}
    for module in modules:
        if module.__name__ in closed:
            continue
        for name in names:
            original = module.__dict__.get(name)
            if original is not None and not isinstance(original, types.ModuleType):
                sites[name].append((module, original))
                setattr(module, name, Stand_in(f"{module.__name__}.{name}"))
    for key in closed:
        stub = StandInModule(key)
        sys.modules[key] = stub
        parent, _, child = key.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, stub)
    return sites


def load_student(number: int, folder: Path, todo: dict[str, list[str]]) -> tuple[types.SimpleNamespace, dict]:
    """Import the student's files; -> (their graded top-level objects, {qualname: file it was defined in})."""
    found, origins = {}, {}
    for file, qualnames in todo.items():
        name = f"minisink_student_{number}_{Path(file).stem}"
        spec = importlib.util.spec_from_file_location(name, folder / file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
        for qualname in qualnames:
            top, *method = qualname.split(".")
            obj = getattr(module, top, None)
            found[top] = obj
            fn = getattr(obj, method[0], None) if method else obj
            code = getattr(fn, "__code__", None)
            origins[qualname] = code.co_filename if code is not None else repr(type(fn).__name__)
    return types.SimpleNamespace(**found), origins


def explain(e: BaseException, folder: Path) -> str:
    """One line for an exception raised by the student's code: where (their file and line) and what."""
    if isinstance(e, NotImplementedError) and str(e).startswith("TODO: "):
        return f"not implemented yet: {str(e)[6:]}"
    if isinstance(e, SystemExit):
        return f"your code called exit({e.code!r}): a graded function must return, not end the process"
    frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).parent.resolve() == folder]
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].name})" if frames else ""
    hint = " (the grader's memory limit; see --memory-limit)" if isinstance(e, MemoryError) else \
        " (the grader's limit on what a submission writes: printing in a loop?)" \
        if getattr(e, "errno", 0) == errno.EFBIG else ""
    return f"{type(e).__name__}{where}: {e}{hint}"


def main(argv: list[str]) -> None:
    from minisink import assignments

    number, folder = int(argv[0]), Path(argv[1]).resolve()
    a = assignments.get(number)
    tasks = importlib.import_module(f"minisink.assignments.{a.checks}").TASKS
    # The frames travel on private copies of stdin/stdout; the student's print() and input() get the log / nothing.
    frames_in = os.fdopen(os.dup(0), "rb")
    frames_out = os.fdopen(os.dup(1), "wb")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)

    def reply(header, arrays=None):
        frames_out.write(encode(header, arrays or {}))
        frames_out.flush()

    def read(n):
        data = frames_in.read(n)
        if data is None or len(data) < n:
            raise EOFError
        return data

    graded = {q.split(".")[0] for qs in a.todo.values() for q in qs}
    sites = stand_in(graded | set(a.forbidden_names), ["minisink.reference", "minisink.assignments",
                                                      *a.forbidden_modules])
    try:
        student, origins = load_student(number, folder, a.todo)
    except BaseException as e:  # noqa: BLE001: a student's file can raise (or exit) anything
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
