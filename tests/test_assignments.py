"""The assignments prove both directions: every reference solution passes every check, every untouched skeleton
fails, and plausible student mistakes fail the check meant to catch them. The graders cannot be fooled: a
submission that exits, crashes, loops forever, eats memory, overwrites the grader's tables or hands back minisink's
own implementation FAILs (within the time limit), and a check that could not run (no torch) is not a pass."""

import ast
import csv
import subprocess
import sys
import time

import pytest

from minisink import assignments
from minisink.assignments import grading
from minisink.assignments.grading import Limits

FAST = Limits(seconds=20, memory_mb=2048)  # generous: the machine running the tests may be busy


def grade(number, folder, limits=FAST):
    lines = []
    ok = assignments.grade(number, folder, out=lines.append, limits=limits)
    return ok, "\n".join(lines)


def results(number, folder, limits=FAST):
    return grading.grade_submission(assignments.get(number), folder, limits)


@pytest.mark.parametrize("number", sorted(assignments.ASSIGNMENTS))
def test_reference_solution_passes(number, tmp_path):
    assignments.new(number, tmp_path, solution=True)
    ok, report = grade(number, tmp_path)
    assert ok, report
    assert "FAIL" not in report and "SKIP" not in report


@pytest.mark.parametrize("number", sorted(assignments.ASSIGNMENTS))
def test_skeleton_fails_and_names_the_functions(number, tmp_path):
    written = assignments.new(number, tmp_path)
    assert (tmp_path / "README.md").read_text().startswith(f"# Assignment {number}")
    for file, qualnames in assignments.get(number).todo.items():
        text = (tmp_path / file).read_text()
        for q in qualnames:
            assert f'raise NotImplementedError("TODO: {q}")' in text
        assert "from ." not in text  # runs from any folder
    ok, report = grade(number, tmp_path)
    assert not ok
    assert "PASS" not in report
    first = {file: qualnames[0] for file, qualnames in assignments.get(number).todo.items()}
    assert any(f"not implemented yet: {q}" in report for q in first.values()), report
    assert [what for _, what in written] == ["wrote"] * (len(first) + 1)


def test_skeletons_give_no_answer_away(tmp_path):
    """Assignment 4's answer (the sink block's rotation by the number of evicted tokens) is neither in a comment
    nor in the module docstring of the skeleton; the reference has both."""
    assignments.new(4, tmp_path / "skeleton")
    assignments.new(4, tmp_path / "solution", solution=True)
    skeleton, solution = ((tmp_path / d / "cache.py").read_text() for d in ("skeleton", "solution"))
    for answer in ["S + W - 1", "rotated back", "evicted so far"]:
        assert answer in solution
        assert answer not in skeleton, answer


def mutate(number, folder, file, old, new):
    assignments.new(number, folder, solution=True)
    path = folder / file
    text = path.read_text()
    assert old in text, f"the mutation no longer applies: {old!r} is not in {file}"
    path.write_text(text.replace(old, new, 1))
    return grade(number, folder)


