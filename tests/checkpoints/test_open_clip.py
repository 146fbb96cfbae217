"""open_clip / OpenAI CLIP state dicts into the `vit` and `clip_text` towers, against open_clip.

Fixtures: tests/fixtures/pretrained/generate.py (a tiny randomly initialised
`open_clip.model.CLIP` with QuickGELU, its `encode_image`/`encode_text`; the ViT-B/32 and
B/16 layouts); CI needs no torch or open_clip.
"""

import json
import os

import ml_collections
import numpy as np
import pytest
from safetensors.numpy import save_file

from mmalign.checkpoints import files, importers, open_clip
from mmalign.errors import UsageError
from tests.checkpoints.test_hf_clip import (FIXTURES, assert_close, count, dual_variables,
                                            features, map_full_size, tiny_dual_encoder)

TINY = os.path.join(FIXTURES, "open_clip_w32.safetensors")
TINY_IO = os.path.join(FIXTURES, "open_clip_w32_io.npz")


def _init(path: str):
  return ml_collections.ConfigDict({"checkpoint": path, "format": None})


def test_imported_weights_reproduce_open_clip():
  """encode_text / encode_image (projected, before normalisation) and the logit scale."""
  io = np.load(TINY_IO, allow_pickle=False)
  model = tiny_dual_encoder()
  variables, lines = importers.initialise(dual_variables(model), _init(TINY), tokenizer=None)
  assert "(open_clip): loaded 78 tensors" in lines[0]
  assert "newly initialised: 1 tensors (1 values): params/bias" in lines[1]
  assert not any("ignored from the checkpoint" in line for line in lines)
  text, image = features(model, variables, io["token_ids"].astype(np.int32), io["images"])
  assert_close(text, io["text_features"])
  assert_close(image, io["image_features"])
  np.testing.assert_allclose(variables["params"]["log_scale"], 3.0)


def test_the_fused_attention_projection_is_split_in_query_key_value_order():
  weight = np.arange(12 * 4, dtype=np.float32).reshape(12, 4)
  parts = open_clip.clip_names("transformer.resblocks.3.attn.in_proj_weight", weight)
  prefix = "text_model.encoder.layers.3.self_attn."
  assert list(parts) == [f"{prefix}{p}_proj.weight" for p in "qkv"]
  for i, part in enumerate(parts.values()):
    np.testing.assert_array_equal(part, weight[4 * i:4 * (i + 1)])
  projection = np.arange(6, dtype=np.float32).reshape(2, 3)  # [width, embed]: open_clip's.
  np.testing.assert_array_equal(
      open_clip.clip_names("visual.proj", projection)["visual_projection.weight"],
      projection.T)
  assert open_clip.clip_names("attn_mask", np.zeros((4, 4))) == {}


@pytest.mark.parametrize("name", ["clip_vit_b32", "clip_vit_b16"])
def test_every_tensor_of_the_full_size_model_has_one_place(name):
  """open_clip's ViT-B-32-quickgelu and ViT-B-16 (OpenAI's layout, published sizes): every
  tensor (each in_proj as three) fills one parameter of experiments/configs/clip.py's model,
  nothing is missing, and the parameter counts are equal."""
  with open(os.path.join(FIXTURES, "open_clip_layouts.json")) as f:
    reference = json.load(f)[name]
  from mmalign.checkpoints import hf_clip  # pylint: disable=import-outside-toplevel

  def path_of(source_name, shape):
    renamed = open_clip.clip_names(source_name, np.broadcast_to(np.float32(0), shape))
    assert renamed, source_name
    return [(*hf_clip.clip_path(clip_name), value.shape)
            for clip_name, value in renamed.items()]
  mapped = map_full_size(reference, path_of, patch=int(name[-2:]))
  assert count(mapped.values()) == count(reference.values())
  assert open_clip.is_open_clip(reference)


def test_a_shape_mismatch_names_the_file_tensor_and_both_shapes():
  variables = dual_variables(tiny_dual_encoder())
  variables["params"]["text_tower"]["block0"]["attention"]["query"]["kernel"] = np.zeros(
      (32, 4, 16), np.float32)
  with pytest.raises(UsageError, match=r"transformer\.resblocks\.0\.attn\.in_proj_weight\[q\] "
                     r"has shape \(32, 32\) there and \(64, 32\) in this model"):
    open_clip.load(TINY, variables, tokenizer=None)


def test_the_format_is_recognised_and_an_unknown_tensor_is_reported(tmp_path):
  assert importers.format_of(_init(TINY)) == "open_clip"
  tensors = files.read_safetensors(TINY)
  path = str(tmp_path / "extra.safetensors")
  save_file({**tensors, "attn_mask": np.zeros((12, 12), np.float32)}, path)
  _, lines = importers.initialise(dual_variables(tiny_dual_encoder()), _init(path),
                                  tokenizer=None)
  assert "ignored from the checkpoint: 1 tensors: attn_mask" in lines[2]
