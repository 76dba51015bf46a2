"""Training data (minisink/data.py): Bigram-Backcopy's rules and statistics, the BPE text data, their tokenizers."""

from collections import Counter

import numpy as np
import pytest

import minisink
from minisink.data import BOS, SINK, BigramBackcopy, DataError, TextData, make_dataset, save_tokenizer

def pairs(seq):
    """Consecutive (a, b) pairs of a sequence."""
    return list(zip(seq[:-1], seq[1:], strict=True))


TEXT = ("the quick brown fox jumps over the lazy dog. " * 3 + "pack my box with five dozen liquor jugs!\n") * 20


def test_bigram_backcopy_rules():
    """BOS first; x1 never a trigger; after a trigger, the token before it; triggers = the 3 most frequent chars."""
    d = BigramBackcopy(TEXT)
    top3 = {c for c, _ in Counter(TEXT).most_common(3)}
    assert {d.chars[i] for i in d.triggers} == top3
    x = d.batch(np.random.default_rng(0), 32, 80)  # [32, 81]
    assert x.shape == (32, 81) and (x[:, 0] == d.bos_id).all()
    assert not d.trigger_mask(x[:, 1]).any()
    trig = d.trigger_mask(x[:, 1:-1])  # positions 1..T-1 whose next token is a copy
    assert trig.any()
    assert (x[:, 2:][trig] == x[:, :-2][trig]).all()
    assert (x[:, 1:] != d.bos_id).all()


def test_bigram_backcopy_follows_the_texts_bigrams():
    """Non-trigger transitions occur in the text, with the text's conditional frequencies (within sampling noise)."""
    d = BigramBackcopy(TEXT)
    x = d.batch(np.random.default_rng(1), 2000, 64)
    prev, nxt = x[:, 1:-1].ravel(), x[:, 2:].ravel()
    free = ~d.trigger_mask(prev)
    seen = set(pairs(TEXT))
    assert all((d.chars[a], d.chars[b]) in seen for a, b in zip(prev[free], nxt[free], strict=True))
    u = d.chars.index("u")  # not a trigger here (' ', 'o', 'e' are); its successors in the text: i, m, g, o
    follow = Counter(b for a, b in pairs(TEXT) if a == "u")
    got = Counter(d.chars[b] for a, b in zip(prev, nxt, strict=True) if a == u)
    n = sum(got.values())
    assert n > 300
    for c, k in follow.items():
        assert abs(got[c] / n - k / sum(follow.values())) < 0.05, (c, got[c] / n)


def test_bigram_backcopy_is_seeded():
    d = BigramBackcopy(TEXT)
    a = d.batch(np.random.default_rng(7), 4, 50)
    assert (a == d.batch(np.random.default_rng(7), 4, 50)).all()
    assert (a != d.batch(np.random.default_rng(8), 4, 50)).any()


def test_sink_token_rows_and_post_processor(tmp_path):
    """The sink-token variant: SINK, then BOS, every row; the saved tokenizer prepends both when asked to."""
    d = BigramBackcopy(TEXT, sink_token=True)
    x = d.batch(np.random.default_rng(0), 5, 20)
    assert x.shape == (5, 21) and (x[:, 0] == d.sink_id).all() and (x[:, 1] == d.bos_id).all()
    assert d.tokenizer.encode("the").ids[:2] == [d.sink_id, d.bos_id]
    save_tokenizer(d.tokenizer, tmp_path)
    tok = minisink.load_tokenizer(tmp_path)
    assert tok.encode("the fox") == [d.chars.index(c) for c in "the fox"]  # minisink's encode adds nothing
    assert tok.bos_token_id == d.bos_id and tok.decode(tok.encode(TEXT[:200])) == TEXT[:200]


def test_text_data_bpe_and_held_out(tmp_path):
    text = "".join(f"line {i}: {TEXT[i % 40:i % 40 + 60]}\n" for i in range(600))
    d = TextData(text, vocab_size=300)
    assert d.vocab_size <= 300 and d.tokenizer.token_to_id(BOS) == d.bos_id
    cut = len(text) - len(d.held_out_text)
    assert d.held_out_text and text[cut - 1] == "\n" and 0.05 < len(d.held_out_text) / len(text) < 0.15
    assert d.tokenizer.decode(d.train_ids.tolist()) == text[:cut]  # training ids are the training part, exactly
    x = d.batch(np.random.default_rng(0), 16, 24)
    assert x.shape == (16, 25) and (x[:, 0] == d.bos_id).all()
    ids = d.train_ids.tolist()
    for row in x[:, 1:].tolist():  # each row is a window of the training ids
        assert any(ids[i:i + 24] == row for i in range(len(ids) - 23))
    save_tokenizer(d.tokenizer, tmp_path)
    tok = minisink.load_tokenizer(tmp_path)
    assert tok.decode(tok.encode(d.held_out_text)) == d.held_out_text and tok.bos_token_id == d.bos_id


def test_text_data_sink_token():
    d = TextData(TEXT * 3, vocab_size=280, sink_token=True)
    x = d.batch(np.random.default_rng(0), 3, 16)
    assert (x[:, 0] == d.tokenizer.token_to_id(SINK)).all() and (x[:, 1] == d.bos_id).all()


def test_bad_input():
    with pytest.raises(DataError, match="--seq-len"):
        TextData("a short text.\n" * 3, vocab_size=260).check_length(512)
    with pytest.raises(DataError, match="distinct characters"):
        BigramBackcopy("abab")
    with pytest.raises(DataError, match="--data"):
        make_dataset("wiki", TEXT)
    with pytest.raises(DataError, match="empty"):
        TextData("  \n")


def test_stream_start(tmp_path):
    """A stream through a trained folder starts as its training samples did (the tokenizer's post-processor:
    SINK and BOS for the sink-token variant, BOS otherwise); other tokenizers put nothing first."""
    for sink_token, want in [(True, lambda d: [d.sink_id, d.bos_id]), (False, lambda d: [d.bos_id])]:
        d = BigramBackcopy(TEXT, sink_token=sink_token)
        (tmp_path / str(sink_token)).mkdir()
        save_tokenizer(d.tokenizer, tmp_path / str(sink_token))
        tok = minisink.load_tokenizer(tmp_path / str(sink_token))
        assert tok.stream_start == want(d)
        assert tok.encode_stream("et") == want(d) + tok.encode("et")
    other = tmp_path / "other"
    other.mkdir()
    import tokenizers

    tokenizers.Tokenizer(tokenizers.models.BPE(vocab={"a": 0, "b": 1}, merges=[])).save(str(other / "tokenizer.json"))
    assert minisink.load_tokenizer(other).stream_start == []  # a tokenizer whose post-processor adds nothing
