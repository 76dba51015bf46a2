"""Sessions (minisink/session.py): a cache saved to a file and resumed gives exactly the logits of one that never
stopped; a file from another model, another version, or damaged is refused with a SessionError and left as it was;
a kill -9 during a save leaves the previous session intact.

The oracle for every round trip is the same stream fed in one process without stopping."""

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import minisink
from minisink import session
from minisink.cli import main
from minisink.generate import Chat, Sampler
from minisink.session import SessionError
from minisink.spec import new_cache
from draws import examples
from tiny import tiny_model, write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
IDS = np.random.default_rng(0).integers(0, 97, 60)
CHUNKS = [(0, 9), (9, 10), (10, 23), (23, 24), (24, 25), (25, 40), (40, 41), (41, 60)]  # prefill and decode steps


def stream(model, cache, chunks):
    return np.concatenate([model.forward(IDS[a:b], cache) for a, b in chunks])


@pytest.mark.parametrize("sizes", [dict(policy="sink", sinks=2, window=5), dict(policy="window", window=7),
                                   dict(policy="dense")],
                         ids=["sink", "window", "full"])
def test_resume_in_a_new_process_gives_the_same_logits(tmp_path, sizes):
    """k chunks in one process == k/2 chunks, save, a new Python process loads the model and the file, k/2 chunks."""
    folder = write_tiny_checkpoint(tmp_path / "model")
    model = minisink.load_model(folder)
    want = stream(model, new_cache(model, **sizes), CHUNKS)
    cache = new_cache(model, **sizes)
    first = stream(model, cache, CHUNKS[:4])
    session.save(tmp_path / "s.npz", model, cache, {"note": "half way"})
    code = f"""
import sys, numpy as np, minisink
from minisink import session
model = minisink.load_model({str(folder)!r})
cache, extra = session.load({str(tmp_path / 's.npz')!r}, model)
assert extra == {{"note": "half way"}}, extra
ids = np.array({IDS.tolist()})
np.save({str(tmp_path / 'rest.npy')!r}, np.concatenate([model.forward(ids[a:b], cache) for a, b in {CHUNKS[4:]}]))
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    got = np.concatenate([first, np.load(tmp_path / "rest.npy")])
    np.testing.assert_array_equal(got, want)


def test_sink_session_has_constant_size(tmp_path):
    model, sizes = tiny_model(), []
    cache = new_cache(model, "sink", sinks=2, window=5)
    for a, b in CHUNKS:
        model.forward(IDS[a:b], cache)
        sizes.append(session.save(tmp_path / "s.npz", model, cache).stat().st_size)
    assert max(sizes) - min(sizes) <= 16, sizes  # only the JSON counters' digits change


def test_chat_resumed_goes_on_as_if_it_never_stopped(tmp_path):
    """A sampled (seeded) chat: 4 turns in one go == 2 turns, save, a fresh Chat and cache from the file, 2 turns."""
    model, tok = tiny_model(vocab_size=64), FakeTokenizer()
    turns = ["ab", "cd", "ef", "gh"]

    def new_chat():
        return Chat(model, tok, new_cache(model, "sink", sinks=2, window=9), Sampler(temperature=1.0, seed=3))

    whole = new_chat()
    want = [list(whole.say(t, max_new_tokens=6)) for t in turns]
    first = new_chat()
    got = [list(first.say(t, max_new_tokens=6)) for t in turns[:2]]
    session.save_chat(tmp_path / "chat.npz", first)
    resumed = session.load_chat(tmp_path / "chat.npz", model, tok, Sampler(temperature=1.0, seed=3))
    assert resumed.cache is not first.cache and (resumed.turns, resumed.fed) == (first.turns, first.fed)
    got += [list(resumed.say(t, max_new_tokens=6)) for t in turns[2:]]
    assert got == want
    np.testing.assert_array_equal(model.forward([5], resumed.cache), model.forward([5], whole.cache))


class FakeTokenizer:
    """Characters as ids (a-z -> 20..45, the rest 3): enough for Chat on a tiny model, which has no tokenizer."""

    eos_token_id = 2

    def chat_prompt(self, messages, add_generation_prompt=True):
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>a"

    def encode(self, text):
        return [20 + ord(c) - ord("a") if "a" <= c <= "z" else 3 for c in text]

    def stream_decoder(self):
        class Decoder:
            def step(self, token):
                return chr(ord("a") + (token % 26))

            def flush(self):
                return ""

        return Decoder()


# ---- refused files ----------------------------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    """A tiny model and a sink-cache session of it, 25 tokens in."""
    model = tiny_model()
    cache = new_cache(model, "sink", sinks=2, window=5)
    model.forward(IDS[:25], cache)
    path = session.save(tmp_path / "s.npz", model, cache, {"chat": {"turns": 1}})
    return model, cache, path


def rewrite(path: Path, edit):
    """Rewrite a session with `edit(header, arrays)` applied (a well-formed zip: only the content is wrong)."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    header = json.loads(arrays.pop("header").tobytes())
    edit(header, arrays)
    blob = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, header=blob, **arrays)


