"""The backward pass of the Llama in NumPy: the gradient of the mean next-token cross-entropy for every weight.

What it does: `loss_and_grads(model, token_ids)` runs the training forward (B samples of T tokens, causal within
each sample) through the model's own decoder layer, then walks back through it, one backward function per forward
operation: the LM head and cross-entropy, RMSNorm, the linear projections, RoPE, grouped-query causal attention (and
its variants, below), SwiGLU, the residual additions and the embedding. Each backward sits next to the formula of
its forward and takes what that forward saved. This is the chain rule written out by hand, the way llm.c writes
GPT-2's backward in C (`train_gpt2.c`); the tests check every function against float64 central differences, and
the whole gradient against transformers' `LlamaForCausalLM` with `loss.backward()` on the same weights.
What it does not: update weights (an optimizer does that, with these gradients), mixed precision, dropout,
gradient checkpointing (every layer's activations are kept until its backward runs).

Attention variants (config field `attention_variant`), with s_ij = q_i . k_j / sqrt(D) over the keys j <= i:
- "softmax": p_ij = exp(s_ij) / sum_k exp(s_ik), the vanilla Llama.
- "softmax1": p_ij = exp(s_ij) / (sum_k exp(s_ik) + 1), a zero sink logit: a virtual key of score 0 and no value,
  so a row can put less than 1 on the real keys (Miller 2023, "Attention is off by one"; StreamingLLM's "Zero Sink").
- "sink-logit": p_ij = exp(s_ij) / (sum_k exp(s_ik) + exp(sigma_h)), a learned sigma per layer and query head, as
  in gpt-oss (stored as `model.layers.N.self_attn.sinks` [H]; `model.sink_logits` at inference). Its gradient too.
- "sink-token": attention unchanged. The sink is a learned token that the data prepends to every sample
  (StreamingLLM Section 3.3), so its only weights are its embedding row: nothing to do here.
- "sigmoid": p_ij = sigmoid(s_ij + b), no normalization over j (Gu et al. 2024, arXiv 2410.10781, Section 7), with
  the bias b of config field `sigmoid_bias` (see `attention_forward` for the value they used).

Symbols in shape comments: B samples, T tokens per sample, N = B * T token rows, H query heads, Hkv key/value heads,
G = H // Hkv query heads per KV head, D head width, d_model hidden size, I MLP width, V vocabulary size.
A tensor named d_x is the gradient of the loss with respect to x, with x's shape.
"""

from __future__ import annotations

import numpy as np

from .config import ATTENTION_VARIANTS
from .model import InputError, Layer, Llama
from .rope import Rotation, apply_rope, rotation

# ---- the LM head and cross-entropy -------------------------------------------------------------------------------

