"""Tiny random Llama models: the same config fields and the same loader path as the real model, in milliseconds.

What it does: a config.json dict (`tiny_config`), seeded random float32 weights for it (`tiny_weights`) and the
`Llama` built from both (`tiny_model`). The docs' examples, the tests (tests/tiny.py builds on this) and the
assignment graders use it, so a student, a test and a grader see the same kind of model.
What it does not: train anything. The weights are random; their scale is chosen so that attention is far from
uniform (a wrong mask or a wrong position changes the logits by much more than a float32 rounding error).
"""

from __future__ import annotations

import numpy as np

from .config import LlamaConfig
from .model import Llama
from .weights import expected_shapes

# The defaults: 2 layers, 4 query heads sharing 2 KV heads (GQA), head_dim 8, a 61-token vocabulary.
TINY = dict(vocab_size=61, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=256,
            tie_word_embeddings=False)


def tiny_config(**overrides) -> dict:
    """A config.json dict for a tiny Llama: TINY with `overrides` (Hugging Face field names)."""
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu", **TINY, **overrides}


def tiny_weights(config: LlamaConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Every tensor the config expects, seeded: norms near 1 (std 0.3), matrices with std 1.5 / sqrt(fan_in).

    1.5 / sqrt(fan_in) is 1.5x the usual initialization: large enough that attention is far from uniform, so a
    mistake in masks or positions shows well above the tolerance of a check."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in expected_shapes(config).items():
        if name.endswith("norm.weight"):
            weights[name] = (1 + 0.3 * rng.standard_normal(shape)).astype(np.float32)
        else:
            weights[name] = (1.5 * rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
    return weights


def tiny_model(seed: int = 0, **overrides) -> tuple[Llama, dict, dict[str, np.ndarray]]:
    """(model, config dict, weights) of a seeded tiny random Llama; `overrides` as in `tiny_config`."""
    raw = tiny_config(**overrides)
    config = LlamaConfig.from_dict(raw)
    weights = tiny_weights(config, seed)
    return Llama(config, weights), raw, weights
