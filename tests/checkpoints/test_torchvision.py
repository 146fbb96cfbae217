"""torchvision ResNet state dicts into the `resnet` image encoder, against the reference.

Fixtures: tests/fixtures/pretrained/generate.py (torchvision's own blocks and forward,
randomly initialised, BatchNorm statistics made non-trivial); CI needs no torch.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from experiments.configs import tiny
from mmalign import experiment as experiment_lib
from mmalign.checkpoints import files, importers, torchvision
from mmalign.data import sources
from mmalign.errors import UsageError
from mmalign.models.resnet import ResNet
from mmalign.train import trainer
from tests.trees import assert_trees_bitwise_equal

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "pretrained")


def _fixture(name: str) -> str:
  return os.path.join(FIXTURES, name)


def _tower_variables(model, image_shape):
  """The model's variables as an image tower's: {collection: {"image_tower": ...}}."""
  variables = model.init(jax.random.key(0), jnp.zeros((1, *image_shape)))
  return {collection: {"image_tower": tree} for collection, tree in variables.items()}


def _init(path: str, **init):
  return ml_collections.ConfigDict({"checkpoint": path, "format": None, **init})


@pytest.mark.parametrize("depth", [18, 50])
def test_imported_weights_reproduce_torchvision(depth):
  path = _fixture(f"torchvision_resnet{depth}_w8.safetensors")
  io = np.load(_fixture(f"torchvision_resnet{depth}_w8_io.npz"), allow_pickle=False)
  model = ResNet(depth=depth, width=8)
  variables, lines = importers.initialise(_tower_variables(model, io["images"].shape[1:]),
                                          _init(path), tokenizer=None)
  assert "(torchvision_resnet)" in lines[0] and "newly initialised: 0 tensors" in lines[1]
  ignored = lines[2].split(" tensors: ")[1].split(", ")
  assert sorted(n for n in ignored if not n.endswith("num_batches_tracked")) == [
      "fc.bias", "fc.weight"]
  tower = {collection: tree["image_tower"] for collection, tree in variables.items()}
  pooled, sequence = model.apply(tower, io["images"], train=False)
  np.testing.assert_allclose(pooled, io["pooled"], rtol=1e-5, atol=1e-5)
  batch, height, width, channels = io["last"].shape
  np.testing.assert_allclose(sequence, io["last"].reshape(batch, height * width, channels),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_every_tensor_of_the_full_size_architecture_has_one_place(depth):
  """torchvision's ResNet-{18,34,50} names and shapes (weights=None) against mmalign's
  ResNet at 224 px: nothing missing, nothing left over but the classifier, same counts."""
  with open(_fixture("torchvision_layouts.json")) as f:
    reference = json.load(f)[f"resnet{depth}"]
  model = ResNet(depth=depth)
  shapes = jax.eval_shape(lambda: _tower_variables(model, (224, 224, 3)))
  ours = {name: tuple(x.shape) for name, x in traverse_util.flatten_dict(shapes, sep="/").items()}
  mapped, ignored = {}, []
  for name, shape in reference.items():
    target, is_conv = torchvision.resnet_path(name)
    if target is None:
      ignored.append(name)
    else:
      assert target not in mapped, (name, target)
      mapped[target] = tuple(np.empty(shape).transpose(2, 3, 1, 0).shape if is_conv else shape)
  assert mapped == ours
  assert sorted(n for n in ignored if "num_batches_tracked" not in n) == ["fc.bias", "fc.weight"]
  def count(d):
    return sum(int(np.prod(s)) for s in d)
  assert count(mapped.values()) == count(
      s for n, s in reference.items() if n not in ignored)


def test_a_model_of_another_shape_is_refused_naming_the_tensor(tmp_path):
  path = _fixture("torchvision_resnet18_w8.safetensors")
  model = ResNet(depth=18, width=16)
  with pytest.raises(UsageError, match=r"params/image_tower/\S+ has shape \((\d+, )*8,?\) "
                     r"there and \((\d+, )*16,?\) in this model"):
    importers.initialise(_tower_variables(model, (64, 64, 3)), _init(path), tokenizer=None)
  small = ResNet(depth=18, width=8, small_input=True)
  with pytest.raises(UsageError, match=r"stem/conv/kernel has shape \(7, 7, 3, 8\) there and "
                     r"\(3, 3, 3, 8\) in this model"):
    importers.initialise(_tower_variables(small, (64, 64, 3)), _init(path), tokenizer=None)


def test_the_format_is_recognised_by_tensor_names_and_bad_files_are_one_line(tmp_path):
  assert importers.format_of(_init(_fixture("torchvision_resnet18_w8.safetensors"))) == (
      "torchvision_resnet")
  garbage = tmp_path / "model.safetensors"
  garbage.write_bytes(b"\x00" * 64)
  with pytest.raises(UsageError, match="not a readable .safetensors file") as error:
    importers.format_of(_init(str(garbage)))
  assert "\n" not in str(error.value)
  pickle = tmp_path / "model.pth"
  pickle.write_bytes(b"\x80\x04")
  with pytest.raises(UsageError, match="PyTorch file; convert it to safetensors.*weights_only"):
    importers.format_of(_init(str(pickle)))


@pytest.fixture(scope="module")
def rgb_data_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds_rgb"))
  sources.ensure_built(sources.get_builder("shapes", "tiny", data_dir))
  return data_dir


def test_lit_from_torchvision_weights_trains_and_resumes_bitwise(rgb_data_dir, tmp_path,
                                                                 capsys):
  """LiT: the imported image tower locked (`train.frozen`), the text tower trained."""
  path = _fixture("torchvision_resnet18_w8.safetensors")
  config = tiny.get_config()
  config.data.update(name="shapes", config="tiny", data_dir=rgb_data_dir,
                     image_mean=(0.9, 0.9, 0.9), image_std=(0.25, 0.25, 0.25), max_shift=0)
  config.model.image_encoder = "resnet"
  config.model.image_kwargs.resnet.update(depth=18, width=8, small_input=False)
  config.init.checkpoint = path
  config.train.frozen = ("image_tower",)
  whole = trainer.train(experiment_lib.for_training(config, str(tmp_path / "whole")))
  assert "init from" in capsys.readouterr().out
  split = str(tmp_path / "split")
  trainer.train(experiment_lib.for_training(config, split), stop_after=3)
  resumed = trainer.train(experiment_lib.for_training(config, split))
  assert "init from" not in capsys.readouterr().out.split("resumed from")[1]
  assert_trees_bitwise_equal(whole, resumed)
  reference = files.read_safetensors(path)
  np.testing.assert_array_equal(  # Locked: still the imported weights after 6 steps.
      whole["params"]["image_tower"]["stage2_block1"]["conv1"]["conv"]["kernel"],
      reference["layer2.0.conv1.weight"].transpose(2, 3, 1, 0))
  assert int(whole["step"]) == 6
