"""Tiny random Llama checkpoints for tests: a config.json and a model.safetensors in Hugging Face layout.

The model is minisink.tiny's (the one the docs and the assignment graders use), with a larger default shape for the
tests: 3 layers, 6 query heads over 2 KV heads, a vocabulary of 97. Seeded NumPy weights, no torch, so every test
exercises the same loader as the real model in milliseconds. The oracle tests build theirs with transformers
instead (tests/test_oracle.py).
"""

import json
from pathlib import Path

from safetensors.numpy import save_file

import minisink.tiny
from minisink import Llama, LlamaConfig
from minisink.tiny import tiny_weights  # noqa: F401 (part of this module's interface)

TINY = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
            num_key_value_heads=2, head_dim=8)


def tiny_config(**overrides) -> dict:
    return minisink.tiny.tiny_config(**{**TINY, **overrides})


def tiny_model(seed: int = 0, **overrides) -> Llama:
    return minisink.tiny.tiny_model(seed, **{**TINY, **overrides})[0]


def write_tiny_checkpoint(path, seed: int = 0, **overrides) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    raw = tiny_config(**overrides)
    (path / "config.json").write_text(json.dumps(raw, indent=2))
    save_file(tiny_weights(LlamaConfig.from_dict(raw), seed), str(path / "model.safetensors"))
    return path
