"""The docs stay true: every chapter runs, as a notebook, and nothing in the repo cites a file that is not in it.

For every chapter docs/NN-*.md: docs/make_notebooks.py builds its notebook (jupytext reads the markdown; the
```python blocks become code cells, in order, after a setup cell) and runs it in a fresh kernel with the repo as
its working directory, as a reader would run it; a failure names the chapter and the line of the failing block.
So the notebooks CI checks are the chapters. Every ```python block is run: there are no sketches that are exempt.
Chapters that use the real model (they call weights_fetch.fetch) are marked `real`; the others run on tiny random
models. Needs the `notebooks` extra (jupytext, nbformat, nbclient, ipykernel).

Also checked:
- each `module::name` reference in docs (a .py file, then a name) names a function, class or method it defines;
- each relative link in docs points at a file that exists;
- no tracked text file (docs, README, code, tests) refers to a file the repo does not have (see `missing_files`).
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CHAPTERS = sorted(DOCS.glob("[0-9][0-9]-*.md"))
ALL_DOCS = sorted(DOCS.rglob("*.md"))
SLOW_BLOCK = 30.0  # seconds: a guard against an accidentally heavy block (they take < 5 s on an idle machine)

# Files a reference may name before they exist (none now: every cited file is in the repo).
PENDING: set[str] = set()
# Files of other public projects that the repo cites by bare name (the project is named beside each citation).
EXTERNAL = {
    "convert_hf_to_gguf.py",  # llama.cpp's Hugging Face -> GGUF converter (its `permute`)
}

sys.path.insert(0, str(DOCS))
from make_notebooks import python_blocks, uses_real_model  # noqa: E402  (one parser for both)


def notebook_tools():
    """jupytext and nbclient, or a skip naming the extra to install."""
    for module in ("jupytext", "nbformat", "nbclient", "ipykernel"):
        pytest.importorskip(module, reason=f"the chapters run as notebooks: pip install -e '.[notebooks]' ({module})")


def chapter_params():
    for path in CHAPTERS:
        marks = [pytest.mark.real] if uses_real_model(path.read_text(encoding="utf-8")) else []
        yield pytest.param(path, marks=marks, id=path.stem)


@pytest.mark.parametrize("path", list(chapter_params()))
def test_chapter_runs_as_a_notebook(path, request):
    notebook_tools()
    from make_notebooks import chapter_notebook, execute

    if uses_real_model(path.read_text(encoding="utf-8")):
        request.getfixturevalue("real_model_dir")  # fetched once per session, before the chapter asks for it
    nb = chapter_notebook(path)
    timings = execute(nb, path.name)
    assert len(timings) == len(python_blocks(path.read_text(encoding="utf-8"))) + 1  # every block, and the setup
    slow = [(line, s) for line, s in timings if s > SLOW_BLOCK]
    assert not slow, f"{path.name}: blocks at lines {slow} take over {SLOW_BLOCK:.0f} s: keep doc blocks cheap"


def test_a_failing_block_is_named_by_its_line(tmp_path):
    """A chapter's failure points at the markdown line of the block, not at a cell number."""
    notebook_tools()
    from make_notebooks import BlockFailed, chapter_notebook, execute

    chapter = tmp_path / ("99-broken" + ".md")
    chapter.write_text("# 99\n\n```python\nx = 1\n```\n\nText.\n\n```python\nassert x == 2, 'x is not 2'\n```\n")
    with pytest.raises(BlockFailed, match=re.escape(f"{chapter.name}, the python block at line 10 fails: "
                                                    "AssertionError: x is not 2")):
        execute(chapter_notebook(chapter), chapter.name)


def test_no_block_is_exempt():
    """Sketches that do not run rot: every ```python block runs, and the old escape hatch is gone."""
    for path in CHAPTERS:
        for line, source in python_blocks(path.read_text(encoding="utf-8")):
            assert not source.lstrip().startswith("# doctest"), \
                f"{path.name}, the block at line {line} asks to be skipped: make it run on a tiny model"


def test_setup_cell_installs_nothing_where_minisink_is_installed():
    """The notebooks' first cell is a no-op here (minisink importable), and says how it would install otherwise."""
    from make_notebooks import setup_source

    source = setup_source(real_model=False)
    namespace = {}
    calls = []
    real_check_call = subprocess.check_call
    subprocess.check_call = lambda *a, **k: calls.append(a)
    try:
        exec(compile(source, "setup", "exec"), namespace)
    finally:
        subprocess.check_call = real_check_call
    assert calls == []
    assert 'find_spec("minisink") is None' in source and '"-e", f"{CLONE}[fetch]"' in source
    assert "weights_fetch.fetch(" in setup_source(real_model=True)


def test_chapters_exist_and_are_listed():
    assert len(CHAPTERS) >= 5
    toc = (DOCS / "README.md").read_text(encoding="utf-8")
    for path in CHAPTERS:
        assert f"({path.name})" in toc, f"docs/README.md does not link {path.name}"
        assert python_blocks(path.read_text(encoding="utf-8")) or path.stem.startswith("10"), \
            f"{path.name} has no runnable python block"


