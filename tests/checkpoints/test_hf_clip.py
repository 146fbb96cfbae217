"""Hugging Face CLIP into the `vit` and `clip_text` towers, against transformers.

Fixtures: tests/fixtures/pretrained/generate.py (a tiny randomly initialised
`transformers.CLIPModel` and its outputs; the ViT-B/32 and B/16 layouts); CI needs no torch
or transformers.
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
from mmalign.models.clip_text import CausalTextTransformer
from mmalign.models.dual_encoder import DualEncoder
from mmalign.models.heads import Projection
from mmalign.models.resnet import ResNet
from mmalign.models.vit import ViT

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "pretrained")
TINY = os.path.join(FIXTURES, "hf_clip_w32.safetensors")
TINY_IO = os.path.join(FIXTURES, "hf_clip_w32_io.npz")
VOCAB, EOT, IMAGE = 4514, 4513, 64  # The tokenizer fixture's vocabulary; 64 px images.
TINY_TEXT = {"vocab_size": VOCAB, "max_length": 12, "width": 32, "depth": 2, "heads": 4,
             "mlp_dim": 64}


def tiny_dual_encoder(text_encoder: str = "clip_text", image_encoder: str = "vit",
                      **tower_options) -> DualEncoder:
  """The fixtures' CLIP as a dual encoder (both tiny fixtures share this architecture);
  `tower_options` (remat, scan_layers) go to both Transformer towers."""
  text_kwargs = ({**TINY_TEXT, **tower_options} if text_encoder == "clip_text"
                 else {"vocab_size": VOCAB, "width": 32})
  image_kwargs = ({"width": 32, "depth": 2, "heads": 4, "mlp_dim": 64, "patch_size": 16,
                   **hf_clip.CLIP_VIT, **tower_options} if image_encoder == "vit"
                  else {"depth": 18, "width": 8})
  return DualEncoder(text_encoder, text_kwargs, image_encoder, image_kwargs, embed_dim=16)


def dual_variables(model: DualEncoder) -> dict:
  return dict(model.init(jax.random.key(0), jnp.zeros((1, 12), jnp.int32),
                         jnp.zeros((1, IMAGE, IMAGE, 3))))


def towers(model: DualEncoder, variables: dict, token_ids, images):
  """((text pooled, sequence), (image pooled, sequence)): the towers' outputs."""
  return model.apply(variables, token_ids, images,
                     method=lambda m, t, i: (m.text_tower(t), m.image_tower(i)))


def features(model: DualEncoder, variables: dict, token_ids, images):
  """(text features, image features): projected, before the L2 normalisation."""
  (text, _), (image, _) = towers(model, variables, token_ids, images)
  project = Projection(model.embed_dim, l2_normalize=False)
  params = variables["params"]
  return (project.apply({"params": params["text_projection"]}, text),
          project.apply({"params": params["image_projection"]}, image))


def assert_close(actual, expected):
  """float32 parity: at most 1e-5 of the reference's largest magnitude, elementwise."""
  expected = np.asarray(expected)
  np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def _tiny_vit(**overrides) -> ViT:
  return ViT(**{"width": 32, "depth": 2, "heads": 4, "mlp_dim": 64, "patch_size": 16,
                **hf_clip.CLIP_VIT, **overrides})


def _variables(model, image_size: int = IMAGE, embed_dim: int | None = 16):
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
  """Text and image features (projected), the pooled and per-token states of both towers and
  logits_per_text, against transformers' CLIPModel; token rows hold id 0 (a real token in
  CLIP) before their end-of-text token and padding after it."""
  io = np.load(TINY_IO, allow_pickle=False)
  model = tiny_dual_encoder()
  variables, lines = importers.initialise(dual_variables(model), _init(TINY), tokenizer=None)
  assert "(hf_clip): loaded 78 tensors" in lines[0]
  assert "newly initialised: 1 tensors (1 values): params/bias" in lines[1]  # Sigmoid's.
  assert _ignored(lines) == []
  ids, images = io["token_ids"].astype(np.int32), io["images"]
  text, image = features(model, variables, ids, images)
  assert_close(text, io["text_features"])
  assert_close(image, io["image_features"])
  outputs = model.apply(variables, ids, images)
  assert_close(outputs["scale"] * outputs["text_emb"] @ outputs["image_emb"].T,
               io["logits_per_text"])
  (pooled, sequence), (image_pooled, image_sequence) = towers(model, variables, ids, images)
  assert_close(image_pooled, io["pooled"])
  assert_close(image_sequence, io["last_hidden_state"][:, 1:])
  assert_close(pooled, io["text_pooled"])
  through_eot = np.arange(12)[None] <= np.argmax(ids, axis=1)[:, None]
  assert_close(sequence, io["text_last_hidden_state"] * through_eot[..., None])


