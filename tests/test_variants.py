"""The attention variants a trained model may carry (config.json's `attention_variant`), the model's parameters as
named views, and `forward(..., last=n)`.

Each variant's inference is checked against the formula written out here in plain float64 NumPy (sigmoid), or
against the computation it is defined to be (softmax1 = a sink logit of 0 in every head; sink-logit = the trained
sinks loaded into `model.sink_logits`); and every cache policy must give the same logits for it where the policy
holds every token (a sink cache whose window covers the stream equals the full cache).
"""

import numpy as np
import pytest
from tiny import tiny_config, tiny_model, write_tiny_checkpoint

import minisink
from minisink.config import ConfigError, LlamaConfig
from minisink.weights import expected_shapes


def test_unknown_variant_is_refused_by_name():
    with pytest.raises(ConfigError, match="attention_variant.*softmax, softmax1"):
        tiny_model(attention_variant="relu")


@pytest.mark.parametrize("fields, problem", [
    (dict(attention_variant="sink-token"), "sink_token_id"),
    (dict(attention_variant="sink-token", sink_token_id=97), "sink_token_id"),  # the vocabulary is 97: ids 0..96
    (dict(attention_variant="sink-token", sink_token_id=True), "sink_token_id"),
    (dict(attention_variant="sigmoid"), "sigmoid_bias"),
    (dict(attention_variant="sigmoid", sigmoid_bias=float("nan")), "sigmoid_bias"),
    (dict(attention_variant="sigmoid", sigmoid_bias="-4"), "sigmoid_bias"),
])
def test_a_variant_without_its_field_is_refused(fields, problem):
    with pytest.raises(ConfigError, match=problem):
        tiny_model(**fields)


def test_sink_logit_weights_are_expected_and_loaded(tmp_path):
    config = LlamaConfig.from_dict(tiny_config(attention_variant="sink-logit"))
    assert expected_shapes(config)["model.layers.1.self_attn.sinks"] == (config.num_attention_heads,)
    path = write_tiny_checkpoint(tmp_path / "m", attention_variant="sink-logit")
    model = minisink.load_model(path)
    from safetensors.numpy import load_file

    stored = load_file(str(path / "model.safetensors"))
    want = np.stack([stored[f"model.layers.{n}.self_attn.sinks"] for n in range(config.num_hidden_layers)])
    assert np.array_equal(model.sink_logits, want)
    # and they act: the same weights read as plain softmax give other logits
    plain = minisink.Llama(LlamaConfig.from_dict(tiny_config()),
                           {k: v for k, v in stored.items() if not k.endswith(".sinks")})
    ids = np.arange(12) % 50
    assert not np.allclose(model.forward(ids, model.new_cache()), plain.forward(ids, plain.new_cache()), atol=1e-3)


def test_softmax1_is_a_zero_sink_logit_in_every_head():
    ids = np.arange(20) % 61
    one, _, weights = minisink.tiny.tiny_model(3, attention_variant="softmax1")
    plain = minisink.Llama(minisink.LlamaConfig.from_dict(minisink.tiny.tiny_config()), weights)
    plain.sink_logits = np.zeros_like(one.sink_logits)
    assert np.array_equal(one.sink_logits, 0 * one.sink_logits)
    assert np.allclose(one.forward(ids, one.new_cache()), plain.forward(ids, plain.new_cache()), atol=1e-6)


def test_sigmoid_attention_is_the_formula():
    """p_ij = sigmoid(q_i . k_j / sqrt(D) + b) over the visible keys, unnormalized, in float64 by hand."""
    rng = np.random.default_rng(0)
    T, H, Hkv, D, b = 9, 4, 2, 8, -1.7
    q = rng.standard_normal((T, H, D)).astype(np.float32)
    k = rng.standard_normal((T, Hkv, D)).astype(np.float32)
    v = rng.standard_normal((T, Hkv, D)).astype(np.float32)
    mask = minisink.cache.causal_mask(np.arange(T), np.arange(T))
    block = minisink.cache.KVBlock(k.transpose(1, 2, 0), v.transpose(1, 0, 2), mask)
    out, probs = minisink.model.attention(q, [block], Hkv, with_probs=True, sigmoid_bias=b)
    want = np.zeros((T, H, D))
    for h in range(H):
        kv = h // (H // Hkv)
        s = q[:, h].astype(np.float64) @ k[:, kv].T.astype(np.float64) / np.sqrt(D) + b  # [T, T]
        p = np.tril(1 / (1 + np.exp(-s)))
        want[:, h] = p @ v[:, kv]
        assert np.allclose(probs[kv, h % (H // Hkv)], p, atol=1e-6)
    assert np.allclose(out, want.reshape(T, H * D), atol=1e-5)


@pytest.mark.parametrize("variant", [dict(attention_variant="sigmoid", sigmoid_bias=-2.0),
                                     dict(attention_variant="sink-logit"), dict(attention_variant="softmax1")])
def test_every_cache_runs_every_variant(variant):
    """Long chunks (tiled attention), a sink cache that holds everything, and token-by-token decode all give the
    full cache's logits; an evicting sink cache gives other ones but finite."""
    model = tiny_model(5, **variant)
    ids = np.random.default_rng(1).integers(0, 97, 150)
    full = model.forward(ids, model.new_cache())
    assert np.allclose(model.forward(ids, model.new_cache(n_sink=4, window=200)), full, atol=2e-4)
    cache = model.new_cache()
    one_by_one = np.concatenate([model.forward(ids[i:i + 1], cache) for i in range(len(ids))])
    assert np.allclose(one_by_one, full, atol=2e-4)
    evicting = model.forward(ids, model.new_cache(n_sink=2, window=30))
    assert np.isfinite(evicting).all() and not np.allclose(evicting[-1], full[-1], atol=1e-3)


def test_parameters_are_named_views_of_the_model():
    model, raw, weights = minisink.tiny.tiny_model(2, attention_variant="sink-logit", attention_bias=True,
                                                   mlp_bias=True)
    params = model.parameters()
    assert set(params) == set(expected_shapes(model.config))  # the checkpoint's names, no more, no fewer
    for name, array in params.items():
        assert array.dtype == np.float32 and np.array_equal(array, weights[name]), name
    ids = np.arange(10)
    before = model.forward(ids, model.new_cache())
    for name in ["model.layers.1.self_attn.k_proj.weight", "model.layers.0.mlp.up_proj.bias",
                 "model.layers.1.self_attn.sinks", "model.norm.weight"]:
        saved = params[name].copy()
        params[name] += 0.5  # in place: the model itself changes
        assert not np.allclose(model.forward(ids, model.new_cache()), before, atol=1e-4), name
        params[name][...] = saved
    assert np.array_equal(model.forward(ids, model.new_cache()), before)


def test_tied_parameters_have_no_lm_head():
    model = tiny_model(0, tie_word_embeddings=True)
    assert "lm_head.weight" not in model.parameters()
    assert model.parameters()["model.embed_tokens.weight"] is model.lm_head


@pytest.mark.parametrize("n, last", [(5, 1), (300, 1), (300, 60), (300, 300), (257, 2)])
def test_forward_last_rows_are_the_last_rows(n, last):
    """Across chunk boundaries (PREFILL_CHUNK = 256) too."""
    model = tiny_model(1)
    ids = np.random.default_rng(n).integers(0, 97, n)
    full = model.forward(ids, model.new_cache())
    got = model.forward(ids, model.new_cache(), last=last)
    assert got.shape == (last, full.shape[1]) and np.allclose(got, full[-last:], atol=1e-5)
