"""config.json and the tokenizer's JSON files: wrong types and out-of-range values are errors naming the field.

Every case here was taken silently (or raised an internal TypeError/RecursionError) before the checks: a reader
would get a model without its lm_head, a one-layer model, NaN logits, or a traceback.
"""

import json

import pytest

import minisink
from minisink import ConfigError, LlamaConfig
from minisink.cli import main
from minisink.tokenizer import TokenizerError, load_tokenizer
from test_tokenizer import tiny_tokenizer_dir
from tiny import tiny_config, write_tiny_checkpoint

NESTED = "[" * 100_000 + "]" * 100_000  # valid JSON that Python's parser cannot take (RecursionError)


@pytest.mark.parametrize("overrides, message", [
    (dict(tie_word_embeddings="false"), r"'tie_word_embeddings' must be true or false, got 'false'"),
    (dict(attention_bias=1), r"'attention_bias' must be true or false, got 1"),
    (dict(num_hidden_layers=True), r"'num_hidden_layers' must be a positive integer, got True"),
    (dict(num_hidden_layers=3.0), r"'num_hidden_layers' must be a positive integer, got 3.0"),
    (dict(head_dim=0), r"'head_dim' must be a positive integer, got 0"),
    (dict(num_key_value_heads=0), r"'num_key_value_heads' must be a positive integer, got 0"),
    (dict(max_position_embeddings=-1), r"'max_position_embeddings' must be a positive integer"),
    (dict(rms_norm_eps=-1), r"'rms_norm_eps' must be a positive number, got -1"),
    (dict(rms_norm_eps=0), r"'rms_norm_eps' must be a positive number, got 0"),
    (dict(rms_norm_eps=float("nan")), r"'rms_norm_eps' must be a positive number, got nan"),
    (dict(rms_norm_eps="1e-5"), r"'rms_norm_eps' must be a positive number, got '1e-5'"),
    (dict(rope_theta=0), r"'rope_theta' must be a positive number, got 0"),
    (dict(rope_theta=-10000.0), r"'rope_theta' must be a positive number"),
    (dict(rope_theta="ten thousand"), r"'rope_theta' must be a positive number, got 'ten thousand'"),
    (dict(rope_theta=float("inf")), r"'rope_theta' must be a positive number, got inf"),
    (dict(rope_parameters={"rope_type": "default", "rope_theta": "1e4"}), r"'rope_theta' must be a positive number"),
    (dict(rope_scaling=["llama3", 8.0]), r"'rope_scaling' must be an object \(or null\), got \['llama3', 8.0\]"),
    (dict(rope_parameters="default"), r"'rope_parameters' must be an object"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": "8", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 64}), r"'rope_scaling'.*'factor' must be a positive"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 1.0,
                        "original_max_position_embeddings": 64}), r"low_freq_factor must differ"),
    (dict(eos_token_id="2"), r"'eos_token_id' must be a token id .*or a list of them, got '2'"),
    (dict(bos_token_id=[1]), r"'bos_token_id' must be a token id \(an integer >= 0\), got \[1\]"),
    (dict(vocab_size=None), r"'vocab_size' must be a positive integer, got None"),
])
def test_wrong_types_and_ranges_name_the_field(tmp_path, overrides, message):
    (tmp_path / "config.json").write_text(json.dumps(tiny_config(**overrides)))
    with pytest.raises(ConfigError, match=message):
        LlamaConfig.from_file(tmp_path)


def test_null_means_the_default_and_ints_are_taken_for_floats():
    config = LlamaConfig.from_dict(tiny_config(head_dim=None, num_key_value_heads=None, rms_norm_eps=None,
                                               rope_theta=500000, tie_word_embeddings=None))
    assert (config.head_dim, config.num_key_value_heads, config.rms_norm_eps) == (48 // 6, 6, 1e-5)
    assert config.rope_theta == 500000.0 and isinstance(config.rope_theta, float)
    assert config.tie_word_embeddings is False


@pytest.mark.parametrize("text, message", [(NESTED, "not valid JSON .*RecursionError"),
                                           ("[1, 2]", "not a JSON object")])
def test_unparsable_config_files(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ConfigError, match=message):
        LlamaConfig.from_file(tmp_path)


def test_tie_word_embeddings_string_does_not_drop_the_lm_head(tmp_path, capsys):
    """The checkpoint has an lm_head; "false" as a string used to read as True and drop it. Now a clear CLI error."""
    path = write_tiny_checkpoint(tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": "false"}))
    with pytest.raises(ConfigError):
        minisink.load_model(path)
    tiny_tokenizer_dir(path)
    assert main(["generate", "--model", str(path), "hi"]) != 0
    err = capsys.readouterr().err
    assert "'tie_word_embeddings' must be true or false" in err and "Traceback" not in err


@pytest.mark.parametrize("file, text, message", [
    ("tokenizer_config.json", "[1, 2, 3]", r"tokenizer_config.json is not a JSON object: it holds \[1, 2, 3\]"),
    ("tokenizer_config.json", NESTED, r"tokenizer_config.json is not valid JSON \(RecursionError"),
    ("tokenizer_config.json", '{"eos_token": 5}', r"special token .* must be a string, got 5"),
    ("config.json", '{"eos_token_id": "2"}', r"special token id .* must be an integer .*got '2'"),
    ("config.json", '{"eos_token_id": [100000]}', r"special token id .* must be an integer in 0\.\.\d+, got 100000"),
    ("config.json", "7", r"config.json is not a JSON object: it holds 7"),
])
def test_tokenizer_json_files_with_wrong_types(tmp_path, file, text, message):
    path = tiny_tokenizer_dir(tmp_path / "tok")
    if file == "config.json":
        (path / "tokenizer_config.json").unlink()  # so the ids come from config.json
    (path / file).write_text(text)
    with pytest.raises(TokenizerError, match=message):
        load_tokenizer(path)
