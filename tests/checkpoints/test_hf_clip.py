"""Hugging Face CLIP's vision tower into the `vit` image encoder, against transformers.

Fixtures: tests/fixtures/pretrained/generate.py (a tiny randomly initialised
`transformers.CLIPVisionModelWithProjection` and its outputs; the ViT-B/32 and B/16 layouts);
CI needs no torch or transformers.
"""

import json
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from mmalign.checkpoints import files, hf_clip, importers
from mmalign.errors import UsageError
from mmalign.models.heads import Projection
from mmalign.models.resnet import ResNet
from mmalign.models.vit import ViT

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "pretrained")
TINY = os.path.join(FIXTURES, "hf_clip_vision_w32.safetensors")
TINY_IO = os.path.join(FIXTURES, "hf_clip_vision_w32_io.npz")


def _tiny_vit(**overrides) -> ViT:
  return ViT(**{"width": 32, "depth": 2, "heads": 4, "mlp_dim": 64, "patch_size": 8,
                **hf_clip.CLIP_VIT, **overrides})


def _variables(model, image_size: int = 32, embed_dim: int | None = 16):
  """{"params": {"image_tower": ..., "image_projection": ...}} as a dual encoder's."""
  def init():
    tower = model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)))
    params = {"image_tower": tower["params"]}
    if embed_dim:
      params["image_projection"] = Projection(embed_dim).init(
          jax.random.key(1), jnp.zeros((1, model.dims()[0])))["params"]
    return {"params": params}
  return init()


def _init(path: str, **init):
  return ml_collections.ConfigDict({"checkpoint": path, "format": None, **init})


def _ignored(lines) -> list[str]:
  found = [line for line in lines if "ignored from the checkpoint" in line]
  return sorted(found[0].split(" tensors: ")[1].split(", ")) if found else []


