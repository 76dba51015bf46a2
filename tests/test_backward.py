"""The backward pass (minisink/backward.py) against someone else's answer.

1. Every backward function against float64 central differences of its forward (hypothesis over tiny shapes): the
   loss L = sum(forward(inputs) * d_out) for a random d_out, nudged one input entry at a time by +-EPS. Then the
   whole model in float64 (residuals, final norm, tied head), a few entries of every weight.
2. `loss_and_grads` against transformers' `LlamaForCausalLM` on the same weights: `labels=` loss and
   `loss.backward()`; every weight's gradient within 1e-4 norm-relative (float32), on GQA and MHA, tied and untied
   embeddings, odd head widths, several rope_theta and llama3 RoPE scaling, biases, sequence lengths 1 to 64.
3. The attention variants against torch autograd through small torch functions written here (transformers' gpt-oss
   `eager_attention_forward` for the sink logit): the attention alone, then the whole model, as transformers' Llama
   with that function as its attention (its AttentionInterface) and a `self_attn.sinks` parameter for the sink logit.
4. The training forward gives `Llama.forward`'s logits on the same weights, for every variant.
Parts 2 and 3 skip without torch and transformers (the `oracle` extra); parts 1 and 4 need neither.
"""

from dataclasses import fields

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minisink import new_cache

import minisink
import minisink.backward
from minisink.backward import (attention_backward, attention_forward, cross_entropy, cross_entropy_backward,
                               embedding_backward, linear_backward, loss_and_grads, rms_norm_backward, rope_backward,
                               swiglu_backward, training_forward)
from minisink.config import ATTENTION_VARIANTS
from minisink.model import InputError, linear, rms_norm, silu
from minisink.rope import apply_rope, rotation
from tiny import tiny_model

EPS = 1e-6  # central-difference step in float64: truncation error ~EPS^2, rounding ~1e-16 / EPS
FD_TOL = 1e-6  # norm-relative error allowed against central differences (float64)
ORACLE_TOL = 1e-4  # norm-relative error allowed against torch (float32 both)


def central_difference(loss, x: np.ndarray, index) -> float:
    """d loss() / d x[index], by (loss(x + EPS) - loss(x - EPS)) / (2 EPS) at that entry; x float64, restored."""
    old = x[index]
    x[index] = old + EPS
    up = loss()
    x[index] = old - EPS
    down = loss()
    x[index] = old
    return (up - down) / (2 * EPS)


def numerical_gradient(loss, x: np.ndarray) -> np.ndarray:
    """d loss() / d x by central differences, every entry of x."""
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        grad[index] = central_difference(loss, x, index)
    return grad


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """|got - want| / |want| in the Frobenius norm (an all-zero want compares the absolute error)."""
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def assert_close(got, want, tol=FD_TOL, name=""):
    """Norm-relative error below tol, or an absolute error at the level of central differences' rounding (about
    1e-16 / EPS per entry): a gradient that is nearly 0 (RMSNorm of one number) has no meaningful relative error."""
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    err = np.linalg.norm(got - want)
    assert err <= tol * np.linalg.norm(want) + 1e-8 * np.sqrt(want.size), \
        f"{name}: relative error {relative_error(got, want):.2e} >= {tol:.0e}"


def randn(rng, *shape, scale=1.0):
    return scale * rng.standard_normal(shape)  # float64


seeds = st.integers(0, 2**32 - 1)


# ---- 1. each backward against float64 central differences ------------------------------------------------------------

@given(seed=seeds, N=st.integers(1, 4), V=st.integers(2, 7))
def test_cross_entropy_backward(seed, N, V):
    rng = np.random.default_rng(seed)
    logits, targets = randn(rng, N, V, scale=3), rng.integers(0, V, N)
    loss, probs = cross_entropy(logits, targets)
    want = -np.mean([logits[n, targets[n]] - np.log(np.exp(logits[n]).sum()) for n in range(N)])
    assert abs(loss - want) < 1e-12
    assert_close(cross_entropy_backward(probs, targets),
                 numerical_gradient(lambda: cross_entropy(logits, targets)[0], logits))


@given(seed=seeds, N=st.integers(1, 6), V=st.integers(1, 4), d=st.integers(1, 3))
def test_embedding_backward_adds_repeated_ids(seed, N, V, d):
    rng = np.random.default_rng(seed)
    table, ids, d_x = randn(rng, V, d), rng.integers(0, V, N), randn(rng, N, d)  # few ids: they repeat
    assert_close(embedding_backward(d_x, ids, V), numerical_gradient(lambda: np.sum(table[ids] * d_x), table))


