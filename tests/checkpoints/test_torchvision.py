"""torchvision ResNet and VGG state dicts into the `resnet`/`vgg` image encoders, against the
reference.

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
from mmalign.checkpoints import files, importers, torchvision
from mmalign.errors import UsageError
from mmalign.models.resnet import ResNet
from mmalign.models.vgg import VGG
from tests.checkpoints.runs import train_resumed_bitwise

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
  whole, printed = train_resumed_bitwise(config, tmp_path, capsys)
  assert "init from" in printed
  reference = files.read_safetensors(path)
  np.testing.assert_array_equal(  # Locked: still the imported weights after 6 steps.
      whole["params"]["image_tower"]["stage2_block1"]["conv1"]["conv"]["kernel"],
      reference["layer2.0.conv1.weight"].transpose(2, 3, 1, 0))
  assert int(whole["step"]) == 6
  # Locked means inference mode: BatchNorm ran on, and kept, the imported statistics.
  np.testing.assert_array_equal(
      whole["model_state"]["batch_stats"]["image_tower"]["stage2_block1"]["conv1"]["norm"]["var"],
      reference["layer2.0.bn1.running_var"])


# The narrow fixtures' layouts (generate.py's VGG_CFGS) and norms; hidden fc layers 32 wide.
VGG_FIXTURES = {"vgg": ((8, "M", 16, "M", 32, 32, "M"), "none"),
                "vgg_bn": ((8, 8, "M", 16, 16, "M", 32, "M"), "batch")}


def _vgg(name: str, **kwargs) -> VGG:
  layout, norm = VGG_FIXTURES[name]
  return VGG(**{"layout": layout, "norm": norm, "pooling": "fc", "fc_width": 32, **kwargs})


def _load_vgg(name: str, model: VGG, image_size: int = 56):
  path = _fixture(f"torchvision_{name}_w8.safetensors")
  variables, lines = importers.initialise(
      _tower_variables(model, (image_size, image_size, 3)), _init(path), tokenizer=None)
  return {collection: tree["image_tower"] for collection, tree in variables.items()}, lines


def _ignored(lines) -> list[str]:
  ignored = next(line for line in lines if "ignored from the checkpoint" in line)
  return sorted(n for n in ignored.split(" tensors: ")[1].split(", ")
                if not n.endswith("num_batches_tracked"))


@pytest.mark.parametrize("name", sorted(VGG_FIXTURES))
def test_imported_vgg_weights_reproduce_torchvision(name):
  """Convs, norms (a conv bias folded into the running mean) and the hidden fc layers, whose
  first kernel is reordered from torchvision's C,H,W flattening to this model's H,W,C."""
  io = np.load(_fixture(f"torchvision_{name}_w8_io.npz"), allow_pickle=False)
  model = _vgg(name)
  tower, lines = _load_vgg(name, model)
  assert "(torchvision_vgg)" in lines[0] and "newly initialised: 0 tensors" in lines[1]
  assert _ignored(lines) == ["classifier.6.bias", "classifier.6.weight"]
  pooled, sequence = model.apply(tower, io["images"], train=False)
  np.testing.assert_allclose(pooled, io["pooled"], rtol=1e-5, atol=1e-5)
  batch, height, width, channels = io["last"].shape
  np.testing.assert_allclose(sequence, io["last"].reshape(batch, height * width, channels),
                             rtol=1e-5, atol=1e-5)


def test_a_mean_pooled_vgg_takes_the_features_and_ignores_the_classifier():
  io = np.load(_fixture("torchvision_vgg_bn_w8_io.npz"), allow_pickle=False)
  model = _vgg("vgg_bn", pooling="mean")
  tower, lines = _load_vgg("vgg_bn", model)
  assert "newly initialised: 0 tensors" in lines[1]
  assert _ignored(lines) == [f"classifier.{i}.{field}" for i in (0, 3, 6)
                             for field in ("bias", "weight")]
  assert any("classifier.0/.3 ignored: the model has no fc stack" in line for line in lines)
  _, sequence = model.apply(tower, io["images"], train=False)
  batch, height, width, channels = io["last"].shape
  np.testing.assert_allclose(sequence, io["last"].reshape(batch, height * width, channels),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["vgg16", "vgg16_bn"])
def test_every_tensor_of_the_full_size_vgg_has_one_place(name):
  """torchvision's VGG-16(_bn) names and shapes (weights=None) against mmalign's VGG "16"
  with its fc stack at 224 px: nothing missing, nothing left over but the 1000-way output, same
  counts once a `_bn` conv's bias is folded into its norm's running mean."""
  with open(_fixture("torchvision_layouts.json")) as f:
    reference = json.load(f)[name]
  model = VGG(layout="16", norm="batch" if name.endswith("_bn") else "none", pooling="fc")
  shapes = jax.eval_shape(lambda: _tower_variables(model, (224, 224, 3)))
  ours = {path: tuple(x.shape) for path, x in traverse_util.flatten_dict(shapes, sep="/").items()}
  convs, norms = torchvision.vgg_modules(reference)
  assert len(convs) == 13 and len(norms) == (13 if name.endswith("_bn") else 0)
  channels = reference[f"features.{max(convs)}.weight"][0]
  mapped, folded, ignored = {}, {}, []
  for tensor, shape in reference.items():
    target, how = torchvision.vgg_path(tensor, convs, norms)
    if target is None:
      ignored.append(tensor)
    elif how == "fold":
      assert target not in folded, (tensor, target)
      folded[target] = tuple(shape)
    else:
      assert target not in mapped, (tensor, target)
      zeros = np.broadcast_to(np.float32(0), shape)  # No memory: fc1 has 10⁸ values.
      mapped[target] = torchvision.convert_vgg(zeros, how, channels).shape
  assert mapped == ours
  assert all(mapped[target] == shape for target, shape in folded.items())
  assert len(folded) == len(norms)
  assert sorted(n for n in ignored if "num_batches_tracked" not in n) == [
      "classifier.6.bias", "classifier.6.weight"]
  def count(d):
    return sum(int(np.prod(s)) for s in d)
  assert count(mapped.values()) + count(folded.values()) == count(
      s for n, s in reference.items() if n not in ignored)


def test_the_first_fc_kernel_is_reordered_from_chw_to_hwc():
  """kernel[(h·W + w)·C + c, o] = weight[o, (c·H + h)·W + w], on a 2×3 map of 4 channels."""
  out, channels, height, width = 5, 4, 2, 3
  weight = np.arange(out * channels * height * width).reshape(out, -1)
  kernel = torchvision.convert_vgg(weight, "dense_chw", channels)
  for o, c, h, w in np.ndindex(out, channels, height, width):
    assert kernel[(h * width + w) * channels + c, o] == weight[o, (c * height + h) * width + w]


def test_a_vgg_of_another_shape_is_refused_naming_the_tensor():
  with pytest.raises(UsageError, match=r"params/image_tower/fc1/\w+ has shape \((1568, )?32,?\) "
                     r"there and \((1568, )?64,?\) in this model"):
    _load_vgg("vgg", _vgg("vgg", fc_width=64))
  with pytest.raises(UsageError, match=r"fc1/kernel has shape \(1568, 32\) there and "
                     r"\(2048, 32\) in this model"):  # 64 px: an 8×8 final map, not 7×7.
    _load_vgg("vgg", _vgg("vgg"), image_size=64)
  with pytest.raises(UsageError, match=r"conv1/\w+ has shape \((3, 3, 3, )?8,?\) there and "
                     r"\((3, 3, 3, )?16,?\) in this model"):
    _load_vgg("vgg", _vgg("vgg", layout=(16, "M", 16, "M", 32, 32, "M")))
  with pytest.raises(UsageError, match=r"params/image_tower/conv\d/bias has no place"):
    _load_vgg("vgg", _vgg("vgg", norm="batch"))  # A plain VGG into a model with norms.
  with pytest.raises(UsageError, match=r"image_tower/norm\d/\w+ has no place"):
    _load_vgg("vgg_bn", _vgg("vgg_bn", norm="none"))


def test_resnet_and_vgg_files_are_told_apart_by_their_tensor_names(monkeypatch):
  for name in VGG_FIXTURES:
    path = _fixture(f"torchvision_{name}_w8.safetensors")
    assert importers.format_of(_init(path)) == "torchvision_vgg"
  with open(_fixture("torchvision_layouts.json")) as f:
    layouts = json.load(f)
  for name, names in layouts.items():
    if name != "versions":
      claimed = [f for f, recognises in importers.RECOGNISED_BY_NAMES.items()
                 if recognises(names)]
      assert claimed == ["torchvision_resnet" if name.startswith("resnet") else
                         "torchvision_vgg"], name
  alexnet = ["features.0.weight", "features.0.bias", "classifier.1.weight", "classifier.1.bias"]
  assert not torchvision.is_vgg(alexnet)
  monkeypatch.setattr(importers, "RECOGNISED_BY_NAMES",
                      {"a": lambda names: True, "b": lambda names: True})
  with pytest.raises(UsageError, match="its tensor names match a and b; set init.format"):
    importers.format_of(_init(_fixture("torchvision_vgg_w8.safetensors")))
