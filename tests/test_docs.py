"""The docs stay true: every chapter runs, as a notebook, and nothing in the repo cites a file that is not in it.

For every chapter docs/NN-*.md: docs/make_notebooks.py builds its notebook (jupytext reads the markdown; the
```python blocks become code cells, in order, after a setup cell) and runs it in a fresh kernel with the repo as
its working directory, as a reader would run it; a failure names the chapter and the line of the failing block.
So the notebooks CI checks are the chapters. Every ```python block is run: there are no sketches that are exempt.
Chapters that use the real model (they call weights_fetch.fetch) are marked `real`; the others run on tiny random
models. Needs the `notebooks` extra (jupytext, nbformat, nbclient, ipykernel).

Also checked:
- each `module::name` reference in docs (a .py file, then a name) names a function, class or method it defines;
- each relative link in docs points at a file that exists, and each link in any .md of the repo at a file and, after
  a #, at a heading of that file (GitHub's anchors);
- no tracked text file (docs, README, code, tests) refers to a file the repo does not have (see `missing_files`);
- figures the docs quote are the ones measured where they live (results.md's tables, README's `minisink bench`
  table, the code's defaults), the layers they name match the per-layer tables (numbered from 0), and sizes are
  written in binary units (KiB, MiB).
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


def test_notebook_links_point_at_notebooks_and_at_the_clones_files(tmp_path):
    """In a notebook, a link to the next chapter opens its notebook, and a link to results or a figure the file in
    the clone, from the folder the notebooks are written to."""
    notebook_tools()
    from make_notebooks import chapter_notebook

    out = tmp_path / "nb"
    out.mkdir()
    for path in CHAPTERS:
        nb = chapter_notebook(path, out=out)
        for cell in (c for c in nb.cells if c.cell_type == "markdown"):
            for target in MD_LINK.findall(prose(cell.source)):
                file = target.partition("#")[0]
                if not file or "://" in file:
                    continue
                if file.endswith(".ipynb"):
                    assert (DOCS / file).with_suffix(".md") in CHAPTERS, f"{path.name}: {target}"
                else:
                    assert (out / file).resolve().exists(), f"{path.name}: {target} is not a file from {out}"
    ring = "\n".join(c.source for c in chapter_notebook(DOCS / "05-ring-buffer.md", out=out).cells)
    assert "(06-streaming-evaluation.ipynb)" in ring and "README.md#four-kinds-of-position)" in ring


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
        assert python_blocks(path.read_text(encoding="utf-8")) or path.stem.endswith("cli-tour"), \
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


# --- every link in every .md of the repo reaches a file, and its anchor a heading -----------------------------

FENCED = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
MD_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text without its fenced code blocks and `code spans` (a link or a unit word there is code or output)."""
    text = FENCED.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a markdown file's headings: lower case, punctuation dropped, spaces -> hyphens, and
    -1, -2, ... for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", prose(text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def broken_links(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    bad = []
    for target in MD_LINK.findall(prose(text)):
        if "://" in target or target.startswith("mailto:"):
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            bad.append(f"{target}: no file {file}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text(encoding="utf-8")):
            bad.append(f"{target}: {resolved.name} has no heading #{anchor}")
    return bad


def test_every_markdown_link_reaches_a_file_and_an_anchor():
    """Any .md of the repo (docs, assignments, README): a renamed chapter or a reworded heading breaks a link."""
    bad = [f"{path.relative_to(ROOT)}: {b}" for path in tracked_files() if path.suffix == ".md"
           for b in broken_links(path)]
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_the_link_check_catches_a_missing_file_and_a_missing_anchor(tmp_path):
    a, gone = "a" + ".md", "gone" + ".md"  # built from pieces, so that this file does not cite them
    (tmp_path / a).write_text("# Title · one\n\n## Why sinks exist: a test\n\n## Twice\n\n## Twice\n")
    page = tmp_path / ("b" + ".md")
    page.write_text(f"[ok]({a}#why-sinks-exist-a-test) [ok]({a}#title--one) [ok]({a}#twice-1) [self](#here)\n"
                    f"# Here\n```\n[in code]({gone})\n```\n[x]({gone}) [y]({a}#nowhere) [z]({a}#twice-2)\n")
    assert broken_links(page) == [f"{gone}: no file {gone}", f"{a}#nowhere: {a} has no heading #nowhere",
                                  f"{a}#twice-2: {a} has no heading #twice-2"]


# --- facts the docs quote: the same as the measurement or the code they come from --------------------------------

def table(text: str, header: str) -> dict[str, list[str]]:
    """A markdown table, found by the start of its header row: {first cell: the other cells}."""
    lines = text[text.index(header):].splitlines()
    rows = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        rows[cells[0]] = cells[1:]
    return rows


def read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def flat(text: str) -> str:
    """Prose with its line breaks as spaces: a quoted sentence may be wrapped anywhere."""
    return " ".join(text.split())


def test_chapter_07_quotes_the_results_tables():
    """Chapter 07's table of gaps is the "after C" columns of results.md's two tables, rounded to two places."""
    results, chapter = read("docs/results.md"), read("docs/07-why-sinks-exist.md")
    quoted = table(chapter, "| after the first C tokens |")
    names = {"window 0 + C": "window 0 + {C}", "window + softmax1 (sigma = 0)": "window + softmax1 (sigma = 0)",
             "window + calibrated sigma (lme)": "window + sigma (lme)",
             "window + calibrated sigma (mass)": "window + sigma (mass)",
             "window + sigma (lme) + the sinks' mean value": "window + sigma (lme) + sink value",
             "window + sigma (mass) + the sinks' mean value": "window + sigma (mass) + sink value",
             "4 sinks + (C - 4)": "4 sinks + {W}", '4 "\\n" + (C - 4)': '4 "\\n" sinks + {W} (prefix)',
             "1 <\\|endoftext\\|> + (C - 1)": "1 <\\|endoftext\\|> sink + {W1} (prefix)",
             "dense (full cache)": "dense (full cache)"}
    assert set(quoted) == set(names)
    for column, C in ((0, 256), (2, 1024)):
        measured = table(results[results.index(f"Total cache {C} (KJV"):], "| variant |")  # the table under it
        for row, source in names.items():
            ppl, gap = measured[source.format(C=C, W=C - 4, W1=C - 1)][2:4]
            assert abs(float(quoted[row][column]) - float(ppl)) <= 0.005 + 1e-9, (row, C)  # rounded to 2 places
            assert quoted[row][column + 1] == gap, (row, C)
    gaps = [float(quoted[r][c]) for r in ("window + softmax1 (sigma = 0)",) for c in (1, 3)]
    assert "softmax1 0.73 at both cache sizes" in flat(chapter) and gaps == [0.73, 0.73]
    with_value = [float(quoted[r][c]) for r in names if "mean value" in r for c in (1, 3)]
    assert f"closes {min(with_value):.2f}-{max(with_value):.2f} of it" in flat(chapter)


def test_chapters_04_and_08_quote_the_sink_count_and_eviction_tables():
    results = read("docs/results.md")
    count = table(results, "| sinks S | window W |")
    window, one, four = (float(count[s][1]) for s in ("0", "1", "4"))
    ch04 = read("docs/04-attention-sinks.md")
    assert (f"window attention gives perplexity {window:.1f}, 4 sinks + 252 recent tokens {four:.1f} "
            f"({window / four:.1f}x less), and a single sink already {one:.1f}") in flat(ch04)
    assert flat(ch04).count(f"by {window / four:.1f}x for SmolLM2-135M") == 1
    assert "2.5x the perplexity of a sink cache" in read("docs/11-cli-tour.md") and f"{window / four:.1f}" == "2.5"
    header = "| total cache | window | sink 4 + rest | H2O | TOVA |"
    ch08, measured = table(read("docs/09-other-ways-to-forget.md"), header), table(results, header)
    assert ch08 == {k: v for k, v in measured.items() if k.isdigit()}


def test_massive_activations_and_layers_are_quoted_as_measured():
    """Layers are numbered from 0 everywhere (docs/README.md says so): the layers the prose names are the ones the
    measured tables show, and the massive activation is the two dimensions the intervention zeroes."""
    results, ch07 = read("docs/results.md"), read("docs/07-why-sinks-exist.md")
    assert "Everything is counted from 0" in read("docs/README.md") and "layer 0 is the first" in read("docs/README.md")
    row = re.search(r"layer +0 +1 .*\n +Sink_1 (.*)", results)
    sink_1 = [int(v) for v in row.group(1).split()]
    assert len(sink_1) == 30
    no_sink = [n for n, v in enumerate(sink_1) if v == 0]
    assert "no sink at all in layers " + ", ".join(map(str, no_sink[:-1])) + f" and {no_sink[-1]}" in ch07
    mass = {int(m[0]): float(m[1]) for m in re.findall(r"^ +(\d+) +([\d.]+) +[\d.]+ +[\d.]+ +\d of 9$", results, re.M)}
    middle = re.search(r"the middle layers\n(\d+)\.\.(\d+) put a moderate and even share \(([\d.]+)\)", results)
    first, last, share = int(middle[1]), int(middle[2]), float(middle[3])
    assert all(abs(mass[n] - share) < 0.05 for n in range(first, last + 1))
    assert abs(mass[last + 1] - share) > 0.1 and abs(mass[first - 1] - share) > 0.05  # the range is the whole run
    massive = re.search(r"massive entries \(.*?dimensions (\d+) and (\d+) at token 0", results, re.S)
    dims = sorted(int(d) for d in massive.groups())
    for text in (results, ch07, read("README.md")):
        assert all(str(d) in text for d in dims) and "one entry of the residual stream" not in text


UNIT = re.compile(r"\b\d[\d.,]* ?(?:MB|GB|KB|kB)\b|\b(?:MB|KB|kB)\b")
UNIT_DOCS = ["README.md", "docs/README.md", "docs/results.md", "docs/performance.md",
             *(str(p.relative_to(ROOT)) for p in CHAPTERS)]


@pytest.mark.parametrize("name", UNIT_DOCS)
def test_sizes_are_written_in_binary_units(name):
    """A size in bytes is KiB, MiB or GiB: the code divides by 2**10 / 2**20, and MB next to MiB misleads by 5%.
    (Pasted program output in code blocks is exempt: it is what the program prints.) GB is allowed only for
    measured process memory, whose tools report it so."""
    text = re.sub(r"^    .*$", "", prose(read(name)), flags=re.M)  # indented code blocks hold program output too
    bad = [m.group(0) for m in UNIT.finditer(text) if not m.group(0).endswith("GB")]
    assert not bad, f"{name}: write these sizes in KiB or MiB: {bad}"


def test_unit_check_catches_decimal_units():
    found = [m.group(0) for m in UNIT.finditer("45 MB, 45 MiB, 4 kB pages, 2 KiB, 1.7 GB")]
    assert found == ["45 MB", "4 kB", "1.7 GB"]


def test_the_cli_tour_gives_the_thread_chooser_period_the_code_uses():
    import inspect

    from minisink.threads import ThreadChooser

    period = inspect.signature(ThreadChooser).parameters["period"].default
    assert f"times both again after {period} steps (then {2 * period}," in read("docs/11-cli-tour.md")


def test_the_real_model_chapters_are_the_ones_listed():
    real = [p.name[:2] for p in CHAPTERS if uses_real_model(p.read_text(encoding="utf-8"))]
    listed = re.search(r"chapters ([\d, and\n]+?) use the real SmolLM2", read("docs/README.md"))[1]
    assert re.findall(r"\d\d", listed) == real


def test_readme_and_results_quote_the_benchmark_table():
    """README's prose and docs quote `minisink bench` figures from README's speed table, the one place they live."""
    readme = read("README.md")
    speed = table(readme, "| figure | measured | target |")
    row = speed["H2O / TOVA at a budget of 1024 vs the sink cache, decode (chapter 09)"]
    h2o, tova = re.findall(r"[\d.]+x", row[0])
    assert f"H2O and TOVA cost {h2o} and {tova} the sink cache" in flat(readme)
    assert f"H2O {h2o}, TOVA {tova}" in flat(read("docs/results.md"))
    full = table(readme, "| case | measured | before | target |")
    row = full["decode with a full 4 + 1020 sink cache / decode at a 16-token context"]
    ratio = re.search(r"\*\*([\d.]+)x\*\*", row[0])
    assert f"{float(ratio[1]):.2f}x in README's three" in flat(read("docs/performance.md"))
