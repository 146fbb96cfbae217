"""experiments/configs/coco_lit.py and zero_shot_imagenet.py on mock TFDS data: the data,
split and evaluator settings as committed; the towers shrunk so a few steps take seconds."""

import ml_collections
import pytest

from experiments.configs import coco_lit, zero_shot_imagenet
from mmalign import run as run_lib
from tests.data import tfds_metadata as tm


@pytest.fixture(name="data_dir")
def fixture_data_dir(tmp_path):
  with tm.coco_and_imagenet(str(tmp_path / "tfds"), {"train": 80, "validation": 25}) as path:
    yield path


def shrunk(config: ml_collections.ConfigDict, data_dir: str) -> ml_collections.ConfigDict:
  config.data.update(data_dir=data_dir, image_size=32)
  config.text.vocab_size = 64
  config.model.text_kwargs.clip_text.update(width=32, depth=1, heads=2)
  config.model.image_kwargs.vit.update(width=32, depth=1, heads=2, mlp_dim=64,
                                       patch_size=16)
  config.model.embed_dim = 16
  config.train.update(batch_size=8, steps=3, warmup_steps=1, checkpoint_every=3, log_every=1)
  return config


def test_coco_lit_trains_on_train_plus_restval_and_scores_the_test_captions(data_dir, tmp_path):
  config = shrunk(coco_lit.get_config(), data_dir)
  config.evals.coco_val.every_steps = 2
  outcome = run_lib.execute(config, str(tmp_path / "run"), "all")
  results = outcome.results["coco_5k"]
  assert results["gallery_images"] == tm.COCO_SPLITS["test"]
  assert results["num_text_queries"] > tm.COCO_SPLITS["test"]  # Every caption is a query.
  assert outcome.step == 3


def test_zero_shot_imagenet_classifies_the_validation_split(data_dir, tmp_path):
  config = shrunk(zero_shot_imagenet.get_config(), data_dir)
  outcome = run_lib.execute(config, str(tmp_path / "run"), "all")
  results = outcome.results["imagenet"]
  assert results["num_examples"] == 25
  assert results["templates"] == list(zero_shot_imagenet.TEMPLATES)
