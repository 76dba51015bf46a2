"""Attention with a sink logit per head (gpt-oss; softmax-off-by-one at sigma = 0): docs/05-why-sinks-exist.md.

Oracle: transformers' gpt-oss `eager_attention_forward` on random tensors (GQA, masks, several sigma), which appends
the sink as one more logit column and drops it after the softmax. Properties (hypothesis): sigma = -inf is plain
attention; sigma = 0 is a float64 softmax1 written here; a sink value is a float64 formula written here. Then the
model: every cache takes the sink logits (chunked evaluation equals token by token), and bad sink logits are
refused with a message.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minisink import InputError
from minisink.cache import KVBlock, MASKED
from minisink.evaluate import stream_nll
from minisink.model import attention
from minisink.spec import new_cache
from tiny import tiny_model


def random_case(rng, T, L, H, Hkv, D, masked: bool):
    q = rng.standard_normal((T, H, D)).astype(np.float32) * 2
    k = rng.standard_normal((L, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((L, Hkv, D)).astype(np.float32)
    visible = rng.random((T, L)) < 0.6 if masked else np.ones((T, L), bool)
    visible[np.arange(T), rng.integers(0, L, T)] = True  # every query sees at least one key
    mask = np.where(visible, np.float32(0), MASKED).astype(np.float32)
    return q, k, v, mask


def blocks_of(k, v, mask, split: int) -> list[KVBlock]:
    """The keys split into two blocks at `split` (one softmax spans both), in the cache's layout."""
    cuts = [slice(0, split), slice(split, len(k))] if 0 < split < len(k) else [slice(0, len(k))]
    return [KVBlock(k[c].transpose(1, 2, 0), v[c].transpose(1, 0, 2), mask[:, c]) for c in cuts]


def reference(q, k, v, mask, sigma, sink_values=None):
    """float64: p_ij = exp(s_ij) / (sum_k exp(s_ik) + exp(sigma_h)); out = sum_j p_ij v_j (+ p_sink * value_h)."""
    T, H, D = q.shape
    G = H // k.shape[1]
    kk, vv = np.repeat(k, G, axis=1).astype(np.float64), np.repeat(v, G, axis=1).astype(np.float64)  # [L, H, D]
    s = np.einsum("thd,lhd->htl", q.astype(np.float64), kk) / np.sqrt(D) + mask  # [H, T, L]
    top = np.maximum(s.max(axis=-1), sigma[:, None])  # [H, T]
    e, sink = np.exp(s - top[..., None]), np.exp(sigma[:, None] - top)
    p = e / (e.sum(axis=-1) + sink)[..., None]
    out = np.einsum("htl,lhd->thd", p, vv)
    if sink_values is not None:
        out += (sink / (e.sum(axis=-1) + sink)).T[..., None] * sink_values[None]
    return out.reshape(T, H * D), p


class GptOssModule:
    """What gpt-oss's eager_attention_forward reads off its module."""

    def __init__(self, sinks, groups):
        self.sinks, self.num_key_value_groups, self.training = sinks, groups, False


@pytest.mark.parametrize("T, L, H, Hkv, masked, split", [(1, 7, 4, 4, False, 0), (5, 12, 6, 2, True, 4),
                                                         (9, 9, 6, 3, True, 0), (3, 20, 8, 1, True, 13)])
