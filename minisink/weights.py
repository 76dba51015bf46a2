"""Named float32 arrays from a Hugging Face checkpoint's safetensors files, checked against the config.

What it does: reads `model.safetensors` (or the shards listed in `model.safetensors.index.json`), converts
F32/F16/BF16 tensors to float32, and checks strictly: every tensor the config implies is present, none is
unexpected, every shape is right. Errors name the tensor and the file.
What it does not: quantized formats (GGUF is converted once by minisink/gguf.py), or lazy loading.

The safetensors format is small enough to read directly, which also gives BF16 (NumPy has no bfloat16 type: a
bfloat16 is the top 16 bits of a float32, so shifting its bits left by 16 gives the float32 exactly):

    [8 bytes: header length N, little-endian u64][N bytes: JSON header][raw tensor bytes]
    header = {"name": {"dtype": "F32", "shape": [out, in], "data_offsets": [begin, end]}, ...}
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from .config import LlamaConfig


class WeightsError(ValueError):
    """The checkpoint files are missing, corrupt, truncated, or do not match the config."""


_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of one .safetensors file as float32 arrays. Each tensor's bytes are read from the file straight
    into its own array: no copy of the whole file is held in memory on the way (half a gigabyte for SmolLM2)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            header, start = _read_header(f, path, size)
            return {name: _read_tensor(f, path, name, info, start, size) for name, info in header.items()}
    except OSError as e:
        raise WeightsError(f"cannot read {path}: {e.strerror}") from None


def _read_header(f, path: Path, size: int) -> tuple[dict, int]:
    """The JSON header of an open .safetensors file and the offset where the tensor bytes start."""
    if size < 8:
        raise WeightsError(f"{path} is truncated ({size} bytes): re-fetch the model")
    (header_len,) = struct.unpack("<Q", f.read(8))
    if 8 + header_len > size:
        raise WeightsError(f"{path} is corrupt or truncated (header of {header_len} bytes in a file of "
                           f"{size}): re-fetch the model")
    try:
        header = json.loads(f.read(header_len))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise WeightsError(f"{path} has a corrupt header: not a safetensors file? re-fetch the model") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path} has a corrupt header: not a safetensors file? re-fetch the model")
    header.pop("__metadata__", None)
    return header, 8 + header_len


def _read_tensor(f, path: Path, name: str, info, start: int, size: int) -> np.ndarray:
    """One tensor, checked against its header entry {"dtype": str, "shape": [ints >= 0], "data_offsets": [b, e]}
    (offsets count from `start`), as float32."""
    try:
        dtype_name, (begin, end) = info["dtype"], info["data_offsets"]
        shape = tuple(int(n) for n in info["shape"])
        well_formed = isinstance(dtype_name, str) and min(shape, default=0) >= 0 and 0 <= begin <= end
    except (TypeError, KeyError, ValueError):
        well_formed = False
    if not well_formed:
        raise WeightsError(f"{path} has a corrupt header (entry '{name}'): re-fetch the model")
    dtype = _DTYPES.get(dtype_name)
    if dtype is None:
        raise WeightsError(f"tensor '{name}' in {path} has dtype {dtype_name}; minisink reads F32, F16 and BF16")
    if start + end > size or end - begin != dtype.itemsize * int(np.prod(shape)):
        raise WeightsError(f"tensor '{name}' in {path} runs past the end of the file or has the wrong "
                           "byte size: the file is truncated or corrupt; re-fetch the model")
    raw = np.empty(shape, dtype=dtype)
    f.seek(start + begin)
    if raw.nbytes and f.readinto(memoryview(raw).cast("B")) != raw.nbytes:  # the file shrank while we read it
        raise WeightsError(f"tensor '{name}' in {path} is cut short: the file is truncated; re-fetch the model")
    if dtype_name == "BF16":  # the top 16 bits of a float32
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32, copy=False)  # F32 as read; F16 converted


def read_checkpoint(model_dir: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a model folder: model.safetensors, or the shards named by model.safetensors.index.json."""
    model_dir = Path(model_dir)
    single, index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single)
    if not index.is_file():
        raise WeightsError(f"no model.safetensors or model.safetensors.index.json in {model_dir}: "
                           "run python weights_fetch.py, or point at a Hugging Face model folder")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise TypeError
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError, TypeError):
        raise WeightsError(f"{index} is corrupt (no 'weight_map'): re-fetch the model") from None
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        if not (model_dir / shard).is_file():
            raise WeightsError(f"shard {shard} named in {index.name} is missing from {model_dir}: re-fetch the model")
        tensors.update(read_safetensors(model_dir / shard))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise WeightsError(f"{index.name} lists tensors that no shard holds, e.g. '{missing[0]}'")
    return tensors


def expected_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor a Llama checkpoint with this config must hold (HF names, [out, in])."""
    d, V, I = config.hidden_size, config.vocab_size, config.intermediate_size
    q_out = config.num_attention_heads * config.head_dim
    kv_out = config.num_key_value_heads * config.head_dim
    shapes = {"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, d)
    for n in range(config.num_hidden_layers):
        p = f"model.layers.{n}."
        shapes[p + "input_layernorm.weight"] = (d,)
        shapes[p + "post_attention_layernorm.weight"] = (d,)
        projections = {"self_attn.q_proj": (q_out, d), "self_attn.k_proj": (kv_out, d),
                       "self_attn.v_proj": (kv_out, d), "self_attn.o_proj": (d, q_out),
                       "mlp.gate_proj": (I, d), "mlp.up_proj": (I, d), "mlp.down_proj": (d, I)}
        for name, shape in projections.items():
            shapes[p + name + ".weight"] = shape
            has_bias = config.attention_bias if name.startswith("self_attn") else config.mlp_bias
            if has_bias:
                shapes[p + name + ".bias"] = shape[:1]
    return shapes


def load_weights(model_dir: str | Path, config: LlamaConfig) -> dict[str, np.ndarray]:
    """The checkpoint's tensors, checked strictly against `config`: all present, none unexpected, shapes right."""
    tensors = read_checkpoint(model_dir)
    # Buffers some old checkpoints carry, and a tied head saved anyway: harmless, not weights we read.
    for name in [n for n in tensors if n.endswith("rotary_emb.inv_freq")]:
        del tensors[name]
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)

    expected = expected_shapes(config)
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise WeightsError(f"checkpoint in {model_dir} lacks {len(missing)} tensor(s) the config implies, e.g. "
                           f"'{missing[0]}' (does config.json match the weights?)")
    unexpected = [n for n in tensors if n not in expected]
    if unexpected:
        raise WeightsError(f"checkpoint in {model_dir} has {len(unexpected)} tensor(s) the config does not "
                           f"explain, e.g. '{unexpected[0]}' (tie_word_embeddings / attention_bias / mlp_bias?)")
    for name, shape in expected.items():
        if tensors[name].shape != shape:
            raise WeightsError(f"tensor '{name}' has shape {tensors[name].shape}, the config implies {shape}")
    return tensors