def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of logits [N, V] against target ids [N]: loss = mean_n(logsumexp(z_n) - z_n[t_n]).

    Returns (loss, probs [N, V]): the softmax of each row is what the backward needs. The row max is subtracted
    before exp() so that it cannot overflow; the N terms are summed in float64 (a float32 sum of many similar
    terms loses digits)."""
    z = logits - logits.max(axis=-1, keepdims=True)  # [N, V], every row's max is 0
    probs = np.exp(z)  # [N, V]
    total = probs.sum(axis=-1, keepdims=True)  # [N, 1]
    log_p = z[np.arange(len(targets)), targets] - np.log(total[:, 0])  # [N] log-probability of each target
    probs /= total
    return -float(log_p.mean(dtype=np.float64)), probs


def cross_entropy_backward(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """d loss / d logits [N, V] = (softmax(z_n) - onehot(t_n)) / N: the mean divides every row by N."""
    d_logits = probs.copy()  # [N, V]
    d_logits[np.arange(len(targets)), targets] -= 1
    d_logits /= len(targets)
    return d_logits


# ---- the embedding ------------------------------------------------------------------------------------------------

def embedding_backward(d_x: np.ndarray, token_ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """Forward: x = embed_tokens[ids], rows [N, d_model]. Backward: row t of d_embed_tokens [V, d_model] is the sum of
    d_x over the positions n with ids[n] = t (a scatter-add). The trap: `grad[ids] += d_x` is wrong when an id repeats
    (NumPy writes each repeated row once, it does not add them). np.add.at(grad, ids, d_x) adds every one; sorting
    the rows by id and summing each run of equal ids (np.add.reduceat) gives the same sums about 3x faster."""
    order = np.argsort(token_ids, kind="stable")  # [N] positions, grouped by id
    sorted_ids = token_ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])  # first position of each id's run
    d_embed = np.zeros((vocab_size, d_x.shape[1]), dtype=d_x.dtype)  # [V, d_model]; ids never seen get 0
    d_embed[sorted_ids[starts]] = np.add.reduceat(d_x[order], starts, axis=0)  # [distinct ids, d_model]
    return d_embed


# ---- RMSNorm ------------------------------------------------------------------------------------------------------

def rms_norm_backward(d_y: np.ndarray, x: np.ndarray, weight: np.ndarray, eps: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Forward (model.rms_norm): y = x * r * w with r = 1 / sqrt(mean(x^2) + eps), one r per row.

    With x_hat = x * r and u = d_y * w: d_w = sum over rows of d_y * x_hat, and, since r depends on the whole row
    (dr/dx = -r^3 x / d_model), d_x = r * (u - x_hat * mean(u * x_hat)). Returns (d_x [N, d_model], d_w [d_model])."""
    r = 1 / np.sqrt(np.vecdot(x, x, keepdims=True) / x.shape[-1] + eps)  # [N, 1]
    x_hat = x * r  # [N, d_model]
    d_w = np.einsum("nd,nd->d", d_y, x_hat)  # [d_model]
    u = d_y * weight  # [N, d_model]
    d_x = u - x_hat * (np.vecdot(u, x_hat, keepdims=True) / x.shape[-1])  # [N, d_model]
    d_x *= r
    return d_x, d_w


# ---- linear projections -------------------------------------------------------------------------------------------

