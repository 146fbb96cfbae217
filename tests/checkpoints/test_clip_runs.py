"""Runs from a published CLIP: evaluate and search with no training step, and LiT.

The tiny fixture CLIP (tests/fixtures/pretrained/generate.py: 64 px, patch 16, text over the
tokenizer fixture's vocabulary) on the built-in shapes/tiny dataset (64 px RGB).
"""

import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from experiments.configs import clip, siglip, tiny
from mmalign import experiment as experiment_lib
from mmalign import run as run_lib
from mmalign.checkpoints import files
from mmalign.errors import UsageError
from mmalign.train import trainer
from tests.checkpoints.runs import train_resumed_bitwise

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "pretrained")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
  """A Hugging Face folder as `save_pretrained` leaves it: weights and tokenizer.json."""
  folder = tmp_path_factory.mktemp("hf_clip")
  shutil.copy(os.path.join(FIXTURES, "hf_clip_w32.safetensors"), folder / "model.safetensors")
  shutil.copy(os.path.join(FIXTURES, "hf_clip_tokenizer", "tokenizer.json"), folder)
  return str(folder)


def tiny_clip_config(data_dir: str, checkpoint: str, tokenizer: str | None = None):
  """The fixture CLIP's architecture, as experiments/configs/clip.py sets CLIP's."""
  config = tiny.get_config()
  published = clip.get_config("vit_b32")
  config.data.update(name="shapes", config="tiny", data_dir=data_dir, max_shift=0,
                     image_mean=published.data.image_mean, image_std=published.data.image_std)
  config.text.max_length = 12
  config.model.text_encoder = "clip_text"
  config.model.text_kwargs.clip_text.update(width=32, depth=2, heads=4, mlp_dim=64)
  config.model.image_encoder = "vit"
  config.model.image_kwargs.vit = published.model.image_kwargs.vit
  config.model.image_kwargs.vit.update(variant="Ti", width=32, depth=2, heads=4, mlp_dim=64,
                                       patch_size=16)
  config.model.embed_dim = 16
  config.init.update(checkpoint=checkpoint, tokenizer=tokenizer)
  return config


def test_eval_and_search_run_on_a_published_model_with_no_training(tiny_data_dir, hf_folder,
                                                                    tmp_path, capsys):
  """--mode=eval and --mode=search on a Hugging Face folder: its weights at step 0 and its
  tokenizer (saved into the workdir, so the second run reads captions the same way), on
  the 32 px grey glyphs brought to the model's 64 px RGB by `data.image_size`."""
  config = tiny_clip_config(tiny_data_dir, hf_folder)
  config.data.update(name="unicode_glyphs", config="tiny", image_size=64)
  workdir = str(tmp_path / "published")
  outcome = run_lib.execute(config, workdir, "eval")
  out = capsys.readouterr().out
  assert "init from" in out and "(hf_clip): loaded 78 tensors" in out
  assert outcome.step == 0 and outcome.results
  reference = files.read_safetensors(os.path.join(hf_folder, "model.safetensors"))
  np.testing.assert_array_equal(outcome.variables["params"]["log_scale"],
                                reference["logit_scale"])
  assert os.path.exists(os.path.join(workdir, "tokenizer", "pretrained_tokenizer.json"))
  assert not os.listdir(os.path.join(workdir, "checkpoints"))  # Nothing trained, none saved.
  run_lib.execute(config, workdir, "search", query="latin small letter a")
  assert "search over the test images for 'latin small letter a'" in capsys.readouterr().out
  exp = experiment_lib.prepare(config, workdir, allow_new_tokenizer=False)
  ids = np.load(os.path.join(FIXTURES, "hf_clip_w32_io.npz"))["token_ids"]
  np.testing.assert_array_equal(exp.tokenizer.encode(["a photo of a cat"])[0], ids[1])


def test_eval_runs_on_a_published_siglip_folder(tiny_data_dir, tmp_path, capsys):
  """A SiglipModel folder (model.safetensors, spiece.model): its attention-pooling image
  tower, last-position text tower, sigmoid bias and SentencePiece tokenizer."""
  folder = tmp_path / "siglip"
  folder.mkdir()
  shutil.copy(os.path.join(FIXTURES, "hf_siglip_w32.safetensors"), folder / "model.safetensors")
  shutil.copy(os.path.join(FIXTURES, "siglip_spiece.model"), folder / "spiece.model")
  config = tiny_clip_config(tiny_data_dir, str(folder))
  published = siglip.get_config("b16")
  config.data.update(name="unicode_glyphs", config="tiny", image_size=64,
                     image_mean=published.data.image_mean, image_std=published.data.image_std)
  config.model.text_kwargs.clip_text.update(**siglip.SIGLIP_TEXT)
  config.model.image_kwargs.vit.update(**siglip.SIGLIP_VIT)
  config.model.embed_dim = 32
  for key in ("text_projection_kwargs", "image_projection_kwargs", "max_scale", "init_bias"):
    config.model[key] = published.model[key]
  config.loss.name = "sigmoid"
  workdir = str(tmp_path / "published")
  outcome = run_lib.execute(config, workdir, "eval")
  assert "(hf_siglip): loaded 92 tensors" in capsys.readouterr().out
  assert outcome.step == 0 and outcome.results
  np.testing.assert_allclose(outcome.variables["params"]["bias"], -3.0)
  exp = experiment_lib.prepare(config, workdir, allow_new_tokenizer=False)
  ids = np.load(os.path.join(FIXTURES, "hf_siglip_w32_io.npz"))["token_ids"]
  np.testing.assert_array_equal(exp.tokenizer.encode(["a green square"])[0], ids[1])