@pytest.mark.parametrize("sigma_kind", ["zero", "random", "large", "mixed_off"])
def test_attention_matches_gpt_oss_eager(T, L, H, Hkv, masked, split, sigma_kind):
    torch = pytest.importorskip("torch")
    gpt_oss = pytest.importorskip("transformers.models.gpt_oss.modeling_gpt_oss")
    rng = np.random.default_rng(T * 100 + L)
    D = 8
    q, k, v, mask = random_case(rng, T, L, H, Hkv, D, masked)
    sigma = {"zero": np.zeros(H), "random": rng.normal(0, 2, H), "large": rng.normal(8, 1, H),
             "mixed_off": np.where(np.arange(H) % 2 == 0, -np.inf, rng.normal(1, 1, H))}[sigma_kind]
    sigma = sigma.astype(np.float32)

    out, probs = attention(q, blocks_of(k, v, mask, split), Hkv, with_probs=True, sink_logits=sigma)

    t = lambda x: torch.from_numpy(np.ascontiguousarray(x))  # noqa: E731
    module = GptOssModule(t(sigma), H // Hkv)
    expected, weights = gpt_oss.eager_attention_forward(
        module, t(q.transpose(1, 0, 2))[None], t(k.transpose(1, 0, 2))[None], t(v.transpose(1, 0, 2))[None],
        t(mask)[None, None], scaling=D ** -0.5)
    np.testing.assert_allclose(out, expected[0].reshape(T, H * D).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(probs.reshape(H, T, L), weights[0].numpy(), rtol=1e-5, atol=1e-6)


shapes = st.tuples(st.integers(1, 6), st.integers(1, 10), st.sampled_from([(2, 1), (4, 2), (6, 3), (3, 3)]),
                   st.booleans(), st.integers(0, 9), st.integers(0, 2 ** 16))


@given(shapes)
def test_sigma_minus_inf_is_plain_attention(case):
    T, L, (H, Hkv), masked, split, seed = case
    q, k, v, mask = random_case(np.random.default_rng(seed), T, L, H, Hkv, 8, masked)
    blocks = blocks_of(k, v, mask, split)
    plain, plain_p = attention(q, blocks, Hkv, with_probs=True)
    off, off_p = attention(q, blocks, Hkv, with_probs=True, sink_logits=np.full(H, -np.inf, np.float32))
    assert np.array_equal(off, plain) and np.array_equal(off_p, plain_p)  # exactly: exp(-inf) = 0
    far, _ = attention(q, blocks, Hkv, sink_logits=np.full(H, -60, np.float32))  # the limit sigma -> -inf
    np.testing.assert_allclose(far, plain, rtol=1e-6, atol=1e-6)


@given(shapes)
def test_sigma_zero_is_softmax_off_by_one(case):
    T, L, (H, Hkv), masked, split, seed = case
    q, k, v, mask = random_case(np.random.default_rng(seed), T, L, H, Hkv, 8, masked)
    out, probs = attention(q, blocks_of(k, v, mask, split), Hkv, with_probs=True,
                           sink_logits=np.zeros(H, np.float32))
    # softmax1(x)_j = exp(x_j) / (1 + sum_k exp(x_k)) (Miller 2023), in float64, no max trick needed here
    G, D = H // Hkv, q.shape[2]
    s = np.einsum("thd,lhd->htl", q.astype(np.float64), np.repeat(k, G, axis=1).astype(np.float64)) / np.sqrt(D)
    e = np.exp(s) * (mask == 0)
    p = e / (1 + e.sum(axis=-1, keepdims=True))
    expected = np.einsum("htl,lhd->thd", p, np.repeat(v, G, axis=1).astype(np.float64)).reshape(T, H * D)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.reshape(H, T, L), p, rtol=1e-5, atol=1e-7)
    assert (probs.sum(axis=-1) < 1).all()  # the escape valve: a row may put less than 1 on the keys


@given(shapes)
def test_sink_value_joins_the_numerator(case):
    T, L, (H, Hkv), masked, split, seed = case
    rng = np.random.default_rng(seed)
    q, k, v, mask = random_case(rng, T, L, H, Hkv, 8, masked)
    sigma = rng.normal(1, 2, H).astype(np.float32)
    values = rng.standard_normal((H, 8)).astype(np.float32)
    out, _ = attention(q, blocks_of(k, v, mask, split), Hkv, sink_logits=sigma, sink_values=values)
    np.testing.assert_allclose(out, reference(q, k, v, mask, sigma.astype(np.float64), values)[0],
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- the model

def test_model_sink_logits_minus_inf_changes_nothing_and_zero_does():
    model = tiny_model()
    ids = np.random.default_rng(1).integers(0, 97, 40)
    plain = model.forward(ids, new_cache(model))
    model.sink_logits = np.full((3, 6), -np.inf, np.float32)
    assert np.array_equal(model.forward(ids, new_cache(model)), plain)
    model.sink_logits = np.zeros((3, 6), np.float32)
    assert not np.allclose(model.forward(ids, new_cache(model)), plain, atol=1e-3)


@pytest.mark.parametrize("cache", [dict(policy="dense"), dict(policy="sink", sinks=2, window=9),
                                   dict(policy="window", window=7)])
def test_sink_logits_work_with_every_cache_chunked_equals_token_by_token(cache):
    """The fast evaluator's chunks give the NLLs of token-by-token streaming with sink logits too."""
    model = tiny_model(seed=2)
    rng = np.random.default_rng(2)
    model.sink_logits = rng.normal(0, 1, (3, 6)).astype(np.float32)
    model.sink_values = rng.standard_normal((3, 6, 8)).astype(np.float32)
    ids = rng.integers(0, 97, 60)
    one = stream_nll(model, ids, new_cache(model, **cache), chunk=1)
    many = stream_nll(model, ids, new_cache(model, **cache), chunk=16)
    np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, value, message", [
    ("sink_logits", np.zeros((3, 5), np.float32), "shape (3, 6)"),
    ("sink_logits", np.zeros((3, 6)), "float32"),
    ("sink_logits", [[0.0] * 6] * 3, "float32"),
    ("sink_logits", np.full((3, 6), np.nan, np.float32), "finite or -inf"),
    ("sink_logits", np.full((3, 6), np.inf, np.float32), "finite or -inf"),
    ("sink_values", np.zeros((3, 6, 8)), "float32"),
    ("sink_values", np.zeros((3, 6, 4), np.float32), "shape (3, 6, 8)"),
    ("sink_values", np.full((3, 6, 8), -np.inf, np.float32), "finite"),
])
def test_bad_sink_logits_are_refused(name, value, message):
    model = tiny_model()
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        setattr(model, name, value)
    assert getattr(model, name) is None  # unchanged


def test_forward_together_uses_the_sink_logits_and_values():
    """The evaluator's B-streams decode (evaluate.forward_together) gives what `Llama.forward` gives, sink logits
    and sink values included."""
    from minisink.evaluate import forward_together
    from minisink.tiny import tiny_model

    model, _, _ = tiny_model(seed=0)
    c = model.config
    rng = np.random.default_rng(0)
    model.sink_logits = rng.normal(size=(c.num_hidden_layers, c.num_attention_heads)).astype(np.float32)
    model.sink_values = rng.normal(size=(c.num_hidden_layers, c.num_attention_heads, c.head_dim)).astype(np.float32)
    together = [new_cache(model, "sink", sinks=2, window=4) for _ in range(2)]
    alone = [new_cache(model, "sink", sinks=2, window=4) for _ in range(2)]
    for t in rng.integers(0, c.vocab_size, 12):
        got = forward_together(model, [t, t], together)
        want = np.stack([model.forward([t], cache)[0] for cache in alone])
        np.testing.assert_allclose(got, want, atol=1e-4)
