"""minisink against transformers on the same weights: the logits must agree (someone else's answer, not our own).

Tiny random `transformers.LlamaForCausalLM`s (fixed torch seed) are saved with `save_pretrained` (safetensors),
loaded with `minisink.load_model`, and both run the same token ids. The weights are re-drawn well beyond the default
initialization (std 0.02, which makes attention nearly uniform and every norm weight 1): with weak weights a wrong
RoPE, a swapped GQA head mapping or a missing bias would hide below the tolerance. `test_weights_are_not_trivial`
checks that the attention is far from uniform, so the comparisons can fail.

Covered: GQA (4/2, 6/3) and MHA; tied and untied embeddings; llama3 RoPE scaling in both config spellings
(transformers 5's `rope_parameters`, 4.x's `rope_theta` + `rope_scaling`); attention and MLP biases; odd sizes;
an explicit head_dim; prefill, token-by-token decode, chunked prefill; bf16 / fp16 and sharded checkpoints;
attention probabilities against transformers' eager attention.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import minisink  # noqa: E402
import minisink.model  # noqa: E402
from minisink.spec import new_cache  # noqa: E402

TOL = 1e-4  # max abs difference of logits, fp32 against fp32
N_TOKENS = 40
N_PREFILL = 7  # then token-by-token decode of the rest

BASE = dict(vocab_size=97, hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)
# llama3 scaling with head_dim 8, theta 10000: wavelengths 6.3, 63, 628, 6283 vs original context 64 with
# low/high factors 1/4, i.e. thresholds 64 and 16: one pair kept, one interpolated, two divided by the factor.
LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

CONFIGS = {
    "gqa4-2_untied": {},
    "gqa6-3_tied": dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=3, tie_word_embeddings=True),
    "mha_tied": dict(num_key_value_heads=4, tie_word_embeddings=True),
    "mha_untied_theta500": dict(num_key_value_heads=4, rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
    "llama3_scaling": dict(rope_parameters=LLAMA3),
    "biases": dict(attention_bias=True, mlp_bias=True, num_hidden_layers=2),
    "odd_sizes": dict(hidden_size=40, num_attention_heads=4, num_key_value_heads=2, vocab_size=101,
                      intermediate_size=66, num_hidden_layers=3),
    "explicit_head_dim": dict(head_dim=12, num_attention_heads=4, num_key_value_heads=2),
    "everything": dict(hidden_size=42, num_attention_heads=6, num_key_value_heads=2, head_dim=6, vocab_size=101,
                       num_hidden_layers=3, attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
                       rope_parameters={**LLAMA3, "original_max_position_embeddings": 32}),
}


def hf_model(seed: int = 0, **overrides) -> "transformers.LlamaForCausalLM":
    """A tiny LlamaForCausalLM with weights strong enough that mistakes show (see the module docstring)."""
    config = transformers.LlamaConfig(**{**BASE, **overrides})
    config._attn_implementation = "eager"  # attentions can be returned; the logits are the same as sdpa's
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # RMSNorm gains around 1, not all 1
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif name == "model.embed_tokens.weight":  # also the LM head when tied: logits of std about 2
                p.copy_(2 * torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
            else:  # [out, in]: entries of std 1.5/sqrt(in), so q.k/sqrt(D) has std well above 1
                p.copy_(1.5 * torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
    return model


def hf_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def token_ids(vocab_size: int, n: int = N_TOKENS, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, vocab_size, n).tolist()


def prefill(model, ids) -> np.ndarray:
    return model.forward(ids, new_cache(model))


def prefill_then_decode(model, ids, n_prefill: int = N_PREFILL) -> np.ndarray:
    cache = new_cache(model)
    out = [model.forward(ids[:n_prefill], cache)]
    out += [model.forward([t], cache) for t in ids[n_prefill:]]
    return np.concatenate(out)


def max_diff(a, b) -> float:
    assert a.shape == b.shape, f"{a.shape} vs {b.shape}"
    return float(np.max(np.abs(a - b)))


@pytest.fixture(scope="module", params=list(CONFIGS), ids=list(CONFIGS))
def saved(request, tmp_path_factory):
    """(transformers model, folder it was saved to, token ids) for each config."""
    overrides = CONFIGS[request.param]
    model = hf_model(**overrides)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return model, path, token_ids(model.config.vocab_size)


def test_prefill_matches_transformers(saved):
    hf, path, ids = saved
    ours = prefill(minisink.load_model(path), ids)
    assert ours.dtype == np.float32
    assert max_diff(ours, hf_logits(hf, ids)) <= TOL


def test_decode_matches_transformers(saved):
    hf, path, ids = saved
    ours = prefill_then_decode(minisink.load_model(path), ids)
    assert max_diff(ours, hf_logits(hf, ids)) <= TOL


def test_chunked_prefill_matches_transformers(saved, monkeypatch):
    hf, path, ids = saved
    monkeypatch.setattr(minisink.model, "PREFILL_CHUNK", 8)
    ours = prefill(minisink.load_model(path), ids)  # 40 tokens -> 5 chunks of 8
    assert max_diff(ours, hf_logits(hf, ids)) <= TOL


def test_attention_probabilities_match_transformers(saved):
    hf, path, ids = saved
    model, probs = minisink.load_model(path), []
    model.forward(ids, new_cache(model), attention_probs=probs)
    with torch.no_grad():
        theirs = hf(torch.tensor([ids]), output_attentions=True).attentions  # per layer [1, H, T, T]
    assert len(probs) == len(theirs) == hf.config.num_hidden_layers
    for ours, t in zip(probs, theirs, strict=True):
        assert max_diff(ours, t[0].numpy()) <= 1e-5


def test_weights_are_not_trivial():
    """The comparisons above can fail: attention is far from uniform and logits spread, so RoPE and masks matter."""
    hf = hf_model()
    ids = token_ids(hf.config.vocab_size)
    with torch.no_grad():
        out = hf(torch.tensor([ids]), output_attentions=True)
    last_row = torch.stack(out.attentions)[:, 0, :, -1, :]  # [layers, H, T]: the last query over all 40 keys
    assert float(last_row.max(dim=-1).values.mean()) > 5 / N_TOKENS  # uniform would be 1/40 everywhere
    assert float(out.logits.std()) > 0.5


def test_rope_convention_matters(tmp_path):
    """Reordering q_proj/k_proj rows the way llama.cpp does (rotate pairs instead of halves) breaks the match."""
    hf = hf_model()
    hf.save_pretrained(tmp_path)
    model = minisink.load_model(tmp_path)
    c = model.config
    for layer in model.layers:
        for start, heads in [(0, c.num_attention_heads), (c.num_attention_heads * c.head_dim, c.num_key_value_heads)]:
            rows = layer.qkv_proj[start:start + heads * c.head_dim]
            # [heads, 2, D/2, in] -> [heads, D/2, 2, in]: llama.cpp's permute
            rows[:] = rows.reshape(heads, 2, c.head_dim // 2, -1).swapaxes(1, 2).reshape(rows.shape)
    ids = token_ids(c.vocab_size)
    assert max_diff(prefill(model, ids), hf_logits(hf, ids)) > 1e-1


def test_llama3_scaling_changes_the_logits(tmp_path):
    """Sanity for the llama3 config above: its scaling really changes the numbers compared with plain RoPE."""
    scaled, plain = hf_model(rope_parameters=LLAMA3), hf_model()
    ids = token_ids(BASE["vocab_size"])
    assert max_diff(hf_logits(scaled, ids), hf_logits(plain, ids)) > 1e-2
    scaled.save_pretrained(tmp_path)
    assert minisink.load_model(tmp_path).config.rope_scaling["rope_type"] == "llama3"


@pytest.mark.parametrize("spelling", ["rope_type", "type"])
def test_llama3_config_in_transformers4_spelling(tmp_path, spelling):
    """A config.json hand-edited to 4.x's `rope_theta` + `rope_scaling` (as on the hub) loads the same model."""
    hf = hf_model(rope_parameters=LLAMA3)
    hf.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    rope = raw.pop("rope_parameters")
    raw["rope_theta"] = rope.pop("rope_theta")
    raw["rope_scaling"] = {spelling: rope.pop("rope_type"), **rope}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    model = minisink.load_model(tmp_path)
    assert model.config.rope_scaling == {k: v for k, v in LLAMA3.items() if k != "rope_theta"}
    ids = token_ids(BASE["vocab_size"])
    assert max_diff(prefill(model, ids), hf_logits(hf, ids)) <= TOL


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_checkpoint(tmp_path, dtype):
    """A bf16 / fp16 save loads exactly: it matches transformers run in fp32 on the same rounded weights."""
    half = getattr(torch, dtype)
    hf_model(**CONFIGS["everything"]).to(half).save_pretrained(tmp_path)
    header_len = int.from_bytes((tmp_path / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((tmp_path / "model.safetensors").read_bytes()[8:8 + header_len])
    header.pop("__metadata__", None)
    assert {v["dtype"] for v in header.values()} == {"BF16" if dtype == "bfloat16" else "F16"}
    # The reference: the same model in fp32 with its weights rounded to `half`. (Not `model.to(half).float()`:
    # that would also round transformers' RoPE inv_freq buffer, an error of its own of about 1e-3 in the logits.)
    reference = hf_model(**CONFIGS["everything"])
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(p.to(half).float())
    ids = token_ids(reference.config.vocab_size)
    model = minisink.load_model(tmp_path)
    # the loaded weights are bit-identical to the rounded ones (bf16 -> fp32 by a 16-bit shift, fp16 by a cast)
    assert np.array_equal(model.embed_tokens, reference.model.embed_tokens.weight.detach().numpy())
    for layer, theirs in zip(model.layers, reference.model.layers, strict=True):
        assert np.array_equal(layer.down_proj, theirs.mlp.down_proj.weight.detach().numpy())
    assert max_diff(prefill(model, ids), hf_logits(reference, ids)) <= TOL
    assert max_diff(prefill_then_decode(model, ids), hf_logits(reference, ids)) <= TOL


def test_sharded_checkpoint(tmp_path):
    hf = hf_model(**CONFIGS["odd_sizes"])
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert (tmp_path / "model.safetensors.index.json").is_file() and len(shards) > 2, shards
    assert not (tmp_path / "model.safetensors").exists()
    ids = token_ids(hf.config.vocab_size)
    model = minisink.load_model(tmp_path)
    assert max_diff(prefill(model, ids), hf_logits(hf, ids)) <= TOL
