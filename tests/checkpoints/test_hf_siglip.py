"""Hugging Face SigLIP into the `vit` (attention pooling) and `clip_text` towers, against
transformers; SigLIP's SentencePiece tokenizer against transformers' SiglipTokenizer.

Fixtures: tests/fixtures/pretrained/generate.py (a tiny randomly initialised
`transformers.SiglipModel`, its outputs, a tiny SentencePiece model in SigLIP's id layout,
the B/16-224 layout); CI needs no torch or transformers.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments.configs import siglip
from mmalign.checkpoints import hf_clip, importers
from mmalign.data import pretrained_tokenizer
from mmalign.errors import UsageError
from mmalign.models.dual_encoder import DualEncoder
from mmalign.models.heads import Projection
from tests.checkpoints.test_hf_clip import FIXTURES, assert_close, count, towers

TINY = os.path.join(FIXTURES, "hf_siglip_w32.safetensors")
TINY_IO = os.path.join(FIXTURES, "hf_siglip_w32_io.npz")
SPIECE = os.path.join(FIXTURES, "siglip_spiece.model")
BIG_VISION = os.path.join(FIXTURES, "big_vision_siglip_w32.npz")
VOCAB = 41  # The tiny SentencePiece model's pieces.


def tiny_siglip() -> DualEncoder:
  return DualEncoder(
      "clip_text", {"vocab_size": VOCAB, "max_length": 12, "width": 32, "depth": 2, "heads": 4,
                    "mlp_dim": 64, **siglip.SIGLIP_TEXT},
      "vit", {"width": 32, "depth": 2, "heads": 4, "mlp_dim": 64, "patch_size": 16,
              **siglip.SIGLIP_VIT},
      embed_dim=32, text_projection_kwargs={"use_bias": True},
      image_projection_kwargs={"linear": False})


def _init(path: str):
  return ml_collections.ConfigDict({"checkpoint": path, "format": None})


def _imported(model: DualEncoder, path: str) -> tuple[dict, list[str]]:
  """(the model's variables with `path`'s weights, the printed mapping), after checking
  that every array was placed and nothing is newly initialised."""
  variables = dict(model.init(jax.random.key(0), jnp.zeros((1, 12), jnp.int32),
                              jnp.zeros((1, 64, 64, 3))))
  variables, lines = importers.initialise(variables, _init(path), tokenizer=None)
  assert "loaded 92 tensors" in lines[0] and "newly initialised: 0 tensors" in lines[1]
  assert not any("ignored from the checkpoint" in line for line in lines)
  return variables, lines


@pytest.mark.parametrize("name", ["hf_siglip", "big_vision"])
def test_imported_weights_reproduce_transformers(name):
  """The attention-pooled image features, both towers' last hidden states, the text head's
  features and logits_per_text (scale and bias included); from a SiglipModel file, and from
  the same weights as big_vision's tree (transformers' conversion, reversed)."""
  io = np.load(TINY_IO, allow_pickle=False)
  model = tiny_siglip()
  path = {"hf_siglip": TINY, "big_vision": BIG_VISION}[name]
  assert importers.format_of(_init(path)) == name
  variables, lines = _imported(model, path)
  assert f"({name})" in lines[0]
  ids, images = io["token_ids"].astype(np.int32), io["images"]
  (text, text_sequence), (image, image_sequence) = towers(model, variables, ids, images)
  assert_close(image, io["image_features"])
  assert_close(image_sequence, io["last_hidden_state"])
  assert_close(text_sequence, io["text_last_hidden_state"])
  head = Projection(32, l2_normalize=False, use_bias=True)
  assert_close(head.apply({"params": variables["params"]["text_projection"]}, text),
               io["text_features"])
  outputs = model.apply(variables, ids, images)
  assert_close(outputs["scale"] * outputs["text_emb"] @ outputs["image_emb"].T
               + outputs["bias"], io["logits_per_text"])


def test_every_tensor_of_siglip_b16_has_one_place():
  """transformers' SigLIP B/16-224 against experiments/configs/siglip.py's model: nothing
  missing, nothing left over (each fused in_proj as three), same parameter count."""
  with open(os.path.join(FIXTURES, "hf_siglip_layouts.json")) as f:
    reference = json.load(f)["siglip_b16_224"]
  config = siglip.get_config("b16")
  from mmalign.models.build import build_dual_encoder  # pylint: disable=import-outside-toplevel
  model = build_dual_encoder(config.model, vocab_size=32000, max_length=64)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64), jnp.int32),
                                             jnp.zeros((1, 224, 224, 3))))
  ours = {"/".join(str(k.key) for k in path): tuple(leaf.shape) for path, leaf in
          jax.tree_util.tree_flatten_with_path(shapes)[0]}
  mapped = {}
  for name, shape in reference.items():
    for clip_name, value in hf_clip.split_in_proj(name, np.zeros(shape, np.float32)).items():
      target, kind = hf_clip.clip_path(clip_name)
      assert target in ours and target not in mapped, (name, target)
      wanted = hf_clip.source_shape(kind, ours[target])
      assert wanted == value.shape or (kind == "scalar" and value.size == 1), name
      mapped[target] = ours[target]
  assert mapped == ours
  assert count(reference.values()) == count(ours.values()) == 203_155_970  # README.
  assert hf_clip.is_siglip(reference) and not hf_clip.is_clip(reference)
  assert importers.format_of(_init(TINY)) == "hf_siglip"


@pytest.mark.parametrize("context", [64, 12])
def test_the_sentencepiece_tokenizer_gives_siglips_ids(context):
  """Lower case, ASCII punctuation removed, whitespace collapsed; `</s>` appended after at
  most context − 1 pieces and repeated to the full length; unknown characters as <unk>."""
  with open(os.path.join(FIXTURES, "siglip_tokenizer_ids.json"), encoding="utf-8") as f:
    reference = json.load(f)
  tokenizer = pretrained_tokenizer.from_path(SPIECE, context)
  np.testing.assert_array_equal(tokenizer.encode(reference["strings"]),
                                np.array(reference[f"hf_{context}"]))
  assert tokenizer.vocab_size == VOCAB


def test_a_hugging_face_siglip_folder_brings_its_sentencepiece_model(tmp_path):
  (tmp_path / "spiece.model").write_bytes(open(SPIECE, "rb").read())
  assert pretrained_tokenizer.in_folder(str(tmp_path)) == str(tmp_path / "spiece.model")
  init = ml_collections.ConfigDict({"checkpoint": str(tmp_path), "tokenizer": None})
  assert importers.tokenizer_path(init) == str(tmp_path / "spiece.model")


def test_a_big_vision_array_of_another_shape_is_named(tmp_path):
  with np.load(BIG_VISION) as archive:
    arrays = {name: archive[name] for name in archive.files}
  arrays["params/img/MAPHead_0/MlpBlock_0/Dense_0/kernel"] = np.zeros((32, 48), np.float32)
  path = str(tmp_path / "wide.npz")
  np.savez(path, **arrays)
  variables = dict(tiny_siglip().init(jax.random.key(0), jnp.zeros((1, 12), jnp.int32),
                                      jnp.zeros((1, 64, 64, 3))))
  with pytest.raises(UsageError, match=r"params/img/MAPHead_0/MlpBlock_0/Dense_0/kernel has "
                     r"shape \(32, 48\) there and \(32, 64\) in this model"):
    importers.initialise(variables, _init(path), tokenizer=None)
  (tmp_path / "broken.npz").write_bytes(b"not a zip")
  with pytest.raises(UsageError, match="is not a readable .npz file"):
    importers.initialise(variables, _init(str(tmp_path / "broken.npz")), tokenizer=None)
