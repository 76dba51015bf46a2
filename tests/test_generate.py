"""Sampling, the generation loop, the chat session, and the `generate` / `chat` commands.

Sampling is checked against plain NumPy (argmax, top-k and nucleus sets computed directly); the chat is checked on
the real model through the command line, with a history several times longer than the sink cache's window.
"""

import io
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minisink.cli import main
from minisink.generate import Sampler, SamplingError, generate
from minisink.spec import new_cache
from tiny import tiny_model

logits_strategy = st.lists(st.floats(-20, 20, allow_nan=False, width=32), min_size=2, max_size=40).map(
    lambda xs: np.array(xs, dtype=np.float32))


@given(logits_strategy)
def test_greedy_and_top_k_1_are_argmax(logits):
    assert Sampler()(logits) == int(np.argmax(logits))
    # top-k keeps every token tied with the k-th largest logit, so with ties any maximum may come out
    assert logits[Sampler(temperature=1.0, top_k=1, seed=0)(logits)] == logits.max()


@given(logits_strategy, st.integers(1, 5), st.integers(0, 2**31))
def test_top_k_samples_only_from_the_k_largest(logits, k, seed):
    sampler = Sampler(temperature=1.5, top_k=k, seed=seed)
    kth = np.sort(logits)[-min(k, len(logits))]
    for _ in range(20):
        assert logits[sampler(logits)] >= kth


@given(logits_strategy, st.floats(0.05, 0.95), st.integers(0, 2**31))
def test_top_p_samples_only_from_the_nucleus(logits, p, seed):
    probs = np.exp(logits.astype(np.float64) - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    nucleus = set(order[: int(np.searchsorted(np.cumsum(probs[order]), p)) + 1].tolist())
    sampler = Sampler(temperature=1.0, top_p=p, seed=seed)
    tied = {int(i) for i in np.flatnonzero(probs >= min(probs[list(nucleus)]))}  # ties may swap order
    for _ in range(20):
        assert sampler(logits) in tied


def test_sampling_is_seeded_and_follows_the_distribution():
    logits = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    a = [Sampler(1.0, seed=7)(logits) for _ in range(3)]
    s1, s2 = Sampler(1.0, seed=7), Sampler(1.0, seed=7)
    assert [s1(logits) for _ in range(50)] == [s2(logits) for _ in range(50)]
    counts = np.bincount([s1(logits) for _ in range(4000)], minlength=3) / 4000
    assert np.allclose(counts, [0.5, 0.3, 0.2], atol=0.03), counts
    assert len(a) == 3


@pytest.mark.parametrize("kwargs, message", [({"temperature": -1}, "temperature"), ({"top_k": 0}, "top_k"),
                                             ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p")])
def test_bad_sampling_options(kwargs, message):
    with pytest.raises(SamplingError, match=message):
        Sampler(**kwargs)


def test_generate_feeds_every_token_but_the_stop_and_equals_a_plain_loop():
    model = tiny_model()
    prompt = [5, 9, 11]
    cache = new_cache(model)
    out = list(generate(model, prompt, cache, max_new_tokens=12))
    # the same greedy tokens from a loop that re-reads everything with a fresh cache each step
    ids = list(prompt)
    for _ in range(12):
        ids.append(int(np.argmax(model.forward(ids, new_cache(model))[-1])))
    assert out == ids[len(prompt):]
    assert len(cache.retained()) == len(prompt) + 12  # every yielded token was fed

    stop = out[3]
    cache = new_cache(model)
    stopped = list(generate(model, prompt, cache, max_new_tokens=12, stop_ids={stop}))
    assert stopped == out[:out.index(stop) + 1]
    assert len(cache.retained()) == len(prompt) + len(stopped) - 1  # the stop id is not fed


@pytest.mark.real
def test_cli_generate_chat_with_a_sink_cache(real_model_dir, capsys):
    code = main(["generate", "--model", str(real_model_dir), "--chat", "--sinks", "4", "--window", "1020",
                 "--max-new-tokens", "30", "What is the capital of France?"])
    assert code == 0
    assert "Paris" in capsys.readouterr().out


@pytest.mark.real
def test_cli_chat_streams_a_history_many_times_the_window(real_model_dir, monkeypatch, capsys):
    """Turns from stdin, a 4 + 60 sink cache: each turn is appended (never re-read) and answered."""
    turns = ["Hello! Tell me about the sea.", "What lives in the sea?", "Name a big fish.",
             "What is the capital of France?", "Thank you. Say goodbye."]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(turns) + "\n"))
    code = main(["chat", "--model", str(real_model_dir), "--sinks", "4", "--window", "60",
                 "--max-new-tokens", "40", "--progress"])
    out, err = capsys.readouterr()
    assert code == 0
    replies = [line for line in out.splitlines() if line.strip()]
    assert len(replies) >= len(turns), out
    streamed = [int(line.split("|")[1].split()[0]) for line in err.splitlines() if line.startswith("[turn")]
    held = [int(line.rsplit("holds", 1)[1].strip(" ]")) for line in err.splitlines() if line.startswith("[turn")]
    assert len(streamed) == len(turns)
    assert streamed[-1] > 3 * 64, streamed  # the history is several times the cache
    assert max(held) == 64  # and the cache never holds more than 4 + 60
    assert "Paris" in out
