"""Prepared TFDS datasets (coco_captions-like, imagenet-like) read through data.features,
served by tfds.testing.mock_data: trained on and scored by each evaluation protocol."""

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments.configs import tiny
from mmalign import experiment as experiment_lib
from mmalign import run as run_lib
from mmalign.data import pipeline, sources
from mmalign.errors import UsageError
from mmalign.retrieval import search
from tests.data import tfds_metadata as tm

COCO_SPLITS = tm.COCO_SPLITS


@pytest.fixture(name="data_dir")
def fixture_data_dir(tmp_path):
  with tm.coco_and_imagenet(str(tmp_path / "tfds"), {"train": 60, "validation": 30}) as path:
    yield path


def coco_config(data_dir: str) -> ml_collections.ConfigDict:
  config = tiny.get_config()
  config.data.update(name="coco_captions", config="2017", data_dir=data_dir, image_size=16,
                     image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25))
  config.data.features.update(caption="captions/text", group="image/id")
  config.data.splits.train = "train+restval"
  config.eval.split = "test"
  config.train.steps, config.train.checkpoint_every = 4, 2
  return config


def test_a_multi_caption_dataset_flattens_to_one_example_per_caption(data_dir):
  builder = sources.get_builder("coco_captions", "2017", data_dir,
                                features={"caption": "captions/text", "group": "image/id"},
                                splits={"train": "train+restval"})
  index = pipeline.index_split(sources.open_split(builder, "train", decode_images=False))
  features = tfds.features.FeaturesDict(tm.COCO_CAPTIONS)
  expected = [tm.fake_example(features, "train+restval", i, skip_image=True)
              for i in range(COCO_SPLITS["train"] + COCO_SPLITS["restval"])]
  assert index.captions == [c.decode() for e in expected for c in e["captions"]["text"]]
  assert list(index.groups) == [int(e["image/id"]) for e in expected
                                for _ in e["captions"]["text"]]
  assert len(index.image_examples) == len(expected) == index.num_groups
  assert list(index.image_records[index.image_examples]) == list(range(len(expected)))
  source = sources.open_split(builder, "val")
  first = tm.fake_example(features, "val", 0, skip_image=False)
  np.testing.assert_array_equal(source[0]["image"], first["image"])
  assert source[0]["caption"] == first["captions"]["text"][0].decode()


def test_coco_like_training_is_scored_on_every_caption(data_dir, tmp_path):
  config = coco_config(data_dir)
  outcome = run_lib.execute(config, str(tmp_path / "run"), "all")
  results = outcome.results["retrieval"]
  exp = experiment_lib.prepare(config, str(tmp_path / "run"), allow_new_tokenizer=False)
  index = pipeline.index_split(sources.open_split(exp.builder, "test", decode_images=False))
  images = index.image_examples
  image_emb = experiment_lib.embed_images(exp, outcome.variables,
                                          sources.open_split(exp.builder, "test"),
                                          indices=images)
  text_emb = experiment_lib.embed_texts(exp, outcome.variables, index.captions)
  assert results["num_text_queries"] == len(index.captions) > len(images)
  assert results["gallery_images"] == len(images) == COCO_SPLITS["test"]
  # numpy: a caption's hit is its own image; an image's hit is any of its captions.
  scores = text_emb @ image_emb.T  # [captions, images]
  own = index.image_records  # Caption → its image's position (one image per record).
  text_rank = 1 + (scores > scores[np.arange(len(own)), own][:, None]).sum(axis=1)
  image_scores = scores.T  # [images, captions]
  image_rank = np.array([
      1 + (image_scores[i] > image_scores[i, own == i].max()).sum() for i in range(len(images))])
  for k in (1, 5):
    assert results["text_to_image"][f"recall@{k}"] == pytest.approx((text_rank <= k).mean())
    assert results["image_to_text"][f"recall@{k}"] == pytest.approx((image_rank <= k).mean())
  # Search indexes each image once, as the evaluator's gallery.
  gallery, ids = search.GALLERIES["image"].embed(exp, outcome.variables, "test")
  np.testing.assert_array_equal(ids, images)
  np.testing.assert_allclose(gallery, image_emb, rtol=1e-6, atol=1e-6)