def test_lit_from_a_published_clip_trains_and_resumes_bitwise(rgb_data_dir, tmp_path, capsys):
  """LiT: the open_clip image tower locked, the CLIP text tower fine-tuned, open_clip's
  tokenizer (its BPE merges file)."""
  path = os.path.join(FIXTURES, "open_clip_w32.safetensors")
  config = tiny_clip_config(rgb_data_dir, path, os.path.join(FIXTURES, "clip_bpe_4k.txt.gz"))
  config.train.frozen = ("image_tower",)
  whole, printed = train_resumed_bitwise(config, tmp_path, capsys)
  assert "(open_clip): loaded 78 tensors" in printed
  reference = files.read_safetensors(path)
  np.testing.assert_array_equal(  # Locked: still the imported weights after 6 steps.
      whole["params"]["image_tower"]["patch_embed"]["kernel"],
      files.conv_kernel(reference["visual.conv1.weight"]))
  moved = jax.device_get(whole["params"]["text_tower"]["embed"]["embedding"])
  assert int(whole["step"]) == 6 and not np.array_equal(moved, reference["token_embedding.weight"])


def test_a_workdir_keeps_the_tokenizer_it_was_made_with(rgb_data_dir, tmp_path):
  path = os.path.join(FIXTURES, "open_clip_w32.safetensors")
  config = tiny_clip_config(rgb_data_dir, path, os.path.join(FIXTURES, "clip_bpe_4k.txt.gz"))
  workdir = str(tmp_path / "w")
  experiment_lib.for_training(config, workdir).save_tokenizer()
  config.init.tokenizer = None
  with pytest.raises(UsageError, match="holds a checkpoint's tokenizer .* but init.tokenizer "
                     "is unset; use a new --workdir"):
    experiment_lib.for_training(config, workdir)
  config.init.tokenizer = os.path.join(FIXTURES, "clip_bpe_4k.txt.gz")
  config.text.max_length = 16
  with pytest.raises(UsageError, match="text.max_length=16 differs from the tokenizer"):
    experiment_lib.for_training(config, workdir)


def test_fine_tuning_gives_the_loaded_tower_its_own_learning_rate(rgb_data_dir, tmp_path):
  """train.learning_rate_multipliers: the imported image tower at 0× stays as loaded (weight
  decay scaled too), at 1e-3× moves a little; the text tower learns at the full rate."""
  path = os.path.join(FIXTURES, "open_clip_w32.safetensors")
  config = tiny_clip_config(rgb_data_dir, path, os.path.join(FIXTURES, "clip_bpe_4k.txt.gz"))
  config.train.steps = 3
  reference = files.conv_kernel(files.read_safetensors(path)["visual.conv1.weight"])
  moved = {}
  for multiplier in (0.0, 1e-3):
    config.train.learning_rate_multipliers = (("image_tower", multiplier),)
    state = trainer.train(experiment_lib.for_training(config, str(tmp_path / str(multiplier))))
    moved[multiplier] = np.abs(jax.device_get(
        state["params"]["image_tower"]["patch_embed"]["kernel"]) - reference).max()
  assert moved[0.0] == 0.0 < moved[1e-3]


def test_a_folders_head_count_must_match_the_model(hf_folder, tmp_path):
  """Heads are in config.json, not in any tensor's shape: 8 heads of width 4 load as well
  as 4 of width 8 and compute something else, so the count is checked."""
  from mmalign.checkpoints import importers  # pylint: disable=import-outside-toplevel
  from tests.checkpoints.test_hf_clip import (  # pylint: disable=import-outside-toplevel
      dual_variables, tiny_dual_encoder)
  folder = tmp_path / "hf"
  shutil.copytree(hf_folder, folder)
  (folder / "config.json").write_text(json.dumps(
      {"vision_config": {"num_attention_heads": 8}, "text_config": {"num_attention_heads": 4}}))
  init = ml_collections.ConfigDict({"checkpoint": str(folder), "format": None})
  with pytest.raises(UsageError, match=r"vision_config.num_attention_heads=8, this model's "
                     r"image_tower 4; set the encoder's heads to 8"):
    importers.initialise(dual_variables(tiny_dual_encoder()), init, None)
  (folder / "config.json").write_text(json.dumps({"vision_config": {"num_attention_heads": 4}}))
  importers.initialise(dual_variables(tiny_dual_encoder()), init, None)
