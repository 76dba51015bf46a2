"""The assignments prove both directions: every reference solution passes every check, every untouched skeleton
fails, and plausible student mistakes fail the check meant to catch them. The grader hands out no answer and
cannot be fooled: a submission that looks for the reference among live objects or up the stack, subclasses the
library's class, runs a shipped file, starts a process that outlives it, or prints a fake verdict fails; so does
one that exits, crashes, loops forever or eats memory. The student install holds no reference solution."""

import ast
import csv
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "teachers"))  # the teachers' package: solutions and hidden checks, not installed

from minisink import assignments  # noqa: E402
from minisink.assignments import grading  # noqa: E402
from minisink.assignments.grading import Limits  # noqa: E402

FAST = Limits(seconds=20, memory_mb=2048)  # generous: the machine running the tests may be busy
CLI = [sys.executable, "-m", "minisink.cli", "assignment"]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "teachers")]))


def grade(number, folder, limits=FAST, student=None):
    lines = []
    ok = assignments.grade(number, [folder], student=student, out=lines.append, limits=limits)
    return ok, "\n".join(lines)


def results(number, folder, limits=FAST):
    return grading.grade_submission(assignments.get(number), folder, limits).results


def cli(*args, timeout=300):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=ENV,
                          cwd=REPO)


@pytest.mark.parametrize("number", sorted(assignments.ASSIGNMENTS))
def test_reference_solution_passes(number, tmp_path):
    assignments.new(number, tmp_path, solution=True)
    ok, report = grade(number, tmp_path)
    assert ok, report
    assert "FAIL" not in report and "hidden:" in report, report  # the teachers' hidden checks ran too


@pytest.mark.parametrize("number", sorted(assignments.ASSIGNMENTS))
def test_skeleton_fails_and_names_the_functions(number, tmp_path):
    written = assignments.new(number, tmp_path)
    assert (tmp_path / "README.md").read_text().startswith(f"# Assignment {number}")
    assert (tmp_path / "ANSWERS.md").read_text().count("**My prediction (before running):**") >= 2
    for file, qualnames in assignments.get(number).todo.items():
        text = (tmp_path / file).read_text()
        for q in qualnames:
            assert f'raise NotImplementedError("TODO: {q}")' in text
        assert "from ." not in text  # runs from any folder
    ok, report = grade(number, tmp_path)
    assert not ok
    assert "PASS" not in report and "grade: 0 of" in report, report
    first = {file: qualnames[0] for file, qualnames in assignments.get(number).todo.items()}
    assert any(f"not implemented yet: {q}" in report for q in first.values()), report
    assert [what for _, what in written] == ["wrote"] * (len(first) + 2)


def test_every_assignment_states_its_time():
    teachers = (REPO / "docs/assignments/TEACHERS.md").read_text()
    for a in assignments.ASSIGNMENTS.values():
        low, high = a.minutes
        assert f"about {low / 60:g}-{high / 60:g} h" in (REPO / "docs/assignments" / a.doc).read_text(), a.doc
        assert f"| {a.number} |" in teachers and f"{low / 60:g}-{high / 60:g} h" in teachers, a.number


# --- no answer in the student install -----------------------------------------------------------------------------

def shipped_files():
    """Every file the wheel carries: the packages named in pyproject.toml, as setuptools collects them."""
    import tomllib

    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    return [p for package in packages for p in (REPO / package.replace(".", "/")).glob("*.py")]


def test_the_student_install_holds_no_reference_solution():
    """No function of a teachers' solution appears, body and all, in any file the package ships; the shipped
    skeletons are the solutions with the graded bodies stubbed (they never drift)."""
    from minisink.assignments.skeleton import make_skeleton

    solutions = REPO / "teachers/minisink_teachers/solutions"
    shipped = {ast.dump(node) for path in shipped_files() for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.FunctionDef)}
    checked = 0
    for a in assignments.ASSIGNMENTS.values():
        if a.library:
            continue
        for file, qualnames in a.todo.items():
            source = (solutions / file).read_text()
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.FunctionDef) and any(q.split(".")[-1] == node.name for q in qualnames):
                    assert ast.dump(node) not in shipped, f"{file}: {node.name} ships in the package"
                    checked += 1
            assert (assignments.SKELETONS / file).read_text() == make_skeleton(a, file, source), \
                f"skeletons/{file} is stale: python -m minisink_teachers.make_skeletons"
    assert checked >= 10
    assert not (REPO / "minisink/assignments/solutions").exists()


