"""The assignments prove both directions: the reference solution passes every check, an untouched skeleton fails,
and a few plausible student mistakes (float32 angles, adjacent-pair RoPE, no renumbering, a wrong eviction) fail
the check that is meant to catch them."""

import subprocess
import sys

import pytest

from minisink import assignments


def grade(number, folder):
    lines = []
    ok = assignments.grade(number, folder, out=lines.append)
    return ok, "\n".join(lines)


@pytest.mark.parametrize("number", sorted(assignments.ASSIGNMENTS))
def test_reference_solution_passes(number, tmp_path):
    assignments.new(number, tmp_path, solution=True)
    ok, report = grade(number, tmp_path)
    assert ok, report
    assert "FAIL" not in report


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
    assert "PASS" not in report.replace("SKIP", "")
    first = {file: qualnames[0] for file, qualnames in assignments.get(number).todo.items()}
    for q in first.values():
        assert f"not implemented yet: {q}" in report, report
    assert len(written) == len(first) + 1


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
                             "rms_norm equals the reference"),
    "rotate adjacent pairs": (1, "rope.py", "halves[:, :, ::-1] * sin",
                              "x.reshape(T, n_heads, D // 2, 2)[..., ::-1].reshape(T, n_heads, 2, D // 2) * sin",
                              "apply_rope with the reference rotation"),
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
}


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mistakes_are_caught(name, tmp_path):
    number, file, old, new, check = MUTANTS[name]
    ok, report = mutate(number, tmp_path, file, old, new)
    assert not ok, report
    failed = [line for line in report.splitlines() if line.strip().startswith("FAIL")]
    assert any(check in line for line in failed), report
    assert "max abs diff" in report or "retained()" in report, report


def test_cli_new_and_grade(tmp_path):
    cli = [sys.executable, "-m", "minisink.cli", "assignment"]
    done = subprocess.run(cli + ["new", "3", str(tmp_path / "hw")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "hw" / "cache.py").is_file()
    graded = subprocess.run(cli + ["grade", "3", str(tmp_path / "hw")], capture_output=True, text=True, timeout=60)
    assert graded.returncode != 0 and "not implemented yet: SinkCache.begin" in graded.stdout
    subprocess.run(cli + ["new", "3", str(tmp_path / "sol"), "--solution"], check=True, capture_output=True)
    graded = subprocess.run(cli + ["grade", "3", str(tmp_path / "sol")], capture_output=True, text=True, timeout=60)
    assert graded.returncode == 0, graded.stdout + graded.stderr