def linear_backward(d_y: np.ndarray, x: np.ndarray, weight: np.ndarray, has_bias: bool
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Forward (model.linear): y [N, out] = x [N, in] @ W.T [in, out] (+ b). Backward: d_x = d_y @ W [N, in],
    d_W = d_y.T @ x [out, in] (the same [out, in] layout as W), d_b = d_y summed over rows [out] (or None)."""
    return d_y @ weight, d_y.T @ x, d_y.sum(axis=0) if has_bias else None


# ---- RoPE ---------------------------------------------------------------------------------------------------------

def rope_backward(d_y: np.ndarray, rot: Rotation) -> np.ndarray:
    """Forward (rope.apply_rope): y = R(p) x, a rotation of each pair (x1[i], x2[i]) by the angle p * inv_freq[i].
    A rotation matrix is orthogonal, so its transpose is its inverse: d_x = R(p).T d_y = R(-p) d_y, the same
    rotation with the sines negated. [N, heads, D] -> [N, heads, D]."""
    return apply_rope(d_y, Rotation(rot.cos, -rot.sin))


# ---- SwiGLU -------------------------------------------------------------------------------------------------------

# SwiGLU's backward is a dozen element-wise passes over [N, I] arrays. Taken ROW_BLOCK rows at a time, each pass
# finds its block still in the CPU cache from the pass before: 1.6x less CPU time than whole arrays (N = 4096, I = 704).
ROW_BLOCK = 256


def swiglu_backward(d_act: np.ndarray, gate_up: np.ndarray) -> np.ndarray:
    """Forward: act = silu(gate) * up, with [gate, up] = gate_up [N, 2 I] and silu(x) = x * sigmoid(x).

    d_up = d_act * silu(gate); d_gate = d_act * up * silu'(gate), where silu'(x) = sigmoid(x) * (1 + x * (1 -
    sigmoid(x))). sigmoid(x) = (1 + tanh(x / 2)) / 2: no exp() to overflow for large |x| (as model.silu).
    Returns d_gate_up [N, 2 I], in the fused layout, ready for gate_up_proj's backward."""
    mlp_width = gate_up.shape[1] // 2  # I
    d_gate_up = np.empty_like(gate_up)  # [N, 2 I]
    for start in range(0, len(gate_up), ROW_BLOCK):
        rows = slice(start, start + ROW_BLOCK)
        gate, up = gate_up[rows, :mlp_width], gate_up[rows, mlp_width:]  # [block, I] each
        d_gate, d_up = d_gate_up[rows, :mlp_width], d_gate_up[rows, mlp_width:]
        sig = np.tanh(0.5 * gate)
        sig += 1
        sig *= 0.5  # sigmoid(gate)
        np.multiply(gate, sig, out=d_up)  # silu(gate)
        np.multiply(d_up, 1 - sig, out=d_gate)  # gate * sig * (1 - sig)
        d_gate += sig  # silu'(gate) = sig + gate * sig * (1 - sig)
        d_gate *= up
        d_gate *= d_act[rows]
        d_up *= d_act[rows]
    return d_gate_up


# ---- grouped-query causal attention, training -----------------------------------------------------------------------

def attention_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_samples: int, variant: str = "softmax",
                      sink_logits: np.ndarray | None = None, sigmoid_bias: float | None = None
                      ) -> tuple[np.ndarray, dict]:
    """Causal grouped-query attention of B = n_samples samples, each attending to its own T tokens only.

    q [N, H, D], k and v [N, Hkv, D] (q, k already rotated; N = B * T rows, sample after sample) -> (output
    [N, H * D], what the backward needs). Query head h uses KV head h // G, as in `model.attention`: the G query
    heads of a KV head are stacked into one [G*T, D] matrix, so each (sample, KV head) is one matrix product.
    `sink_logits` [H] are the "sink-logit" sigmas; "softmax1" uses sigma = 0; "sink-token" is plain softmax here.

    Sigmoid: Gu et al.'s code (sail-sg/Attention-Sink, lit_gpt/model_attn_sim.py, `eager_scaled_dot_product_attention`
    with the config `tinyllama_60M_sim_sigmoid_no_norm`: sim="sigmoid", attention_normalize=False) computes
    sigmoid(q.k / sqrt(D)) times the 0/1 causal mask, with no bias: b = 0, so `sigmoid_bias` 0.0 trains as they did.
    (Their `attention_bias` argument is that 0/1 mask, not a score bias.) Ramapuram et al. 2024 (arXiv 2409.04431)
    use b = -log(sequence length) instead, which starts every weight near 1/T; `sigmoid_bias` lets a run choose.
    """
    N, H, D = q.shape
    Hkv = k.shape[1]
    B, G = n_samples, H // Hkv
    T = N // B
    assert B * T == N and k.shape == v.shape == (N, Hkv, D), f"q {q.shape}, k {k.shape}, v {v.shape}, B {B}"
    if variant not in ATTENTION_VARIANTS:
        raise ValueError(f"unknown attention_variant {variant!r}: expected one of {', '.join(ATTENTION_VARIANTS)}")
    qh = (q * D ** -0.5).reshape(B, T, Hkv, G, D).transpose(0, 2, 3, 1, 4).reshape(B, Hkv, G * T, D)  # row g*T + t
    # [B, Hkv, T, D] copies: k and v are column slices of the layer's fused qkv rows, and NumPy's stacked matmul
    # falls back from BLAS to a loop on such strided views (measured at B = T = 64, D = 256: 1.4 s, not 40 ms)
    kh = np.ascontiguousarray(k.reshape(B, T, Hkv, D).transpose(0, 2, 1, 3))
    vh = np.ascontiguousarray(v.reshape(B, T, Hkv, D).transpose(0, 2, 1, 3))
    scores = qh @ kh.transpose(0, 1, 3, 2)  # [B, Hkv, G*T, T]: s_ij = q_i . k_j / sqrt(D)
    visible = np.tri(T, dtype=bool)  # [T, T]: query i sees key j <= i
    saved = {"qh": qh, "kh": kh, "vh": vh, "variant": variant, "sink": None}
    if variant == "sigmoid":
        assert sigmoid_bias is not None, "the sigmoid variant needs its bias b (config field sigmoid_bias)"
        # sigmoid(x) = (1 + tanh(x / 2)) / 2: no exp() to overflow. Each weight stands alone, so the mask can
        # simply multiply: a hidden key gets weight 0.
        p = np.tanh(0.5 * (scores + sigmoid_bias), out=scores)
        p += 1
        p *= 0.5
        p_tj = p.reshape(B, Hkv, G, T, T)  # a view: query t, key j
        p_tj *= visible
    else:
        s_tj = scores.reshape(B, Hkv, G, T, T)  # a view: query t, key j
        s_tj += np.where(visible, 0, -np.inf).astype(q.dtype)  # exp(-inf) = 0: a hidden key gets no weight
        top = scores.max(axis=-1, keepdims=True)  # [B, Hkv, G*T, 1], finite: the diagonal is always visible
        sigma = None
        if variant in ("softmax1", "sink-logit"):
            sigma = np.zeros(H, dtype=q.dtype) if variant == "softmax1" else np.asarray(sink_logits, dtype=q.dtype)
            assert sigma.shape == (H,), f"sink_logits must have shape ({H},), got {sigma.shape}"
            sigma = np.repeat(sigma.reshape(Hkv, G, 1), T, axis=1).reshape(Hkv, G * T, 1)  # row g*T + t, like qh
            top = np.maximum(top, sigma)  # the sink is one more column of the row: its max bounds exp() too
        scores -= top
        p = np.exp(scores, out=scores)  # the numerators, in place
        total = p.sum(axis=-1, keepdims=True)  # [B, Hkv, G*T, 1]
        if sigma is not None:
            sink = np.exp(sigma - top)  # [B, Hkv, G*T, 1] the sink's numerator exp(sigma - top)
            total += sink
            sink /= total
            saved["sink"] = sink  # the sink's probability p_sink = 1 - sum_j p_ij, kept exactly, not as 1 - sum
        p /= total
    saved["p"] = p  # [B, Hkv, G*T, T]
    out = p @ vh  # [B, Hkv, G*T, D]
    return out.reshape(B, Hkv, G, T, D).transpose(0, 3, 1, 2, 4).reshape(N, H * D), saved  # head h = kv * G + g