MUTANTS = {
    "float32 angles": (1, "rope.py", "inv_freq[None, :]  # [T, D/2], float64",
                       "inv_freq[None, :].astype(np.float32)", "rotation: cos/sin"),
    "eps outside the sqrt": (1, "model.py", "np.sqrt(mean_square + eps)", "(np.sqrt(mean_square) + eps)",
                             "rms_norm equals the formula"),
    "rotate adjacent pairs": (1, "rope.py", "halves[:, :, ::-1] * sin",
                              "x.reshape(T, n_heads, D // 2, 2)[..., ::-1].reshape(T, n_heads, 2, D // 2) * sin",
                              "apply_rope with the grader's rotation"),
    "query head h reads KV head h % Hkv": (2, "model.py", "qb = qb.reshape(T, n_kv_heads, G, D).transpose(1, 2, 0, 3)",
                                           "qb = qb.reshape(T, G, n_kv_heads, D).transpose(2, 1, 0, 3)",
                                           "attention over one block"),
    "no 1/sqrt(D)": (2, "model.py", "q = q * np.float32(D ** -0.5)", "q = q", "attention over one block"),
    "prefill without a causal mask": (2, "cache.py", "self.mask = causal_mask(positions[n:], positions)",
                                      "self.mask = None", "FullCache: any chunking"),
    "window one token short": (3, "cache.py", "stream[:, None] - ring_token[None, :] < W",
                               "stream[:, None] - ring_token[None, :] < W - 1", "equals the explicit cache"),
    "no renumbering": (4, "cache.py", "evicted = np.maximum(stream - (S + W - 1), 0) if self.renumber",
                       "evicted = np.maximum(stream - (S + W - 1), 0) if False", "positions within the cache"),
    "window one token long": (5, "banded.py", "(q - k < window)", "(q - k <= window)", "the plain rule"),
    "empty slots visible": (5, "banded.py", "(k >= 0) & ", "", "the plain rule"),
    "log-sum-exp without the max": (5, "banded.py", "top = x.max(axis=-1)  # [T]", "top = 0 * x.max(axis=-1)",
                                    "as large as 1e4"),
    "max over the scores only": (6, "sink_attention.py", "m = np.maximum(s.max(axis=-1, keepdims=True), sigma)",
                                 "m = s.max(axis=-1, keepdims=True)", "in the hundreds"),
    "sink carries a value": (6, "sink_attention.py", "e.sum(axis=-1, keepdims=True) + np.exp(sigma - m))",
                             "e.sum(axis=-1, keepdims=True))", "float64 formula"),
    "TOVA evicts the most attended": (7, "eviction.py", "np.argmin(probs.mean(axis=0))",
                                      "np.argmax(probs.mean(axis=0))", "tova_victim"),
    "H2O evicts a recent token": (7, "eviction.py", "[:len(scores) - n_recent]", "", "h2o_victim"),
}


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mistakes_are_caught(name, tmp_path):
    number, file, old, new, check = MUTANTS[name]
    ok, report = mutate(number, tmp_path, file, old, new)
    assert not ok, report
    failed = [line for line in report.splitlines() if line.strip().startswith("FAIL")]
    assert any(check in line for line in failed), report


# --- bypasses: each measured against the previous grader, which passed them ------------------------------------

CHEATS = {
    "sys.exit(0) at import": (3, "+import sys\nsys.exit(0)\n", "exit(0)"),
    "os._exit(0) at import": (3, "+import os\nos._exit(0)\n", "exit code 0"),
    "overwrites the check table": (3, "import minisink.assignments.a3_ring_buffer as grader\ngrader.CHECKS[:] = []\n"
                                      "from minisink.cache import SinkCache\n", "grader's reference"),
    "hands back minisink's SinkCache": (3, "from minisink.cache import SinkCache\n", "minisink's own"),
    "hands back minisink's SinkCache (4)": (4, "from minisink.cache import SinkCache\n", "minisink's own"),
    "subclasses minisink's SinkCache": (3, "import minisink.cache\n\n\nclass SinkCache(minisink.cache.SinkCache):\n"
                                           "    pass\n", "derives from minisink"),
    "reaches the reference at run time": (3, "m = __import__('minisink.cache', fromlist=['x'])\nSinkCache = "
                                             "getattr(m, 'SinkCache')\n", "run time"),
}


def cheat(tmp_path, number, text):
    """A solution's cache.py replaced by `text`, or with `text` inserted at its top if it starts with "+"."""
    assignments.new(number, tmp_path, solution=True)  # a solution is there: the cheat must still fail
    path = tmp_path / "cache.py"
    if text.startswith("+"):
        future = "from __future__ import annotations\n"
        text = path.read_text().replace(future, future + text[1:], 1)
    path.write_text(text)


@pytest.mark.parametrize("name", sorted(CHEATS))
def test_cheats_fail(name, tmp_path):
    number, text, message = CHEATS[name]
    cheat(tmp_path, number, text)
    ok, report = grade(number, tmp_path)
    assert not ok, report
    assert "PASS" not in report, report
    assert report.count("FAIL") >= len(grading.a_checks(assignments.get(number))), report
    assert message in report, report


@pytest.mark.parametrize("name", ["hands back minisink's SinkCache", "subclasses minisink's SinkCache",
                                  "reaches the reference at run time"])
