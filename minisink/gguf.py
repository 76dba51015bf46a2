"""GGUF (llama.cpp's file format) -> a Hugging Face Llama model folder: the conversion chapter 01 teaches.

What it does: reads a llama GGUF file with the `gguf` package (llama.cpp's own NumPy reader), dequantizes every
tensor to float32, renames it to Hugging Face's name (`blk.3.attn_q.weight` ->
`model.layers.3.self_attn.q_proj.weight`), undoes llama.cpp's q/k row permutation (`unpermute`, the RoPE trap),
rebuilds the byte-level BPE tokenizer from the GGUF vocabulary and merges with the `tokenizers` library, and writes:

    config.json             LlamaForCausalLM config, every value read from the GGUF metadata
    tokenizer.json          byte-level BPE with the smollm pre-tokenizer
    tokenizer_config.json   special tokens and the chat template
    generation_config.json  bos/eos/pad ids
    model.safetensors       float32, Hugging Face names and layout (out_features, in_features)

What it does not: quantized inference (the weights become plain float32), architectures other than GGUF `llama`,
pre-tokenizers other than `smollm`, RoPE scaling. Where the file comes from and how the folder is installed is
minisink/fetch.py's job.
Where it comes from: the name map and the permutation are the inverse of llama.cpp's `convert_hf_to_gguf.py`
(`LlamaModel.permute`); transformers' GGUF loader (`LlamaTensorProcessor`) undoes the same permutation, and
tests/test_fetch.py checks our tensors against it.
"""

from __future__ import annotations

import errno
import json
import re
import sys
from pathlib import Path

import numpy as np

from .config import LlamaConfig
from .weights import expected_shapes

INSTALL_HINT = "pip install 'minisink[fetch]'"


class GGUFError(Exception):
    """The GGUF file cannot be converted; the message names the problem and the fix."""


def require_gguf():
    """The `gguf` package, or a GGUFError with the install hint (checked before a download, not after)."""
    try:
        import gguf
    except ImportError as e:
        raise GGUFError(f"reading the GGUF model needs the `gguf` package (and `tqdm` for progress bars): "
                        f"{INSTALL_HINT}") from e
    return gguf


def _open_gguf(gguf, path: Path):
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError, struct or numpy errors on a damaged file
        raise GGUFError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e}). The download is corrupt: "
                        f"delete it (and the cached wheel) and run again.") from e


class Metadata:
    """The key/value metadata of a GGUF file, with errors that name a missing key."""

    def __init__(self, gguf, reader, path: Path):
        self.gguf, self.fields, self.path = gguf, reader.fields, path

    def __contains__(self, key: str) -> bool:
        return key in self.fields

    def get(self, key: str, default=KeyError):
        if key not in self.fields:
            if default is KeyError:
                raise GGUFError(f"{self.path} lacks the metadata field {key!r}: minisink cannot build a "
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
def llama_config(meta: Metadata) -> dict:
    """A Hugging Face LlamaForCausalLM config.json built only from GGUF metadata."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise GGUFError(f"{meta.path} holds a {arch!r} model; minisink converts only the 'llama' architecture "
                        f"(Llama, SmolLM, Mistral-style GGUF files)")
    if meta.get(f"{arch}.rope.scaling.type", "none") not in ("none", ""):
        raise GGUFError(f"{meta.path} uses RoPE scaling {meta.get(f'{arch}.rope.scaling.type')!r}, "
                        f"which minisink does not implement")
    hidden = meta.get(f"{arch}.embedding_length")
    n_head = meta.get(f"{arch}.attention.head_count")
    head_dim = meta.get(f"{arch}.attention.key_length", hidden // n_head)
    if meta.get(f"{arch}.rope.dimension_count", head_dim) != head_dim:
        raise GGUFError(f"{meta.path}: RoPE covers {meta.get(f'{arch}.rope.dimension_count')} of {head_dim} "
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
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`; GGUFError for a tensor we do not know."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", gguf_name)
    if m is None or m.group(2) not in _LAYER_NAMES:
        raise GGUFError(f"unexpected tensor {gguf_name!r} in the GGUF file: minisink's llama conversion does not "
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
    for t in _progress(reader.tensors, progress, "dequantize"):
        name = hf_name(t.name)
        w = np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        if name.endswith("q_proj.weight"):
            w = unpermute(w, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            w = unpermute(w, cfg["num_key_value_heads"])
        out[name] = w
    if "lm_head.weight" in out:
        cfg["tie_word_embeddings"] = False
    expected = expected_shapes(LlamaConfig.from_dict(cfg))  # the names and shapes minisink's loader will check
    missing, extra = sorted(expected.keys() - out.keys()), sorted(out.keys() - expected.keys())
    if missing or extra:
        raise GGUFError(f"the GGUF tensors do not match its config: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, shape in expected.items():
        if out[name].shape != shape:
            raise GGUFError(f"{name} has shape {out[name].shape} after dequantizing, expected {shape}")
    return out


# the pre-tokenizer rules (GGUF `tokenizer.ggml.pre`) we can rebuild with the `tokenizers` library
SUPPORTED_PRE = ("smollm",)


def gguf_tokenizer(meta: Metadata):
    """A `tokenizers.Tokenizer` equal to llama.cpp's for this file: byte-level BPE with the smollm pre-tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2":
        raise GGUFError(f"{meta.path} has a {kind!r} tokenizer; minisink rebuilds only byte-level BPE ('gpt2')")
    if pre not in SUPPORTED_PRE:
        raise GGUFError(f"{meta.path} uses the pre-tokenizer rule {pre!r}; minisink supports only "
                        f"{list(SUPPORTED_PRE)} (add its regex to minisink/gguf.py::gguf_tokenizer)")
    tokens, types = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in meta.get("tokenizer.ggml.merges")]
    if any(len(m) != 2 for m in merges):
        raise GGUFError(f"{meta.path} has malformed BPE merges (expected 'left right' strings)")
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
                            for t, ty in zip(tokens, types, strict=True) if ty == control])
    return tok


def tokenizer_config(meta: Metadata, cfg: dict) -> dict:
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
    gguf = require_gguf()
    from safetensors.numpy import save_file

    reader = _open_gguf(gguf, gguf_path)
    meta = Metadata(gguf, reader, gguf_path)
    cfg = llama_config(meta)
    try:
        tensors = gguf_tensors(gguf, reader, cfg, progress)
    except (ValueError, NotImplementedError) as e:  # truncated data or a quantization gguf cannot dequantize
        raise GGUFError(f"cannot dequantize {gguf_path} ({e}): the file is corrupt or uses an unsupported type") \
            from e
    if progress:
        mb = sum(w.nbytes for w in tensors.values()) >> 20
        print(f"writing model.safetensors ({mb} MB)", file=sys.stderr, flush=True)
    try:
        save_file(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})
    except Exception as e:  # safetensors reports I/O errors as SafetensorError, not OSError
        if "os error 28" in str(e):
            raise OSError(errno.ENOSPC, str(e)) from e
        raise
    del tensors
    gguf_tokenizer(meta).save(str(out_dir / "tokenizer.json"))
    write_json(out_dir / "config.json", cfg)
    write_json(out_dir / "tokenizer_config.json", tokenizer_config(meta, cfg))
    write_json(out_dir / "generation_config.json",
               {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")})


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _progress(items, enabled: bool, desc: str):
    """`items`, wrapped in a tqdm progress bar on stderr when `enabled` and tqdm is installed."""
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:
            return items
        return tqdm(items, desc=desc, unit="tensor")
    return items