def test_the_wheel_has_skeletons_and_no_solutions(tmp_path):
    """Build the wheel from a copy of the repository (setuptools, no network) and list what it carries."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build",
                                                             "runs*", "notebooks", ".hypothesis", "docs", "tests"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    if built.returncode and "No module named" in built.stderr:
        pytest.skip(f"cannot build a wheel here: {built.stderr.strip()[-200:]}")
    assert built.returncode == 0, built.stderr
    names = zipfile.ZipFile(next((tmp_path / "dist").glob("minisink-*.whl"))).namelist()
    assert "minisink/assignments/skeletons/h2o.py" in names and "minisink/assignments/grading.py" in names
    assert not [n for n in names if "solutions" in n or "minisink_teachers" in n], names


def test_solution_needs_the_teachers_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "minisink_teachers", None)  # `import minisink_teachers` now fails
    monkeypatch.setitem(sys.modules, "minisink_teachers.hidden", None)
    with pytest.raises(ValueError, match=r"teachers' download.*pip install \./teachers"):
        assignments.new(7, tmp_path, solution=True)
    assignments.new(3, tmp_path / "three", solution=True)  # 1-4: minisink's own files, public anyway
    assert grading.checks_of(assignments.get(7))[-1][0].startswith("H2OCache")  # no hidden checks without it


# --- mistakes a student makes -------------------------------------------------------------------------------------

def mutate(number, folder, file, old, new):
    assignments.new(number, folder, solution=True)
    path = folder / file
    text = path.read_text()
    assert old in text, f"the mutation no longer applies: {old!r} is not in {file}"
    path.write_text(text.replace(old, new, 1))
    return grade(number, folder)


MUTANTS = {
    "eps outside the sqrt": (1, "model.py", "np.sqrt(mean_square + eps)", "(np.sqrt(mean_square) + eps)",
                             "rms_norm equals the formula"),
    "no 1/sqrt(D)": (2, "model.py", "q = q * np.float32(D ** -0.5)", "q = q", "attention over one block"),
    "window one token short": (3, "cache.py", "stream[:, None] - ring_token[None, :] < W",
                               "stream[:, None] - ring_token[None, :] < W - 1", "equals the explicit cache"),
    "no renumbering": (4, "cache.py", "evicted = np.maximum(stream - (S + W - 1), 0) if self.renumber",
                       "evicted = np.maximum(stream - (S + W - 1), 0) if False", "positions within the cache"),
    "empty slots visible": (5, "banded.py", "(k >= 0) & ", "", "the plain rule"),
    "max over the scores only": (6, "sink_attention.py", "m = np.maximum(s.max(axis=-1, keepdims=True), sigma)",
                                 "m = s.max(axis=-1, keepdims=True)", "in the hundreds"),
    "H2O scored per query head, averaged": (7, "h2o.py", ".sum(axis=(1, 2), dtype=np.float64)",
                                            ".mean(axis=(1, 2), dtype=np.float64)", "any chunking"),
    "H2O forgets the recent window": (7, "h2o.py", "newest = np.arange(len(tokens) - (self.recent - 1), len(tokens))",
                                      "newest = np.arange(0)", "one token at a time"),
    "lme as the mean of a": (8, "calibration.py", "(top + np.log(np.exp(a - top).mean(axis=-1, keepdims=True)))",
                             "a.mean(axis=-1, keepdims=True)", "sigma_lme"),
    "softmax backward without the row sum": (9, "attention_backward.py", "d_s = p * (d_p - row)", "d_s = p * d_p",
                                             "minisink's backward"),
    "the sink value unweighted": (8, "calibration.py", "(weight[..., None] * v).sum(axis=1)", "v.sum(axis=1)",
                                  "sink_value"),
}


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mistakes_are_caught(name, tmp_path):
    number, file, old, new, check = MUTANTS[name]
    ok, report = mutate(number, tmp_path, file, old, new)
    assert not ok, report
    failed = [line for line in report.splitlines() if line.strip().startswith("FAIL")]
    assert any(check in line for line in failed), report


# --- attacks: each passed an earlier grader; each must fail now ---------------------------------------------------

ATTACKS = {
    # (assignment, file, code inserted after the imports or replacing a graded body, what the report says)
    "finds the reference among live objects (gc)": (6, "sink_attention.py", "body", """