def test_appending_padding_or_reading_eot_by_id_changes_nothing():
  """The contract every text encoder keeps: more pads, same pooled vector; `eot_id` (as in
  newer transformers configs) picks the same token as the highest id here."""
  io = np.load(TINY_IO, allow_pickle=False)
  ids = io["token_ids"].astype(np.int32)[[1, 3], :8]  # EOTs at 6 and 4.
  model = CausalTextTransformer(**TINY_TEXT)
  variables = model.init(jax.random.key(3), ids)
  pooled, sequence = model.apply(variables, ids)
  longer, _ = model.apply(variables, np.pad(ids, ((0, 0), (0, 4))))
  by_id, _ = CausalTextTransformer(**TINY_TEXT, eot_id=EOT).apply(variables, ids)
  np.testing.assert_allclose(longer, pooled, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(by_id, pooled)
  assert not np.any(sequence[0, 7:]) and np.all(np.any(sequence[0, :7], axis=-1))
  assert not np.any(sequence[1, 5:]) and np.all(np.any(sequence[1, :5], axis=-1))
  with pytest.raises(UsageError, match="13 tokens exceed max_length=12"):
    model.apply(variables, np.zeros((1, 13), np.int32))


def test_a_new_text_tower_keeps_its_own_init_and_the_text_tensors_are_ignored():
  """LiT with a new text encoder: the CLIP text tower, text_projection and logit_scale are
  ignored and said to be; the image side loads."""
  model = tiny_dual_encoder(text_encoder="bag_of_words")
  variables = dual_variables(model)
  imported = hf_clip.load(TINY, variables, tokenizer=None)
  assert all(n.startswith("text_model.") for n in imported.ignored
             if n not in ("text_projection.weight", "logit_scale"))
  assert {"text_projection.weight", "logit_scale"} <= set(imported.ignored)
  assert "text_model.* ignored: only model.text_encoder=clip_text loads it" in imported.notes
  assert all(k.startswith(("params/image_tower/", "params/image_projection/"))
             for k in imported.arrays)
  _, lines = importers.initialise(variables, _init(TINY), tokenizer=None)
  assert "params/text_tower/embed/embedding" in lines[1]


def test_without_an_image_projection_visual_projection_is_ignored_with_a_note():
  model = _tiny_vit()
  imported = hf_clip.load(TINY, _variables(model, embed_dim=None), tokenizer=None)
  assert "visual_projection.weight" in imported.ignored
  assert ("visual_projection.weight ignored: the model has no such projection"
          in imported.notes)
  assert all(k.startswith("params/image_tower/") for k in imported.arrays)


@pytest.mark.parametrize("patch", [32, 16])
def test_every_tensor_of_the_full_size_model_has_one_place(patch):
  """transformers' CLIP ViT-B/{32,16} (published sizes) against mmalign's ViT-B with CLIP's
  options, `clip_text` at 512 wide and 12 layers, and 512-wide projections at 224 px: nothing
  missing, nothing left over, every shape fits, same parameter counts."""
  with open(os.path.join(FIXTURES, "hf_clip_layouts.json")) as f:
    reference = json.load(f)[f"clip_vit_b{patch}"]
  mapped = map_full_size(
      reference, lambda name, shape: [(*hf_clip.clip_path(name), shape)], patch)
  assert hf_clip.is_clip(reference)
  assert count(mapped.values()) == count(reference.values())
  assert count(reference.values()) == {32: 151_277_313, 16: 149_620_737}[patch]  # README.


def full_size_clip(patch: int) -> DualEncoder:
  """CLIP ViT-B/`patch` as experiments/configs/clip.py builds it."""
  from experiments.configs import clip  # pylint: disable=import-outside-toplevel
  from mmalign.models.build import build_dual_encoder  # pylint: disable=import-outside-toplevel
  config = clip.get_config(f"vit_b{patch}")
  return build_dual_encoder(config.model, vocab_size=config.text.vocab_size,
                            max_length=config.text.max_length)


def map_full_size(reference: dict, path_of, patch: int) -> dict:
  """{parameter path here: shape} filled from `reference` {name: shape} through `path_of`,
  asserting every name has one place, fits it, and every parameter but the sigmoid loss's
  bias is filled."""
  model = full_size_clip(patch)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 77), jnp.int32),
                                             jnp.zeros((1, 224, 224, 3))))
  ours = {name: tuple(x.shape) for name, x in traverse_util.flatten_dict(shapes, sep="/").items()}
  mapped = {}
  for name, shape in reference.items():
    for target, kind, source in path_of(name, shape):
      assert target in ours, (name, target)
      assert target not in mapped, (name, target)
      assert hf_clip.source_shape(kind, ours[target]) == tuple(source), name
      zeros = np.broadcast_to(np.float32(0), source)
      mapped[target] = hf_clip.convert(zeros, kind, ours[target]).shape
  assert set(ours) - set(mapped) == {"params/bias"}
  assert all(mapped[name] == ours[name] for name in mapped)
  return mapped