def imagenet_config(data_dir: str) -> ml_collections.ConfigDict:
  config = tiny.get_config()
  config.data.update(name="imagenet2012", config=None, data_dir=data_dir, image_size=16,
                     image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25))
  config.eval.split = "validation"
  config.train.batch_size = 8  # Ten classes: one caption (the class name) per class.
  config.train.steps, config.train.checkpoint_every = 4, 2
  config.evals = ml_collections.ConfigDict({
      "zero_shot": {"type": "zero_shot", "split": "validation", "label": "label",
                    "templates": ("a photo of a {}.", "a {}.")},
      "probe": {"type": "linear_probe", "split": "validation", "label": "label",
                "train_split": "train", "validation_split": "validation", "steps": 20}})
  return config


READABLE = ["a tench fish", "a goldfish", "a great white shark", "a tiger shark",
            "a hammerhead shark", "an electric ray", "a stingray", "a cock", "a hen",
            "an ostrich"]


def test_imagenet_like_zero_shot_and_linear_probe(data_dir, tmp_path):
  config = imagenet_config(data_dir)
  (tmp_path / "classes.txt").write_text("\n".join(READABLE) + "\n")
  (tmp_path / "templates.txt").write_text("a photo of {}.\n\n{}.\n")
  zero_shot = config.evals.zero_shot
  zero_shot.class_names_file = str(tmp_path / "classes.txt")
  del zero_shot["templates"]
  zero_shot.templates_file = str(tmp_path / "templates.txt")
  outcome = run_lib.execute(config, str(tmp_path / "run"), "all")
  zero_shot = outcome.results["zero_shot"]
  assert zero_shot["classes"] == READABLE
  assert zero_shot["templates"] == ["a photo of {}.", "{}."]
  assert zero_shot["num_examples"] == 30
  exp = experiment_lib.prepare(config, str(tmp_path / "run"), allow_new_tokenizer=False)
  source = sources.open_split(exp.builder, "validation")
  labels = pipeline.read_labels(source, "label")
  image_emb = experiment_lib.embed_images(exp, outcome.variables, source)
  class_emb = np.stack([
      np.mean([e / np.linalg.norm(e) for e in experiment_lib.embed_texts(
          exp, outcome.variables, [t.format(name) for t in ("a photo of {}.", "{}.")])],
              axis=0) for name in zero_shot["classes"]])
  predictions = (image_emb @ (class_emb / np.linalg.norm(class_emb, axis=1,
                                                         keepdims=True)).T).argmax(axis=1)
  assert zero_shot["top1"] == pytest.approx((predictions == labels).mean())
  assert 0.0 <= outcome.results["probe"]["top1"] <= 1.0


def test_bad_mappings_fail_in_one_line(data_dir, tmp_path):
  config = coco_config(data_dir)
  config.data.features.caption = "captions/txt"
  with pytest.raises(UsageError, match=r"data.features.caption='captions/txt' is not a "
                     r"feature of coco_captions/2017; its features: captions/id, captions/text, "
                     r"image, image/id"):
    experiment_lib.for_training(config, str(tmp_path / "a"))
  config = coco_config(data_dir)
  config.data.image_size = None
  with pytest.raises(UsageError, match="images vary in size: set data.image_size"):
    experiment_lib.for_training(config, str(tmp_path / "b"))
  config = coco_config(data_dir)
  config.data.splits.train = "train+dev"
  with pytest.raises(UsageError, match="data.splits.train='train[+]dev' is not a split of "
                     "coco_captions/2017"):
    experiment_lib.for_training(config, str(tmp_path / "c"))
  config = coco_config(data_dir)
  config.data.name = "flickr30k"
  with pytest.raises(UsageError, match="flickr30k/2017 is not prepared in data.data_dir="):
    experiment_lib.for_training(config, str(tmp_path / "d"))
  config = imagenet_config(data_dir)
  (tmp_path / "classes.txt").write_text("tench\ngoldfish\n")
  config.evals.zero_shot.class_names_file = str(tmp_path / "classes.txt")
  with pytest.raises(UsageError, match="holds 2 names for the 10 classes of 'label'"):
    experiment_lib.for_training(config, str(tmp_path / "f"))
  config = tiny.get_config()
  config.data.features.caption = "text"
  with pytest.raises(UsageError, match="the built-in dataset 'unicode_glyphs' already has"):
    experiment_lib.for_training(config, str(tmp_path / "e"))