def refused(path, model, message) -> str:
    before = path.read_bytes()
    with pytest.raises(SessionError, match=message) as e:
        session.load(path, model)
    assert path.read_bytes() == before  # loading only reads
    return str(e.value)


def test_another_model_is_refused(saved):
    model, _, path = saved
    refused(path, tiny_model(seed=1), "other weights")  # same config, other weights
    refused(path, tiny_model(num_hidden_layers=2), "another config")
    refused(path, tiny_model(rope_theta=500000.0), "another config")  # same shapes, other computation


def test_sink_logits_are_part_of_the_identity(tmp_path):
    """The forward pass uses the model's sink logits (chapter 07), so the keys and values of a session saved with
    them hold only with the same ones: resuming without them, or with others, is refused; with the same, exact."""
    model = tiny_model()
    c = model.config
    sigma = np.random.default_rng(3).normal(0, 1, (c.num_hidden_layers, c.num_attention_heads)).astype(np.float32)
    ids = np.random.default_rng(4).integers(0, c.vocab_size, 30)
    model.sink_logits = sigma
    cache = new_cache(model, "sink", sinks=2, window=8)
    model.forward(ids[:20], cache)
    path = session.save(tmp_path / "s.npz", model, cache)
    model.sink_logits = None
    refused(path, model, "saved with sink logits, and this model has none")
    model.sink_logits = sigma + 1
    refused(path, model, r"saved with other sink logits \(or sink values\) than this model's")
    model.sink_logits = sigma
    model.sink_values = np.ones((c.num_hidden_layers, c.num_attention_heads, c.head_dim), np.float32)
    refused(path, model, "other sink logits")  # a sink value too is another computation
    model.sink_values = None
    loaded, _ = session.load(path, model)
    np.testing.assert_array_equal(model.forward(ids[20:], loaded), model.forward(ids[20:], cache))
    plain = session.save(tmp_path / "p.npz", model := tiny_model(), new_cache(model, "sink", sinks=2, window=8))
    model.sink_logits = sigma
    refused(plain, model, "saved without sink logits, and this model has some")


@pytest.mark.parametrize("edit, message", [
    (lambda h, a: h.update(version=2), "version 2"),
    (lambda h, a: h.update(format="something else"), "not a minisink session"),
    (lambda h, a: h["cache"].update(kind="RecomputeWindow"), "unknown cache kind"),
    (lambda h, a: h["cache"].update(seen=26), "do not match"),
    (lambda h, a: h["cache"].update(write=4), "do not match"),
    (lambda h, a: h["cache"].update(seen=-1), "'seen'"),
    (lambda h, a: h["cache"].update(seen=True), "'seen'"),
    (lambda h, a: h["cache"].update(window=10**9), "bytes, not the"),  # checked before allocating 10**9 slots
    (lambda h, a: h["cache"].update(renumber="yes"), "renumber"),
    (lambda h, a: a.update(keys=a["keys"].astype(np.float64)), "expected float32"),
    (lambda h, a: a.update(values=a["values"][..., :4]), "bytes, not the|expected"),
    (lambda h, a: a.update(slot_token=a["slot_token"][::-1].copy()), "do not match"),
    (lambda h, a: a["keys"].__setitem__((0, 0, 0, 0), np.nan), "NaN"),
    (lambda h, a: a.update(extra=np.zeros(3)), "holds"),
    (lambda h, a: a.update(keys=np.array([b"x" * 1400], dtype=object)), "expected float32"),  # pickled: never read
], ids=["version", "format", "kind", "seen", "write", "negative", "bool", "huge", "renumber", "dtype", "shape",
        "slots", "nan", "extra-array", "pickle"])
