"""Export to Hugging Face's and open_clip's layouts: the inverse of the importers.

Each round trip starts from a reference implementation's own file (the fixtures of
tests/fixtures/pretrained/generate.py): import, export, and the written tensors equal the
file's, name for name, bit for bit; importing the export gives the same variables.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmalign import run as run_lib
from mmalign.checkpoints import export, files, importers
from mmalign.errors import UsageError
from tests.checkpoints.test_clip_runs import tiny_clip_config
from tests.checkpoints.test_hf_clip import FIXTURES, dual_variables, tiny_dual_encoder
from tests.checkpoints.test_hf_siglip import tiny_siglip
from tests.trees import assert_trees_bitwise_equal

HF_CLIP = os.path.join(FIXTURES, "hf_clip_w32.safetensors")
OPEN_CLIP = os.path.join(FIXTURES, "open_clip_w32.safetensors")
HF_SIGLIP = os.path.join(FIXTURES, "hf_siglip_w32.safetensors")


def _imported(model, path: str, variables=None):
  variables = variables or dual_variables(model)
  return importers.initialise(variables, ml_collections.ConfigDict(
      {"checkpoint": path, "format": None}), tokenizer=None)[0]


def _assert_same_tensors(written: dict, reference: dict):
  assert sorted(written) == sorted(reference)
  for name, value in reference.items():
    assert written[name].dtype == value.dtype and written[name].shape == value.shape, name
    np.testing.assert_array_equal(written[name], value, err_msg=name)


@pytest.mark.parametrize("layout, path", [("hf_clip", HF_CLIP), ("open_clip", OPEN_CLIP)])
def test_a_clip_round_trip_gives_back_the_reference_file(tmp_path, layout, path):
  model = tiny_dual_encoder()
  variables = _imported(model, path)
  written = export.write(variables, model, None, layout, str(tmp_path))
  _assert_same_tensors(files.read_safetensors(written[0]), files.read_safetensors(path))
  again = _imported(model, written[0])
  assert_trees_bitwise_equal(again["params"], variables["params"])


def test_a_siglip_round_trip_gives_back_the_reference_file(tmp_path):
  model = tiny_siglip()
  shapes = dict(model.init(jax.random.key(0), jnp.zeros((1, 12), jnp.int32),
                           jnp.zeros((1, 64, 64, 3))))
  variables = _imported(model, HF_SIGLIP, shapes)
  written = export.write(variables, model, None, "hf_clip", str(tmp_path))
  _assert_same_tensors(files.read_safetensors(written[0]), files.read_safetensors(HF_SIGLIP))
  with open(written[1]) as f:
    config = json.load(f)
  assert config["model_type"] == "siglip" and config["vision_config"]["image_size"] == 64
  assert config["text_config"]["hidden_act"] == "gelu_pytorch_tanh"
  with pytest.raises(UsageError, match="'open_clip' holds CLIP models"):
    export.write(variables, model, None, "open_clip", str(tmp_path / "oc"))


def test_scanned_layers_export_as_separate_layers():
  plain, scanned = tiny_dual_encoder(), tiny_dual_encoder(scan_layers=True)
  _assert_same_tensors(export.hf_tensors(_imported(scanned, HF_CLIP), siglip=False),
                       export.hf_tensors(_imported(plain, HF_CLIP), siglip=False))


def test_the_config_json_describes_the_model(tmp_path):
  model = tiny_dual_encoder()
  written = export.write(_imported(model, HF_CLIP), model, None, "hf_clip", str(tmp_path))
  with open(written[1]) as f:
    config = json.load(f)
  assert config["architectures"] == ["CLIPModel"] and config["projection_dim"] == 16
  assert config["vision_config"] | {"image_size": 64, "patch_size": 16, "hidden_size": 32,
                                    "num_hidden_layers": 2, "num_attention_heads": 4,
                                    "intermediate_size": 64, "hidden_act": "quick_gelu",
                                    "layer_norm_eps": 1e-5} == config["vision_config"]
  assert config["text_config"]["vocab_size"] == 4514
  assert config["text_config"]["eos_token_id"] == 4513
  assert config["text_config"]["max_position_embeddings"] == 12


def test_other_towers_or_layouts_are_refused(tmp_path):
  model = tiny_dual_encoder(text_encoder="bag_of_words")
  with pytest.raises(UsageError, match="export writes vit \\+ clip_text models; this one is "
                     "vit \\+ bag_of_words"):
    export.write(dual_variables(model), model, None, "hf_clip", str(tmp_path))
  with pytest.raises(UsageError, match="layout 'onnx' is not one of"):
    export.write({}, model, None, "onnx", str(tmp_path))


def test_the_launcher_exports_a_published_model_with_its_tokenizer(tiny_data_dir, tmp_path,
                                                                   capsys):
  """--mode=export on a Hugging Face folder, with no training: the same tensors, its
  tokenizer.json; the export, imported again, evaluates to the same results."""
  folder = tmp_path / "hf"
  folder.mkdir()
  (folder / "model.safetensors").write_bytes(open(HF_CLIP, "rb").read())
  (folder / "tokenizer.json").write_bytes(
      open(os.path.join(FIXTURES, "hf_clip_tokenizer", "tokenizer.json"), "rb").read())
  config = tiny_clip_config(tiny_data_dir, str(folder))
  config.data.update(name="unicode_glyphs", config="tiny", image_size=64)
  out = tmp_path / "exported"
  run_lib.execute(config, str(tmp_path / "w1"), "export", export_to=(str(out), "hf_clip"))
  assert "exported step 0 as hf_clip" in capsys.readouterr().out
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "tokenizer.json"]
  _assert_same_tensors(files.read_safetensors(str(out / "model.safetensors")),
                       files.read_safetensors(HF_CLIP))
  first = run_lib.execute(config, str(tmp_path / "w2"), "eval")
  config.init.checkpoint = str(out)
  second = run_lib.execute(config, str(tmp_path / "w3"), "eval")
  for direction in ("text_to_image", "image_to_text"):
    assert first.results["retrieval"][direction] == second.results["retrieval"][direction]