def test_cheats_fail_in_the_child_too(name, tmp_path, monkeypatch):
    """Without the source check, the child's layers still refuse minisink's own SinkCache: the library object is
    stood in for before the student's file runs, and an object from another file is refused by its origin."""
    number, text, _ = CHEATS[name]
    cheat(tmp_path, number, text)
    monkeypatch.setattr(grading, "inspect_submission", lambda a, folder: [])
    rs = results(number, tmp_path)
    assert [r.result for r in rs] == ["FAIL"] * len(rs)
    assert any("minisink's own" in r.message for r in rs), rs


def prepend_to_body(path, qualname, code):
    """Insert `code` (one indented block) as the first statement of the function `Class.method` in a file."""
    text = path.read_text()
    cls, name = qualname.split(".")
    tree = ast.parse(text)
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    fn = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == name)
    first = fn.body[0]
    lines = text.splitlines(keepends=True)
    indent = " " * first.col_offset
    lines.insert(first.lineno - 1, "".join(indent + line + "\n" for line in code.splitlines()))
    path.write_text("".join(lines))


def test_delegating_to_the_reference_fails(tmp_path, monkeypatch):
    """A class defined in the student's file whose methods call minisink's SinkCache: the source check names the
    line, and the child's stand-in refuses the call when the source check is switched off."""
    assignments.new(3, tmp_path, solution=True)
    path = tmp_path / "cache.py"
    path.write_text(path.read_text().replace("class SinkCache", "import minisink.cache as ref\n\n\nclass SinkCache", 1))
    prepend_to_body(path, "SinkCache.begin", "return ref.SinkCache.begin(self, T)")
    ok, report = grade(3, tmp_path)
    assert not ok and "uses minisink's own SinkCache" in report, report
    monkeypatch.setattr(grading, "inspect_submission", lambda a, folder: [])
    rs = results(3, tmp_path)  # inside the child, minisink.cache.SinkCache is then theirs: begin calls itself
    assert all(r.result == "FAIL" and "RecursionError at cache.py" in r.message for r in rs), rs


def test_endless_loop_fails_within_the_limit(tmp_path):
    assignments.new(3, tmp_path, solution=True)
    prepend_to_body(tmp_path / "cache.py", "SinkCache.begin", "while True:\n    pass")
    limits = Limits(seconds=1.5)
    start = time.monotonic()
    rs = results(3, tmp_path, limits)
    took = time.monotonic() - start
    assert [r.result for r in rs] == ["FAIL"] * 5
    assert all("timed out" in r.message for r in rs), rs
    assert took < 5 * (limits.seconds + 4), took  # each check waits its limit, plus a fresh child


def test_endless_loop_at_import_fails_every_check_once(tmp_path):
    cheat(tmp_path, 3, "+while True:\n    pass\n")
    start = time.monotonic()
    rs = results(3, tmp_path, Limits(seconds=1.5))
    assert [r.result for r in rs] == ["FAIL"] * 5 and "timed out" in rs[0].message, rs
    assert time.monotonic() - start < 1.5 + 6


def test_memory_and_crashes_fail(tmp_path):
    assignments.new(7, tmp_path, solution=True)
    path = tmp_path / "eviction.py"
    text = path.read_text()
    path.write_text(text.replace("    return int(np.argmin(probs.mean(axis=0)))",
                                 "    return int(np.ones(2 * 10**8).sum())", 1)
                    .replace("    return int(np.argmin(np.asarray(scores)[:len(scores) - n_recent]))",
                             "    import os, signal\n    os.kill(os.getpid(), signal.SIGSEGV)", 1))
    rs = results(7, tmp_path, Limits(seconds=20, memory_mb=1024))
    assert [r.result for r in rs] == ["FAIL"] * 4, rs
    assert "MemoryError" in rs[0].message and "memory limit" in rs[0].message, rs
    assert "SIGSEGV" in rs[1].message, rs


def test_endless_printing_fails(tmp_path):
    assignments.new(5, tmp_path, solution=True)
    path = tmp_path / "banded.py"
    path.write_text(path.read_text().replace('    q = np.asarray(query_stream)[:, None]  # [T, 1]',
                                             '    while True:\n        print("x" * 10**6)', 1))
    rs = results(5, tmp_path)
    assert rs[0].result == "FAIL" and "File too large" in rs[0].message and "printing in a loop" in rs[0].message, rs


