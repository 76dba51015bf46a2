"""Writing a file so that a reader finds the old file or the new one, never half of one.

Every file minisink writes (a perplexity run, a session, a calibration, a grading CSV, the corpus text, an
assignment's skeleton) goes through `atomic_write`: the bytes go to a temporary sibling `.NAME.tmp-HOST.PID`,
are flushed to disk (fsync), and the sibling is renamed over NAME (`os.replace`, atomic on POSIX and Windows; on
POSIX the folder is fsynced too, so that the rename survives a power cut). An exception or Ctrl-C removes the
sibling and leaves NAME as it was. A kill -9 cannot run any clean-up: its sibling
stays, so the next write of the same NAME on this host removes the siblings whose process is gone.
A NAME that is a symbolic link is written through: the file it points to gets the new bytes and the link stays (a
plain `open(NAME, "w")` does the same; renaming over the link itself would cut it).

`check_output_path` is what every command that writes a file calls before its work starts: a directory, a file in
the way of a folder, a folder it may not write into or a disk without room are refused then, not after hours.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (POSIX: os.kill with signal 0 only asks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, and belongs to another user
    return True


def remove_abandoned(path: Path) -> None:
    """Remove the temporary siblings of `path` that a writer on this host left when it was killed. Those of live
    processes, and of other hosts sharing the folder, are left alone. POSIX only: on Windows os.kill(pid, 0) would
    end the process, not ask about it."""
    if os.name != "posix":
        return
    prefix = f".{path.name}.tmp-{socket.gethostname()}."
    for stale in path.parent.glob(f"{glob.escape(prefix)}*"):
        pid = stale.name[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)):
            stale.unlink(missing_ok=True)


@contextmanager
def atomic_write(path, mode: str = "wb", **open_args):
    """`with atomic_write(path) as f: ...` writes `path` whole or not at all (see the module docstring). `mode` is
    "wb" or "w"; `open_args` go to `open` (encoding, newline)."""
    path = Path(os.path.realpath(path))  # through a symbolic link, to the file it names
    remove_abandoned(path)
    tmp = path.with_name(f".{path.name}.tmp-{socket.gethostname()}.{os.getpid()}")
    try:
        with open(tmp, mode, **open_args) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if os.name == "posix":
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


class OutputError(ValueError):
    """An output path no file can be written at (a directory, a file in the way, no permission, no room)."""


def check_output_path(path, flag: str, need_bytes: int = 0) -> Path:
    """Raise an OutputError now if `atomic_write(path)` could not write `need_bytes` there later; `flag` is the
    command-line flag that named `path` (the message names it). Makes the missing folders, as the write would, and
    returns the path the write will go to (a symbolic link resolved)."""
    path = Path(os.path.realpath(path))
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a directory: give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"{flag} {path}: a file is in the way of the folder {path.parent}") from None
    except OSError as e:
        raise OutputError(f"{flag} {path}: cannot make the folder {path.parent} ({e.strerror})") from None
    probe = path.with_name(f".{path.name}.probe-{os.getpid()}")  # atomic_write writes a temporary sibling first
    try:
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise OutputError(f"{flag} {path}: cannot write into {path.parent} ({e.strerror})") from None
    free = shutil.disk_usage(path.parent).free
    if free < need_bytes:
        raise OutputError(f"{flag} {path}: {free} bytes free on that disk, the run needs about {need_bytes}")
    return path
