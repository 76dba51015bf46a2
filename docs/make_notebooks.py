"""Every chapter of docs/ as a Jupyter notebook, built from its markdown (the one source; jupytext reads it).

    python docs/make_notebooks.py --out notebooks/              # one .ipynb per chapter (notebooks/ is gitignored)
    python docs/make_notebooks.py --out notebooks/ --execute    # ... and run each one, as CI does
    python docs/make_notebooks.py --out nb/ --install-from "git+https://example.org/you/minisink"   # for a class

Each ```python block of a chapter becomes a code cell, in order; the prose, formulas and ```text/```console blocks
become markdown cells. A first cell is added that makes the notebook run on a plain Jupyter or a hosted one:

- if `import minisink` works (a venv with minisink installed, as in CI), it installs nothing;
- otherwise, if the clone the notebook was built in is still there, it runs `pip install -e CLONE[fetch]`;
- otherwise it runs `pip install "minisink[fetch] @ INSTALL_FROM"`, where INSTALL_FROM is the pip address the
  teacher gave with --install-from (a git URL, a wheel); with none given it stops and says what to do.
Chapters that use the real model then fetch it (a no-op once it is on disk: ~/.cache/minisink or $MINISINK_HOME).

Needs the `notebooks` extra (jupytext, nbformat; nbclient and ipykernel to execute). tests/test_docs.py runs every
chapter through `execute`, so the notebooks are what CI checks.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CHAPTERS = sorted(DOCS.glob("[0-9][0-9]-*.md"))
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
NO_INSTALL_FROM = ""  # --install-from not given: the setup cell can only use the clone it was built in

SETUP = '''\
# Setup (added by docs/make_notebooks.py): install minisink if it is missing{fetch_note}.
# Where minisink is already installed (a venv, CI) this installs nothing.
import importlib.util, subprocess, sys
from pathlib import Path

CLONE = Path({clone!r})            # the clone this notebook was built in
INSTALL_FROM = {install_from!r}    # a pip address for minisink (git URL, wheel), given by whoever built it
if importlib.util.find_spec("minisink") is None:
    if (CLONE / "pyproject.toml").is_file():
        target = ["-e", f"{{CLONE}}[fetch]"]
    elif INSTALL_FROM:
        target = [f"minisink[fetch] @ {{INSTALL_FROM}}"]
    else:
        raise RuntimeError("minisink is not installed and this notebook knows no place to install it from: "
                           "set INSTALL_FROM above to a pip address (e.g. git+https://... of the course's copy)")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", *target])
    importlib.invalidate_caches()
{fetch}'''

FETCH = '''
import weights_fetch

weights_fetch.fetch(progress=False)  # SmolLM2-135M-Instruct: a 93 MB download, once
'''


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, source) of every ```python block, in order."""
    return [(text[:m.start()].count("\n") + 2, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == "python"]


def uses_real_model(text: str) -> bool:
    return "weights_fetch.fetch(" in text


def setup_source(real_model: bool, install_from: str = NO_INSTALL_FROM) -> str:
    return SETUP.format(clone=str(ROOT), install_from=install_from, fetch=FETCH if real_model else "",
                        fetch_note=", fetch the model this chapter uses" if real_model else "")


def chapter_notebook(path: Path, install_from: str = NO_INSTALL_FROM):
    """The notebook of one chapter: the setup cell, then the chapter as jupytext reads it. Each code cell keeps
    the line of its ```python block in the markdown (metadata `minisink_line`), for error messages."""
    import jupytext
    import nbformat

    text = path.read_text(encoding="utf-8")
    nb = jupytext.reads(text, fmt="md")
    code = [c for c in nb.cells if c.cell_type == "code"]
    blocks = python_blocks(text)
    if [c.source.strip() for c in code] != [b.strip() for _, b in blocks]:
        raise ValueError(f"{path.name}: jupytext's code cells are not the chapter's ```python blocks "
                         f"({len(code)} cells, {len(blocks)} blocks)")
    for cell, (line, _) in zip(code, blocks, strict=True):
        cell.metadata["minisink_line"] = line
    setup = nbformat.v4.new_code_cell(setup_source(uses_real_model(text), install_from))
    setup.metadata["minisink_line"] = 0
    nb.cells.insert(0, setup)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata.pop("jupytext", None)
    return nb


class BlockFailed(AssertionError):
    """A chapter's code block failed in its notebook: says which block of which chapter, and why."""


def execute(nb, name: str, cwd: Path = ROOT, timeout: float = 600) -> list[tuple[int, float]]:
    """Run the notebook in a fresh kernel (ipykernel, this Python) with `cwd` as its working directory, so that a
    clone's own minisink is the one imported. Returns (markdown line, seconds) per code cell. Raises BlockFailed
    naming the chapter and the line of the failing ```python block."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute()
    except CellExecutionError as e:
        failed = next((c for c in nb.cells if c.cell_type == "code" and any(
            o.get("output_type") == "error" for o in c.get("outputs", []))), None)
        line = failed.metadata.get("minisink_line") if failed is not None else None
        where = "the setup cell" if line == 0 else f"the python block at line {line}"
        error = next((f"{o['ename']}: {o['evalue']}" for o in (failed.outputs if failed is not None else [])
                      if o.get("output_type") == "error"), str(e).splitlines()[-1] if str(e) else "")
        raise BlockFailed(f"{name}, {where} fails: {error}") from None
    return [(c.metadata.get("minisink_line"), seconds(c)) for c in nb.cells if c.cell_type == "code"]


def seconds(cell) -> float:
    """How long a cell ran, from the timestamps nbclient records in its metadata."""
    from datetime import datetime

    t = cell.metadata.get("execution", {})
    start, end = t.get("iopub.execute_input"), t.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "notebooks", help="where the .ipynb go (default notebooks/)")
    p.add_argument("--install-from", default=NO_INSTALL_FROM,
                   help="a pip address the setup cell installs minisink from when it is not installed and the "
                        "clone is not there (a git URL of your copy, a wheel)")
    p.add_argument("--execute", action="store_true", help="run every notebook and keep its outputs")
    p.add_argument("chapters", nargs="*", help="chapter files (default: every docs/NN-*.md)")
    args = p.parse_args(argv)
    try:
        import nbformat
    except ImportError:
        raise SystemExit("error: the notebooks need jupytext and nbformat: pip install -e '.[notebooks]'") from None
    args.out.mkdir(parents=True, exist_ok=True)
    for path in [Path(c) for c in args.chapters] or CHAPTERS:
        nb = chapter_notebook(path, args.install_from)
        if args.execute:
            execute(nb, path.name)
        target = args.out / f"{path.stem}.ipynb"
        tmp = target.with_name(f".{target.name}.tmp")
        nbformat.write(nb, str(tmp))
        tmp.replace(target)  # never a half-written notebook
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