@given(seed=seeds, N=st.integers(1, 3), d=st.integers(1, 6), eps=st.sampled_from([1e-5, 1e-6, 0.1]))
def test_rms_norm_backward(seed, N, d, eps):
    rng = np.random.default_rng(seed)
    x, w, d_y = randn(rng, N, d), 1 + randn(rng, d, scale=0.3), randn(rng, N, d)
    d_x, d_w = rms_norm_backward(d_y, x, w, eps)

    def loss():
        return np.sum(rms_norm(x, w, eps) * d_y)

    assert_close(d_x, numerical_gradient(loss, x), name="d_x")
    assert_close(d_w, numerical_gradient(loss, w), name="d_weight")


@given(seed=seeds, N=st.integers(1, 3), n_in=st.integers(1, 4), n_out=st.integers(1, 4), has_bias=st.booleans())
def test_linear_backward(seed, N, n_in, n_out, has_bias):
    rng = np.random.default_rng(seed)
    x, W, b, d_y = randn(rng, N, n_in), randn(rng, n_out, n_in), randn(rng, n_out), randn(rng, N, n_out)
    d_x, d_W, d_b = linear_backward(d_y, x, W, has_bias)

    def loss():
        return np.sum(linear(x, W, b if has_bias else None) * d_y)

    assert_close(d_x, numerical_gradient(loss, x), name="d_x")
    assert_close(d_W, numerical_gradient(loss, W), name="d_weight")
    if has_bias:
        assert_close(d_b, numerical_gradient(loss, b), name="d_bias")
    else:
        assert d_b is None


@given(seed=seeds, T=st.integers(1, 4), heads=st.integers(1, 2), half=st.integers(1, 3),
       theta=st.sampled_from([10.0, 500.0, 1e4]), start=st.integers(0, 10**6))
def test_rope_backward_is_the_inverse_rotation(seed, T, heads, half, theta, start):
    rng = np.random.default_rng(seed)
    D = 2 * half
    rot = rotation(np.arange(start, start + T), theta ** (-np.arange(0, D, 2) / D))
    x, d_y = randn(rng, T, heads, D), randn(rng, T, heads, D)
    d_x = rope_backward(d_y, rot)
    assert_close(d_x, numerical_gradient(lambda: np.sum(apply_rope(x, rot) * d_y), x))
    assert_close(rope_backward(apply_rope(x, rot), rot), x, tol=1e-6, name="R(-p) R(p) x")  # float32 cos/sin


@given(seed=seeds, N=st.integers(1, 3), width=st.integers(1, 4), scale=st.sampled_from([1.0, 8.0]))
def test_swiglu_backward(seed, N, width, scale):
    rng = np.random.default_rng(seed)
    gate_up, d_act = randn(rng, N, 2 * width, scale=scale), randn(rng, N, width)

    def loss():
        return np.sum(silu(gate_up[:, :width]) * gate_up[:, width:] * d_act)

    assert_close(swiglu_backward(d_act, gate_up), numerical_gradient(loss, gate_up))


def test_swiglu_backward_over_several_row_blocks():
    """More rows than ROW_BLOCK: every block gets the formula, written here whole, in float64."""
    rng = np.random.default_rng(0)
    N, width = 2 * minisink.backward.ROW_BLOCK + 7, 5
    gate_up, d_act = randn(rng, N, 2 * width, scale=3), randn(rng, N, width)
    gate, up = gate_up[:, :width], gate_up[:, width:]
    sig = 1 / (1 + np.exp(-gate))
    want = np.concatenate([d_act * up * sig * (1 + gate * (1 - sig)), d_act * gate * sig], axis=1)
    assert_close(swiglu_backward(d_act, gate_up), want, tol=1e-12)


@given(seed=seeds, B=st.integers(1, 2), T=st.integers(1, 4), kv_heads=st.integers(1, 2), G=st.integers(1, 2),
       D=st.integers(1, 3), variant=st.sampled_from([v for v in ATTENTION_VARIANTS if v != "sink-token"]),
       bias=st.sampled_from([0.0, -1.5]))
def test_attention_backward(seed, B, T, kv_heads, G, D, variant, bias):
    rng = np.random.default_rng(seed)
    N, H = B * T, kv_heads * G
    q, k, v = randn(rng, N, H, D, scale=2), randn(rng, N, kv_heads, D, scale=2), randn(rng, N, kv_heads, D)
    sigma, d_out = randn(rng, H), randn(rng, N, H * D)

    def loss():
        return np.sum(attention_forward(q, k, v, B, variant, sigma, bias)[0] * d_out)

    d_q, d_k, d_v, d_sigma = attention_backward(d_out, attention_forward(q, k, v, B, variant, sigma, bias)[1])
    assert_close(d_q, numerical_gradient(loss, q), name="d_q")
    assert_close(d_k, numerical_gradient(loss, k), name="d_k")
    assert_close(d_v, numerical_gradient(loss, v), name="d_v")
    if variant == "sink-logit":
        assert_close(d_sigma, numerical_gradient(loss, sigma), name="d_sink_logits")