import gc
for obj in gc.get_objects():
    if callable(obj) and getattr(obj, "__name__", "") in ("sink_attention", "attention") and obj is not sink_attention:
        return obj(q, k, v, sink_logits, visible)
""", "gc.get_objects is not allowed"),
    "finds the library's attention in sys.modules": (6, "sink_attention.py", "body", """
import sys
for m in list(getattr(sys, "mod" + "ules").values()):
    f = getattr(m, "attention", None)
    if callable(f) and getattr(m, "__name__", "").startswith("minisink"):
        return f(q.astype("float32"), [], 1)
""", "minisink's own attention is not available while grading"),
    "walks up the stack to the grader's frames": (6, "sink_attention.py", "body", """
import sys
frame = sys._getframe(1)
while frame is not None:
    for scope in (frame.f_locals, frame.f_globals):
        for value in list(scope.values()):
            if callable(value) and getattr(value, "__name__", "") == "sink_attention" and value is not sink_attention:
                return value(q, k, v, sink_logits, visible)
    frame = frame.f_back
raise RuntimeError("no reference on the stack")
""", "no reference on the stack"),
    "subclasses minisink's SinkCache found at run time": (3, "cache.py", "replace", """
import sys
import numpy as np
base = getattr(sys, "mod" + "ules")["minisink.cache"].SinkCache


class SinkCache(base):
    def begin(self, T):
        return super().begin(T)

    def blocks(self, layer, k, v):
        return super().blocks(layer, k, v)

    def end(self):
        return super().end()

    def retained(self):
        return super().retained()
""", "minisink's own SinkCache.begin is not available while grading"),
    "subclasses minisink's SinkCache found at run time (4)": (4, "cache.py", "replace", """
import sys
base = getattr(sys, "mod" + "ules")["minisink.cache"].SinkCache


class SinkCache(base):
    def begin(self, T):
        return super().begin(T)
""", "minisink's own SinkCache.begin is not available while grading"),
    "runs a shipped file with getattr(builtins, 'ex' + 'ec')": (7, "h2o.py", "top", """
import builtins
import minisink
_src = getattr(builtins, "op" + "en")(minisink.__file__.replace("__init__.py", "eviction.py")).read()
_ns = {}
getattr(builtins, "ex" + "ec")(_src.replace("from .", "from minisink."), _ns)
""", "is not allowed while grading"),
    "runs the teachers' solution file": (6, "sink_attention.py", "top", f"""
import builtins
_ns = {{}}
_file = {str(REPO / "teachers/minisink_teachers/solutions/sink_attention.py")!r}
getattr(builtins, "ex" + "ec")(getattr(builtins, "op" + "en")(_file).read(), _ns)
""", "is not allowed while grading"),
    "imports the reference through importlib": (6, "sink_attention.py", "top", """
import builtins
_ref = getattr(builtins, "__imp" + "ort__")("minisink.reference", fromlist=["x"])
""", "minisink.reference is not available while grading"),
    "reads the library's compiled bytecode": (7, "h2o.py", "top", """
import builtins, glob, minisink
for _p in glob.glob(minisink.__file__.replace("__init__.py", "__pycache__/eviction*.pyc")) or ["x"]:
    getattr(builtins, "op" + "en")(minisink.__file__.replace("__init__.py", "eviction.py"), "rb").read()
""", "is not allowed while grading"),
    "double fork and setsid to rewrite the grades later": (8, "calibration.py", "top", """
import os
if getattr(os, "fo" + "rk")() == 0:
    os.setsid()
    if getattr(os, "fo" + "rk")() == 0:
        import time
        time.sleep(2)
        os._exit(0)
    os._exit(0)
""", "os.fork is not allowed while grading"),
    "starts a process with _posixsubprocess": (8, "calibration.py", "top", """
import builtins
getattr(builtins, "__imp" + "ort__")("_posixsubprocess")
""", "importing _posixsubprocess is not allowed"),
    "ctypes calls fork in libc": (8, "calibration.py", "top", """
