"""minisink/weights.py against the safetensors library on damaged files: the library is the oracle.

Small valid checkpoints are mutated (byte flips, truncations, header edits, stray bytes between the header and the
data, duplicated / overlapping / huge offsets, many entries, a wrong header length). For every mutated file:
- the library refuses it      -> minisink refuses it with a WeightsError;
- the library accepts it      -> minisink returns the same tensors as float32, or refuses it with a WeightsError
                                 for one of its two documented extra rules (dtype not F32/F16/BF16, a NaN/inf);
- no other exception type ever escapes minisink, and NumPy warns of nothing.
The outcomes are counted; `test_fuzz_outcomes` (run after the fuzz test) checks the counts and prints them.
"""

import json
import struct
import tracemalloc
from collections import Counter

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save

from minisink.weights import WeightsError, read_safetensors

FUZZ_EXAMPLES = 1200
OUTCOMES = Counter()


def base_files() -> list[bytes]:
    rng = np.random.default_rng(0)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    return [
        save({"model.norm.weight": f32(6), "a.weight": f32(3, 4), "b": f32(5).astype(np.float16),
              "c": f32(2, 3).astype(ml_dtypes.bfloat16)}, metadata={"format": "pt"}),
        save({"w": f32(16, 8)}),
        save({"empty": f32(0), "x": f32(2), "y": f32(1, 1)}),
    ]


BASES = base_files()


def split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def join(header, body: bytes, pad: bytes = b"") -> bytes:
    raw = (header if isinstance(header, bytes) else json.dumps(header).encode()) + pad
    return struct.pack("<Q", len(raw)) + raw + body


HUGE = [2**31, 2**32, 2**40, 2**53, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -1]
DTYPES = ["F32", "F16", "BF16", "F64", "I8", "U8", "I64", "BOOL", "F8_E4M3", "XYZ", ""]