def float64_model(model):
    """The model with every weight in float64 (in place), so that central differences of its loss are exact enough."""
    for layer in model.layers:
        for f in fields(layer):
            value = getattr(layer, f.name)
            if isinstance(value, np.ndarray):
                setattr(layer, f.name, value.astype(np.float64))
    tied = model.lm_head is model.embed_tokens
    model.embed_tokens, model.norm = model.embed_tokens.astype(np.float64), model.norm.astype(np.float64)
    model.lm_head = model.embed_tokens if tied else model.lm_head.astype(np.float64)
    return model


@pytest.mark.parametrize("overrides", [dict(tie_word_embeddings=True), dict(attention_bias=True, mlp_bias=True),
                                       dict(num_key_value_heads=4, head_dim=6, hidden_size=20),
                                       dict(attention_variant="softmax1"),
                                       dict(attention_variant="sigmoid", sigmoid_bias=-1.0)],
                         ids=["tied", "biases", "mha_odd_width", "softmax1", "sigmoid"])
def test_whole_model_against_central_differences(overrides):
    """Residuals, the final norm, the tied head, the layers in sequence: the whole chain in float64, a few entries of
    every weight (chosen at random) against central differences of the loss."""
    shape = dict(vocab_size=11, hidden_size=16, intermediate_size=12, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=4)
    model = float64_model(tiny_model(1, **{**shape, **overrides}))
    ids = np.random.default_rng(2).integers(0, 11, (2, 6))
    loss, grads = loss_and_grads(model, ids)
    params = model.parameters()  # views into the (float64) weights: nudging one changes the model
    assert set(grads) == set(params)

    def loss_only():
        logits, _ = training_forward(model, ids[:, :-1])
        return cross_entropy(logits, ids[:, 1:].reshape(-1))[0]

    assert loss_only() == loss
    rng = np.random.default_rng(3)
    for name, w in params.items():
        assert w.dtype == np.float64 and grads[name].shape == w.shape, name
        for i in rng.choice(w.size, size=min(3, w.size), replace=False):
            index = np.unravel_index(i, w.shape)
            want = central_difference(loss_only, w, index)
            assert abs(grads[name][index] - want) < 1e-6 * max(1.0, abs(want)), f"{name}{index}"


# ---- 2. loss_and_grads against transformers' LlamaForCausalLM and loss.backward() ------------------------------------