def defined_names(path: Path) -> set[str]:
    """Top-level functions and classes, and Class.method, of a Python file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{m.name}" for m in node.body if isinstance(m, ast.FunctionDef)}
    return names


REFERENCE = re.compile(r"`((?:[\w.]+/)*[\w]+\.py)::([\w.]+(?:/[\w]+)*)`")


@pytest.mark.parametrize("path", ALL_DOCS, ids=lambda p: str(p.relative_to(DOCS)))
def test_code_references_exist(path):
    text = path.read_text(encoding="utf-8")
    for file, names in REFERENCE.findall(text):
        candidates = [ROOT / file, ROOT / "minisink" / file]
        source = next((c for c in candidates if c.is_file()), None)
        if source is None and is_pending(file):
            continue
        assert source is not None, f"{path.name} refers to {file}, which does not exist"
        first, *more = names.split("/")  # `cache.py::FullCache.begin/blocks/end`
        cls = first.rsplit(".", 1)[0] if "." in first else None
        wanted = [first] + [f"{cls}.{m}" if cls else m for m in more]
        missing = [n for n in wanted if n not in defined_names(source)]
        assert not missing, f"{path.name} refers to {file}::{', '.join(missing)}, which {file} no longer defines"


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("path", ALL_DOCS, ids=lambda p: str(p.relative_to(DOCS)))
def test_relative_links_exist(path):
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if "://" in target:
            continue
        resolved = (path.parent / target).resolve()
        if is_pending(str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else target):
            continue
        assert resolved.exists(), f"{path.relative_to(DOCS)} links {target}, which does not exist"


# --- no file cites a file the repo does not have --------------------------------------------------------------

URL = re.compile(r"\w+://\S+")
# A file name with one of these extensions, optionally behind directories and ./ or ../; or any ../ path
FILE_REF = re.compile(r"(?<![\w/.~$-])((?:\.\.?/)*(?:[\w.-]+/)*[\w-]+\.(?:md|py|toml|ipynb|png|json|txt|csv|npz)|"
                      r"(?:\.\./)+[\w.-]+(?:/[\w.-]+)*)(?![\w/-])")
BARE_CHECKED = (".md", ".py")  # bare names (no directory) are checked for these; data files are a run's outputs


def tracked_files() -> list[Path]:
    """Every tracked file (a plain walk where there is no git checkout)."""
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        files = [ROOT / f for f in out.splitlines()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "venv", "build", "dist", "notebooks", "runs"}
        files = [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]
    return sorted(files)


def is_text(path: Path) -> bool:
    """The files whose references are checked: .md, .py, .toml, and the CI script."""
    return path.suffix in (".md", ".py", ".toml") or path.relative_to(ROOT).as_posix() == ".ci/run"


def is_pending(ref: str) -> bool:
    ref = ref.removeprefix("./")
    return any(ref == p or ref.endswith("/" + p) or ref.rstrip("/") == p.rstrip("/") or
               ("/" not in ref and Path(p.rstrip("/")).name == ref) for p in PENDING)


def missing_files(path: Path, text: str, basenames: set[str]) -> list[str]:
    """The file references in `text` (a file at `path`) that point at nothing in the repo.

    Checked: paths rooted at one of the repo's own top-level folders (a figure under docs/img/) or relative to the
    file (a ../ path; assignments/README.md from docs/, where docs/assignments exists); and bare .md and .py names,
    which must be the name of some file in the repo (cache.py means minisink/cache.py). Not checked: URLs, paths under
    folders the repo does not have (a student's hw3/cache.py, a run's runs/sink.npz, another project's files),
    and the PENDING and EXTERNAL names."""
    top = {p.name for p in ROOT.iterdir()}
    missing = []
    for ref in FILE_REF.findall(URL.sub(" ", text)):
        if is_pending(ref) or ref in EXTERNAL:
            continue
        parts = ref.split("/")
        if len(parts) == 1:
            if ref.endswith(BARE_CHECKED) and ref not in basenames:
                missing.append(ref)
            continue
        if parts[0] == ".." and path.relative_to(ROOT).parts[0] == "tests":
            continue  # a test's ../ path is an input it feeds the code (a path that must not escape), not a citation
        relative = path.parent / ref
        first = parts[0] if parts[0] not in (".", "..") else None
        if first is None or (path.parent / first).is_dir():
            if not relative.exists():
                missing.append(ref)
        elif first in top and not (ROOT / ref).exists():
            missing.append(ref)
    return missing


def test_no_file_cites_a_missing_file():
    files = tracked_files()
    basenames = {p.name for p in files}
    bad = []
    for path in filter(is_text, files):
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            bad += [f"{path.relative_to(ROOT)}:{n}: {ref}" for ref in missing_files(path, line, basenames)]
    assert not bad, "these lines refer to files the repo does not have (cite the paper, a public source or a " \
                    "measurement in the repo instead):\n" + "\n".join(bad)


def test_missing_file_check_catches_what_it_must():
    """The check above fails on a missing file and lets through what it must: a test of the test. (The missing
    names are built from pieces, so that this file does not cite them.)"""
    names = {"cache.py", "README.md", "03-kv-cache.md"}
    here = DOCS / "05-ring-buffer.md"
    gone, nothing = "GONE" + ".md", ".." + "/minisink/nothing" + ".py"
    image, away = "docs/img/none" + ".png", "../" + "away"
    assert missing_files(here, f"see {gone} and {nothing}", names) == [gone, nothing]
    assert missing_files(here, f"{image}, [x](03-kv-cache.md), cache.py, https://a.b/c/d.py", names) == [image]
    assert missing_files(here, f"hw3/cache.py runs/sink.npz sink.npz {away}", names) == [away]
    assert missing_files(here, "docs/07-why-sinks-exist.md minisink/eviction.py", names) == []  # both exist
