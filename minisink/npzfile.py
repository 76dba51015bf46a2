"""Reading arrays from an .npz file that may be hostile (a session, a sink-logit file): only the members asked for,
each one's size and `.npy` header checked before a byte of its data is read.

`np.load` would do three things a file from elsewhere should not get to do: unpickle (allow_pickle=False stops
that), read every member the moment it is asked for whatever its size (a 1.5 MB zip of zeros can declare 1 GB
members), and let a member of the wrong dtype or shape through to code that trusts it. Here the caller says which
members it uses, with the dtype and shape of each; a member's declared size (the zip's directory) must fit that shape
before it is opened, its `.npy` header must say exactly that dtype and shape (np.lib.format parses the header with
ast.literal_eval: no code runs), and the data is read to the end, so that zipfile checks the member's CRC-32.
Members nobody asked for are never decompressed. Every problem is raised as the caller's error class, naming the
file and the member.

What it does not: write (np.savez does, through minisink/atomic.py), or accept object arrays.
"""

from __future__ import annotations

import math
import zipfile
import zlib

import numpy as np

MAX_NPY_HEADER = 4096  # bytes: a .npy header is a few dozen; np.lib.format's own default limit is 10000

# What zipfile, zlib and np.lib.format raise on a damaged file (a bad CRC, a cut, a flipped bit, not a zip at all)
DAMAGED = (OSError, zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError, TypeError, NotImplementedError,
           RecursionError, OverflowError)


def read_member(z: zipfile.ZipFile, name: str, dtype, shape: tuple, path, error=ValueError,
                max_bytes: int = 1 << 30) -> np.ndarray:
    """Member `name` of the open zip `z`: an array of `dtype` (a NumPy dtype, or "U" for a string of any length up
    to max_bytes) and `shape` (a tuple; None for a length that may be anything). Its declared size is checked
    against the shape (or against `max_bytes` where a length is free) before it is opened."""
    try:
        info = z.getinfo(f"{name}.npy")
    except KeyError:
        raise error(f"{path} has no '{name}' array") from None
    if dtype != "U" and None not in shape:
        nbytes = np.dtype(dtype).itemsize * math.prod(shape)  # Python ints: a huge shape cannot overflow
        if not nbytes <= info.file_size <= nbytes + MAX_NPY_HEADER:  # a header cannot ask for 8 GB of a small file
            raise error(f"{path}: array '{name}' is {info.file_size} bytes, not the {nbytes} (+ header) that "
                        f"{shape} {np.dtype(dtype)} take")
    elif info.file_size > max_bytes + MAX_NPY_HEADER:
        raise error(f"{path}: array '{name}' is {info.file_size} bytes, more than the {max_bytes} it can be")
    with z.open(info) as f:
        return read_npy(f, path, name, dtype, shape, error)


def read_npy(f, path, name: str, dtype, shape: tuple, error=ValueError) -> np.ndarray:
    """One .npy stream, read by hand: its header must say `dtype` and `shape` (as in `read_member`) before a byte
    of data is read; then exactly the data that header implies, and nothing after it."""
    version = np.lib.format.read_magic(f)
    if version not in [(1, 0), (2, 0)]:
        raise error(f"{path}: array '{name}' has .npy version {version}, not 1.0 or 2.0")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    got_shape, fortran, got_dtype = read(f, max_header_size=MAX_NPY_HEADER)
    dtype_ok = (got_dtype.kind == "U" and got_dtype.byteorder in "<=|") if dtype == "U" else got_dtype == dtype
    shape_ok = len(got_shape) == len(shape) and all(w is None or w == g for w, g in zip(shape, got_shape, strict=True))
    if not dtype_ok or fortran or not shape_ok:
        want = "a string" if dtype == "U" else np.dtype(dtype)
        raise error(f"{path}: array '{name}' is {got_dtype} {got_shape}, expected {want} "
                    f"{tuple('n' if w is None else w for w in shape)}")
    nbytes = got_dtype.itemsize * math.prod(got_shape)
    data = f.read(nbytes + 1)  # read to the end, so that zipfile checks the member's CRC-32
    if len(data) != nbytes:
        raise error(f"{path}: array '{name}' holds {len(data)} bytes of data, expected {nbytes}")
    return np.frombuffer(data, dtype=got_dtype).reshape(got_shape).copy()  # a writable array of our own
