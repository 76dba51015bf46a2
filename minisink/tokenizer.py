"""Text <-> token ids for a Hugging Face model directory, and SmolLM2's ChatML chat prompt.

A thin wrapper around the `tokenizers` library's `tokenizer.json` (byte-level BPE for SmolLM2): minisink does not
reimplement BPE. What it adds: encoding that never inserts special tokens on its own (but parses `<|im_start|>` and
friends written in the text), a streaming decoder that never splits a multi-byte UTF-8 character, and the ChatML
template in plain Python (the template string in tokenizer_config.json is Jinja; we do not evaluate it).

Does not: batch, pad, truncate, or render chat templates other than ChatML.
"""

from __future__ import annotations

from pathlib import Path

import tokenizers

from .config import read_json_object

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
REPLACEMENT = "\ufffd"  # what UTF-8 decoding gives for bytes that do not (yet) form a whole character


class TokenizerError(Exception):
    """A tokenizer file is missing or unusable, or a token id is out of range."""


def _read_json(path: Path) -> dict:
    """A JSON object from `path` ({} if there is no such file); TokenizerError for anything else."""
    return read_json_object(path, TokenizerError) if path.is_file() else {}


def load_tokenizer(path) -> Tokenizer:
    """The tokenizer of the model directory `path` (tokenizer.json, optional tokenizer_config.json, config.json)."""
    path = Path(path)
    file = path / "tokenizer.json"
    if not file.is_file():
        raise TokenizerError(f"no tokenizer.json in {path}: fetch the model with `python weights_fetch.py` "
                             f"(or pass a Hugging Face model directory)")
    try:
        tok = tokenizers.Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a plain Exception on a malformed file
        raise TokenizerError(f"cannot read {file}: {e}") from e
    return Tokenizer(tok, _read_json(path / "tokenizer_config.json"), _read_json(path / "config.json"))


class Tokenizer:
    """Encode text to ids and back. `encode` adds no BOS/EOS: callers (the chat prompt) write them explicitly."""

    def __init__(self, tok: tokenizers.Tokenizer, tokenizer_config: dict | None = None, config: dict | None = None):
        self.tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        tcfg, cfg = tokenizer_config or {}, config or {}
        self.bos_token_id = self._special_id(tcfg.get("bos_token"), cfg.get("bos_token_id"),
                                             ("<s>", "<|begin_of_text|>"))
        self.eos_token_id = self._special_id(tcfg.get("eos_token"), cfg.get("eos_token_id"),
                                             (IM_END, "</s>", "<|endoftext|>"))
        # The ids a stream starts with: what the tokenizer's own post-processor puts before a text. None for
        # SmolLM2; BOS (and, for the sink-token variant, the learned sink token first) for a model `minisink train`
        # made, whose every training sample started so (docs/08-growing-a-sink.md).
        self.stream_start = list(tok.encode("", add_special_tokens=True).ids)

    def _special_id(self, token, config_id, fallbacks) -> int | None:
        """An id from tokenizer_config.json's token string, else config.json's id, else the first known string."""
        if isinstance(token, dict):  # {"content": "<|im_end|>", ...} in some tokenizer_config.json files
            token = token.get("content")
        if token is not None and not isinstance(token, str):
            raise TokenizerError(f"a special token in tokenizer_config.json must be a string, got {token!r}")
        if token is not None and self.tok.token_to_id(token) is not None:
            return self.tok.token_to_id(token)
        if isinstance(config_id, list):  # several stop ids: the first is the canonical one
            config_id = config_id[0] if config_id else None
        if config_id is not None:
            if not (isinstance(config_id, int) and not isinstance(config_id, bool) and
                    0 <= config_id < self.vocab_size):
                raise TokenizerError(f"a special token id in config.json must be an integer in "
                                     f"0..{self.vocab_size - 1}, got {config_id!r}")
            return config_id
        return next((self.tok.token_to_id(t) for t in fallbacks if self.tok.token_to_id(t) is not None), None)

    def encode_stream(self, text: str) -> list[int]:
        """Token ids of `text` as the start of a stream: `stream_start`, then `encode(text)`."""
        return self.stream_start + self.encode(text)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`. Special-token strings in it (`<|im_start|>`) become their single ids."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        """The text of `ids`, special tokens included (so decode(encode(s)) == s for ordinary text)."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(f"token id {bad[0]} is out of range: the vocabulary has ids 0..{self.vocab_size - 1}")
        return self.tok.decode(ids, skip_special_tokens=False)

    def stream_decoder(self) -> StreamDecoder:
        """A decoder for one stream of generated ids: `.step(id)` returns the text that became complete."""
        return StreamDecoder(self)

    def chat_prompt(self, messages, add_generation_prompt: bool = True) -> str:
        """SmolLM2's ChatML prompt for `messages` ([{"role": ..., "content": ...}]), as its chat template renders it.

        A default system message comes first when the first message is not a system one; each message is
        `<|im_start|>{role}\\n{content}<|im_end|>\\n`; `<|im_start|>assistant\\n` opens the reply.
        """
        if self.tok.token_to_id(IM_START) is None or self.tok.token_to_id(IM_END) is None:
            raise TokenizerError(f"this tokenizer has no {IM_START}/{IM_END} tokens: minisink's chat prompt is "
                                 f"ChatML only; encode a plain prompt instead")
        parts = []
        if messages and messages[0]["role"] != "system":
            parts.append(f"{IM_START}system\n{DEFAULT_SYSTEM}{IM_END}\n")
        for m in messages:
            parts.append(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n")
        if add_generation_prompt:
            parts.append(f"{IM_START}assistant\n")
        return "".join(parts)

    def encode_chat(self, messages, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of `chat_prompt(messages)`."""
        return self.encode(self.chat_prompt(messages, add_generation_prompt))


class StreamDecoder:
    """Turns ids arriving one at a time into text without ever splitting a UTF-8 character.

    A character such as an emoji can span several byte-level tokens; decoding its first token alone gives U+FFFD.
    So we keep the ids since the last complete character, decode them together, and hold back a trailing U+FFFD
    until the bytes that complete it arrive. Concatenating every `step` and the final `flush` gives decode(ids).
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.pending: list[int] = []  # ids since the stream was last at a character boundary
        self.sent = 0  # characters of decode(pending) already returned

    def step(self, token_id: int) -> str:
        """Add one id; return the newly completed text (often "", never a partial character)."""
        self.pending.append(int(token_id))
        text = self.tokenizer.decode(self.pending)
        complete = len(text.rstrip(REPLACEMENT))
        if complete == len(text):  # ends on a character boundary: start afresh
            out, self.pending, self.sent = text[self.sent:], [], 0
            return out
        out, self.sent = text[self.sent:complete], complete
        return out

    def flush(self) -> str:
        """What is still held back at the end of the stream (U+FFFD for bytes that never formed a character)."""
        text = self.tokenizer.decode(self.pending)[self.sent:] if self.pending else ""
        self.pending, self.sent = [], 0
        return text
