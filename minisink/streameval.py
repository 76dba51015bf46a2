"""StreamEval on a CPU: questions asked along an endless stream, answered from whatever the cache still holds.

The paper's StreamEval (Xiao et al. 2024, Sec. 4.4, Fig. 9, App. C) was never released (mit-han-lab/streaming-llm
issues 15, 76, 83). This module rebuilds it from the description, plus a task a 135M model can do:

- `lines`: numbered lines ("line 17: REGISTER_CONTENT is <40213>"); every 10 lines a question about the line
  `distance` lines back ("What is the REGISTER_CONTENT in line 7? The REGISTER_CONTENT in line 7 is <"), answered
  greedily, exact match on the digits. The paper's benchmark; too hard for SmolLM2-135M even on a dense cache
  (docs/results.md has the figures and the prompt formats tried).
- `passkey`: filler sentences, a key announced ("The pass key is 48213. Remember it. 48213 is the pass key."),
  `distance` tokens later the question ("What is the pass key? The pass key is"), answered greedily; then a new
  key, and so on along the stream. The headline at 135M.

Every token of the stream, the model's answers included, goes through one cache, so the questions test what the
policy kept: a sink cache answers while the key is inside its window and forgets it after, forever (StreamingLLM
does not extend the context, and it keeps working); dense attention fails once the stream passes the model's
pre-training length. Policies that read attention (h2o, tova) are fed token by token (they decide per token); the
others take the text in chunks (the same logits: see evaluate.py).

What it does not: sampling, batches, or the paper's exact prompts (unpublished); answers are checked by the first
run of digits in the generated text.

A stream is as long as the user asks (`--distance 1000000000` is a billion filler tokens before each question), so
`check_plan` estimates, from a few short encodings and before anything is built, how many tokens the stream holds
and the memory they take at once (a piece's token ids; with the dense cache, every token's keys and values), and
refuses what does not fit, naming the flags to change. The filler is never tokenized whole: its tokens repeat
with a period, so `filler_ids` tiles one period; the lines are encoded a block at a time.
"""

from __future__ import annotations

import csv
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from . import evaluate
from .cache import available_memory, kv_bytes_per_token
from .model import PREFILL_CHUNK
from .spec import CacheSpec, new_cache

TASKS = ("passkey", "lines")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
PREAMBLE = ("There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
            "I will quiz you about it.\n")
LEAD = 24  # passkey: filler tokens before each key
QUERY_EVERY = 10  # lines: a question after every 10 lines
ANSWER_TOKENS = 8  # greedy tokens generated per answer (a 5-digit key is 5 digit tokens, plus a space or "<")
PROGRESS_SECONDS = 10  # a progress line this often within a long piece
LINES_PER_ENCODE = 256  # lines: lines encoded per tokenizer call (a line ends in "\n": no token spans two lines)
MEMORY_SHARE = 0.5  # a stream may take at most this share of the available memory
BYTES_PER_ID = 32  # a piece's token ids held at once: a list (8 B a slot), its int64 array, and a copy while joined
BYTES_PER_LINE = 120  # lines: each value kept (a 5-character str and its list slot) and the line's text while encoded


@dataclass
class Query:
    """One question along the stream, as written to the CSV."""

    index: int
    position: int  # stream tokens before the answer (where the question ends)
    distance: int  # tokens (passkey) or lines (lines) between the fact and the question
    expected: str
    answer: str  # the generated text
    correct: bool


def feed(model, cache, ids, chunk: int, progress: Callable[[str], None] | None = None, what: str = "") -> np.ndarray:
    """Feed ids [T] in chunks of `chunk`; the logits of the last one [V]. `progress(message)` now and then."""
    last = time.perf_counter()
    for start in range(0, len(ids), chunk):
        logits = evaluate.logits(model, ids[start:start + chunk], cache)
        if progress and time.perf_counter() - last > PROGRESS_SECONDS:
            progress(f"{what}{min(start + chunk, len(ids)):,} of {len(ids):,} tokens fed")
            last = time.perf_counter()
    return logits[-1]


