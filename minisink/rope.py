"""Rotary position embedding (RoPE; Su et al. 2021), Hugging Face convention: rotate halves.

Each head vector x of width D is split into halves x1 = x[:D/2], x2 = x[D/2:], and pair (x1[i], x2[i]) is rotated
by the angle position * inv_freq[i]:

    rope(x, p) = [x1 * cos - x2 * sin,  x2 * cos + x1 * sin]

The one fact the sink cache relies on: the score between a query rotated at p and a key rotated at p' depends only
on p - p' (a rotation by p, then back by p'). See docs/05-ring-buffer.md.

The trap: llama.cpp's converter (`permute` in its convert_hf_to_gguf.py) reorders the q_proj/k_proj rows of GGUF
files so that RoPE rotates adjacent pairs (x[2i], x[2i+1]) instead of halves. weights_fetch.py undoes that
permutation; with the wrong one nothing crashes, the output just drifts away after a few tokens (docs chapter 02
shows it).

Angles are computed in float64: at position 10**7 a float32 angle is off by up to 0.35 rad on SmolLM2's
frequencies, a float64 one by about 4e-10 (docs chapter 02 measures both).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)  # eq=False: compared by identity (== on arrays has no single truth value)
class Rotation:
    """cos and sin of the angles for T positions, laid out over the whole head width and ready to broadcast."""

    cos: np.ndarray  # [T, 1, D] float32: [cos, cos] (pair i and i + D/2 share an angle)
    sin: np.ndarray  # [T, 1, D] float32: [-sin, sin], the signs of the rotation folded in


def rotation(positions: np.ndarray, inv_freq: np.ndarray) -> Rotation:
    """Rotation for integer positions [T] and inverse frequencies [D/2] (float64)."""
    angles = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]  # [T, D/2], float64
    cos, sin = np.cos(angles), np.sin(angles)
    cos = np.concatenate([cos, cos], axis=-1).astype(np.float32)  # [T, D]
    sin = np.concatenate([-sin, sin], axis=-1).astype(np.float32)  # [T, D]
    return Rotation(cos[:, None, :], sin[:, None, :])


def apply_rope(x: np.ndarray, rot: Rotation) -> np.ndarray:
    """Rotate every head of x [T, n_heads, D] by its token's angles: [T, n_heads, D] -> [T, n_heads, D].

    [x1, x2] * [cos, cos] + [x2, x1] * [-sin, sin] = [x1 cos - x2 sin, x2 cos + x1 sin].
    Seen as [T, n_heads, 2, D/2] (its two halves), x reversed along the halves axis is [x2, x1]: a view, no copy.
    """
    T, n_heads, D = x.shape
    assert T == rot.cos.shape[0] and D == rot.cos.shape[2], f"{x.shape} vs {rot.cos.shape}"
    halves = x.reshape(T, n_heads, 2, D // 2)  # [x1, x2]
    cos, sin = rot.cos.reshape(T, 1, 2, D // 2), rot.sin.reshape(T, 1, 2, D // 2)
    return (halves * cos + halves[:, :, ::-1] * sin).reshape(T, n_heads, D)