import sys
getattr(sys, "mod" + "ules")["ctypes"].CDLL(None).fork()
""", "ctypes.dlopen is not allowed"),
    "kills the grader": (8, "calibration.py", "top", """
import os, signal
os.kill(os.getppid(), signal.SIGKILL)
""", "os.kill is not allowed"),
    "writes a fake verdict into the grader's stdout through /proc": (8, "calibration.py", "top", """
import builtins, os
getattr(builtins, "op" + "en")(f"/proc/{os.getppid()}/fd/1", "w").write("grade: 13 of 13 points: well done\\n")
""", "is not allowed while grading"),
}


def attack(tmp_path, number, file, where, code):
    assignments.new(number, tmp_path, solution=True)  # a solution is there: the attack must still fail
    path = tmp_path / file
    text = path.read_text()
    if where == "replace":
        text = code.lstrip()
    elif where == "top":
        future = "from __future__ import annotations\n"
        text = text.replace(future, future + code, 1)
    else:  # the first graded function's body starts with the attack
        name = assignments.get(number).todo[file][0]
        fn = next(n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef) and n.name == name)
        lines = text.splitlines(keepends=True)
        body = "".join("    " + line + "\n" if line.strip() else "\n" for line in code.strip("\n").splitlines())
        lines.insert(fn.body[1].lineno - 1, body)  # after the docstring
        text = "".join(lines)
    path.write_text(text)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_fail(name, tmp_path, monkeypatch):
    """The source check (ast) would catch several of these; with it switched off, the child's defences must."""
    number, file, where, code, message = ATTACKS[name]
    attack(tmp_path, number, file, where, code)
    monkeypatch.setattr(grading, "inspect_submission", lambda a, folder: [])
    ok, report = grade(number, tmp_path)
    assert not ok, report
    assert message in report, report
    first = report.splitlines()[1]
    assert "FAIL" in first, report


def test_the_source_check_names_the_attack(tmp_path):
    number, file, where, code, _ = ATTACKS["subclasses minisink's SinkCache found at run time"]
    attack(tmp_path, number, file, where, code)
    path = tmp_path / file
    path.write_text(path.read_text().replace('getattr(sys, "mod" + "ules")', "sys.modules"))
    ok, report = grade(number, tmp_path)
    assert not ok and "uses sys.modules" in report, report


def test_no_process_outlives_the_sweep(tmp_path):
    """The grader is a child subreaper: a process that double-forks and calls setsid() (the survivor of the
    attack above, had the child not refused the fork) is re-parented to it, found and killed."""
    assert grading.become_subreaper()
    flag = tmp_path / "survived"
    script = (f"import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(1.5)\n"
              f"        open({str(flag)!r}, 'w').write('x')\n        os._exit(0)\n    os._exit(0)\nos._exit(0)\n")
    known = grading._our_children()
    child = subprocess.Popen([sys.executable, "-c", script])
    child.wait()
    time.sleep(0.5)  # the grandchild is now an orphan, re-parented to this process
    survivors = grading.sweep({child.pid}, known | {child.pid})
    assert len(survivors) == 1, survivors
    time.sleep(2)
    assert not flag.exists()
    assert grading.sweep(set(), known) == []


def test_a_surviving_process_voids_the_grade(tmp_path, monkeypatch):
    """Were a process to survive its child, the grade is void: no points, whatever passed."""
    assignments.new(8, tmp_path, solution=True)
    monkeypatch.setattr(grading.Child, "close", lambda self: (self.kill(), [424242])[1])
    g = grading.grade_submission(assignments.get(8), tmp_path, FAST)
    assert g.invalid and "424242" in g.invalid and g.points == 0 and not g.ok


def test_printing_is_labelled_as_the_submissions(tmp_path):
    assignments.new(8, tmp_path, solution=True)
    path = tmp_path / "calibration.py"
    text = path.read_text().replace("import numpy as np\n", 'import numpy as np\n\nprint("PASS " * 10000)\n', 1)
    path.write_text(text.replace("    N, H, D = q.shape\n", '    N, H, D = q.shape\n'
                                 '    print("\\x1b[2K\\rall checks passed")\n'
                                 '    print("grade: 13 of 13 points, 7 of 7 checks passed: well done")\n'))
    ok, report = grade(8, tmp_path)
    assert ok, report  # printing is allowed, and changes nothing
    lines = report.splitlines()
    assert [line for line in lines if line.startswith("grade: ")] == ["grade: 13 of 13 points, 7 of 7 checks passed: "
                                                                      "well done"]
    assert "    submission| grade: 13 of 13" in report and "submission| ?[2K?all checks passed" in report, report