def attention_backward(d_out: np.ndarray, saved: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                   np.ndarray | None]:
    """d_out [N, H * D] -> (d_q [N, H, D], d_k [N, Hkv, D], d_v [N, Hkv, D], d_sink_logits [H] or None).

    out_i = sum_j p_ij v_j, so d_p_ij = d_out_i . v_j and d_v_j = sum_i p_ij d_out_i; the G query heads of a KV head
    are rows of the same [G*T, ...] matrices, so one product sums their contributions into that head's d_k, d_v.
    - softmax (and its sink variants): d_s_ij = p_ij * (d_p_ij - sum_k p_ik d_p_ik). The sink is one more column
      with no value (its d_p is 0), so the sum is over the real keys alone, and d_sigma = -p_sink * sum_k p_ik d_p_ik,
      summed over every row of that head (all samples and tokens).
    - sigmoid: p_ij = sigmoid(s_ij + b) on its own, so d_s_ij = d_p_ij * p_ij * (1 - p_ij) (0 where p_ij = 0: hidden).
    Then s = (q / sqrt(D)) . k: d_q = d_s @ k / sqrt(D), d_k = d_s.T @ (q / sqrt(D)).
    """
    qh, kh, vh, p, sink = saved["qh"], saved["kh"], saved["vh"], saved["p"], saved["sink"]
    B, Hkv, GT, D = qh.shape
    T = kh.shape[2]
    G, N = GT // T, B * T
    d_outh = d_out.reshape(B, T, Hkv, G, D).transpose(0, 2, 3, 1, 4).reshape(B, Hkv, GT, D)  # like qh
    d_v = p.transpose(0, 1, 3, 2) @ d_outh  # [B, Hkv, T, D]: sum over the G*T query rows
    d_s = d_outh @ vh.transpose(0, 1, 3, 2)  # [B, Hkv, G*T, T]: d_p
    d_sink_logits = None
    if saved["variant"] == "sigmoid":
        d_s *= p * (1 - p)
    else:
        row = np.vecdot(p, d_s, keepdims=True)  # [B, Hkv, G*T, 1]: sum_k p_ik d_p_ik
        if sink is not None:  # d_sigma per row, summed over samples and tokens: [Hkv, G] = [H]
            d_sink_logits = -(sink * row).reshape(B, Hkv, G, T).sum(axis=(0, 3)).reshape(Hkv * G)
        d_s -= row
        d_s *= p
    d_qh = d_s @ kh  # [B, Hkv, G*T, D], then the 1/sqrt(D) of the scores
    d_qh *= D ** -0.5
    d_k = d_s.transpose(0, 1, 3, 2) @ qh  # [B, Hkv, T, D] (qh carries the 1/sqrt(D) already)
    d_q = d_qh.reshape(B, Hkv, G, T, D).transpose(0, 3, 1, 2, 4).reshape(N, Hkv * G, D)  # [N, H, D]
    return (d_q, d_k.transpose(0, 2, 1, 3).reshape(N, Hkv, D), d_v.transpose(0, 2, 1, 3).reshape(N, Hkv, D),
            d_sink_logits)