@st.composite
def mutated(draw) -> tuple[str, bytes]:
    """(kind of mutation, the mutated file)."""
    data = draw(st.sampled_from(BASES))
    header, body = split(data)
    names = [k for k in header if k != "__metadata__"]
    name = draw(st.sampled_from(names))
    kind = draw(st.sampled_from(["flip", "truncate", "stray", "pad", "offset", "shape", "dtype", "drop-field",
                                 "duplicate", "overlap", "huge", "many", "header-length", "raw-header", "extend",
                                 "nan"]))
    if kind == "flip":  # a few bytes anywhere, header included
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            out[draw(st.integers(0, len(out) - 1))] ^= draw(st.integers(1, 255))
        return kind, bytes(out)
    if kind == "truncate":
        return kind, data[:draw(st.integers(0, len(data) - 1))]
    if kind == "stray":  # bytes between the header and the data: every tensor would shift
        return kind, join(header, draw(st.binary(min_size=1, max_size=8)) + body)
    if kind == "pad":  # spaces after the JSON, inside the header length: the format allows it
        return kind, join(header, body, pad=b" " * draw(st.integers(1, 16)))
    if kind == "nan" and body:  # a float32 NaN or infinity written over the data
        at = draw(st.integers(0, max(0, len(body) - 4)))
        value = draw(st.sampled_from([b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\x00\x00\x80\xff"]))
        return kind, join(header, (body[:at] + value + body[at + 4:])[:len(body)])
    if kind in ("extend", "nan"):  # bytes after the data
        return kind, data + draw(st.binary(min_size=1, max_size=8))
    entry = header[name]
    if kind == "offset":
        i = draw(st.integers(0, 1))
        entry["data_offsets"][i] = max(0, entry["data_offsets"][i] + draw(st.integers(-8, 8)))
    elif kind == "shape":
        entry["shape"] = draw(st.lists(st.integers(0, 20), max_size=3))
    elif kind == "dtype":
        entry["dtype"] = draw(st.sampled_from(DTYPES))
    elif kind == "drop-field":
        del entry[draw(st.sampled_from(sorted(entry)))]
    elif kind == "duplicate":  # a second entry over the same bytes
        header[name + ".copy"] = dict(entry)
    elif kind == "overlap":  # an entry whose bytes overlap its neighbour's
        begin, end = entry["data_offsets"]
        shift = draw(st.integers(1, 4))
        header["overlap"] = {"dtype": "U8", "shape": [end - begin], "data_offsets": [begin + shift, end + shift]}
    elif kind == "huge":
        entry[draw(st.sampled_from(["data_offsets", "shape"]))] = [draw(st.sampled_from(HUGE)),
                                                                  draw(st.sampled_from(HUGE))]
    elif kind == "many":  # many entries over the same bytes
        for i in range(draw(st.sampled_from([2, 50, 2000]))):
            header[f"{name}.{i}"] = dict(entry)
    elif kind == "header-length":
        raw = json.dumps(header).encode()
        n = max(0, len(raw) + draw(st.integers(-16, 16)))
        return kind, struct.pack("<Q", n) + raw + body
    elif kind == "raw-header":  # edits of the JSON text itself: duplicate keys, bad syntax, deep nesting
        raw = json.dumps(header)
        edit = draw(st.sampled_from(["dup-key", "cut", "nest", "null"]))
        if edit == "dup-key":
            first = json.dumps({name: entry})[1:-1]
            raw = "{" + first + "," + raw[1:]
        elif edit == "cut":
            raw = raw[:draw(st.integers(0, len(raw) - 1))]
        elif edit == "nest":
            raw = "[" * 10_000 + "]" * 10_000
        else:
            raw = "null"
        return kind + ":" + edit, join(raw.encode(), body)
    return kind, join(header, body)


def library(path):
    """The oracle: the safetensors library's own loader (its default memory-map backend), or None if it refuses."""
    try:
        return load_file(path)
    except Exception:  # SafetensorError, or NumPy refusing a dtype the library returns (same as a refusal here)
        return None


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=mutated())
def test_minisink_refuses_what_the_library_refuses(case, tmp_path_factory):
    kind, data = case
    path = tmp_path_factory.getbasetemp() / "fuzz.safetensors"
    path.write_bytes(data)
    theirs = library(path)
    try:
        ours, error = read_safetensors(path), None
    except WeightsError as e:
        ours, error = None, str(e)
    except Exception as e:  # any other exception type is a bug
        OUTCOMES["other: " + type(e).__name__] += 1
        raise AssertionError(f"{kind}: {type(e).__name__} escaped: {e}") from e
    if theirs is None:
        outcome = "rejected by both" if ours is None else "other: accepted only by minisink"
    elif ours is not None:
        same = ours.keys() == theirs.keys() and all(
            ours[k].dtype == np.float32 and ours[k].shape == theirs[k].shape
            and np.array_equal(ours[k], theirs[k].astype(np.float32)) for k in theirs)
        outcome = "accepted by both, equal tensors" if same else "other: accepted by both, tensors differ"
    elif "non-finite" in error:
        with np.errstate(invalid="ignore"):  # NumPy warns when it casts a NaN bfloat16
            assert any(not np.isfinite(t.astype(np.float64)).all() for t in theirs.values()), error
        outcome = "accepted by the library, refused by minisink: NaN/inf"
    elif "minisink reads F32, F16 and BF16" in error:
        assert any(str(t.dtype) not in ("float32", "float16", "bfloat16") for t in theirs.values()), error
        outcome = "accepted by the library, refused by minisink: dtype"
    else:
        outcome = "other: accepted only by the library"
    OUTCOMES[outcome] += 1
    assert not outcome.startswith("other"), f"{kind}: {outcome} ({error})"


def test_fuzz_outcomes(capsys):
    """Runs after the fuzz test (file order): at least 1,000 cases, no `other` outcome, and every kind of agreement
    seen (so the mutations reach both sides of the library's decision)."""
    if not OUTCOMES:
        pytest.skip("the fuzz test did not run in this session")
    total = sum(OUTCOMES.values())
    with capsys.disabled():
        print(f"\nsafetensors fuzz: {total} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(OUTCOMES.items())))
    assert total >= 1000
    assert not [k for k in OUTCOMES if k.startswith("other")], OUTCOMES
    assert OUTCOMES["rejected by both"] > 100 and OUTCOMES["accepted by both, equal tensors"] > 50


def test_stray_bytes_between_header_and_data_are_refused(tmp_path):
    """The case the hand-written reader got wrong: four bytes after the header shift every tensor."""
    header, body = split(BASES[1])
    path = tmp_path / "m.safetensors"
    path.write_bytes(join(header, b"\0\0\0\0" + body))
    with pytest.raises(WeightsError, match="not a valid safetensors file.*not fully covered"):
        read_safetensors(path)


def test_many_entries_over_the_same_bytes_are_refused_without_allocating(tmp_path):
    """2,000 entries over the same 4 MB would ask for 8 GB: refused before any tensor is allocated."""
    n = 1 << 20  # floats: 4 MB
    header = {f"t{i}": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]} for i in range(2000)}
    path = tmp_path / "m.safetensors"
    path.write_bytes(join(header, bytes(4 * n)))
    tracemalloc.start()
    try:
        with pytest.raises(WeightsError, match="not a valid safetensors file"):
            read_safetensors(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < path.stat().st_size, peak


def test_bf16_and_f16_become_float32_exactly(tmp_path):
    """BF16 is the top half of a float32's bits; the oracle is that formula, written here with NumPy alone."""
    bits = np.random.default_rng(1).integers(0, 2**16, size=(64, 8), dtype=np.uint16)
    bits[(bits & 0x7F80) == 0x7F80] = 0x3F80  # no NaN/inf (exponent all ones): 1.0 instead
    half = np.random.default_rng(2).standard_normal(40).astype(np.float16)
    path = tmp_path / "m.safetensors"
    path.write_bytes(save({"bf": bits.view(ml_dtypes.bfloat16), "h": half}))
    got = read_safetensors(path)
    assert got["bf"].dtype == np.float32 and np.array_equal(got["bf"], (bits.astype(np.uint32) << 16).view(np.float32))
    assert got["h"].dtype == np.float32 and np.array_equal(got["h"], half.astype(np.float64))