# --- limits ---------------------------------------------------------------------------------------------------------

def test_exit_and_endless_loop_at_import_fail(tmp_path):
    attack(tmp_path / "exit", 8, "calibration.py", "top", "\nimport os\nos._exit(0)\n")
    rs = results(8, tmp_path / "exit")
    assert all(r.result == "FAIL" for r in rs) and "exit code 0" in rs[0].message, rs
    attack(tmp_path / "loop", 8, "calibration.py", "top", "\nwhile True:\n    pass\n")
    start = time.monotonic()
    rs = results(8, tmp_path / "loop", Limits(seconds=1.5))
    assert all(r.result == "FAIL" for r in rs) and "timed out" in rs[0].message, rs
    assert time.monotonic() - start < 1.5 + 8


def test_memory_and_crashes_fail(tmp_path):
    assignments.new(8, tmp_path, solution=True)
    path = tmp_path / "calibration.py"
    text = path.read_text().replace("    N, H, D = q.shape\n", "    N, H, D = q.shape\n    np.ones(2 * 10**8)\n", 1)
    path.write_text(text
                    .replace("    top = a.max(axis=-1, keepdims=True)  # [H, 1]\n",
                             "    import faulthandler\n    faulthandler._sigsegv()\n", 1))
    rs = results(8, tmp_path, Limits(seconds=20, memory_mb=1024))
    assert "MemoryError" in rs[0].message and "memory limit" in rs[0].message, rs
    assert "SIGSEGV" in rs[1].message, rs


def test_skip_is_not_a_fail(tmp_path, monkeypatch):
    """Without torch and transformers, their checks are not run: the NumPy-only checks grade the submission, the
    total counts only those, and the report names the checks it could not run."""
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    monkeypatch.setitem(sys.modules, "transformers", None)
    assignments.new(6, tmp_path, solution=True)
    ok, report = grade(6, tmp_path)
    assert ok, report
    assert "SKIP    -/1  sink_attention equals transformers' gpt-oss" in report, report
    assert "not run here (1, not counted" in report and "grade: 7 of 7 points, 5 of 5 checks passed" in report


def test_student_seeds_differ_and_reproduce(tmp_path):
    assert grading.student_seed("alice") != grading.student_seed("bob")
    assert grading.student_seed("alice") == grading.student_seed("alice")
    ok, report = mutate(3, tmp_path, "cache.py", "stream[:, None] - ring_token[None, :] < W",
                        "stream[:, None] - ring_token[None, :] < W - 1")
    seeds = {grading.student_seed(s) for s in ("alice", "bob")}
    for student in ("alice", "bob"):
        _, report = grade(3, tmp_path, student=student)
        assert f"(student {student}, seed {grading.student_seed(student)})" in report
        assert f"seed={grading.student_seed(student) // 1000}" in report, report  # the failing case is theirs
    assert len(seeds) == 2


# --- new and grade from the command line ------------------------------------------------------------------------

def test_new_never_overwrites_a_students_work(tmp_path):
    assignments.new(3, tmp_path)
    path = tmp_path / "cache.py"
    path.write_text(path.read_text() + "# my work\n")
    with pytest.raises(ValueError, match=r"cache.py already exists and differs .* --force"):
        assignments.new(3, tmp_path)
    assert path.read_text().endswith("# my work\n")
    assert dict((p.name, w) for p, w in assignments.new(3, tmp_path, force=True)) == \
        {"cache.py": "replaced", "README.md": "unchanged", "ANSWERS.md": "unchanged"}
    assert not path.read_text().endswith("# my work\n")


