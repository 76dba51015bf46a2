"""The docs' code blocks run, so the tutorial never rots (STYLE.md section 9).

For every chapter docs/NN-*.md: the ```python blocks are run in order in one namespace (exec), as a reader would
paste them into one Python session. Blocks fenced ```text or ```console are not run; a python block whose first
line is `# doctest: skip` is a sketch and is not run either (keep those few). Chapters that use the real model
(they call weights_fetch.fetch) are marked `real`; the others run on tiny random models.

Also checked, for every markdown file under docs/: each `path.py::name` reference names a function, class or
method that exists in that file, and each relative link points at a file that exists.
"""

import ast
import re
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CHAPTERS = sorted(DOCS.glob("[0-9][0-9]-*.md"))
ALL_DOCS = sorted(DOCS.rglob("*.md"))
PENDING = {"results.md"}  # written by another part of the project; a link to it is allowed before it exists
SLOW_BLOCK = 30.0  # seconds: a guard against an accidentally heavy block (they take < 5 s on an idle machine)

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, source) of every runnable ```python block."""
    blocks = []
    for m in FENCE.finditer(text):
        lang, body = m.group(1), m.group(2)
        if lang != "python" or body.lstrip().startswith("# doctest: skip"):
            continue
        blocks.append((text[:m.start()].count("\n") + 2, body))
    return blocks


def uses_real_model(text: str) -> bool:
    return "weights_fetch.fetch(" in text


def run_chapter(path: Path):
    namespace = {"__name__": f"docs_{path.stem.replace('-', '_')}"}
    for line, source in python_blocks(path.read_text(encoding="utf-8")):
        start = time.perf_counter()
        try:
            exec(compile(source, f"{path.name}:{line}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{path.name}, the python block at line {line} fails: {type(e).__name__}: {e}") \
                from e
        took = time.perf_counter() - start
        assert took < SLOW_BLOCK, f"{path.name}, the block at line {line} takes {took:.1f} s: keep doc blocks cheap"


def chapter_params():
    for path in CHAPTERS:
        marks = [pytest.mark.real] if uses_real_model(path.read_text(encoding="utf-8")) else []
        yield pytest.param(path, marks=marks, id=path.stem)


@pytest.mark.parametrize("path", list(chapter_params()))
def test_chapter_code_runs(path, request):
    if uses_real_model(path.read_text(encoding="utf-8")):
        request.getfixturevalue("real_model_dir")  # fetched once per session, before the chapter asks for it
    run_chapter(path)


def test_chapters_exist_and_are_listed():
    assert len(CHAPTERS) >= 5
    toc = (DOCS / "README.md").read_text(encoding="utf-8")
    for path in CHAPTERS:
        assert f"({path.name})" in toc, f"docs/README.md does not link {path.name}"
        assert python_blocks(path.read_text(encoding="utf-8")) or path.stem.startswith("08"), \
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
        if resolved.name in PENDING:
            continue
        assert resolved.exists(), f"{path.relative_to(DOCS)} links {target}, which does not exist"
