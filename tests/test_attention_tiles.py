"""Long chunks are attended in tiles of QUERY_TILE queries that skip the keys none of their queries sees
(model.attention_in_tiles): the same output and probabilities as the plain per-head loop in float64
(reference.loop_attention), for random blocks whose masks hide keys anywhere (band edges, the middle, whole
columns), with and without a query rotation."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from minisink.reference import loop_attention
from minisink.cache import KVBlock
from minisink.model import QUERY_TILE, attention
from minisink.rope import rotation
from draws import examples


@st.composite
def cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    T = draw(st.integers(QUERY_TILE + 1, 3 * QUERY_TILE + 7))
    Hkv, G, D = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.sampled_from([4, 8]))
    blocks = []
    for i in range(draw(st.integers(1, 4))):
        L = draw(st.integers(1, 90))
        kind = draw(st.sampled_from(["none", "band", "random", "hidden-middle"]))
        i_, j_ = np.arange(T)[:, None], np.arange(L)[None, :]
        visible = {"none": np.ones((T, L), bool), "band": (j_ <= i_ * L // T + 3) & (j_ >= i_ * L // T - 40),
                   "random": rng.random((T, L)) < 0.6, "hidden-middle": (j_ < L // 3) | (j_ > 2 * L // 3)}[kind]
        visible = np.broadcast_to(visible, (T, L)).copy()  # [T, L]
        if i == 0:
            visible[:, 0] = True  # every query sees at least one key
        mask = None if kind == "none" else np.where(visible, np.float32(0), np.float32(-np.inf)).astype(np.float32)
        rot = rotation(-rng.integers(0, 50, T), 10000.0 ** (-np.arange(0, D, 2) / D)) if rng.random() < 0.4 else None
        blocks.append(KVBlock(rng.standard_normal((Hkv, D, L)).astype(np.float32),
                              rng.standard_normal((Hkv, L, D)).astype(np.float32), mask, rot))
    q = (2 * rng.standard_normal((T, Hkv * G, D))).astype(np.float32)
    return q, blocks, Hkv


@settings(max_examples=examples(60), deadline=None)
@given(cases())
def test_tiles_equal_the_plain_loop(case):
    q, blocks, Hkv = case
    want_out, want_probs = loop_attention(q, blocks, Hkv)
    out, probs = attention(q, blocks, Hkv, with_probs=True)
    np.testing.assert_allclose(out, want_out, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(probs, want_probs, atol=2e-6)
    out_only, none = attention(q, blocks, Hkv)
    assert none is None and np.array_equal(out_only, out)
