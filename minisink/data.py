"""Training data for the trainer (train.py): token id rows [B, T + 1], and the tokenizer that reads them back.

What it does:
- Bigram-Backcopy (Guo et al. 2024, "Active-dormant attention heads", arXiv 2410.13835, Section 2): sequences from
  a fixed bigram chain over the characters of a text, except that after a trigger (the 3 most frequent characters)
  the next token copies the one before the trigger. Every sequence starts with BOS. The bigram matrix and the
  marginal are the text's own character statistics (the KJV by default, or any text the user gives; Guo et al.
  used tiny-Shakespeare). A token is one character: the tokenizer is a character vocabulary + BOS.
- Natural text: a small byte-level BPE trained with the `tokenizers` library on the text's training part (the last
  HELD_OUT of it is held out: neither the tokenizer nor training ever sees it); training samples are windows of
  the training tokens at random offsets, each starting with BOS.
- The sink-token variant (StreamingLLM Section 3.3, "learnable sink token"): one extra vocabulary entry, SINK,
  prepended to every training sample. The tokenizer's post-processor prepends it too (and BOS), so a `tokenizers`
  user who encodes with special tokens gets the same layout as training.

Every dataset gives a `tokenizers.Tokenizer` that `save_tokenizer` writes as tokenizer.json (+ tokenizer_config.json),
so minisink.load_tokenizer and every command read the trained folder. Batches are drawn from a NumPy Generator
that the caller owns (train.py saves its state in checkpoints, so a resumed run draws the same batches).

What it does not: stream huge corpora (the text is held in memory), or load Guo et al.'s pickle.

Symbols: B samples per batch, T tokens the model reads per sample (rows hold T + 1: the last is only predicted).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from .atomic import atomic_write

BOS, SINK = "<bos>", "<sink>"  # the special tokens: BOS starts every sample; SINK is the sink-token variant's
N_TRIGGERS = 3  # Guo et al.: the 3 most frequent characters are the triggers
HELD_OUT = 0.1  # the share of a natural text (its end) that training never sees
DEFAULT_BPE_VOCAB = 4096


class DataError(ValueError):
    """A text that cannot make training data (too short, too few characters), or an impossible setting."""


def read_text(path) -> str:
    """A UTF-8 text file's contents; DataError naming the file and the fix if it cannot be read."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}): pass a plain UTF-8 --text") from None
    except OSError as e:
        raise DataError(f"cannot read --text {path}: {e.strerror or e}") from None


def _special(tokenizer: tokenizers.Tokenizer, sink_token: bool) -> None:
    """Make BOS (and SINK) special tokens, and a post-processor that prepends them to every encoding made with
    add_special_tokens=True (minisink's own Tokenizer.encode never adds them: the caller does)."""
    specials = [BOS] + [SINK] * sink_token
    tokenizer.add_special_tokens(specials)
    ids = [(t, tokenizer.token_to_id(t)) for t in specials]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{SINK + ' ' if sink_token else ''}{BOS} $A", special_tokens=ids)


def save_tokenizer(tokenizer: tokenizers.Tokenizer, folder) -> None:
    """tokenizer.json and tokenizer_config.json (bos_token) into `folder`, each written atomically."""
    folder = Path(folder)
    with atomic_write(folder / "tokenizer.json", "w", encoding="utf-8") as f:
        f.write(tokenizer.to_str())
    config = {"bos_token": BOS, "tokenizer_class": "PreTrainedTokenizerFast"}
    if tokenizer.token_to_id(SINK) is not None:
        config["sink_token"] = SINK
    with atomic_write(folder / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


class BigramBackcopy:
    """Guo et al.'s Bigram-Backcopy over the characters of `text`: `batch(rng, B, T)` -> ids [B, T + 1]."""

    def __init__(self, text: str, sink_token: bool = False):
        counts = Counter(text)
        if len(counts) <= N_TRIGGERS:
            raise DataError(f"Bigram-Backcopy needs a text with more than {N_TRIGGERS} distinct characters, got "
                            f"{len(counts)}: pass a longer --text")
        chars = sorted(counts)  # the vocabulary: ids 0..C-1 are characters, then BOS (and SINK)
        self.chars = chars
        index = {c: i for i, c in enumerate(chars)}
        C = len(chars)
        ids = np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text))  # [len(text)]
        bigram = np.zeros((C, C))  # [C, C] counts of (this character, next character)
        np.add.at(bigram, (ids[:-1], ids[1:]), 1)
        self.marginal = np.bincount(ids, minlength=C) / len(ids)  # [C]
        empty = bigram.sum(axis=1) == 0  # a character seen only at the very end: it has no successor
        bigram[empty] = self.marginal
        self.bigram_cdf = np.cumsum(bigram / bigram.sum(axis=1, keepdims=True), axis=1)  # [C, C]
        self.bigram_cdf[:, -1] = 1.0  # exactly: a uniform draw u < 1 then never falls past the last character
        self.triggers = np.argsort(-self.marginal, kind="stable")[:N_TRIGGERS]  # [3] the most frequent characters
        self.is_trigger = np.zeros(C + 2, dtype=bool)  # [V'] by id, BOS and SINK included (never triggers)
        self.is_trigger[self.triggers] = True
        first = np.where(self.is_trigger[:C], 0, self.marginal)  # x1 is never a trigger
        self.first_cdf = np.cumsum(first / first.sum())  # [C]
        self.first_cdf[-1] = 1.0

        vocab = {c: i for i, c in enumerate(chars)}
        # One token per character: BPE with no merges splits a word into characters. No pre-tokenizer, so spaces
        # and newlines are characters like any other; Fuse joins decoded tokens without separators.
        self.tokenizer = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
        self.tokenizer.decoder = decoders.Fuse()
        _special(self.tokenizer, sink_token)
        self.bos_id = self.tokenizer.token_to_id(BOS)
        self.sink_id = self.tokenizer.token_to_id(SINK)
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)

    def sequences(self, rng: np.random.Generator, B: int, length: int) -> np.ndarray:
        """B Bigram-Backcopy sequences of `length` tokens, BOS first: [B, length] int64."""
        x = np.empty((B, length), dtype=np.int64)
        x[:, 0] = self.bos_id
        if length > 1:  # x1 from the marginal without triggers
            x[:, 1] = np.searchsorted(self.first_cdf, rng.random(B), side="right")
        for t in range(1, length - 1):  # x(t+1) from x(t): a copy of x(t-1) after a trigger, else the bigram
            u = rng.random(B)  # [B] drawn for every row, used or not: the stream of draws is fixed by (B, length)
            drawn = (u[:, None] > self.bigram_cdf[x[:, t]]).sum(axis=1)  # inverse CDF per row: [B]
            x[:, t + 1] = np.where(self.is_trigger[x[:, t]], x[:, t - 1], drawn)
        return x

    def batch(self, rng: np.random.Generator, B: int, T: int) -> np.ndarray:
        """ids [B, T + 1]: Bigram-Backcopy rows; with the sink token, SINK then a row of T tokens."""
        if self.sink_id is None:
            return self.sequences(rng, B, T + 1)
        return np.concatenate([np.full((B, 1), self.sink_id), self.sequences(rng, B, T)], axis=1)

    def trigger_mask(self, ids: np.ndarray) -> np.ndarray:
        """Which positions of `ids` hold a trigger (their next token is a copy): bool, the shape of ids."""
        return self.is_trigger[ids]