def test_wrong_contents_are_refused(saved, edit, message):
    model, _, path = saved
    rewrite(path, edit)
    refused(path, model, message)


@pytest.mark.parametrize("header", [b"[" * 200_000, b"\xff\xfe", b"[1, 2]", b"{}", b"x" * (2 << 20)],
                         ids=["deep", "not-utf8", "a-list", "empty", "huge"])
def test_malformed_headers_are_refused(saved, header):
    model, _, path = saved
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files if k != "header"}
    with open(path, "wb") as f:
        np.savez(f, header=np.frombuffer(header, dtype=np.uint8), **arrays)
    refused(path, model, "session")


def test_truncated_and_corrupt_files_are_refused(saved):
    model, _, path = saved
    good = path.read_bytes()
    for cut in (0, 10, len(good) // 2, len(good) - 1):
        path.write_bytes(good[:cut])
        refused(path, model, "not a readable session")
    corrupt = bytearray(good)
    corrupt[len(good) // 3] ^= 0xFF  # inside the keys: zip's CRC-32 catches it
    path.write_bytes(bytes(corrupt))
    refused(path, model, "CRC|not a readable")


# its file is only read: a function-scoped fixture is fine
@settings(max_examples=examples(200), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_files_are_refused_or_load_exactly(saved, data):
    """Random byte flips, truncations and insertions: a SessionError, or the very state that was saved."""
    model, cache, path = saved
    good = bytearray(path.read_bytes())
    bad = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        kind, at = data.draw(st.sampled_from(["flip", "cut", "insert"])), data.draw(st.integers(0, len(bad) - 1))
        if kind == "flip":
            bad[at] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del bad[at:at + data.draw(st.integers(1, 64))]
        else:
            bad[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    fuzzed = path.with_name("fuzzed.npz")
    fuzzed.write_bytes(bytes(bad))
    try:
        loaded, extra = session.load(fuzzed, model)
    except SessionError:
        return
    counters, arrays = loaded.state()
    assert (counters, extra) == (cache.state()[0], {"chat": {"turns": 1}})
    for name, array in cache.state()[1].items():
        np.testing.assert_array_equal(arrays[name], array)


def test_only_sink_and_full_caches_are_saved(tmp_path):
    model = tiny_model()
    with pytest.raises(SessionError, match="only a SinkCache or a FullCache"):
        session.save(tmp_path / "s.npz", model, new_cache(model, "recompute", window=4))
    assert not list(tmp_path.iterdir())


# ---- atomic saves ----------------------------------------------------------------------------------------------

SAVER = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
from tiny import tiny_model
from minisink import session
from minisink.spec import new_cache
model = tiny_model()
cache = new_cache(model, "sink", sinks=2, window=3000)  # about 1.5 MB: a save takes a while
ids = np.random.default_rng(0).integers(0, 97, 10**6)
for i in range(10**6):
    model.forward(ids[i:i + 1], cache)
    session.save({path!r}, model, cache, {{"i": i}})
    print(i, flush=True)
"""


def test_kill_9_during_saves_leaves_a_whole_session(tmp_path):
    """A child saves after every token; SIGKILL at random moments; the file always loads, as one of the saved
    states (rebuilt here by feeding the same tokens)."""
    model, path, rng = tiny_model(), tmp_path / "s.npz", np.random.default_rng(7)
    ids = np.random.default_rng(0).integers(0, 97, 10**6)
    fed, cache, mid_save = 0, new_cache(model, "sink", sinks=2, window=3000), 0
    for _ in range(5):
        child = subprocess.Popen([sys.executable, "-c", SAVER.format(tests=str(ROOT / "tests"), path=str(path))],
                                 stdout=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert child.stdout.readline()  # one save done
        time.sleep(rng.uniform(0, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        loaded, extra = session.load(path, model)
        i = extra["i"]
        if i + 1 < fed:  # each child starts again from token 0
            fed, cache = 0, new_cache(model, "sink", sinks=2, window=3000)
        for t in range(fed, i + 1):  # one token at a time, as the child did (a chunk rounds differently)
            model.forward(ids[t:t + 1], cache)
        fed = i + 1
        for name, array in cache.state()[1].items():
            np.testing.assert_array_equal(loaded.state()[1][name], array)
        assert loaded.state()[0] == cache.state()[0]
        for stale in tmp_path.glob(".s.npz.tmp-*"):  # what a kill mid-save leaves beside the session
            stale.unlink()
            mid_save += 1
    print(f"{mid_save} of 5 kills landed during a save")


# ---- the command line --------------------------------------------------------------------------------------------

@pytest.mark.real
def test_cli_chat_session_resumes_across_runs(real_model_dir, tmp_path, monkeypatch, capsys):
    """4 turns in one run == 2 turns, exit, 2 turns with the same --session file (the model loaded afresh)."""
    turns = ["Hello! I like the sea.", "What lives in the sea?", "Name a big fish.", "Say goodbye."]
    args = ["chat", "--model", str(real_model_dir), "--sinks", "4", "--window", "60", "--max-new-tokens", "24"]

    def run(lines, *extra):
        monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
        try:
            code = main(args + list(extra))
        except SystemExit as e:  # the CLI's own checks exit with their message
            code, message = 1, str(e.code)
            print(message, file=sys.stderr)
        out, err = capsys.readouterr()
        return code, out, err

    code, whole, _ = run(turns)
    assert code == 0
    session_file = tmp_path / "talk.npz"
    code, first, _ = run(turns[:2], "--session", str(session_file))
    assert code == 0 and session_file.is_file()
    code, second, err = run(turns[2:], "--session", str(session_file))
    assert code == 0 and "resumed" in err
    assert first + second == whole
    size = session_file.stat().st_size
    assert size < 1.1 * 2 * 30 * 3 * 64 * 64 * 4  # keys and values of 64 slots, 30 layers: nothing grows

    before = session_file.read_bytes()
    code, _, err = run(turns[:1], "--session", str(session_file), "--window", "100")
    assert code != 0 and "window 60" in err and session_file.read_bytes() == before
    session_file.write_bytes(before[:1000])
    code, _, err = run(turns[:1], "--session", str(session_file))
    assert code == 1 and "not a readable session" in err and session_file.read_bytes() == before[:1000]


# ---- two processes on one file, symbolic links, crafted headers (issue 22) ------------------------------------------

def chat_of(model, tok, seed=3):
    return Chat(model, tok, new_cache(model, "sink", sinks=2, window=9), Sampler(temperature=1.0, seed=seed))


def test_a_second_writer_is_refused_and_no_turn_is_lost(tmp_path):
    """Two chats resumed from one file (two `minisink chat --session` at once): the first to save wins, the second
    gets a SessionError and writes nothing, so the first one's turn is still in the file. Before: both saved, and
    the turn of the one that saved first was silently lost."""
    model, tok, path = tiny_model(vocab_size=64), FakeTokenizer(), tmp_path / "talk.npz"
    first = chat_of(model, tok)
    list(first.say("ab", max_new_tokens=4))
    session.save_chat(path, first)
    a = session.load_chat(path, model, tok)
    b = session.load_chat(path, model, tok)
    list(a.say("cd", max_new_tokens=4))
    session.save_chat(path, a)
    saved = path.read_bytes()
    list(b.say("ef", max_new_tokens=4))
    with pytest.raises(SessionError, match="changed by another process since this chat read it.*not saved there"):
        session.save_chat(path, b)
    assert path.read_bytes() == saved and session.load_chat(path, model, tok).turns == 2  # a's turn is kept
    list(a.say("gh", max_new_tokens=4))
    session.save_chat(path, a)  # the writer that read the file last goes on saving
    assert session.load_chat(path, model, tok).turns == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.npz"]  # no temporary file left by the refusal


def test_two_new_chats_on_one_new_file(tmp_path):
    model, tok, path = tiny_model(vocab_size=64), FakeTokenizer(), tmp_path / "talk.npz"
    a, b = chat_of(model, tok), chat_of(model, tok, seed=4)
    list(a.say("ab", max_new_tokens=4)), list(b.say("cd", max_new_tokens=4))
    session.save_chat(path, a)
    with pytest.raises(SessionError, match="created by another process while this chat ran"):
        session.save_chat(path, b)
    assert session.load_chat(path, model, tok).sampler.rng.bit_generator.state == a.sampler.rng.bit_generator.state


def test_a_symlinked_session_is_written_through(tmp_path):
    """Before: the link was replaced by a regular file, and the file it named was never updated again."""
    model, tok = tiny_model(vocab_size=64), FakeTokenizer()
    (tmp_path / "sessions").mkdir()
    target, link = tmp_path / "sessions" / "talk.npz", tmp_path / "talk.npz"
    link.symlink_to(target)
    chat = chat_of(model, tok)
    list(chat.say("ab", max_new_tokens=4))
    session.save_chat(link, chat)
    resumed = session.load_chat(link, model, tok)
    list(resumed.say("cd", max_new_tokens=4))
    session.save_chat(link, resumed)
    assert link.is_symlink() and session.load_chat(target, model, tok).turns == 2


@pytest.fixture
def chat_file(tmp_path):
    model, tok = tiny_model(vocab_size=64), FakeTokenizer()
    chat = chat_of(model, tok)
    list(chat.say("ab", max_new_tokens=4))
    return model, tok, session.save_chat(tmp_path / "chat.npz", chat)


def rewrite_raw(path: Path, edit):
    """Like `rewrite`, but the header is written with Python's json as is (NaN, Infinity, huge integers)."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    header = json.loads(arrays.pop("header").tobytes())
    edit(header)
    blob = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, header=blob, **arrays)


RNG = ("extra", "chat", "rng")
HEADER_PLACES = [("extra", "chat", "turns"), ("extra", "chat", "fed"), RNG, (*RNG, "state"), (*RNG, "state", "state"),
                 (*RNG, "state", "inc"), (*RNG, "has_uint32"), (*RNG, "uinteger"), (*RNG, "bit_generator"),
                 ("extra", "chat"), ("extra",), ("cache", "seen"), ("cache", "n_sink"), ("cache", "window"),
                 ("cache", "write"), ("cache", "renumber"), ("cache", "kind"), ("cache", "position_offset"),
                 ("cache",), ("model", "config"), ("model", "weights_sha256"), ("model",), ("version",), ("format",)]
DELETE = object()
ODD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2**300, 2**300),
                       st.sampled_from([2**64, 2**128, 2**200, -1, -2**63, 10**400]),
                       st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4))
