"""Writing a file so that a reader finds the old file or the new one, never half of one.

Every file minisink writes (a perplexity run, a session, a calibration, a grading CSV, the corpus text, an
assignment's skeleton) goes through `atomic_write`: the bytes go to a temporary sibling `.NAME.tmp-HOST.PID`,
are flushed to disk (fsync), and the sibling is renamed over NAME (`os.replace`, atomic on POSIX and Windows; on
POSIX the folder is fsynced too, so that the rename survives a power cut). An exception or Ctrl-C removes the
sibling and leaves NAME as it was. A kill -9 cannot run any clean-up: its sibling
stays, so the next write of the same NAME on this host removes the siblings whose process is gone.
"""

from __future__ import annotations

import glob
import os
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
    path = Path(path)
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