def filler_ids(tok, n: int) -> np.ndarray:
    """The first n token ids of FILLER * k (any k long enough), without encoding n tokens of text at once [n].

    After the first copy, FILLER's tokens repeat with a period p (every copy but the first starts after ". ", so
    it tokenizes the same way); three copies show it, and a fourth checks it. The last copy's tokens are never
    used: its trailing space has no word after it."""
    copies = [np.asarray(tok.encode(FILLER * k), dtype=np.int64) for k in (2, 3, 4)]  # [tokens of k copies]
    p = len(copies[1]) - len(copies[0])
    head = copies[2][:p]  # the first copy
    period = copies[2][p:2 * p]  # any later copy
    if p <= 0 or len(copies[2]) - len(copies[1]) != p or not np.array_equal(copies[2][2 * p:3 * p], period):
        if n > 1 << 16:
            raise ValueError("this tokenizer's filler tokens do not repeat: lower --distance (at most 65536)")
        return np.asarray(tok.encode(FILLER * (n // 8 + 2))[:n], dtype=np.int64)
    if n <= p:
        return head[:n].copy()
    return np.concatenate([head, np.resize(period, n - p)])  # np.resize repeats the period to length n - p


def passkey_pieces(tok, distance: int, n: int, rng) -> Iterator[tuple[np.ndarray, str, int]]:
    """(ids up to the question's end, the key, the distance in tokens) for n questions: LEAD filler tokens, the
    key, filler, the question ending exactly `distance` tokens after the key's announcement. (Without the filler
    before each key, SmolLM2-135M keeps answering the first key of the stream even with every token in view.)"""
    question = tok.encode(" What is the pass key? The pass key is")
    if distance < len(question):
        raise ValueError(f"--distance must be at least {len(question)} tokens for passkey (the question's length)")
    filler = filler_ids(tok, max(distance - len(question), LEAD))
    for i in range(n):
        key = f"{rng.integers(10000, 100000)}"
        announce = tok.encode(f" The pass key is {key}. Remember it. {key} is the pass key. ")
        start = tok.encode_stream(PREAMBLE) if i == 0 else []
        pieces = [start, filler[:LEAD], announce, filler[:distance - len(question)], question]
        yield np.concatenate([np.asarray(piece, dtype=np.int64) for piece in pieces]), key, distance


def lines_pieces(tok, distance: int, n: int, rng) -> Iterator[tuple[np.ndarray, str, int]]:
    """Numbered lines; after every QUERY_EVERY lines, a question about the line `distance` lines back (1: the
    last line written). The lines are encoded LINES_PER_ENCODE at a time: no token spans a line break."""
    if distance < 1:
        raise ValueError("--distance must be >= 1 line for lines")
    values = []
    for i in range(n):
        texts = ["Below is a record of lines I want you to remember.\n" if i == 0 else "\n"]
        ids = [np.asarray(tok.stream_start if i == 0 else [], dtype=np.int64)]  # a stream starts as trained
        while True:  # at least one block of lines, and enough of them for the target to exist
            values.append(f"{rng.integers(10000, 100000)}")
            texts.append(f"line {len(values) - 1}: REGISTER_CONTENT is <{values[-1]}>\n")
            if len(texts) == LINES_PER_ENCODE:
                ids.append(np.asarray(tok.encode("".join(texts)), dtype=np.int64))
                texts = []
            if len(values) % QUERY_EVERY == 0 and len(values) >= distance:
                break
        target = len(values) - distance
        texts.append(f"What is the REGISTER_CONTENT in line {target}? The REGISTER_CONTENT in line {target} is <")
        ids.append(np.asarray(tok.encode("".join(texts)), dtype=np.int64))
        yield np.concatenate(ids), values[target], distance


def stream_size(tok, task: str, distance: int, queries: int) -> tuple[int, int]:
    """(tokens in the whole stream, ids held at once at most) of a task, estimated from a few short encodings
    (the longest line number, a key's announcement): nothing of the size of the stream is built."""
    if task == "passkey":
        announce = len(tok.encode(f" The pass key is {99999}. Remember it. {99999} is the pass key. "))
        piece = LEAD + announce + distance
        return len(tok.encode(PREAMBLE)) + queries * (piece + ANSWER_TOKENS), piece
    first = -(-max(distance, 1) // QUERY_EVERY) * QUERY_EVERY  # lines before the first question
    lines = first + QUERY_EVERY * (queries - 1)
    per_line = len(tok.encode(f"line {lines}: REGISTER_CONTENT is <99999>\n"))
    question = len(tok.encode(f"What is the REGISTER_CONTENT in line {lines}? The REGISTER_CONTENT in line "
                              f"{lines} is <"))
    return lines * per_line + queries * (question + ANSWER_TOKENS), first * per_line + question


def check_plan(config, tok, task: str, spec: CacheSpec, distance: int, queries: int, available: int | None = None):
    """Raise a ValueError, before anything is built, if the stream that these settings ask for does not fit in
    MEMORY_SHARE of the available memory (`available` bytes; default: what the system says is available)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if queries < 1:
        raise ValueError(f"--queries must be >= 1, got {queries}")
    tokens, held = stream_size(tok, task, distance, queries)
    need = held * BYTES_PER_ID
    if task == "lines":
        need += (distance + QUERY_EVERY * queries) * BYTES_PER_LINE
    kept = tokens if spec.tokens is None else min(tokens, spec.tokens)  # dense keeps every token
    need += 3 * kept * kv_bytes_per_token(config)  # keys and values; a growing FullCache copies while it doubles
    available = available_memory() if available is None else available
    if available is not None and need > MEMORY_SHARE * available:
        fix = "lower --distance or --queries" + (", or use a bounded --policy (sink, window)" * (spec.tokens is None))
        raise ValueError(f"--task {task} --distance {distance} --queries {queries} is a stream of about "
                         f"{tokens:,} tokens that needs about {need / 2**30:.1f} GiB of memory at once, more than "
                         f"{MEMORY_SHARE:.0%} of the {available / 2**30:.1f} GiB available: {fix}")


def run_streameval(model, tok, task: str, spec: CacheSpec, distance: int = 100, queries: int = 10, seed: int = 0,
                   report: Callable[[Query, int, int], None] | None = None,
                   progress: Callable[[str], None] | None = None) -> list[Query]:
    """Stream the task through the cache of `spec` (minisink/spec.py), answering each question greedily;
    `report(query, right, asked)` after each, `progress(message)` every PROGRESS_SECONDS within a long one (a
    --distance of millions of tokens takes hours). Returns every query; Ctrl-C stops it between two chunks."""
    check_plan(model.config, tok, task, spec, distance, queries)
    cache = new_cache(model, spec)
    chunk = 1 if getattr(cache, "wants_attention", False) else PREFILL_CHUNK  # h2o, tova decide per token
    make_pieces = passkey_pieces if task == "passkey" else lines_pieces
    pieces = make_pieces(tok, distance, queries, np.random.default_rng(seed))
    out, position, right = [], 0, 0
    for i, (ids, expected, dist) in enumerate(pieces):
        logits = feed(model, cache, np.asarray(ids), chunk, progress, f"query {i + 1}/{queries}: ")
        position += len(ids)
        answer = []
        for _ in range(ANSWER_TOKENS):  # greedy; the answer joins the stream, as in a conversation
            answer.append(int(np.argmax(logits)))
            logits = evaluate.logits(model, answer[-1:], cache)[-1]
        position += len(answer)
        text = tok.decode(answer)
        digits = re.search(r"\d+", text)
        q = Query(i, position - len(answer), dist, expected, text, bool(digits) and digits.group() == expected)
        right += q.correct
        out.append(q)
        if report:
            report(q, right, i + 1)
    return out


def accuracy_line(results: list[Query]) -> str:
    right = sum(q.correct for q in results)
    return f"accuracy {right / len(results):.2f} ({right} of {len(results)})"


def save_csv(results: list[Query], path, settings: dict) -> Path:
    """Every query, one row each, with a `# key=value` header; written atomically (minisink/atomic.py)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w", newline="") as f:
        f.writelines(f"# {k}={v}\n" for k, v in settings.items())
        writer = csv.DictWriter(f, fieldnames=list(asdict(results[0])))
        writer.writeheader()
        writer.writerows(asdict(q) for q in results)
    return path