JUNK = st.recursive(ODD_VALUES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3),
                                                                                              inner, max_size=3),
                    max_leaves=6)


def put(header: dict, place: tuple, value):
    """Set (or delete) header[place[0]][place[1]]...; places under a value that is no longer an object are skipped."""
    *parents, last = place
    for key in parents:
        header = header.get(key) if isinstance(header, dict) else None
    if isinstance(header, dict):
        if value is DELETE:
            header.pop(last, None)
        else:
            header[last] = value


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.sampled_from(HEADER_PLACES), JUNK | st.just(DELETE)), min_size=1, max_size=3))
@example(edits=[(("extra", "chat", "turns"), math.inf)])  # issue 22: OverflowError
@example(edits=[(("extra", "chat", "fed"), math.nan)])
@example(edits=[((*RNG, "state", "state"), -1)])  # issue 22: OverflowError
@example(edits=[((*RNG, "state", "state"), 2**200)])  # issue 22: OverflowError
@example(edits=[((*RNG, "uinteger"), 2**64)])
@example(edits=[((*RNG, "state"), [1, 2])])
@example(edits=[(RNG, "PCG64")])
@example(edits=[(("extra", "chat", "turns"), 10**400)])  # past Python's 4300-digit limit for str -> int
@example(edits=[(("cache", "seen"), math.inf)])
@example(edits=[(("extra", "chat"), DELETE)])
def test_crafted_headers_are_a_session_error(chat_file, edits):
    """Whatever a crafted header holds (NaN, Infinity, huge or negative integers, wrong types, nested junk), loading
    it is a chat or a SessionError, never another exception; a chat that loads is one a save could have written."""
    model, tok, path = chat_file
    good = path.read_bytes()
    try:
        rewrite_raw(path, lambda header: [put(header, place, value) for place, value in edits])
        try:
            chat = session.load_chat(path, model, tok)
        except SessionError:
            return
        assert 0 <= chat.turns < 2**53 and 0 <= chat.fed < 2**53
        chat.sampler.rng.random()  # the generator works
    finally:
        path.write_bytes(good)


def test_extra_state_that_is_not_json_is_refused_at_save(tmp_path):
    model = tiny_model()
    with pytest.raises(SessionError, match="plain JSON"):
        session.save(tmp_path / "s.npz", model, new_cache(model, "sink", sinks=2, window=4), {"x": math.nan})
    assert list(tmp_path.iterdir()) == []