def train_bpe(text: str, vocab_size: int, sink_token: bool) -> tokenizers.Tokenizer:
    """A byte-level BPE (GPT-2's scheme, which SmolLM2 uses too: every byte is a symbol, so any text encodes)
    of `vocab_size` entries, BOS (and SINK) among them, trained on `text` line by line."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=[BOS] + [SINK] * sink_token,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    _special(tok, sink_token)
    return tok


class TextData:
    """A natural text: a byte-level BPE of `vocab_size` trained on its first 1 - HELD_OUT, training windows from
    that part, the rest held out. `batch(rng, B, T)` -> ids [B, T + 1]."""

    def __init__(self, text: str, vocab_size: int = DEFAULT_BPE_VOCAB, sink_token: bool = False,
                 tokenizer: tokenizers.Tokenizer | None = None):
        """`tokenizer`: one trained before (a resumed run reads its tokenizer.json) instead of a new BPE."""
        if not text.strip():
            raise DataError("the training text is empty: pass a text file with --text")
        cut = int(len(text) * (1 - HELD_OUT))
        cut = text.rfind("\n", 0, cut) + 1 or cut  # split at a line break when there is one
        train_text, self.held_out_text = text[:cut], text[cut:]
        self.tokenizer = tok = tokenizer or train_bpe(train_text, vocab_size, sink_token)
        self.bos_id, self.sink_id = tok.token_to_id(BOS), tok.token_to_id(SINK)
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.train_ids = self.encode(train_text)  # [N] int64
        self._held_out_ids = None

    def encode(self, text: str) -> np.ndarray:
        """Token ids of `text`, no special tokens: [N] int64."""
        return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    @property
    def held_out_ids(self) -> np.ndarray:
        """The held-out text's ids [N] (encoded on first use)."""
        if self._held_out_ids is None:
            self._held_out_ids = self.encode(self.held_out_text)
        return self._held_out_ids

    def check_length(self, T: int) -> None:
        """DataError if the training tokens cannot fill one sample of T tokens."""
        need = T - (self.sink_id is not None)  # BOS (and SINK) take a place of the T + 1
        if len(self.train_ids) < need + 1:
            raise DataError(f"the training part of the text has {len(self.train_ids)} tokens, fewer than one sample "
                            f"needs ({need + 1} for --seq-len {T}): give a longer --text or a smaller --seq-len")

    def batch(self, rng: np.random.Generator, B: int, T: int) -> np.ndarray:
        """ids [B, T + 1]: BOS then T text tokens from a random offset (SINK, BOS, T - 1 tokens with the sink)."""
        self.check_length(T)
        heads = [self.bos_id] if self.sink_id is None else [self.sink_id, self.bos_id]
        n = T + 1 - len(heads)  # text tokens per row
        starts = rng.integers(0, len(self.train_ids) - n + 1, size=B)  # [B]
        rows = self.train_ids[starts[:, None] + np.arange(n)]  # [B, n]
        return np.concatenate([np.broadcast_to(np.asarray(heads), (B, len(heads))), rows], axis=1)


def make_dataset(kind: str, text: str, *, sink_token: bool = False, vocab_size: int = DEFAULT_BPE_VOCAB):
    """"bigram-backcopy" -> BigramBackcopy(text), "text" -> TextData(text); DataError for another kind."""
    if kind == "bigram-backcopy":
        return BigramBackcopy(text, sink_token)
    if kind == "text":
        return TextData(text, vocab_size, sink_token)
    raise DataError(f"unknown data {kind!r}: use --data bigram-backcopy or --data text")