def test_imported_weights_reproduce_transformers():
  """pooled: post_layernorm of CLS; sequence: the un-normed last hidden state's patch tokens;
  the image projection: transformers' image_embeds."""
  io = np.load(TINY_IO, allow_pickle=False)
  model = _tiny_vit()
  variables, lines = importers.initialise(_variables(model), _init(TINY), tokenizer=None)
  assert "(hf_clip_vision)" in lines[0] and "newly initialised: 0 tensors" in lines[1]
  assert _ignored(lines) == []
  pooled, sequence = model.apply({"params": variables["params"]["image_tower"]}, io["images"])
  np.testing.assert_allclose(pooled, io["pooled"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(sequence, io["last_hidden_state"][:, 1:], rtol=1e-5, atol=1e-5)
  embeds = Projection(16, l2_normalize=False).apply(
      {"params": variables["params"]["image_projection"]}, pooled)
  np.testing.assert_allclose(embeds, io["image_embeds"], rtol=1e-5, atol=1e-5)


def test_every_tensor_has_a_place_and_only_the_text_tower_is_left_over(tmp_path):
  """A CLIPModel file: its text tower, logit_scale and older transformers' position_ids are
  ignored, and a note says the text import is not written; the vision tensors all load."""
  tensors = files.read_safetensors(TINY)
  extra = {"text_model.embeddings.token_embedding.weight": np.ones((10, 32), np.float32),
           "text_projection.weight": np.ones((16, 32), np.float32),
           "logit_scale": np.array(2.6, np.float32),
           "vision_model.embeddings.position_ids": np.arange(17)[None]}
  path = str(tmp_path / "clip.safetensors")
  save_file({**tensors, **extra}, path)
  imported = hf_clip.load_vision(path, _variables(_tiny_vit()), tokenizer=None)
  assert sorted(imported.ignored) == sorted(extra)
  assert len(imported.arrays) == len(tensors)
  assert hf_clip.TEXT_NOTE in imported.notes
  _, lines = importers.initialise(_variables(_tiny_vit()), _init(path), tokenizer=None)
  assert "newly initialised: 0 tensors" in lines[1] and _ignored(lines) == sorted(extra)
  assert any("import is not written yet" in line for line in lines)


def test_without_an_image_projection_visual_projection_is_ignored_with_a_note():
  model = _tiny_vit()
  _, lines = importers.initialise(_variables(model, embed_dim=None), _init(TINY),
                                  tokenizer=None)
  assert _ignored(lines) == ["visual_projection.weight"]
  assert any("visual_projection.weight ignored: the model has no image projection" in line
             for line in lines)


@pytest.mark.parametrize("patch", [32, 16])
def test_every_tensor_of_the_full_size_vision_tower_has_one_place(patch):
  """transformers' ViT-B/{32,16} CLIP vision tower (published sizes) against mmalign's
  ViT-B with CLIP's options and a 512-wide projection at 224 px: nothing missing, nothing
  left over, every shape fits, same parameter counts."""
  with open(os.path.join(FIXTURES, "hf_clip_layouts.json")) as f:
    reference = json.load(f)[f"clip_vit_b{patch}"]
  model = ViT(variant="B", patch_size=patch, **hf_clip.CLIP_VIT)
  shapes = jax.eval_shape(lambda: _variables(model, image_size=224, embed_dim=512))
  ours = {name: tuple(x.shape) for name, x in traverse_util.flatten_dict(shapes, sep="/").items()}
  mapped = {}
  for name, shape in reference.items():
    target, kind = hf_clip.vision_path(name)
    assert target in ours, (name, target)
    assert target not in mapped, (name, target)
    assert hf_clip.source_shape(kind, ours[target]) == tuple(shape), name
    zeros = np.broadcast_to(np.float32(0), shape)
    mapped[target] = hf_clip.convert(zeros, kind, ours[target]).shape
  assert mapped == ours
  def count(shapes):
    return sum(int(np.prod(s)) for s in shapes)
  assert count(mapped.values()) == count(reference.values())
  assert hf_clip.is_clip_vision(reference)


def test_attention_weights_land_on_their_heads():
  """kernel[i, h, d] = weight[h·head_dim + d, i] (query/key/value);
  kernel[h, d, o] = weight[o, h·head_dim + d] (out); bias[h, d] = bias[h·head_dim + d]."""
  width, heads, head_dim = 6, 2, 3
  weight = np.arange(width * width).reshape(width, width)
  query = hf_clip.convert(weight, "linear", (width, heads, head_dim))
  out = hf_clip.convert(weight, "linear_out", (heads, head_dim, width))
  bias = hf_clip.convert(np.arange(width), "reshape", (heads, head_dim))
  for i, h, d in np.ndindex(width, heads, head_dim):
    assert query[i, h, d] == weight[h * head_dim + d, i]
    assert out[h, d, i] == weight[i, h * head_dim + d]
    assert bias[h, d] == h * head_dim + d


def test_a_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path):
  with pytest.raises(UsageError, match=r"vision_model\.encoder\.layers\.\d\.mlp\.fc[12]\.\w+ "
                     r"has shape \(\d+(, \d+)?,?\) there and \(\d+(, \d+)?,?\) in this model"):
    importers.initialise(_variables(_tiny_vit(mlp_dim=128)), _init(TINY), tokenizer=None)
  path = str(tmp_path / "one.safetensors")
  save_file({"vision_model.embeddings.patch_embedding.weight":
             np.zeros((32, 3, 8, 8), np.float32)}, path)
  with pytest.raises(UsageError, match=re.escape(
      "vision_model.embeddings.patch_embedding.weight has shape (32, 3, 8, 8) there and "
      "(32, 3, 16, 16) in this model (params/image_tower/patch_embed/kernel (16, 16, 3, 32))")):
    importers.initialise(_variables(_tiny_vit(patch_size=16)), _init(path), tokenizer=None)
  with pytest.raises(UsageError, match=r"params/image_tower/embedding_norm/\w+ has no place"):
    importers.initialise(_variables(_tiny_vit(norm_embeddings=False)), _init(TINY),
                         tokenizer=None)
  with pytest.raises(UsageError, match="is a CLIP vision tower: set model.image_encoder=vit"):
    hf_clip.load_vision(TINY, {"params": {"image_tower": {}}}, tokenizer=None)


def test_the_format_is_recognised_by_tensor_names_and_claims_no_other(tmp_path):
  assert importers.format_of(_init(TINY)) == "hf_clip_vision"
  with open(os.path.join(FIXTURES, "torchvision_layouts.json")) as f:
    torchvision_layouts = json.load(f)
  for name, names in torchvision_layouts.items():
    if name != "versions":
      assert not hf_clip.is_clip_vision(names), name
  with open(os.path.join(FIXTURES, "hf_clip_layouts.json")) as f:
    clip_layouts = json.load(f)
  for name, names in clip_layouts.items():
    if name != "versions":
      claimed = [f for f, recognises in importers.RECOGNISED_BY_NAMES.items()
                 if recognises(names)]
      assert claimed == ["hf_clip_vision"], name


def test_a_bare_clip_vision_model_file_loads_the_same(tmp_path):
  """transformers ≥ 5 saves a CLIPVisionModel without the `vision_model.` prefix."""
  bare = {name.removeprefix("vision_model."): value
          for name, value in files.read_safetensors(TINY).items()
          if name.startswith("vision_model.")}
  path = str(tmp_path / "bare.safetensors")
  save_file(bare, path)
  assert importers.format_of(_init(path)) == "hf_clip_vision"
  io = np.load(TINY_IO, allow_pickle=False)
  model = _tiny_vit()
  variables, lines = importers.initialise(_variables(model, embed_dim=None), _init(path),
                                          tokenizer=None)
  assert "newly initialised: 0 tensors" in lines[1] and _ignored(lines) == []
  pooled, _ = model.apply({"params": variables["params"]["image_tower"]}, io["images"])
  np.testing.assert_allclose(pooled, io["pooled"], rtol=1e-5, atol=1e-5)


def test_a_resnet_is_not_a_place_for_clip_weights():
  variables = ResNet(depth=18, width=8).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(UsageError, match="set model.image_encoder=vit"):
    hf_clip.load_vision(TINY, {"params": {"image_tower": variables["params"]}}, tokenizer=None)


@pytest.mark.parametrize("field, value, allowed", [
    ("final_norm_on", "sequence", "'all', 'pooled'"),
    ("activation", "relu", "'gelu', 'quick_gelu'")])
def test_unknown_vit_options_are_refused(field, value, allowed):
  with pytest.raises(ValueError, match=f"{field} '{value}' is not one of \\[{allowed}\\]"):
    _tiny_vit(**{field: value}).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_quick_gelu_is_x_sigmoid_1702x():
  from mmalign.models.vit import activate  # pylint: disable=import-outside-toplevel
  x = jnp.linspace(-4, 4, 9)
  np.testing.assert_allclose(activate(x, "quick_gelu"), x / (1 + np.exp(-1.702 * x)),
                             rtol=1e-6, atol=1e-7)