class CausalAttention:
    """The `attend(n, q, k, v)` callback of `Llama.decoder` for training: B samples of T tokens, each causal on its
    own. It keeps what each layer's attention backward needs, in `saved[n]`."""

    def __init__(self, n_samples: int, variant: str, sink_logits: np.ndarray | None, sigmoid_bias: float | None):
        self.n_samples, self.variant = n_samples, variant
        self.sink_logits, self.sigmoid_bias = sink_logits, sigmoid_bias  # [layers, H] or None; b for "sigmoid"
        self.saved: dict[int, dict] = {}

    def __call__(self, n: int, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        sigma = None if self.sink_logits is None else self.sink_logits[n]
        out, self.saved[n] = attention_forward(q, k, v, self.n_samples, self.variant, sigma, self.sigmoid_bias)
        return out  # [N, H * D]


# ---- one decoder layer, backward ------------------------------------------------------------------------------------

def layer_backward(d_x: np.ndarray, layer: Layer, saved: dict, attention_saved: dict, rot: Rotation, prefix: str,
                   grads: dict) -> np.ndarray:
    """The gradient through one decoder layer, in the reverse order of its forward (model.Layer.__call__):

        h_attn = rms_norm(x_in); [q, k, v] = h_attn @ qkv_proj.T; q, k rotated; out = attend(q, k, v)
        x_mid = x_in + out @ o_proj.T
        h_mlp = rms_norm(x_mid); gate_up = h_mlp @ gate_up_proj.T; act = silu(gate) * up
        x_out = x_mid + act @ down_proj.T

    d_x is d x_out [N, d_model]; returns d x_in. A residual addition passes its gradient through unchanged to both
    of its inputs, so d x_mid = d x_out + (what comes back through the MLP), and the same for x_in. The weights'
    gradients go into `grads` under their Hugging Face names (the fused qkv_proj and gate_up_proj split back).
    """
    c = layer.config
    N, H, Hkv, D, eps = d_x.shape[0], c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.rms_norm_eps
    # x_out = x_mid + down_proj(act)
    d_act, d_down, d_down_b = linear_backward(d_x, saved["act"], layer.down_proj, layer.down_bias is not None)
    d_gate_up = swiglu_backward(d_act, saved["gate_up"])  # [N, 2 I]
    d_h, d_gate_up_proj, d_gate_up_b = linear_backward(d_gate_up, saved["h_mlp"], layer.gate_up_proj,
                                                       layer.gate_up_bias is not None)
    d_mid, d_post_norm = rms_norm_backward(d_h, saved["x_mid"], layer.post_attention_layernorm, eps)
    d_mid += d_x  # the residual: x_mid reaches x_out directly too
    # x_mid = x_in + o_proj(out)
    d_out, d_o, d_o_b = linear_backward(d_mid, saved["out"], layer.o_proj, layer.o_bias is not None)
    d_q, d_k, d_v, d_sinks = attention_backward(d_out, attention_saved)
    d_qk = np.concatenate([d_q, d_k], axis=1)  # [N, H + Hkv, D]: q and k heads, rotated back at once
    d_qkv = np.concatenate([rope_backward(d_qk, rot).reshape(N, (H + Hkv) * D), d_v.reshape(N, Hkv * D)],
                           axis=1)  # [N, (H + 2 Hkv) * D], qkv_proj's output layout
    d_h, d_qkv_proj, d_qkv_b = linear_backward(d_qkv, saved["h_attn"], layer.qkv_proj, layer.qkv_bias is not None)
    d_in, d_input_norm = rms_norm_backward(d_h, saved["x_in"], layer.input_layernorm, eps)
    d_in += d_mid  # the residual: x_in reaches x_mid directly too

    mlp_width = d_gate_up_proj.shape[0] // 2  # I
    grads[prefix + "input_layernorm.weight"] = d_input_norm
    grads[prefix + "post_attention_layernorm.weight"] = d_post_norm
    projections = [("self_attn.q_proj", d_qkv_proj, d_qkv_b, slice(0, H * D)),  # the fused gradients split back
                   ("self_attn.k_proj", d_qkv_proj, d_qkv_b, slice(H * D, (H + Hkv) * D)),
                   ("self_attn.v_proj", d_qkv_proj, d_qkv_b, slice((H + Hkv) * D, None)),
                   ("self_attn.o_proj", d_o, d_o_b, slice(None)),
                   ("mlp.gate_proj", d_gate_up_proj, d_gate_up_b, slice(0, mlp_width)),
                   ("mlp.up_proj", d_gate_up_proj, d_gate_up_b, slice(mlp_width, None)),
                   ("mlp.down_proj", d_down, d_down_b, slice(None))]
    for name, d_weight, d_bias, rows in projections:
        grads[prefix + name + ".weight"] = d_weight[rows]  # [out, in]
        if d_bias is not None:
            grads[prefix + name + ".bias"] = d_bias[rows]  # [out]
    if attention_saved["variant"] == "sink-logit":  # softmax1's sigma is fixed at 0: no weight
        grads[prefix + "self_attn.sinks"] = d_sinks  # [H]
    return d_in


# ---- the training forward and the whole backward --------------------------------------------------------------------

def training_rotation(model: Llama, n_samples: int, T: int) -> Rotation:
    """RoPE for B samples of T tokens, rows sample after sample: every sample starts at position 0. [N, 1, D]."""
    rot = rotation(np.arange(T), model.config.inv_freq())  # [T, 1, D]
    return Rotation(np.tile(rot.cos, (n_samples, 1, 1)), np.tile(rot.sin, (n_samples, 1, 1)))


def check_token_ids(model: Llama, token_ids) -> np.ndarray:
    """token_ids as an int64 array [B, T + 1], or an InputError that says what is wrong with them."""
    ids = np.asarray(token_ids)
    if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 2:
        raise InputError(f"token_ids must be a 2-D array [B, T + 1] with B >= 1 samples of at least 2 tokens (each "
                         f"row's ids[:, 1:] are predicted from its ids[:, :-1]), got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"token_ids must be integers, got dtype {ids.dtype}")
    V = model.config.vocab_size
    bad = ids[(ids < 0) | (ids >= V)]
    if bad.size:
        raise InputError(f"token id {int(bad[0])} is out of range for a vocabulary of {V}")
    return ids.astype(np.int64)


def training_forward(model: Llama, inputs: np.ndarray) -> tuple[np.ndarray, dict]:
    """Logits [B * T, V] of B samples of T token ids (inputs [B, T]), each sample on its own from position 0, and
    what `backward` needs. Row b * T + t holds sample b's token t: the same logits as `Llama.forward` on that sample
    alone with a fresh cache (a test checks it)."""
    c = model.config
    B, T = inputs.shape
    variant = c.attention_variant  # "sink-token" is "softmax" here: its sink is a token the data prepends
    attend = CausalAttention(B, variant, model.sink_logits if variant == "sink-logit" else None, c.sigmoid_bias)
    ids = inputs.reshape(-1)  # [N], sample after sample
    saved: dict = {"ids": ids, "rotation": training_rotation(model, B, T), "attention": attend.saved}
    x = model.embed_tokens[ids]  # [N, d_model], a copy: the residual stream
    # the model's own decoder layers, which fill saved["layers"] and saved["x_final"]; attend fills saved["attention"]
    saved["h"] = h = model.decoder(x, saved["rotation"], attend, saved=saved)  # [N, d_model], after the final norm
    return h @ model.lm_head.T, saved  # [N, V]


def backward(model: Llama, d_logits: np.ndarray, saved: dict) -> dict[str, np.ndarray]:
    """The gradient of every weight, keyed by its Hugging Face name, from d_logits [N, V] and what
    `training_forward` saved: the LM head, the final norm, the layers from last to first, the embedding."""
    c = model.config
    grads: dict[str, np.ndarray] = {}
    d_h, d_lm_head, _ = linear_backward(d_logits, saved["h"], model.lm_head, False)  # [N, d_model], [V, d_model]
    d_x, grads["model.norm.weight"] = rms_norm_backward(d_h, saved["x_final"], model.norm, c.rms_norm_eps)
    for n in reversed(range(len(model.layers))):
        d_x = layer_backward(d_x, model.layers[n], saved["layers"][n], saved["attention"][n], saved["rotation"],
                             f"model.layers.{n}.", grads)
    d_embed = embedding_backward(d_x, saved["ids"], c.vocab_size)  # [V, d_model]
    if c.tie_word_embeddings:  # one matrix used twice (embedding and LM head): its gradient is the sum of both uses
        d_embed += d_lm_head
    else:
        grads["lm_head.weight"] = d_lm_head
    grads["model.embed_tokens.weight"] = d_embed
    return grads


def loss_and_grads(model: Llama, token_ids) -> tuple[float, dict[str, np.ndarray]]:
    """Mean next-token cross-entropy of token_ids [B, T + 1] (each row's ids[:, 1:] given its ids[:, :-1], as
    transformers' `labels=` computes it) and its gradient for every weight of the model, keyed by the Hugging Face
    names (`model.embed_tokens.weight`, `model.layers.0.self_attn.q_proj.weight`, ...), float32 arrays of the
    weights' shapes. With tied embeddings there is no `lm_head.weight`: the embedding's gradient gets both uses.
    """
    ids = check_token_ids(model, token_ids)
    logits, saved = training_forward(model, ids[:, :-1])  # [N, V]
    targets = ids[:, 1:].reshape(-1)  # [N]
    loss, probs = cross_entropy(logits, targets)
    del logits
    return loss, backward(model, cross_entropy_backward(probs, targets), saved)
