"""From logits to tokens: sampling, a generation loop, and a multi-turn chat whose history streams through a cache.

What it does: greedy, temperature, top-k and top-p (nucleus) sampling with a seeded generator; `generate` feeds a
prompt and yields new token ids one at a time; `Chat` keeps one cache for a whole conversation, appending each turn
and never re-reading the history (with a sink cache it can go on forever in constant memory: the paper's
persistent chatbot; session.py saves and resumes one across restarts). The decode loop runs on the faster BLAS
thread count of the moment (threads.py). What it does not: beam search, batching, repetition penalties.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from .threads import decode_threads


class SamplingError(ValueError):
    """Sampling options out of range."""


@dataclass
class Sampler:
    """Picks the next token from logits [V]. temperature 0 is greedy (argmax); top_k / top_p restrict the choice
    to the k most likely tokens / the smallest set whose probability reaches p, before sampling."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self):
        if self.temperature < 0:
            raise SamplingError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise SamplingError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, logits: np.ndarray) -> int:
        if self.temperature == 0:
            return int(np.argmax(logits))
        logits = logits.astype(np.float64) / self.temperature
        if self.top_k is not None and self.top_k < len(logits):
            kth = np.partition(logits, -self.top_k)[-self.top_k]
            logits = np.where(logits < kth, -np.inf, logits)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        if self.top_p is not None and self.top_p < 1:
            order = np.argsort(-probs)
            cumulative = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cumulative, self.top_p)) + 1]  # smallest prefix reaching top_p
            kept = np.zeros_like(probs)
            kept[keep] = probs[keep]
            probs = kept / kept.sum()
        return int(self.rng.choice(len(probs), p=probs))


def generate(model, prompt_ids, cache, max_new_tokens: int, sampler: Sampler | None = None,
             stop_ids=(), threads="auto") -> Iterator[int]:
    """Feed `prompt_ids` into `cache`, then yield up to `max_new_tokens` sampled ids, one forward per token.

    Stops after yielding a stop id; the stop id is not fed to the cache. Every other yielded token is fed before
    the next is sampled, so when the loop ends the cache holds the prompt and the whole output.
    `threads`: BLAS threads for the decode steps ("auto": the faster of 1 and all, re-measured as the machine's
    load changes; an int; None: as they are). It changes the speed, not the tokens (see threads.py).
    """
    sampler = sampler or Sampler()
    logits = model.forward(prompt_ids, cache)[-1]  # [V]: only the last prompt position predicts the next token
    with decode_threads(threads) as step:
        for _ in range(max_new_tokens):
            token = sampler(logits)
            yield token
            if token in stop_ids:
                return
            with step():
                logits = model.forward([token], cache)[-1]


class Chat:
    """A conversation that streams through one cache: each turn is appended, the history is never re-prefilled.

    With `new_cache(model, "sink", sinks=4, window=1020)` the conversation can outgrow the window many times over: the
    model keeps answering fluently, but what left the window is forgotten (StreamingLLM does not extend context).
    """

    def __init__(self, model, tokenizer, cache, sampler: Sampler | None = None, system: str | None = None,
                 threads="auto"):
        self.model, self.tokenizer, self.cache = model, tokenizer, cache
        self.sampler = sampler or Sampler()
        self.threads = threads  # BLAS threads while decoding: see `generate`
        self.system = system
        self.turns = 0  # user turns so far
        self.fed = 0  # tokens streamed through the cache so far
        self.stop_ids = {tokenizer.eos_token_id}

    def turn_ids(self, user_text: str) -> list[int]:
        """Token ids that close the previous reply (if any) and open this turn's reply."""
        messages = [{"role": "user", "content": user_text}]
        if self.turns == 0 and self.system is not None:
            messages.insert(0, {"role": "system", "content": self.system})
        prompt = self.tokenizer.chat_prompt(messages, add_generation_prompt=True)
        if self.turns == 0:
            return self.tokenizer.encode(prompt)
        # The previous reply stopped at <|im_end|> (not fed), so close it and open the next turn.
        # chat_prompt adds a default system message to a conversation that lacks one: only the first turn has it.
        user_part = prompt[prompt.index("<|im_start|>user"):]
        return self.tokenizer.encode("<|im_end|>\n" + user_part)

    def say(self, user_text: str, max_new_tokens: int = 256) -> Iterator[str]:
        """Append a user turn and yield the reply's text as it is generated."""
        ids = self.turn_ids(user_text)
        self.turns += 1
        self.fed += len(ids)
        decoder = self.tokenizer.stream_decoder()
        for token in generate(self.model, ids, self.cache, max_new_tokens, self.sampler, self.stop_ids,
                              self.threads):
            if token in self.stop_ids:
                break
            self.fed += 1
            text = decoder.step(token)
            if text:
                yield text
        rest = decoder.flush()
        if rest:
            yield rest