def hf_llama(seed: int, **overrides):
    """A tiny transformers LlamaForCausalLM with weights strong enough that mistakes show: norm gains around 1 (not
    all 1), matrices of std 1.5 / sqrt(fan_in), so that attention is far from uniform (as tests/test_oracle.py)."""
    torch, transformers = pytest.importorskip("torch"), pytest.importorskip("transformers")
    base = dict(vocab_size=53, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=False)
    config = transformers.LlamaConfig(**{**base, **overrides})
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(1.5 * torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
    return model


def torch_loss_and_grads(hf, ids: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """transformers' mean next-token loss with `labels=` (it shifts them itself) and every parameter's .grad."""
    import torch

    hf.zero_grad()
    loss = hf(torch.tensor(ids), labels=torch.tensor(ids)).loss
    loss.backward()
    return loss.item(), {name: p.grad.numpy() for name, p in hf.named_parameters()}


ORACLE_CONFIGS = {
    "gqa4-2_untied_theta1e4": dict(rope_theta=1e4),
    "mha_tied_theta500": dict(num_key_value_heads=4, tie_word_embeddings=True, rope_theta=500.0),
    "gqa6-2_odd_width6_biases_theta1e6": dict(hidden_size=30, num_attention_heads=6, num_key_value_heads=2,
                                              head_dim=6, attention_bias=True, mlp_bias=True, rope_theta=1e6,
                                              tie_word_embeddings=True),
    "gqa6-3_width10_3layers": dict(hidden_size=36, num_attention_heads=6, num_key_value_heads=3, head_dim=10,
                                   num_hidden_layers=3, vocab_size=61, rope_theta=2e5),
    # llama3 RoPE scaling, head_dim 8: wavelengths 6.3 to 6283 against an original context of 64 (as test_oracle.py)
    "llama3_rope_scaling": dict(rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                 "original_max_position_embeddings": 64}),
}


@pytest.mark.parametrize("batch,length", [(3, 1), (2, 7), (2, 64)])
@pytest.mark.parametrize("name", ORACLE_CONFIGS)
def test_gradients_match_transformers(tmp_path, name, batch, length):
    hf = hf_llama(0, **ORACLE_CONFIGS[name])
    hf.save_pretrained(tmp_path)  # safetensors, loaded by minisink's own loader
    model = minisink.load_model(tmp_path)
    ids = np.random.default_rng(length).integers(0, hf.config.vocab_size, (batch, length + 1))
    want_loss, want = torch_loss_and_grads(hf, ids)
    loss, grads = loss_and_grads(model, ids)
    assert abs(loss - want_loss) < 1e-5 * abs(want_loss)
    assert set(grads) == set(want)
    for key, g in grads.items():
        assert g.dtype == np.float32 and g.shape == want[key].shape, key
        assert_close(g, want[key], tol=ORACLE_TOL, name=key)


# ---- 3. the attention variants against torch autograd ----------------------------------------------------------------

def torch_attention(q, k, v, variant: str, sigma, bias: float):
    """Causal attention written plainly in torch: q [B, H, T, D], k and v [B, Hkv, T, D] -> [B, T, H, D]. Each KV
    head is repeated for its G query heads (transformers' repeat_kv); softmax1 is a softmax over the scores and one
    more column of score 0 (with no value); sigmoid is the element-wise sigmoid of score + bias, masked."""
    import torch

    B, H, T, D = q.shape
    k, v = k.repeat_interleave(H // k.shape[1], dim=1), v.repeat_interleave(H // v.shape[1], dim=1)
    scores = q @ k.transpose(-1, -2) / D ** 0.5  # [B, H, T, T]
    visible = torch.ones(T, T, dtype=torch.bool).tril()
    if variant == "sigmoid":
        p = torch.sigmoid(scores + bias) * visible
    elif variant == "softmax1":
        scores = scores.masked_fill(~visible, -torch.inf)
        p = torch.softmax(torch.cat([scores, torch.zeros(B, H, T, 1, dtype=q.dtype)], dim=-1), dim=-1)[..., :-1]
    elif variant == "sink-logit":  # transformers' gpt-oss attention itself, when this transformers has it
        gpt_oss = pytest.importorskip("transformers.models.gpt_oss.modeling_gpt_oss")
        module = torch.nn.Module()
        module.sinks, module.num_key_value_groups = sigma, 1  # k and v are repeated already
        mask = torch.zeros(T, T, dtype=q.dtype).masked_fill(~visible, -torch.inf)
        return gpt_oss.eager_attention_forward(module.eval(), q, k, v, mask, scaling=D ** -0.5)[0]
    else:
        p = torch.softmax(scores.masked_fill(~visible, -torch.inf), dim=-1)
    return (p @ v).transpose(1, 2)


@pytest.mark.parametrize("variant", [v for v in ATTENTION_VARIANTS if v != "sink-token"])
@pytest.mark.parametrize("B,T,kv_heads,G,D", [(2, 9, 2, 3, 6), (3, 1, 1, 1, 4), (1, 33, 1, 4, 10)])
def test_attention_variants_match_torch_autograd(variant, B, T, kv_heads, G, D):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(B * T)
    N, H, bias = B * T, kv_heads * G, -1.3
    q = rng.standard_normal((N, H, D), dtype=np.float32) * 2
    k = rng.standard_normal((N, kv_heads, D), dtype=np.float32) * 2
    v = rng.standard_normal((N, kv_heads, D), dtype=np.float32)
    sigma = rng.standard_normal(H, dtype=np.float32) * 2
    d_out = rng.standard_normal((N, H * D), dtype=np.float32)
    out, saved = attention_forward(q, k, v, B, variant, sigma, bias)
    d_q, d_k, d_v, d_sigma = attention_backward(d_out, saved)

    def heads(x):  # [N, heads, D] -> [B, heads, T, D], float64 leaf
        return torch.tensor(x.reshape(B, T, -1, D).transpose(0, 2, 1, 3), dtype=torch.float64, requires_grad=True)

    tq, tk, tv = heads(q), heads(k), heads(v)
    tsigma = torch.tensor(sigma, dtype=torch.float64, requires_grad=True)
    tout = torch_attention(tq, tk, tv, variant, tsigma, bias).reshape(N, H * D)
    (tout * torch.tensor(d_out, dtype=torch.float64)).sum().backward()

    def back(t):  # [B, heads, T, D] -> [N, heads, D]
        return t.grad.numpy().transpose(0, 2, 1, 3).reshape(N, -1, D)

    assert_close(out, tout.detach().numpy(), tol=1e-5, name="output")
    assert_close(d_q, back(tq), tol=1e-5, name="d_q")
    assert_close(d_k, back(tk), tol=1e-5, name="d_k")
    assert_close(d_v, back(tv), tol=1e-5, name="d_v")
    if variant == "sink-logit":
        assert_close(d_sigma, tsigma.grad.numpy(), tol=1e-5, name="d_sink_logits")


def hf_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """An attention function for transformers' AttentionInterface: the variant of the module's config, through
    `torch_attention` (the causal mask is made there: every sample here is whole, with no padding)."""
    c = module.config
    return torch_attention(query, key, value, c.attention_variant, getattr(module, "sinks", None),
                           getattr(c, "sigmoid_bias", None)), None


@pytest.mark.parametrize("variant", ATTENTION_VARIANTS)
def test_variant_gradients_match_torch_autograd(tmp_path, variant):
    """The whole model with each variant: transformers' Llama with its attention swapped for `torch_attention`
    (and a `self_attn.sinks` parameter per layer for the sink logit), saved and loaded by minisink."""
    torch, transformers = pytest.importorskip("torch"), pytest.importorskip("transformers")
    transformers.AttentionInterface.register("minisink_variant", hf_attention)
    options = {"sink-token": dict(sink_token_id=0), "sigmoid": dict(sigmoid_bias=-0.7)}.get(variant, {})
    hf = hf_llama(1, attention_variant=variant, **options)
    hf.config._attn_implementation = "minisink_variant"
    if variant == "sink-logit":
        g = torch.Generator().manual_seed(5)
        for layer in hf.model.layers:
            layer.self_attn.sinks = torch.nn.Parameter(torch.randn(hf.config.num_attention_heads, generator=g))
    hf.save_pretrained(tmp_path)
    model = minisink.load_model(tmp_path)
    assert model.config.attention_variant == variant
    ids = np.random.default_rng(4).integers(0, hf.config.vocab_size, (2, 25))
    want_loss, want = torch_loss_and_grads(hf, ids)
    loss, grads = loss_and_grads(model, ids)
    assert abs(loss - want_loss) < 1e-5 * abs(want_loss)
    assert set(grads) == set(want) == set(model.parameters())
    for key, g in grads.items():
        assert_close(g, want[key], tol=ORACLE_TOL, name=key)


# ---- 4. the training forward is the model's forward ------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [{}, dict(tie_word_embeddings=True, num_key_value_heads=6, attention_bias=True),
                                       dict(attention_variant="softmax1"), dict(attention_variant="sink-logit"),
                                       dict(attention_variant="sigmoid", sigmoid_bias=0.0)],
                         ids=["gqa", "mha_tied_bias", "softmax1", "sink-logit", "sigmoid"])