def count(shapes) -> int:
  return sum(int(np.prod(s)) for s in shapes)


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
             np.zeros((32, 3, 16, 16), np.float32)}, path)
  with pytest.raises(UsageError, match=re.escape(
      "vision_model.embeddings.patch_embedding.weight has shape (32, 3, 16, 16) there and "
      "(32, 3, 8, 8) in this model (params/image_tower/patch_embed/kernel (8, 8, 3, 32))")):
    importers.initialise(_variables(_tiny_vit(patch_size=8)), _init(path), tokenizer=None)
  with pytest.raises(UsageError, match=r"params/image_tower/embedding_norm/\w+ has no place"):
    importers.initialise(_variables(_tiny_vit(norm_embeddings=False)), _init(TINY),
                         tokenizer=None)
  with pytest.raises(UsageError, match="is a CLIP model: set model.image_encoder=vit or "
                     "model.text_encoder=clip_text"):
    hf_clip.load(TINY, {"params": {"image_tower": {}}}, tokenizer=None)


def test_the_format_is_recognised_by_tensor_names_and_claims_no_other(tmp_path):
  assert importers.format_of(_init(TINY)) == "hf_clip"
  with open(os.path.join(FIXTURES, "torchvision_layouts.json")) as f:
    torchvision_layouts = json.load(f)
  for name, names in torchvision_layouts.items():
    if name != "versions":
      assert not hf_clip.is_clip(names), name
  for layouts, claimant in (("hf_clip_layouts.json", "hf_clip"),
                            ("open_clip_layouts.json", "open_clip")):
    with open(os.path.join(FIXTURES, layouts)) as f:
      clip_layouts = json.load(f)
    for name, names in clip_layouts.items():
      if name != "versions":
        claimed = [f for f, recognises in importers.RECOGNISED_BY_NAMES.items()
                   if recognises(names)]
        assert claimed == [claimant], name


def test_a_bare_clip_vision_model_file_loads_the_same(tmp_path):
  """transformers ≥ 5 saves a CLIPVisionModel without the `vision_model.` prefix."""
  bare = {name.removeprefix("vision_model."): value
          for name, value in files.read_safetensors(TINY).items()
          if name.startswith("vision_model.")}
  path = str(tmp_path / "bare.safetensors")
  save_file(bare, path)
  assert importers.format_of(_init(path)) == "hf_clip"
  io = np.load(TINY_IO, allow_pickle=False)
  model = _tiny_vit()
  variables, lines = importers.initialise(_variables(model, embed_dim=None), _init(path),
                                          tokenizer=None)
  assert "newly initialised: 0 tensors" in lines[1]
  assert _ignored(lines) == []
  pooled, _ = model.apply({"params": variables["params"]["image_tower"]}, io["images"])
  np.testing.assert_allclose(pooled, io["pooled"], rtol=1e-5, atol=1e-5)


def test_a_resnet_is_not_a_place_for_clip_weights():
  variables = ResNet(depth=18, width=8).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(UsageError, match="set model.image_encoder=vit"):
    hf_clip.load(TINY, {"params": {"image_tower": variables["params"]}}, tokenizer=None)


@pytest.mark.parametrize("field, value, allowed", [
    ("final_norm_on", "sequence", "'all', 'pooled'"),
    ("activation", "relu", "'gelu', 'quick_gelu', 'gelu_tanh'")])
def test_unknown_vit_options_are_refused(field, value, allowed):
  with pytest.raises(ValueError, match=f"{field} '{value}' is not one of \\[{allowed}\\]"):
    _tiny_vit(**{field: value}).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_quick_gelu_is_x_sigmoid_1702x():
  from mmalign.models.vit import activate  # pylint: disable=import-outside-toplevel
  x = jnp.linspace(-4, 4, 9)
  np.testing.assert_allclose(activate(x, "quick_gelu"), x / (1 + np.exp(-1.702 * x)),
                             rtol=1e-6, atol=1e-7)
