"""minisink/atomic.py: a file is written whole or not at all, whatever stops the writer, and what a killed writer
leaves behind is cleared by the next write."""

import os
import signal
import socket
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minisink.atomic import atomic_write
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