def test_training_logits_equal_llama_forward(overrides):
    model = tiny_model(0, **overrides)
    inputs = np.random.default_rng(1).integers(0, model.config.vocab_size, (3, 20))
    logits, _ = training_forward(model, inputs)  # [3 * 20, V]
    for b in range(3):
        want = model.forward(inputs[b], new_cache(model))  # [20, V], one sample, a fresh cache
        np.testing.assert_allclose(logits[b * 20:(b + 1) * 20], want, atol=1e-4, rtol=0)


def test_bad_token_ids_are_clear_errors():
    model = tiny_model(0)
    with pytest.raises(InputError, match="2-D array"):
        loss_and_grads(model, np.zeros(5, dtype=int))
    with pytest.raises(InputError, match="at least 2 tokens"):
        loss_and_grads(model, np.zeros((2, 1), dtype=int))
    with pytest.raises(InputError, match="out of range"):
        loss_and_grads(model, np.full((2, 3), model.config.vocab_size))
    with pytest.raises(InputError, match="integers"):
        loss_and_grads(model, np.zeros((2, 3)))


def test_loss_and_grads_leaves_the_weights_alone():
    """The gradients are new arrays: the model's weights are bitwise the same after a step, and a second call gives
    bitwise the same loss and gradients."""
    model = tiny_model(0, tie_word_embeddings=True, attention_variant="sink-logit")
    before = {name: w.copy() for name, w in model.parameters().items()}
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 9))
    loss, grads = loss_and_grads(model, ids)
    assert all(np.array_equal(w, before[name]) for name, w in model.parameters().items())
    assert not any(np.shares_memory(g, w) for g in grads.values() for w in model.parameters().values())
    again, grads_again = loss_and_grads(model, ids)
    assert again == loss and all(np.array_equal(grads[name], grads_again[name]) for name in grads)
