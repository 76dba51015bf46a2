"""The model's hyperparameters, read from a Hugging Face `config.json`.

What it does: turns the checkpoint's `config.json` into a `LlamaConfig` dataclass whose field names are Hugging
Face's, so a reader can cross-reference any field with transformers' `LlamaConfig`.
What it does not: guess. A field that would change the computation and that minisink does not implement (another
architecture, another activation, an unknown RoPE scaling type) is rejected with an error that names the field.
Types and ranges are strict too, since JSON is typed loosely and Python's bool is an int: `"tie_word_embeddings":
"false"` is an error (not True), so is `"num_hidden_layers": true` (not 1), `"head_dim": 0` (not the default),
a string for a number, and `rms_norm_eps` or `rope_theta` <= 0 (which would give NaN logits, not an error).

Both spellings of RoPE settings are read: `rope_theta` + `rope_scaling` (checkpoints saved by transformers 4.x,
such as SmolLM2 and Llama 3.2 on the hub) and `rope_parameters` (transformers 5.x).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


class ConfigError(ValueError):
    """config.json is missing, unreadable, or asks for something minisink does not implement."""


def read_json_object(path: Path, error: type[Exception] = ConfigError) -> dict:
    """The JSON object in the file `path`; `error`, naming the file, if it is unreadable, not JSON, nested too deeply
    for Python's parser, or JSON but not an object."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # ValueError: bad JSON or UTF-8; RecursionError: nested too deep
        raise error(f"{path} is not valid JSON ({type(e).__name__}: {e}); re-fetch the model") from None
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}") from None
    if not isinstance(obj, dict):
        raise error(f"{path} is not a JSON object: it holds {json.dumps(obj)[:40]}; re-fetch the model")
    return obj


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# Attention variants a model can be trained with (minisink/train.py) and run with:
#   softmax     the usual softmax over the visible keys
#   softmax1    softmax-off-by-one (Miller 2023), the StreamingLLM paper's "zero sink": a sink logit of 0, no value
#   sink-logit  a learned sink logit per layer and query head (gpt-oss), weights model.layers.N.self_attn.sinks [H]
#   sink-token  softmax, with a learned placeholder token (sink_token_id) prepended to every sequence (the paper's
#               Sec. 3.3 "learnable sink token")
#   sigmoid     sigmoid attention without normalization (Gu et al. 2024, Sec. 7), with a fixed bias sigmoid_bias
ATTENTION_VARIANTS = ("softmax", "softmax1", "sink-logit", "sink-token", "sigmoid")


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int  # V: rows of embed_tokens and of lm_head
    hidden_size: int  # d_model: width of the residual stream
    intermediate_size: int  # width of the SwiGLU MLP (gate_proj/up_proj outputs)
    num_hidden_layers: int  # number of decoder blocks
    num_attention_heads: int  # H: query heads
    num_key_value_heads: int  # Hkv: key/value heads; H % Hkv == 0, each KV head serves H // Hkv query heads (GQA)
    head_dim: int  # D: width of one head (hidden_size // H unless the checkpoint says otherwise)
    rms_norm_eps: float = 1e-5  # epsilon inside RMSNorm's square root
    rope_theta: float = 10000.0  # RoPE base: pair i rotates at angle position * rope_theta ** (-2i / D)
    rope_scaling: dict | None = None  # None, or {"rope_type": "llama3", "factor", "low_freq_factor", ...}
    max_position_embeddings: int = 2048  # pre-training context length (informational: nothing is truncated)
    tie_word_embeddings: bool = False  # True: the LM head reuses embed_tokens (no lm_head tensor in the file)
    attention_bias: bool = False  # q/k/v/o projections carry a bias vector
    mlp_bias: bool = False  # gate/up/down projections carry a bias vector
    bos_token_id: int | None = None  # informational, for the tokenizer and generation
    eos_token_id: int | list[int] | None = None  # generation stops at (any of) these
    # minisink's own fields, written by `minisink train` (docs/08-growing-a-sink.md); transformers ignores them.
    attention_variant: str = "softmax"  # one of ATTENTION_VARIANTS: how attention weights are made
    sink_token_id: int | None = None  # "sink-token": the learned placeholder prepended to every sequence
    sigmoid_bias: float | None = None  # "sigmoid": b in p_ij = sigmoid(q_i . k_j / sqrt(D) + b)

    def __post_init__(self):
        """Check every field's type and range (JSON has no ints-only or positive-only types, and Python's bool is an
        int: `"num_hidden_layers": true` must not mean 1, nor `"tie_word_embeddings": "false"` mean True)."""
        for name in ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "max_position_embeddings"]:
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ConfigError(f"config field '{name}' must be a positive integer, got {value!r}")
        for name in ["rms_norm_eps", "rope_theta"]:  # a zero or negative value gives NaN logits, not an error
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value < math.inf:
                raise ConfigError(f"config field '{name}' must be a positive number, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ["tie_word_embeddings", "attention_bias", "mlp_bias"]:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"config field '{name}' must be true or false, got {getattr(self, name)!r}")
        for name in ["bos_token_id", "eos_token_id"]:
            value = getattr(self, name)
            ids = value if isinstance(value, list) and name == "eos_token_id" else [value]
            if value is not None and not all(_is_int(i) and i >= 0 for i in ids):
                raise ConfigError(f"config field '{name}' must be a token id (an integer >= 0)"
                                  f"{' or a list of them' if name == 'eos_token_id' else ''}, got {value!r}")
        if self.attention_variant not in ATTENTION_VARIANTS:
            raise ConfigError(f"unsupported config field 'attention_variant' = {self.attention_variant!r}: "
                              f"minisink implements {', '.join(ATTENTION_VARIANTS)}")
        if self.attention_variant == "sink-token" and not (
                _is_int(self.sink_token_id) and 0 <= self.sink_token_id < self.vocab_size):
            raise ConfigError(f"config field 'sink_token_id' must be a token id below vocab_size ({self.vocab_size}) "
                              f"for attention_variant 'sink-token', got {self.sink_token_id!r}")
        if self.attention_variant == "sigmoid":
            if not _is_number(self.sigmoid_bias) or not math.isfinite(self.sigmoid_bias):
                raise ConfigError("config field 'sigmoid_bias' must be a finite number for attention_variant "
                                  f"'sigmoid', got {self.sigmoid_bias!r}")
            object.__setattr__(self, "sigmoid_bias", float(self.sigmoid_bias))
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                              f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for RoPE, got {self.head_dim}")

    @classmethod
    def from_dict(cls, raw: dict) -> "LlamaConfig":
        """Build from a parsed config.json, rejecting what minisink does not implement."""
        if not isinstance(raw, dict):
            raise ConfigError(f"config.json must be a JSON object of config fields, got a {type(raw).__name__}")

        def reject_unless(ok: bool, field: str, why: str):
            if not ok:
                raise ConfigError(f"unsupported config field '{field}' = {raw.get(field)!r}: {why}")

        reject_unless(raw.get("model_type", "llama") == "llama", "model_type",
                      "minisink implements the Llama architecture only")
        reject_unless(raw.get("hidden_act", "silu") == "silu", "hidden_act", "only 'silu' (SwiGLU) is implemented")
        reject_unless(raw.get("pretraining_tp", 1) == 1, "pretraining_tp", "only 1 is implemented")
        reject_unless(raw.get("sliding_window") in (None, 0), "sliding_window",
                      "the model's own sliding window is not implemented (use a sink/window cache instead)")
        reject_unless(raw.get("rope_interleaved", False) is False, "rope_interleaved",
                      "minisink rotates halves, as Hugging Face Llama checkpoints expect")

        # RoPE: transformers 5.x writes rope_parameters, 4.x wrote rope_theta + rope_scaling.
        for field in ["rope_parameters", "rope_scaling"]:
            if raw.get(field) is not None and not isinstance(raw[field], dict):
                raise ConfigError(f"config field '{field}' must be an object (or null), got {raw[field]!r}")
        rope = dict(raw.get("rope_parameters") or {})
        rope_theta = rope.pop("rope_theta", raw.get("rope_theta", 10000.0))
        scaling = raw.get("rope_scaling") or rope
        rope_type = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
        if rope_type == "default":
            rope_scaling = None
        elif rope_type == "llama3":
            needed = ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"]
            missing = [k for k in needed if k not in scaling]
            if missing:
                raise ConfigError(f"config field 'rope_scaling' of type llama3 lacks {missing}")
            bad = [k for k in needed if not _is_number(scaling[k]) or not 0 < scaling[k] < math.inf]
            if bad:
                raise ConfigError(f"config field 'rope_scaling' of type llama3: '{bad[0]}' must be a positive "
                                  f"number, got {scaling[bad[0]]!r}")
            if scaling["low_freq_factor"] == scaling["high_freq_factor"]:
                raise ConfigError("config field 'rope_scaling' of type llama3: low_freq_factor must differ from "
                                  "high_freq_factor (RoPE interpolates between them)")
            rope_scaling = {"rope_type": "llama3", **{k: scaling[k] for k in needed}}
        else:
            field = "rope_scaling" if raw.get("rope_scaling") else "rope_parameters"
            raise ConfigError(f"unsupported config field '{field}': rope_type {rope_type!r} "
                              "(minisink implements 'default' and 'llama3')")

        for field in ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]:
            if field not in raw:
                raise ConfigError(f"config.json lacks the required field '{field}'")
        heads, hidden = raw["num_attention_heads"], raw["hidden_size"]

        def optional(field, default):  # absent and null both mean "the default"; 0 or false do not
            return default if raw.get(field) is None else raw[field]

        default_head_dim = hidden // heads if _is_int(hidden) and _is_int(heads) and heads > 0 else None
        return cls(
            vocab_size=raw["vocab_size"],
            hidden_size=hidden,
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=optional("num_key_value_heads", heads),
            head_dim=optional("head_dim", default_head_dim),
            rms_norm_eps=optional("rms_norm_eps", 1e-5),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=optional("max_position_embeddings", 2048),
            tie_word_embeddings=optional("tie_word_embeddings", False),
            attention_bias=optional("attention_bias", False),
            mlp_bias=optional("mlp_bias", False),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_id=raw.get("eos_token_id"),
            attention_variant=optional("attention_variant", "softmax"),
            sink_token_id=raw.get("sink_token_id"),
            sigmoid_bias=raw.get("sigmoid_bias"),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "LlamaConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"no config.json at {path}: point at a Hugging Face model folder "
                              "(`minisink fetch`, or python weights_fetch.py, writes one)")
        return cls.from_dict(read_json_object(path, ConfigError))

    def inv_freq(self):
        """RoPE inverse frequencies, float64 [D/2]; with llama3 scaling, the low frequencies are stretched.

        Follows transformers' `_compute_llama3_parameters`: wavelengths longer than the original context /
        low_freq_factor are divided by `factor`, shorter than original / high_freq_factor are kept, the band between
        is interpolated.
        """
        import numpy as np

        inv_freq = self.rope_theta ** (-np.arange(0, self.head_dim, 2, dtype=np.float64) / self.head_dim)
        if self.rope_scaling is None:
            return inv_freq
        s = self.rope_scaling
        factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        old_context = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
        smooth = (old_context / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
        return np.where(is_medium, smoothed, scaled)