def test_printing_does_not_confuse_the_grader(tmp_path):
    assignments.new(7, tmp_path, solution=True)
    path = tmp_path / "eviction.py"
    path.write_text(path.read_text().replace("import numpy as np\n", 'import numpy as np\n\nprint("PASS " * 10000)\n')
                    .replace("    return int(np.argmin(probs.mean(axis=0)))",
                             '    print("ok")\n    return int(np.argmin(probs.mean(axis=0)))'))
    ok, report = grade(7, tmp_path)
    assert ok, report


def test_skip_is_not_a_pass(tmp_path, monkeypatch):
    """Without torch and transformers, their checks SKIP, and the grade is not a pass."""
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    monkeypatch.setitem(sys.modules, "transformers", None)
    assignments.new(6, tmp_path, solution=True)
    ok, report = grade(6, tmp_path)
    assert not ok, report
    assert "SKIP  sink_attention equals transformers' gpt-oss" in report
    assert "4 of 5 checks passed, 1 skipped (not a pass)" in report, report


# --- new and grade from the command line ------------------------------------------------------------------------

def test_new_never_overwrites_a_students_work(tmp_path):
    assignments.new(3, tmp_path)
    path = tmp_path / "cache.py"
    path.write_text(path.read_text() + "# my work\n")
    with pytest.raises(ValueError, match=r"cache.py already exists and differs .* --force"):
        assignments.new(3, tmp_path)
    assert path.read_text().endswith("# my work\n")
    assert dict((p.name, w) for p, w in assignments.new(3, tmp_path, force=True)) == \
        {"cache.py": "replaced", "README.md": "unchanged"}
    assert not path.read_text().endswith("# my work\n")


def test_cli_new_and_grade_a_class(tmp_path):
    cli = [sys.executable, "-m", "minisink.cli", "assignment"]

    def run(*args):
        return subprocess.run(cli + [str(a) for a in args], capture_output=True, text=True, timeout=300)

    assert run("new", 7, tmp_path / "alice").returncode == 0
    assert run("new", 7, tmp_path / "bob", "--solution").returncode == 0
    (tmp_path / "alice" / "eviction.py").write_text((tmp_path / "alice" / "eviction.py").read_text() + "# mine\n")
    refused = run("new", 7, tmp_path / "alice")
    assert refused.returncode != 0 and "--force" in refused.stderr and "Traceback" not in refused.stderr
    graded = run("grade", 7, tmp_path / "alice", tmp_path / "bob", "--csv", tmp_path / "grades.csv")
    assert graded.returncode == 1, graded.stdout + graded.stderr
    assert "not implemented yet: tova_victim" in graded.stdout
    rows = list(csv.DictReader(open(tmp_path / "grades.csv")))
    assert len(rows) == 8 and set(rows[0]) == {"submission", "check", "result", "message"}
    assert {r["result"] for r in rows if r["submission"].endswith("bob")} == {"PASS"}
    assert {r["result"] for r in rows if r["submission"].endswith("alice")} == {"FAIL"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alice", "bob", "grades.csv"]  # no temporary left
    assert run("grade", 7, tmp_path / "bob").returncode == 0
    bad = run("grade", 7, tmp_path / "bob", "--time-limit", "0")
    assert bad.returncode != 0 and "time limit" in bad.stderr and "Traceback" not in bad.stderr


def test_frames_carry_plain_arrays_only():
    """What the child sends is read without pickle: an object array is refused on both sides."""
    import io

    import numpy as np

    from minisink.assignments.sandbox import decode, encode

    frame = encode({"ok": True}, {"x": np.arange(3.0), "none": None})
    stream = io.BytesIO(frame)
    header, arrays = decode(stream.read)
    assert header["ok"] and arrays["x"].tolist() == [0.0, 1.0, 2.0] and arrays["none"] is None
    with pytest.raises(TypeError, match="numeric array"):
        encode({}, {"x": np.array([object()], dtype=object)})
    buf = io.BytesIO()
    np.savez(buf, x=np.array([{"a": 1}], dtype=object))  # what a forged child could send
    forged = b'{"nbytes": %d}' % len(buf.getvalue())
    with pytest.raises(ValueError, match="pickle"):
        decode(io.BytesIO(len(forged).to_bytes(4, "big") + forged + buf.getvalue()).read)
    with pytest.raises(ValueError, match="header"):
        decode(io.BytesIO((1 << 30).to_bytes(4, "big")).read)