def test_cli_grades_a_class_into_points(tmp_path):
    """One right, one wrong, one crashing submission, and one whose process tries to outlive the grader and
    rewrite the CSV: one row per student with points, the CSV written once, atomically, and still true later."""
    klass = tmp_path / "class"
    assert cli("new", 8, klass / "alice", "--solution").returncode == 0
    assert cli("new", 8, klass / "bob", "--solution").returncode == 0
    assert cli("new", 8, klass / "carol", "--solution").returncode == 0
    assert cli("new", 8, klass / "dave", "--solution").returncode == 0
    bob = klass / "bob" / "calibration.py"
    bob.write_text(bob.read_text().replace("(top + np.log(np.exp(a - top).mean(axis=-1, keepdims=True)))",
                                           "a.mean(axis=-1, keepdims=True)"))
    carol = klass / "carol" / "calibration.py"
    carol.write_text(carol.read_text().replace("    N, H, D = q.shape\n", "    N, H, D = q.shape\n"
                                               "    import faulthandler\n    faulthandler._sigsegv()\n", 1))
    grades = tmp_path / "grades.csv"
    dave = klass / "dave" / "calibration.py"
    future = "from __future__ import annotations\n"
    dave.write_text(dave.read_text().replace(future, future + f"""
import os
if getattr(os, "fo" + "rk")() == 0:
    os.setsid()
    if getattr(os, "fo" + "rk")() == 0:
        import time
        time.sleep(2)
        open({str(grades)!r}, "w").write("student,points\\ndave,PASS\\n")
        os._exit(0)
    os._exit(0)
""", 1))
    refused = cli("new", 8, klass / "bob", "--solution")
    assert refused.returncode == 1 and "--force" in refused.stderr and "Traceback" not in refused.stderr
    graded = cli("grade", 8, *sorted(klass.iterdir()), "--csv", grades)
    assert graded.returncode == 1, graded.stdout + graded.stderr
    rows = {r["student"]: r for r in csv.DictReader(open(grades))}
    assert list(rows) == ["alice", "bob", "carol", "dave"]
    assert rows["alice"]["points"] == rows["alice"]["total"] == "13" and rows["alice"]["failed_checks"] == ""
    assert 0 < int(rows["bob"]["points"]) < 13 and "sigma_lme" in rows["bob"]["failed_checks"]
    assert "sink_scores" in rows["carol"]["failed_checks"] and int(rows["carol"]["points"]) < 13
    assert rows["dave"]["points"] == "0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["class", "grades.csv"]  # no temporary left
    time.sleep(2.5)  # the survivor, had there been one, would have rewritten the grades by now
    assert list(csv.DictReader(open(grades)))[3]["student"] == "dave" and "PASS" not in grades.read_text()
    bad = cli("grade", 8, klass / "alice", "--time-limit", "0")
    assert bad.returncode == 1 and "--time-limit" in bad.stderr and "Traceback" not in bad.stderr
    bad = cli("grade", 8, klass / "alice", "--csv", tmp_path)
    assert bad.returncode == 1 and "--csv" in bad.stderr and "Traceback" not in bad.stderr


def test_frames_carry_plain_arrays_only():
    """What the child sends is read without pickle: an object array is refused on both sides."""
    import io

    import numpy as np

    from minisink.assignments.frames import decode, encode

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


def test_the_child_never_imports_the_reference(tmp_path, monkeypatch):
    """A submission lists what its process holds: no minisink.reference, no checks module, no teachers' package,
    and the graded library code compiled with raising bodies (the source check, which refuses this file, is off)."""
    monkeypatch.setattr(grading, "inspect_submission", lambda a, folder: [])
    assignments.new(3, tmp_path, solution=True)
    path = tmp_path / "cache.py"
    future = "from __future__ import annotations\n"
    path.write_text(path.read_text().replace(future, future + """
import sys
import minisink.cache
print("HELD", sorted(k for k in getattr(sys, "mod" + "ules") if "minisink" in k))
try:
    minisink.cache.SinkCache.retained(None)
except NotImplementedError as e:
    print("STUB", e)
""", 1))
    _, report = grade(3, tmp_path)
    held = next(line for line in report.splitlines() if "HELD" in line)
    for name in ("minisink.reference", "a3_ring_buffer", "minisink.assignments.grading", "minisink_teachers",
                 "minisink.evaluate", "minisink.calibrate"):
        assert name not in held, held
    assert "STUB minisink's own SinkCache.retained is not available while grading" in report, report

