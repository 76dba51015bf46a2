"""Persistent sessions: a cache's state in a file, so one conversation goes on across restarts.

What it does: `save(path, model, cache)` writes everything a cache holds (for the sink cache: S + W tokens of keys
and values and a few counters, a file of constant size however long the stream) and `load(path, model)` rebuilds
the cache, which then gives exactly the logits the saved one would have given. `save_chat` / `load_chat` do the
same for a `generate.Chat` (its cache plus the turn counters and the sampler's random state), which is what
`minisink chat --session FILE` calls after every turn. This is the persistent chatbot that StreamingLLM makes
possible (Xiao et al. 2024, streaming multi-round dialogue): with a sink cache the state kept between two turns
never grows.

The file is a plain NumPy `.npz` (a zip of `.npy` arrays, readable with `np.load`): `header` holds UTF-8 JSON (the
format and its version, the model's identity, the cache's counters, the caller's own state), the other members
are the cache's arrays. Loading treats the file as untrusted input: it never unpickles (minisink/npzfile.py reads
each `.npy` header itself and refuses any dtype or shape but the ones the model's config implies, before reading
the data), and a zip member's CRC-32 catches flipped bytes. Every problem is a `SessionError` naming the file
and the fix.

The model's identity is its config plus a sha256 of its float32 weights as they sit in memory (every array the
forward pass reads, in a fixed order; 0.4 s for SmolLM2-135M here, computed once per model object). That is what
the saved keys and values depend on, whatever file format the weights came from: another checkpoint, or the same
one quantized differently, is refused. So is a model whose sink logits (chapter 07) differ from the ones the
session was saved with: the forward pass uses them, and the keys of every layer after the first depend on them.

Saves are atomic: the file is written under a temporary name in the same folder, flushed to disk (fsync), then
renamed over the old one; a crash or kill -9 at any moment leaves either the previous session or the new one (and,
if it struck mid-save, the temporary `.NAME.tmp-HOST.PID` beside it, which the next save removes). A path that is
a symbolic link is written through: the file it names is updated, the link stays.

Two processes on one session file (two `minisink chat --session talk.npz` at once): each would save its own turns
over the other's, and the turns of the one that saved first would be lost without a word. So `load_chat` notes
which file it read (device, inode, size, modification time: a save always makes a new file, so they change with
every save), and `save_chat`, holding an exclusive lock on the folder (flock), refuses with a SessionError to
replace a file that is not the one its chat read (or, for a new chat, any file at all): the second writer is told,
the first one's turns are kept. The plain `save` replaces whatever is there (a library call, one process).
The header is JSON from an untrusted file: NaN and Infinity are refused, every counter must be an integer in
range, the random generator's state too, before any of it is used.
What it does not: save `RecomputeWindow` (it holds token ids, not state worth a format) or the eviction caches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import weakref
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .cache import FullCache, SinkCache
from .npzfile import DAMAGED, read_member, read_npy

FORMAT, VERSION = "minisink-session", 1
MAX_HEADER_BYTES = 1 << 20  # the JSON header is a few kB; anything bigger is not ours


class SessionError(ValueError):
    """A session file that cannot be resumed with this model (another model, another version, damaged)."""


_fingerprints: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def weights_sha256(model) -> str:
    """sha256 over every weight array of `model` and of its layers (by attribute name: name, dtype, shape,
    bytes). Computed once per model object: the weights do not change. The sink logits and values (chapter 07)
    are settable, not weights: `sinks_sha256` covers them."""
    if model not in _fingerprints:
        digest, seen = hashlib.sha256(), {id(model.sink_logits), id(model.sink_values)}  # skipped
        for owner in [model, *model.layers]:
            for name, array in sorted(vars(owner).items()):
                if isinstance(array, np.ndarray) and id(array) not in seen:
                    seen.add(id(array))  # a tied LM head is hashed once
                    digest.update(f"{name} {array.dtype} {array.shape};".encode())
                    digest.update(np.ascontiguousarray(array).data)
        _fingerprints[model] = digest.hexdigest()
    return _fingerprints[model]


def sinks_sha256(model) -> str | None:
    """sha256 of the model's sink logits and sink values as they are now (None without sink logits): the forward
    pass uses them, so the cached keys and values of every layer after the first depend on them too."""
    if model.sink_logits is None:
        return None
    digest = hashlib.sha256(np.ascontiguousarray(model.sink_logits).data)
    if model.sink_values is not None:
        digest.update(np.ascontiguousarray(model.sink_values).data)
    return digest.hexdigest()


def model_identity(model) -> dict:
    """What a session is only valid with: the config (as JSON would hold it), the weights' sha256 and the sink
    logits' (None without)."""
    config = json.loads(json.dumps(dataclasses.asdict(model.config)))  # tuples -> lists, as they come back
    return {"config": config, "weights_sha256": weights_sha256(model), "sinks_sha256": sinks_sha256(model)}


