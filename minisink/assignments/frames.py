"""The frames the grader and the child running a student's code exchange: plain arrays, never Python objects.

One frame: [4-byte header length][JSON header][NumPy .npz bytes]. The arrays are read back with allow_pickle=False
and must be numeric, so no object of the student's can reach the grader (a forged frame is refused, not run).
This module imports nothing of minisink: the child loads it before anything else.
"""

from __future__ import annotations

import io
import json

import numpy as np

MAX_HEADER = 1 << 20  # bytes of JSON header a frame may carry
MAX_DATA = 1 << 28  # bytes of arrays a frame may carry (256 MB)


# --- frames: [4-byte header length][JSON header][.npz bytes] -----------------------------------------------------

def encode(header: dict, arrays: dict[str, np.ndarray | None]) -> bytes:
    """One frame: the JSON header (with the names of None values) and the arrays as an .npz."""
    present = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
    for k, v in present.items():
        if v.dtype.kind not in "biuf":
            raise TypeError(f"{k} is {type(arrays[k]).__name__} of dtype {v.dtype}, expected a numeric array")
    buf = io.BytesIO()
    if present:
        np.savez(buf, **present)
    data = buf.getvalue()
    head = json.dumps({**header, "none": [k for k, v in arrays.items() if v is None], "nbytes": len(data)},
                      default=_plain).encode()
    return len(head).to_bytes(4, "big") + head + data


def _plain(x):
    """JSON for NumPy scalars (ints, floats, bools in task inputs)."""
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"{type(x).__name__} cannot go into a frame header")


def decode(read) -> tuple[dict, dict[str, np.ndarray | None]]:
    """Read one frame with `read(n) -> exactly n bytes`; arrays are loaded without pickle."""
    n = int.from_bytes(read(4), "big")
    if n > MAX_HEADER:
        raise ValueError(f"a frame header of {n} bytes (at most {MAX_HEADER})")
    header = json.loads(read(n))
    if not isinstance(header, dict) or not isinstance(header.get("nbytes"), int) or \
            not 0 <= header["nbytes"] <= MAX_DATA:
        raise ValueError("a malformed frame header")
    data = read(header["nbytes"])
    arrays = {}
    if data:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    arrays.update({k: None for k in header.get("none", [])})
    return header, arrays
