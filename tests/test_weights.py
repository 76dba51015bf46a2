"""minisink/weights.py: shards named by an index stay inside the model folder, and non-finite weights are refused
with the tensor named. (Damaged files against the safetensors library: tests/test_weights_fuzz.py; missing,
unexpected and misshapen tensors: tests/test_model.py.)"""

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import minisink
from minisink import WeightsError
from minisink.weights import checking_finite
from tiny import write_tiny_checkpoint


@pytest.fixture
def sharded(tmp_path):
    """A tiny checkpoint split in two shards (the second holds only model.norm.weight), and its index."""
    path = write_tiny_checkpoint(tmp_path / "m")
    tensors = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    norm = {"model.norm.weight": tensors.pop("model.norm.weight")}
    save_file(tensors, path / "a.safetensors")
    save_file(norm, tmp_path / "outside.safetensors")  # a valid shard, but outside the model folder
    weight_map = {**{k: "a.safetensors" for k in tensors}, "model.norm.weight": "b.safetensors"}
    return path, weight_map, norm


def write_index(path, weight_map):
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_a_sharded_checkpoint_loads(sharded):
    path, weight_map, norm = sharded
    save_file(norm, path / "b.safetensors")
    write_index(path, weight_map)
    assert np.array_equal(minisink.load_model(path).norm, norm["model.norm.weight"])


@pytest.mark.parametrize("shard", ["ABSOLUTE", "../outside.safetensors", "sub/../../outside.safetensors", "..",
                                   "", "sub\\b.safetensors"])
def test_shard_names_cannot_leave_the_model_folder(sharded, shard):
    path, weight_map, _ = sharded
    if shard == "ABSOLUTE":
        shard = str(path.parent / "outside.safetensors")
    write_index(path, {**weight_map, "model.norm.weight": shard})
    with pytest.raises(WeightsError, match="not a file name inside"):
        minisink.load_model(path)


def test_a_shard_that_links_out_of_the_folder_is_refused(sharded):
    path, weight_map, _ = sharded
    os.symlink(path.parent / "outside.safetensors", path / "b.safetensors")
    write_index(path, weight_map)
    with pytest.raises(WeightsError, match="a link to .*outside.safetensors, outside"):
        minisink.load_model(path)


def test_a_tensor_in_two_shards_is_refused(sharded):
    path, weight_map, norm = sharded
    save_file({**norm, "model.layers.0.input_layernorm.weight": norm["model.norm.weight"]}, path / "b.safetensors")
    write_index(path, weight_map)
    with pytest.raises(WeightsError, match="'model.layers.0.input_layernorm.weight' is in two shards"):
        minisink.load_model(path)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ["model.layers.1.mlp.down_proj.weight", "model.norm.weight"])
def test_non_finite_weights_are_refused_with_the_tensor_named(tmp_path, name, value):
    path = write_tiny_checkpoint(tmp_path / "m")
    tensors = load_file(path / "model.safetensors")
    tensors[name].reshape(-1)[7] = value
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(WeightsError, match=rf"'{name}' .* 1 non-finite value\(s\) \(NaN or inf\), the first at "
                                           rf"flat index 7"):
        minisink.load_model(path)


def test_large_finite_weights_are_not_mistaken_for_infinities(tmp_path):
    """The fast check is a sum of squares, which overflows for weights above ~1e19: then every value is looked at."""
    path = write_tiny_checkpoint(tmp_path / "m")
    tensors = load_file(path / "model.safetensors")
    tensors["model.norm.weight"][:] = 3e38
    save_file(tensors, path / "model.safetensors")
    assert minisink.load_model(path).norm[0] == np.float32(3e38)


def test_the_check_beside_the_body_raises_at_the_end_and_the_body_error_wins():
    """checking_finite runs the check on another thread while load_model builds the model: a NaN found there is
    raised when the body ends; an exception from the body itself (what went wrong first) is raised instead."""
    tensors = {"a": np.ones(1000, np.float32), "b": np.ones(10, np.float32)}
    tensors["b"][3] = np.nan
    with pytest.raises(WeightsError, match=r"'b' in here holds 1 non-finite value\(s\).*flat index 3"):
        with checking_finite(tensors, "here"):
            pass
    with pytest.raises(KeyError):
        with checking_finite(tensors, "here"):
            raise KeyError("the body failed")
    with checking_finite({"a": tensors["a"]}, "here"):  # all finite: nothing raised
        pass
