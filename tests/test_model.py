"""Units of the forward pass against hand computations, and every kind of bad input (no torch needed).

The building blocks (RMSNorm, SiLU/SwiGLU, softmax, RoPE) are checked against values worked out by hand or in
float64 / arbitrary precision; a tiny model's whole forward against a plain float64 loop written here from the
Llama equations. Then each way a config, a checkpoint, token ids or cache arguments can be wrong must raise
minisink's own error with a message that names the culprit (and, where there is one, the fix).
"""

import json
import math
import struct

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import minisink
from minisink import CacheError, ConfigError, InputError, LlamaConfig, WeightsError
from minisink.model import rms_norm, silu, softmax
from minisink.rope import apply_rope, rotation
from minisink.reference import reference_forward
from minisink.spec import new_cache
from tiny import tiny_config, tiny_model, write_tiny_checkpoint

# ------------------------------------------------------------------------------------------------ building blocks


def test_rms_norm_by_hand():
    x = np.array([[3.0, 4.0], [1.0, -1.0]], dtype=np.float32)
    w = np.array([2.0, 0.5], dtype=np.float32)
    # rms([3, 4]) = sqrt(12.5); rms([1, -1]) = 1
    expected = np.array([[6 / math.sqrt(12.5 + 1e-5), 2 / math.sqrt(12.5 + 1e-5)],
                         [2 / math.sqrt(1 + 1e-5), -0.5 / math.sqrt(1 + 1e-5)]])
    np.testing.assert_allclose(rms_norm(x, w, 1e-5), expected, rtol=1e-6)
    # eps matters only for tiny inputs: a zero row stays zero instead of becoming NaN
    assert np.array_equal(rms_norm(np.zeros((1, 2), np.float32), w, 1e-5), np.zeros((1, 2)))


def test_silu_and_swiglu_by_hand():
    x = np.array([0.0, 1.0, -1.0, 20.0, -20.0])
    sigmoid = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(silu(x), x * sigmoid, rtol=1e-12, atol=1e-14)
    with np.errstate(all="raise"):  # the tanh form has no exp() to overflow far in the negative tail
        assert silu(np.array([-1000.0], dtype=np.float32))[0] == 0
    assert silu(np.array([0.0]))[0] == 0 and abs(silu(np.array([1.0]))[0] - 0.7310585786300049) < 1e-12
    # SwiGLU multiplies silu(gate(h)) by up(h) elementwise (the whole MLP is checked in the float64 loop below)
    gate, up = np.array([1.0, -2.0]), np.array([3.0, 0.5])
    np.testing.assert_allclose(silu(gate) * up, [3 * 0.7310585786300049, 0.5 * -2 / (1 + math.exp(2))], rtol=1e-12)


def test_softmax_by_hand():
    p = softmax(np.array([[0.0, math.log(3)], [1000.0, 1000.0], [5.0, -np.inf]]))
    np.testing.assert_allclose(p, [[0.25, 0.75], [0.5, 0.5], [1.0, 0.0]], rtol=1e-12)  # no overflow at 1000
    assert np.all(np.isfinite(p))


def test_rope_at_position_zero_is_identity():
    x = np.random.default_rng(0).standard_normal((1, 3, 8)).astype(np.float32)
    inv_freq = LlamaConfig.from_dict(tiny_config()).inv_freq()
    assert np.array_equal(apply_rope(x, rotation(np.array([0]), inv_freq)), x)


def test_rope_rotates_halves_by_hand():
    """D = 4, inv_freq [1, 0.01]: pair (x[0], x[2]) turns by p radians, pair (x[1], x[3]) by p / 100."""
    inv_freq = np.array([1.0, 0.01])
    x = np.array([[[1.0, 0.0, 0.0, 1.0]]])
    p = 2
    out = apply_rope(x, rotation(np.array([p]), inv_freq))[0, 0]
    expected = [math.cos(p), -math.sin(p / 100), math.sin(p), math.cos(p / 100)]
    np.testing.assert_allclose(out, expected, atol=1e-7)


def test_rope_preserves_norms():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 4, 16))
    inv_freq = 10000.0 ** (-np.arange(0, 16, 2) / 16)
    out = apply_rope(x, rotation(rng.integers(0, 10**6, 50), inv_freq))
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-6)