# ---- save ----------------------------------------------------------------------------------------------------

def save(path, model, cache, extra: dict | None = None) -> Path:
    """Write `cache` (a SinkCache or FullCache fed by `model`) and the JSON-able dict `extra` to `path`, atomically."""
    if not isinstance(cache, (SinkCache, FullCache)):
        raise SessionError(f"only a SinkCache or a FullCache can be saved, not a {type(cache).__name__}")
    counters, arrays = cache.state()
    header = {"format": FORMAT, "version": VERSION, "model": model_identity(model),
              "cache": {"kind": type(cache).__name__, **counters}, "extra": extra or {}}
    try:
        text = json.dumps(header, allow_nan=False)  # NaN and Infinity are not JSON, and load refuses them
    except (TypeError, ValueError) as e:
        raise SessionError(f"the session's extra state must be plain JSON (no NaN or Infinity): {e}") from e
    blob = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)  # [bytes] the header as an array
    return write_atomic(Path(path), {"header": blob, **arrays})


def write_atomic(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """np.savez to `path` atomically and durably (minisink/atomic.py)."""
    try:
        with atomic_write(path) as f:  # a file object: np.savez would append .npz to a bare name
            np.savez(f, **arrays)
    except OSError as e:
        raise SessionError(f"cannot write the session {path}: {e}") from e
    return path


# ---- load ----------------------------------------------------------------------------------------------------

def load(path, model):
    """Read a session written by `save` -> (cache, extra). Refuses, with a SessionError, a file from another
    model or another format version, and a damaged one; the file itself is only read."""
    cache, extra, _ = read(path, model)
    return cache, extra


def read(path, model):
    """`load`, and the stamp (`file_stamp`) of the very file it read -> (cache, extra, stamp)."""
    path = Path(path)
    try:
        with open(path, "rb") as raw, zipfile.ZipFile(raw) as z:
            stamp = file_stamp(os.fstat(raw.fileno()))  # of the file opened, not of whatever the path names later
            header = read_header(z, path)
            check_identity(header, model, path)
            counters, shapes = expected_arrays(header["cache"], model.config, path)
            if set(z.namelist()) != {"header.npy"} | {f"{name}.npy" for name in shapes}:
                raise SessionError(f"{path} holds {sorted(z.namelist())}, not a {header['cache']['kind']}'s arrays")
            arrays = {name: read_member(z, name, dtype, shape, path, SessionError)
                      for name, (dtype, shape) in shapes.items()}
    except SessionError:
        raise
    except DAMAGED as e:  # what zipfile, json and np.lib.format raise on a damaged file (a bad CRC included)
        raise SessionError(f"{path} is not a readable session file ({type(e).__name__}: {e}): it is damaged or "
                           "not a session; delete it (or pick another file) to start a new session") from e
    check_arrays(header["cache"]["kind"], counters, arrays, path)
    kind = SinkCache if header["cache"]["kind"] == "SinkCache" else FullCache
    return kind.from_state(model.config, counters, arrays), header["extra"], stamp


def read_header(z: zipfile.ZipFile, path: Path) -> dict:
    info = z.getinfo("header.npy")  # KeyError -> not a session
    if info.file_size > MAX_HEADER_BYTES:
        raise SessionError(f"{path}: a {info.file_size}-byte header is not a session header")
    with z.open(info) as f:
        blob = read_npy(f, path, "header", np.dtype(np.uint8), (None,), SessionError)
    header = json.loads(blob.tobytes().decode("utf-8"), parse_constant=not_json)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SessionError(f"{path} is not a minisink session (no '{FORMAT}' header)")
    if header.get("version") != VERSION:
        raise SessionError(f"{path} is a session of format version {header.get('version')!r}; this minisink reads "
                           f"version {VERSION}: start a new session (or use the minisink that wrote it)")
    if not (isinstance(header.get("cache"), dict) and isinstance(header.get("extra"), dict)):
        raise SessionError(f"{path}: the header lacks its 'cache' or 'extra' object")
    return header


def not_json(name: str):
    """json.loads calls this for NaN, Infinity and -Infinity, which Python's json reads but JSON does not have."""
    raise SessionError(f"the header holds {name}, which is not JSON: the file was not written by minisink; start a "
                       "new session")


def check_identity(header: dict, model, path: Path):
    saved, ours = header.get("model"), model_identity(model)
    if not isinstance(saved, dict) or saved.get("config") != ours["config"]:
        raise SessionError(f"{path} was saved with a model of another config; resume it with the model that "
                           "wrote it, or start a new session")
    if saved.get("weights_sha256") != ours["weights_sha256"]:
        raise SessionError(f"{path} was saved with other weights (sha256 {str(saved.get('weights_sha256'))[:12]}..., "
                           f"this model's {ours['weights_sha256'][:12]}...); resume it with the model that wrote it, "
                           "or start a new session")
    if saved.get("sinks_sha256") != ours["sinks_sha256"]:
        if saved.get("sinks_sha256") is None:
            what = "without sink logits, and this model has some"
        elif ours["sinks_sha256"] is None:
            what = "with sink logits, and this model has none"
        else:
            what = "with other sink logits (or sink values) than this model's"
        raise SessionError(f"{path} was saved {what} (chapter 07): its keys and values were computed with those, so "
                           "resume it with the same --sink-logits / --sink-value as when it started, or start a new "
                           "session")


def _int(counters: dict, name: str, low: int, path: Path, what: str = "cache counter") -> int:
    value = counters.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value < 2**53:
        raise SessionError(f"{path}: {what} '{name}' = {str(value)[:40]} is not an integer in [{low}, 2**53)")
    return value


def expected_arrays(cache: dict, config, path: Path):
    """The header's counters, checked -> (counters, {array name: (dtype, shape)}) that the config implies."""
    layers, Hkv, D = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
    f32, i64 = np.dtype("<f4"), np.dtype("<i8")
    if cache.get("kind") == "SinkCache":
        counters = {name: _int(cache, name, low, path) for name, low in
                    [("n_sink", 0), ("window", 1), ("position_offset", 0), ("seen", 0), ("write", 0)]}
        if not isinstance(cache.get("renumber"), bool):
            raise SessionError(f"{path}: cache field 'renumber' must be true or false")
        counters["renumber"] = cache["renumber"]
        slots = counters["n_sink"] + counters["window"]
        return counters, {"keys": (f32, (layers, Hkv, D, slots)), "values": (f32, (layers, Hkv, slots, D)),
                          "slot_token": (i64, (slots,))}
    if cache.get("kind") == "FullCache":
        counters = {name: _int(cache, name, 0, path) for name in ("length", "position_offset")}
        n = counters["length"]
        return counters, {"keys": (f32, (layers, Hkv, D, n)), "values": (f32, (layers, Hkv, n, D))}
    raise SessionError(f"{path}: unknown cache kind {cache.get('kind')!r} (SinkCache or FullCache)")


def check_arrays(kind: str, counters: dict, arrays: dict, path: Path):
    """Values the shapes cannot vouch for: finite keys and values; for the ring buffer, `slot_token` exactly as
    `seen` tokens fed through it (the last one written at `write - 1`) would leave it."""
    for name in ("keys", "values"):
        if not np.isfinite(arrays[name]).all():
            raise SessionError(f"{path}: array '{name}' holds NaN or infinite values")
    if kind != "SinkCache":
        return
    S, W, seen, write = counters["n_sink"], counters["window"], counters["seen"], counters["write"]
    expected = np.full(S + W, -1, dtype=np.int64)  # [S + W] stream index held by each slot
    expected[:min(S, seen)] = np.arange(min(S, seen))
    window_tokens = max(0, seen - S)  # tokens that went to the ring so far
    newest = np.arange(min(window_tokens, W))  # 0 = the newest
    expected[S + (write - 1 - newest) % W] = seen - 1 - newest
    if write >= W or (window_tokens < W and write != window_tokens) or not np.array_equal(arrays["slot_token"],
                                                                                             expected):
        raise SessionError(f"{path}: the ring buffer's slots (slot_token, write={write}) do not match the "
                           f"{seen} tokens it says it has seen")


# ---- a chat, and two processes on one file -------------------------------------------------------------------

# Chat -> (the file it was read from or last saved to, that file's stamp then)
_read_from: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def file_stamp(stat) -> tuple[int, int, int, int]:
    """(device, inode, size, modification time in ns) of an os.stat result: every save changes it (a new file)."""
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def stamp_of(path: Path) -> tuple[int, int, int, int] | None:
    """The stamp of the file at `path` now (None if there is none)."""
    try:
        return file_stamp(os.stat(path))
    except FileNotFoundError:
        return None


@contextmanager
def folder_lock(folder: Path):
    """An exclusive lock on `folder` (flock on the directory) while a session in it is checked and replaced: two
    processes saving there take turns. Where flock does not exist (Windows) the check runs without it."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as e:
        raise SessionError(f"cannot write a session into {folder}: {e.strerror or e}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def save_chat(path, chat) -> Path:
    """Save a `generate.Chat` after a turn: its cache, its turn counters, its sampler's random state. Refuses (a
    SessionError, nothing written) when the file at `path` is not the one this chat was loaded from or last saved
    to: another process saved there in between, and replacing its file would lose its turns."""
    real = Path(os.path.realpath(path))  # through a symbolic link, as atomic_write writes
    read_from, stamp = _read_from.get(chat, (None, None))
    expected = stamp if read_from == real else None  # a chat new to this file expects no file there
    state = {"turns": chat.turns, "fed": chat.fed, "rng": chat.sampler.rng.bit_generator.state}
    with folder_lock(real.parent):
        now = stamp_of(real)
        if now != expected:
            if expected is None:
                what = f"{path} was created by another process while this chat ran (a second chat on the same file?)"
            else:
                what = f"{path} was changed by another process since this chat read it (a second chat on it?)"
            raise SessionError(f"{what}: this turn is not saved there, so that the other chat's turns are kept; "
                               "resume from the file again, or give another --session file")
        save(real, chat.model, chat.cache, {"chat": state})
        _read_from[chat] = (real, stamp_of(real))
    return Path(path)


def load_chat(path, model, tokenizer, sampler=None):
    """The `generate.Chat` that `save_chat` saved, ready for its next turn (sampling settings are the caller's;
    the random state is the file's, so a seeded conversation goes on as if it had never stopped)."""
    from .generate import Chat, Sampler

    path = Path(path)
    cache, extra, stamp = read(path, model)
    chat = Chat(model, tokenizer, cache, sampler or Sampler())
    state = extra.get("chat")
    if not isinstance(state, dict):
        raise SessionError(f"{path} holds no chat state (a session saved by `session.save`, not a chat); start a "
                           "new session")
    chat.turns, chat.fed = (_int(state, name, 0, path, "chat counter") for name in ("turns", "fed"))
    rng = chat.sampler.rng.bit_generator
    check_rng_state(state.get("rng"), rng.state, path)
    try:
        rng.state = state["rng"]
    except (TypeError, KeyError, ValueError, OverflowError) as e:  # what the checks above did not foresee
        raise SessionError(f"{path}: the random generator's state is damaged ({e}); start a new session") from e
    _read_from[chat] = (Path(os.path.realpath(path)), stamp)
    return chat


def check_rng_state(saved, template, path: Path, where: str = "rng"):
    """`saved` must have the shape of the generator's own state `template`: the same keys, the same strings, and
    an integer in [0, 2**128) wherever it has an integer (NumPy raises OverflowError past its 128-bit words)."""
    if isinstance(template, dict):
        if not isinstance(saved, dict) or set(saved) != set(template):
            raise SessionError(f"{path}: the random generator's state '{where}' is not a {sorted(template)} object; "
                               "start a new session")
        for key, value in template.items():
            check_rng_state(saved[key], value, path, f"{where}.{key}")
    elif isinstance(template, int):
        if not isinstance(saved, int) or isinstance(saved, bool) or not 0 <= saved < 2**128:
            raise SessionError(f"{path}: the random generator's state '{where}' = {str(saved)[:40]} is not an "
                               "integer in [0, 2**128); start a new session")
    elif saved != template:
        raise SessionError(f"{path}: the random generator's state '{where}' is {str(saved)[:40]!r}, not "
                           f"{template!r}; start a new session")
