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
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from . import evaluate
from .model import PREFILL_CHUNK

TASKS = ("passkey", "lines")
POLICIES = ("dense", "window", "sink", "recompute", "h2o", "tova")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
PREAMBLE = ("There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
            "I will quiz you about it.\n")
LEAD = 24  # passkey: filler tokens before each key
QUERY_EVERY = 10  # lines: a question after every 10 lines
ANSWER_TOKENS = 8  # greedy tokens generated per answer (a 5-digit key is 5 digit tokens, plus a space or "<")


@dataclass
class Query:
    """One question along the stream, as written to the CSV."""

    index: int
    position: int  # stream tokens before the answer (where the question ends)
    distance: int  # tokens (passkey) or lines (lines) between the fact and the question
    expected: str
    answer: str  # the generated text
    correct: bool


def make_cache(model, policy: str, sinks: int, window: int):
    """The cache of a policy; h2o and tova get a budget of sinks + window tokens (the sink cache's memory)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if policy == "dense":
        return model.new_cache()
    if policy == "window":
        return model.new_cache(n_sink=0, window=sinks + window)
    if policy == "sink":
        return model.new_cache(n_sink=sinks, window=window)
    if policy == "recompute":
        return model.new_cache(n_sink=sinks, window=window, recompute=True)
    return model.new_cache(policy=policy, budget=sinks + window)


def feed(model, cache, ids, chunk: int) -> np.ndarray:
    """Feed ids [T] in chunks of `chunk`; the logits of the last one [V]."""
    for start in range(0, len(ids), chunk):
        logits = evaluate.logits(model, ids[start:start + chunk], cache)
    return logits[-1]


def passkey_pieces(tok, distance: int, n: int, rng) -> Iterator[tuple[list[int], str, int]]:
    """(ids up to the question's end, the key, the distance in tokens) for n questions: LEAD filler tokens, the
    key, filler, the question ending exactly `distance` tokens after the key's announcement. (Without the filler
    before each key, SmolLM2-135M keeps answering the first key of the stream even with every token in view.)"""
    filler = tok.encode(FILLER * (max(distance, LEAD) // 8 + 2))
    question = tok.encode(" What is the pass key? The pass key is")
    if distance < len(question):
        raise ValueError(f"--distance must be at least {len(question)} tokens for passkey (the question's length)")
    for i in range(n):
        key = f"{rng.integers(10000, 100000)}"
        announce = tok.encode(f" The pass key is {key}. Remember it. {key} is the pass key. ")
        start = tok.encode(PREAMBLE) if i == 0 else []
        yield start + filler[:LEAD] + announce + filler[:distance - len(question)] + question, key, distance


def lines_pieces(tok, distance: int, n: int, rng) -> Iterator[tuple[list[int], str, int]]:
    """Numbered lines; after every QUERY_EVERY lines, a question about the line `distance` lines back (1: the
    last line written)."""
    if distance < 1:
        raise ValueError("--distance must be >= 1 line for lines")
    values = []
    for i in range(n):
        text = "Below is a record of lines I want you to remember.\n" if i == 0 else "\n"
        while True:  # at least one block of lines, and enough of them for the target to exist
            values.append(f"{rng.integers(10000, 100000)}")
            text += f"line {len(values) - 1}: REGISTER_CONTENT is <{values[-1]}>\n"
            if len(values) % QUERY_EVERY == 0 and len(values) >= distance:
                break
        target = len(values) - distance
        yield tok.encode(text + f"What is the REGISTER_CONTENT in line {target}? The REGISTER_CONTENT in line "
                                f"{target} is <"), values[target], distance


def run_streameval(model, tok, task: str, policy: str, sinks: int = 4, window: int = 252, distance: int = 100,
                   queries: int = 10, seed: int = 0,
                   report: Callable[[Query, int, int], None] | None = None) -> list[Query]:
    """Stream the task through the policy's cache, answering each question greedily; `report(query, right,
    asked)` after each. Returns every query."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if queries < 1:
        raise ValueError(f"--queries must be >= 1, got {queries}")
    cache = make_cache(model, policy, sinks, window)
    chunk = 1 if getattr(cache, "wants_attention", False) else PREFILL_CHUNK  # h2o, tova decide per token
    pieces = (passkey_pieces if task == "passkey" else lines_pieces)(tok, distance, queries, np.random.default_rng(seed))
    out, position, right = [], 0, 0
    for i, (ids, expected, dist) in enumerate(pieces):
        logits = feed(model, cache, np.asarray(ids), chunk)
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
