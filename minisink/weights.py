"""Named float32 arrays from a Hugging Face checkpoint's safetensors files, checked against the config.

What it does: reads `model.safetensors` (or the shards listed in `model.safetensors.index.json`) with the
`safetensors` library, converts F32/F16/BF16 tensors to float32, and checks strictly: every tensor the config
implies is present, none is unexpected, every shape is right, every value is finite. Errors name the tensor and the
file, and are all `WeightsError`.
What it does not: quantized formats (GGUF is converted once by minisink/gguf.py), or lazy loading.

Why the library and not a few lines of our own: the format is simple ([8 bytes: header length N][N bytes: JSON
header][raw tensor bytes], header = {"name": {"dtype", "shape", "data_offsets": [begin, end]}}), but a careful
reader must refuse what the library refuses: a header that does not exactly cover the data (stray bytes between
the header and the data would shift every tensor), overlapping or out-of-order offsets, duplicate names, a byte
size that does not match dtype x shape. tests/test_weights_fuzz.py feeds both thousands of damaged files.
Every value must be finite: a NaN weight does not crash the forward pass, it turns every logit into NaN and the
sampler then emits token 0 forever. That check is one more pass over all the weights (about 35 ms for SmolLM2's
540 MB: 7-9% of a load here when it runs after the reads); `checking_finite` runs it on a second thread while the
model copies its weights into place, where `minisink bench` measures its cost at 0-2% of a load.
The `pread` backend reads each tensor's bytes into its own array (no memory map of the whole file, so loading
holds the file's bytes once, not twice). NumPy has no bfloat16; the library returns BF16 tensors as
`ml_dtypes.bfloat16` (the type JAX and TensorFlow use, from the same maintainers), which converts to float32
exactly. ml_dtypes is imported only when a BF16 tensor is met: importing it takes longer than loading SmolLM2.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from .config import LlamaConfig


class WeightsError(ValueError):
    """The checkpoint files are missing, corrupt, truncated, or do not match the config."""


_DTYPES = ("F32", "F16", "BF16")  # what minisink converts to float32


def read_safetensors(path: str | Path, check_finite: bool = True) -> dict[str, np.ndarray]:
    """All tensors of one .safetensors file as float32 arrays; WeightsError for anything the library refuses, an
    unsupported dtype, or (if `check_finite`) a non-finite value."""
    path = Path(path)
    tensors = {}
    try:
        with safe_open(path, framework="numpy", backend="pread") as f:  # the header is checked here, all of it
            for name in f.keys():
                dtype = f.get_slice(name).get_dtype()
                if dtype not in _DTYPES:
                    raise WeightsError(f"tensor '{name}' in {path} has dtype {dtype}; minisink reads F32, F16 "
                                       f"and BF16")
                if dtype == "BF16":
                    import ml_dtypes  # noqa: F401  (registers NumPy's bfloat16, which the library returns)
                tensors[name] = f.get_tensor(name).astype(np.float32, copy=False)
    except SafetensorError as e:
        raise WeightsError(f"{path} is not a valid safetensors file ({e}): the file is truncated or corrupt; "
                           f"re-fetch the model") from None
    except OSError as e:
        raise WeightsError(f"cannot read {path}: {e.strerror or e}") from None
    if check_finite:
        check_all_finite(tensors, path)
    return tensors


def check_all_finite(tensors: dict[str, np.ndarray], where: Path) -> None:
    """A WeightsError naming the first tensor that holds a NaN or an infinity. A NaN or an infinity anywhere makes
    a tensor's sum of squares non-finite; only then (or if that sum overflows) is every value looked at."""
    for name, w in tensors.items():
        flat = w.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(np.dot(flat, flat)) or np.isfinite(flat).all():
                continue
        bad = np.flatnonzero(~np.isfinite(flat))
        raise WeightsError(f"tensor '{name}' in {where} holds {len(bad)} non-finite value(s) (NaN or inf), the first "
                           f"at flat index {bad[0]}: the checkpoint is damaged; re-fetch the model")


@contextmanager
def checking_finite(tensors: dict[str, np.ndarray], where: Path):
    """`check_all_finite(tensors)` on a second thread while the body runs; its WeightsError is raised at the end.
    NumPy's dot releases the GIL, so the check runs beside the body (load_model builds the model in it) instead
    of after it. An exception from the body wins: it is what went wrong first."""
    failed = []

    def check():
        try:
            check_all_finite(tensors, where)
        except WeightsError as e:
            failed.append(e)

    thread = threading.Thread(target=check, name="minisink-finite-check", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()
    if failed:
        raise failed[0]


def _shard_path(model_dir: Path, index: Path, shard) -> Path:
    """The file a shard name from the index names, which must be a plain file name inside `model_dir`: an index
    is data, and data must not make minisink read files elsewhere (an absolute path, `..`, a symlink out)."""
    if not isinstance(shard, str) or not shard or shard != Path(shard).name or shard in (".", "..") or "\\" in shard:
        raise WeightsError(f"{index} is corrupt: it names the shard {shard!r}, which is not a file name inside "
                           f"{model_dir}")
    path = model_dir / shard
    if not path.resolve().is_relative_to(model_dir.resolve()):
        raise WeightsError(f"{index} names the shard {shard!r}, a link to {path.resolve()}, outside {model_dir}: "
                           f"copy the shard into the model folder")
    if not path.is_file():
        raise WeightsError(f"shard {shard} named in {index.name} is missing from {model_dir}: re-fetch the model")
    return path


def read_checkpoint(model_dir: str | Path, check_finite: bool = True) -> dict[str, np.ndarray]:
    """Every tensor of a model folder: model.safetensors, or the shards named by model.safetensors.index.json."""
    model_dir = Path(model_dir)
    single, index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if single.is_file():
        return read_safetensors(single, check_finite)
    if not index.is_file():
        raise WeightsError(f"no model.safetensors or model.safetensors.index.json in {model_dir}: "
                           "run `minisink fetch` (or python weights_fetch.py), or point at a Hugging Face model folder")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        raise WeightsError(f"{index} is corrupt (no 'weight_map' object): re-fetch the model") from None
    shards = {_shard_path(model_dir, index, shard) for shard in weight_map.values()}
    tensors = {}
    for shard in sorted(shards):
        for name, w in read_safetensors(shard, check_finite).items():
            if name in tensors:
                raise WeightsError(f"tensor '{name}' is in two shards of {model_dir} (the second: {shard.name})")
            tensors[name] = w
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
        if config.attention_variant == "sink-logit":  # one learned sink logit per query head (gpt-oss's name)
            shapes[p + "self_attn.sinks"] = (config.num_attention_heads,)
    return shapes


def load_weights(model_dir: str | Path, config: LlamaConfig, check_finite: bool = True) -> dict[str, np.ndarray]:
    """The checkpoint's tensors, checked strictly against `config`: all present, none unexpected, shapes right,
    and (if `check_finite`; load_model checks them alongside building the model) every value finite."""
    tensors = read_checkpoint(model_dir, check_finite)
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
