"""Tiny random Llama checkpoints for tests: a config.json and a model.safetensors in Hugging Face layout.

Written with NumPy alone (no torch), seeded, so every test exercises the same loader as the real model in
milliseconds. The oracle tests build theirs with transformers instead (tests/test_oracle.py).
"""

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from minisink import Llama, LlamaConfig
from minisink.weights import expected_shapes

TINY = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
            num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5, rope_theta=10000.0,
            max_position_embeddings=256, tie_word_embeddings=False)


def tiny_config(**overrides) -> dict:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu", **TINY, **overrides}


def tiny_weights(config: LlamaConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in expected_shapes(config).items():
        if name.endswith("norm.weight"):
            weights[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:  # std 0.5 / n ** 0.25 for fan-in n: larger than a fresh model's ~1 / sqrt(n), so attention is not uniform
            weights[name] = (rng.standard_normal(shape) * 0.5 / np.sqrt(shape[-1]) ** 0.5).astype(np.float32)
    return weights


def tiny_model(seed: int = 0, **overrides) -> Llama:
    config = LlamaConfig.from_dict(tiny_config(**overrides))
    return Llama(config, tiny_weights(config, seed))


def write_tiny_checkpoint(path, seed: int = 0, **overrides) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    raw = tiny_config(**overrides)
    config = LlamaConfig.from_dict(raw)
    (path / "config.json").write_text(json.dumps(raw, indent=2))
    save_file(tiny_weights(config, seed), str(path / "model.safetensors"))
    return path