def test_rope_scores_depend_only_on_distance():
    """rope(q, p) . rope(k, p') is a function of p - p' (float64 inputs; cos/sin are float32: tolerance 1e-5)."""
    rng = np.random.default_rng(2)
    q, k = rng.standard_normal((1, 1, 16)), rng.standard_normal((1, 1, 16))
    inv_freq = 10000.0 ** (-np.arange(0, 16, 2) / 16)

    def score(p, p_key):
        return float(np.sum(apply_rope(q, rotation(np.array([p]), inv_freq))
                            * apply_rope(k, rotation(np.array([p_key]), inv_freq))))

    for distance in [0, 1, 7, 300]:
        scores = [score(start + distance, start) for start in [0, 5, 1000, 123456]]
        np.testing.assert_allclose(scores, scores[0], atol=1e-5)
    assert abs(score(10, 0) - score(11, 0)) > 1e-3  # and it does depend on the distance


def test_rope_at_huge_positions_matches_high_precision():
    """At position 10**7 the angles are computed in float64: within 1e-5 of a 50-digit reference (mpmath)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    D, theta, p = 16, 10000, 10**7 + 3
    inv_freq = float(theta) ** (-np.arange(0, D, 2, dtype=np.float64) / D)
    x = np.random.default_rng(3).standard_normal((1, 1, D))
    ours = apply_rope(x, rotation(np.array([p]), inv_freq))[0, 0]

    half = D // 2
    exact = np.empty(D)
    for i in range(half):
        angle = p * mpmath.power(theta, mpmath.mpf(-2 * i) / D)
        c, s = float(mpmath.cos(angle)), float(mpmath.sin(angle))
        exact[i], exact[i + half] = x[0, 0, i] * c - x[0, 0, i + half] * s, x[0, 0, i + half] * c + x[0, 0, i] * s
    np.testing.assert_allclose(ours, exact, atol=1e-5)
    # the same angles in float32 would be off by a large fraction of a radian: the test can fail
    angles32 = np.float32(p) * inv_freq.astype(np.float32)
    wrong = np.concatenate([x[0, 0, :half] * np.cos(angles32) - x[0, 0, half:] * np.sin(angles32),
                            x[0, 0, half:] * np.cos(angles32) + x[0, 0, :half] * np.sin(angles32)])
    assert np.max(np.abs(wrong - exact)) > 1e-2


def test_llama3_inv_freq_by_hand():
    """Three bands: short wavelengths kept, long ones divided by `factor`, the middle interpolated."""
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    config = LlamaConfig.from_dict(tiny_config(rope_scaling=scaling))  # head_dim 8, theta 10000
    plain = 10000.0 ** (-np.arange(0, 8, 2) / 8)  # wavelengths 6.3 (< 16), 62.8 (in 16..64), 628, 6283 (> 64)
    wavelen = 2 * math.pi / plain[1]
    smooth = (64 / wavelen - 1) / (4 - 1)
    expected = [plain[0], (1 - smooth) * plain[1] / 8 + smooth * plain[1], plain[2] / 8, plain[3] / 8]
    np.testing.assert_allclose(config.inv_freq(), expected, rtol=1e-12)


def test_forward_matches_a_plain_float64_loop():
    model = tiny_model(seed=4, num_hidden_layers=2)
    ids = np.random.default_rng(4).integers(0, model.config.vocab_size, 12)
    expected = reference_forward(model, ids)
    np.testing.assert_allclose(model.forward(ids, new_cache(model)), expected, atol=1e-4)
    cache = new_cache(model)
    decoded = np.concatenate([model.forward(ids[:3], cache)] + [model.forward([t], cache) for t in ids[3:]])
    np.testing.assert_allclose(decoded, expected, atol=1e-4)


def test_forward_accepts_lists_and_any_int_dtype():
    model = tiny_model()
    ids = [5, 17, 3, 96]
    expected = model.forward(ids, new_cache(model))
    assert expected.shape == (4, model.config.vocab_size) and expected.dtype == np.float32
    variants = [np.array(ids, dtype=np.int32), np.array(ids, dtype=np.uint8), tuple(ids), [np.int64(i) for i in ids]]
    for variant in variants:
        assert np.array_equal(model.forward(variant, new_cache(model)), expected)


# ------------------------------------------------------------------------------------------------ config errors


def write_config(path, **changes):
    raw = tiny_config()
    for key, value in changes.items():
        if value is DELETE:
            raw.pop(key)
        else:
            raw[key] = value
    (path / "config.json").write_text(json.dumps(raw))
    return path


DELETE = object()


@pytest.mark.parametrize("changes, match", [
    (dict(model_type="mistral"), r"'model_type' = 'mistral'.*Llama"),
    (dict(hidden_act="gelu"), r"'hidden_act' = 'gelu'.*silu"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), r"'rope_scaling'.*'yarn'"),
    (dict(rope_scaling={"type": "dynamic", "factor": 2.0}), r"'rope_scaling'.*'dynamic'"),
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}), r"'rope_parameters'.*'linear'"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                        "original_max_position_embeddings": 64}), r"'rope_scaling'.*llama3.*high_freq_factor"),
    (dict(num_attention_heads=6, num_key_value_heads=4), r"num_attention_heads \(6\).*multiple.*"
                                                         r"num_key_value_heads \(4\)"),
    (dict(hidden_size=DELETE), r"required field 'hidden_size'"),
    (dict(vocab_size=DELETE), r"required field 'vocab_size'"),
    (dict(num_hidden_layers=0), r"'num_hidden_layers' must be a positive integer, got 0"),
    (dict(vocab_size="97"), r"'vocab_size' must be a positive integer, got '97'"),
    (dict(head_dim=7), r"head_dim must be even"),
    (dict(sliding_window=128), r"'sliding_window'"),
    (dict(pretraining_tp=2), r"'pretraining_tp'"),
])
def test_config_errors(tmp_path, changes, match):
    write_config(tmp_path, **changes)
    with pytest.raises(ConfigError, match=match):
        LlamaConfig.from_file(tmp_path)
    with pytest.raises(ConfigError, match=match):  # the same through the public entry point
        minisink.load_model(tmp_path)


def test_config_accepts_both_rope_spellings():
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    v4 = LlamaConfig.from_dict(tiny_config(rope_theta=5e5, rope_scaling={"rope_type": "llama3", **scaling}))
    v4_old_key = LlamaConfig.from_dict(tiny_config(rope_theta=5e5, rope_scaling={"type": "llama3", **scaling}))
    raw5 = tiny_config(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, **scaling})
    raw5.pop("rope_theta")
    v5 = LlamaConfig.from_dict(raw5)
    assert v4 == v4_old_key == v5
    assert v5.rope_theta == 5e5 and v5.rope_scaling == {"rope_type": "llama3", **scaling}
    default = LlamaConfig.from_dict(tiny_config(rope_scaling=None))
    assert default.rope_scaling is None and default.rope_theta == 10000.0


def test_invalid_json(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama", "vocab_size": 97,')
    with pytest.raises(ConfigError, match=r"not valid JSON.*re-fetch"):
        minisink.load_model(tmp_path)


def test_missing_config_json(tmp_path):
    with pytest.raises(ConfigError, match=r"no config.json.*weights_fetch.py"):
        minisink.load_model(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no model folder.*weights_fetch.py"):
        minisink.load_model(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------ weights errors


@pytest.fixture
def ckpt(tmp_path):
    return write_tiny_checkpoint(tmp_path / "tiny")


def edit_tensors(ckpt, edit):
    tensors = load_file(str(ckpt / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(ckpt / "model.safetensors"))


def test_tiny_checkpoint_loads(ckpt):
    model = minisink.load_model(ckpt)
    assert model.forward([1, 2, 3], new_cache(model)).shape == (3, 97)


def test_missing_tensor(ckpt):
    edit_tensors(ckpt, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(WeightsError, match=r"lacks 1 tensor.*'model\.layers\.1\.mlp\.up_proj\.weight'"):
        minisink.load_model(ckpt)


def test_config_with_more_layers_than_the_weights(ckpt):
    write_config(ckpt, num_hidden_layers=4)
    with pytest.raises(WeightsError, match=r"'model\.layers\.3\..*does config.json match the weights"):
        minisink.load_model(ckpt)


def test_unexpected_tensor(ckpt):
    edit_tensors(ckpt, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": np.zeros(48, np.float32)}))
    with pytest.raises(WeightsError, match=r"'model\.layers\.0\.self_attn\.q_proj\.bias'.*attention_bias"):
        minisink.load_model(ckpt)


def test_tied_checkpoint_may_carry_its_lm_head(tmp_path):
    """transformers can save a tied head anyway; it is dropped, and the embedding is used."""
    ckpt = write_tiny_checkpoint(tmp_path, tie_word_embeddings=True)
    edit_tensors(ckpt, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"].copy()}))
    model = minisink.load_model(ckpt)
    assert model.lm_head is model.embed_tokens


def test_wrong_shape(ckpt):
    edit_tensors(ckpt, lambda t: t.update({"model.layers.2.self_attn.k_proj.weight": np.zeros((16, 47), np.float32)}))
    with pytest.raises(WeightsError, match=r"'model\.layers\.2\.self_attn\.k_proj\.weight' has shape \(16, 47\).*"
                                           r"implies \(16, 48\)"):
        minisink.load_model(ckpt)


def test_truncated_file(ckpt):
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(WeightsError, match=r"model.safetensors.*truncated.*re-fetch"):
        minisink.load_model(ckpt)


@pytest.mark.parametrize("cut", [0, 5])
def test_file_shorter_than_its_header_length(ckpt, cut):
    path = ckpt / "model.safetensors"
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(WeightsError, match=r"truncated"):
        minisink.load_model(ckpt)


def test_corrupt_header(ckpt):
    path = ckpt / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:24] = b"\xff garbage \x00\x01\x02\x03"
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"not a valid safetensors file.*re-fetch"):
        minisink.load_model(ckpt)


def write_header(ckpt, header, body=b"\0" * 64):
    raw = json.dumps(header).encode()
    (ckpt / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + body)


BAD_JSON = r"not a valid safetensors file \(.*invalid JSON in header"


@pytest.mark.parametrize("header, match", [
    ([], BAD_JSON),
    ("text", BAD_JSON),
    ({"model.norm.weight": 1}, BAD_JSON),
    ({"model.norm.weight": {"dtype": "F32", "shape": [48]}}, BAD_JSON + r".*data_offsets"),
    ({"model.norm.weight": {"dtype": "F32", "shape": [48], "data_offsets": [0]}}, BAD_JSON),
    ({"model.norm.weight": {"dtype": "F32", "shape": ["x"], "data_offsets": [0, 192]}}, BAD_JSON),
    ({"model.norm.weight": {"dtype": ["F32"], "shape": [48], "data_offsets": [0, 192]}}, BAD_JSON),
    ({"model.norm.weight": {"dtype": "F32", "shape": [-4, -12], "data_offsets": [0, 192]}}, BAD_JSON),
    ({"model.norm.weight": {"dtype": "F32", "shape": [3], "data_offsets": [-12, 0]}}, BAD_JSON),
    ({"model.norm.weight": {"dtype": "F32", "shape": [48], "data_offsets": [0, 192]}}, r"not fully covered"),
    ({"model.norm.weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, r"invalid shape, data type"),
], ids=["list", "string", "entry-not-object", "no-offsets", "one-offset", "shape-not-int", "dtype-not-str",
        "negative-shape", "negative-offset", "past-the-end", "wrong-byte-size"])
def test_malformed_header_entries(ckpt, header, match):
    """Valid JSON in the wrong shape is still a WeightsError naming the file, never a KeyError or a TypeError."""
    write_header(ckpt, header)
    with pytest.raises(WeightsError, match=r"model\.safetensors.*" + match):
        minisink.load_model(ckpt)


def test_config_json_that_is_not_an_object(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(ConfigError, match=r"not a JSON object"):
        minisink.load_model(tmp_path)


def test_absurd_header_length(ckpt):
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 2**40) + data[8:])
    with pytest.raises(WeightsError, match=r"header too large"):
        minisink.load_model(ckpt)


@pytest.mark.parametrize("dtype, name", [(np.int8, "I8"), (np.float64, "F64"), (np.int32, "I32")])
def test_unsupported_dtype(ckpt, dtype, name):
    edit_tensors(ckpt, lambda t: t.update({"model.norm.weight": t["model.norm.weight"].astype(dtype)}))
    with pytest.raises(WeightsError, match=rf"'model\.norm\.weight'.*dtype {name}.*F32, F16 and BF16"):
        minisink.load_model(ckpt)


def write_shards(ckpt):
    """Split the tiny checkpoint into two shards + model.safetensors.index.json, as save_pretrained does."""
    tensors = load_file(str(ckpt / "model.safetensors"))
    (ckpt / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, members in shards.items():
        save_file({n: tensors[n] for n in members}, str(ckpt / shard))
    weight_map = {n: shard for shard, members in shards.items() for n in members}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return weight_map


def test_sharded_checkpoint_loads_the_same(ckpt):
    model = minisink.load_model(ckpt)
    expected = model.forward([1, 2, 3], new_cache(model))
    write_shards(ckpt)
    sharded = minisink.load_model(ckpt)
    assert np.array_equal(sharded.forward([1, 2, 3], new_cache(sharded)), expected)


def test_missing_shard(ckpt):
    write_shards(ckpt)
    (ckpt / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(WeightsError, match=r"shard model-00002-of-00002.safetensors.*missing.*re-fetch"):
        minisink.load_model(ckpt)


def test_index_naming_a_tensor_no_shard_holds(ckpt):
    weight_map = write_shards(ckpt)
    weight_map["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00002.safetensors"
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(WeightsError, match=r"'model\.layers\.9\.mlp\.up_proj\.weight'"):
        minisink.load_model(ckpt)


@pytest.mark.parametrize("index", ["{not json", "[]", '{"metadata": {}}', '{"weight_map": ["a"]}',
                                   '{"weight_map": {"model.norm.weight": 3}}'])
def test_corrupt_index(ckpt, index):
    write_shards(ckpt)
    (ckpt / "model.safetensors.index.json").write_text(index)
    with pytest.raises(WeightsError, match=r"index.json is corrupt"):
        minisink.load_model(ckpt)


def test_no_weights_at_all(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match=r"no model.safetensors.*weights_fetch.py"):
        minisink.load_model(ckpt)


# ------------------------------------------------------------------------------------------------ input errors


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.mark.parametrize("ids, match", [
    ([5, -1, 7], r"token id -1 is out of range.*97.*tokenizer"),
    ([5, 97], r"token id 97 is out of range.*0\.\.vocab_size-1"),
    ([10**12], r"token id 1000000000000 is out of range"),
    ([], r"non-empty 1-D.*shape \(0,\)"),
    ([[1, 2], [3, 4]], r"non-empty 1-D.*shape \(2, 2\)"),
    (np.int64(5), r"non-empty 1-D.*shape \(\)"),
    ([1.0, 2.0], r"must be integers.*float64"),
    (np.array([1, 2], dtype=np.float32), r"must be integers.*float32"),
    (["a", "b"], r"must be integers"),
])
def test_bad_token_ids(model, ids, match):
    cache = new_cache(model)
    with pytest.raises(InputError, match=match):
        model.forward(ids, cache)
    # a rejected call leaves the cache untouched: the next good call sees an empty cache
    assert np.array_equal(model.forward([1, 2], cache), model.forward([1, 2], new_cache(model)))


# ------------------------------------------------------------------------------------------------ cache arguments


@pytest.mark.parametrize("policy, kwargs, match", [
    ("sink", dict(sinks=-1, window=4), r"n_sink must be an integer >= 0.*got -1"),
    ("sink", dict(sinks=2, window=0), r"window must be an integer >= 1.*got 0"),
    ("sink", dict(sinks=2, window=-3), r"window must be an integer >= 1.*got -3"),
    ("sink", dict(sinks=2, budget=8), r"a budget goes with the h2o or tova policy"),  # sizes a policy does not take
    ("dense", dict(window=4), r"the dense policy keeps every token: it takes neither sinks nor a window"),
    ("window", dict(sinks=2), r"the window policy has no sinks"),
    ("sink", dict(sinks=1.5, window=4), r"n_sink must be an integer.*1\.5"),
    ("sink", dict(sinks=2, window=4.0), r"window must be an integer.*4\.0"),
    ("sink", dict(sinks="4", window=8), r"n_sink must be an integer.*'4'"),
    ("sink", dict(sinks=True, window=8), r"n_sink must be an integer.*True"),
    ("recompute", dict(window=2.5), r"window must be an integer >= 1.*2\.5"),
    ("recompute", dict(window=0), r"window must be an integer >= 1.*0"),
    ("recompute", dict(sinks=-2, window=4), r"n_sink must be an integer >= 0.*-2"),
    ("sliding", dict(), r"the cache policy must be one of dense, sink, window"),
])
def test_bad_cache_arguments(model, policy, kwargs, match):
    with pytest.raises(CacheError, match=match):
        new_cache(model, policy, **kwargs)


def test_good_cache_arguments(model):
    assert isinstance(new_cache(model), minisink.FullCache)
    assert isinstance(new_cache(model, "window", window=4), minisink.SinkCache)  # no sinks: plain window attention
    assert isinstance(new_cache(model, "sink", sinks=0, window=1), minisink.SinkCache)
    assert isinstance(new_cache(model, "sink", sinks=np.int64(4), window=np.int32(8)), minisink.SinkCache)
    assert isinstance(new_cache(model, "recompute", window=4), minisink.RecomputeWindow)
    defaults = new_cache(model, "sink", sinks=2), new_cache(model, "recompute"), new_cache(model, "window")
    assert [(c.n_sink, c.window) for c in defaults] == [(2, 1022), (0, 1024), (0, 1024)]  # 1024 tokens in all


def test_errors_are_value_errors():
    """Callers can catch minisink's errors as ValueError (or each by its own class)."""
    for error in [ConfigError, WeightsError, InputError, CacheError]:
        assert issubclass(error, ValueError)
