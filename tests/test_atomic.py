"""minisink/atomic.py: a file is written whole or not at all, whatever stops the writer, and what a killed writer
leaves behind is cleared by the next write."""

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minisink.atomic import OutputError, atomic_write, check_output_path
from draws import examples


class Stop(Exception):
    pass


@settings(max_examples=examples(60), deadline=None)
@given(old=st.binary(max_size=300), new=st.binary(max_size=3000), stop_at=st.none() | st.integers(0, 40),
       error=st.sampled_from([Stop, KeyboardInterrupt]))
def test_the_file_is_the_old_one_or_the_new_one(tmp_path_factory, old, new, stop_at, error):
    """The writer stops (an exception or Ctrl-C) after a random number of its writes, or not at all."""
    path = tmp_path_factory.mktemp("w") / "f.bin"
    path.write_bytes(old)
    pieces = [new[i:i + 100] for i in range(0, len(new), 100)]
    try:
        with atomic_write(path) as f:
            for n, piece in enumerate(pieces):
                if n == stop_at:
                    raise error()
                f.write(piece)
            if stop_at is not None and stop_at >= len(pieces):
                raise error()
    except (Stop, KeyboardInterrupt):
        assert path.read_bytes() == old
    else:
        assert path.read_bytes() == new
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.bin"]  # no temporary sibling left


def test_text_mode_and_a_new_file(tmp_path):
    with atomic_write(tmp_path / "a.csv", "w", newline="", encoding="utf-8") as f:
        f.write("x,y\r\n")
    assert (tmp_path / "a.csv").read_bytes() == b"x,y\r\n"


@pytest.mark.skipif(os.name != "posix", reason="kill -9 and the clean-up of its leftovers are POSIX")
def test_a_killed_writers_leftover_is_removed_by_the_next_write_and_no_one_elses(tmp_path):
    path = tmp_path / "s.npz"
    host = socket.gethostname()
    writer = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(1)"])
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
        leftovers = {"dead": f".s.npz.tmp-{host}.{dead}", "live": f".s.npz.tmp-{host}.{writer.pid}",
                     "other host": f".s.npz.tmp-elsewhere.{dead}", "other file": f".t.npz.tmp-{host}.{dead}"}
        for name in leftovers.values():
            (tmp_path / name).write_bytes(b"half a save")
        with atomic_write(path) as f:
            f.write(b"whole")
        assert path.read_bytes() == b"whole"
        assert not (tmp_path / leftovers["dead"]).exists()
        assert all((tmp_path / leftovers[k]).exists() for k in ("live", "other host", "other file"))
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()


def test_a_symbolic_link_is_written_through(tmp_path):
    """Issue 22: a session path that was a symlink became a regular file, and the file it named was never updated
    again. The write goes to the file the link names; the link stays a link."""
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "s.npz"
    target.write_bytes(b"old")
    link = tmp_path / "s.npz"
    link.symlink_to(target)
    with atomic_write(link) as f:
        f.write(b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real", "s.npz"]
    dangling = tmp_path / "d.npz"
    dangling.symlink_to(tmp_path / "real" / "later.npz")  # a link to a file not written yet: it is created
    with atomic_write(dangling) as f:
        f.write(b"first")
    assert dangling.is_symlink() and (tmp_path / "real" / "later.npz").read_bytes() == b"first"


def test_output_paths_are_checked_before_the_work(tmp_path, monkeypatch):
    (tmp_path / "folder").mkdir()
    (tmp_path / "a-file").write_text("in the way")
    (tmp_path / "to-folder").symlink_to(tmp_path / "folder")
    cases = {"folder": "--out .*folder is a directory: give a file name",
             "to-folder": "--out .*folder is a directory",
             "a-file/x.npz": "--out .*: a file is in the way of the folder .*a-file",
             "a-file/deeper/x.npz": "a file is in the way"}
    for name, message in cases.items():
        with pytest.raises(OutputError, match=message):
            check_output_path(tmp_path / name, "--out")
    read_only = Path("/sys/minisink-test.npz") if os.geteuid() == 0 else tmp_path / "ro" / "x.npz"
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(OutputError, match="--csv .*cannot write into"):
        check_output_path(read_only, "--csv")
    assert check_output_path(tmp_path / "new" / "deep" / "x.csv", "--out") == tmp_path / "new" / "deep" / "x.csv"
    assert sorted(p.name for p in (tmp_path / "new" / "deep").iterdir()) == []  # the probe is gone
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 100))
    with pytest.raises(OutputError, match="100 bytes free on that disk, the run needs about 5000"):
        check_output_path(tmp_path / "x.npz", "--out", need_bytes=5000)
