"""Zero-shot classification evaluator, against scikit-learn on independently computed logits."""

import os

import ml_collections
import numpy as np
import pytest
from sklearn import metrics as sk

from experiments.configs import tiny
from mmalign import experiment as experiment_lib
from mmalign import run as run_lib
from mmalign import settings
from mmalign.data import pipeline, sources
from mmalign.errors import UsageError
from mmalign.eval import zero_shot_evaluator as zse

TEMPLATES = ("a photo of a {}.", "a drawing of a {}")


def test_top_k_and_per_class_accuracy_match_sklearn():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(200, 7))
  labels = rng.integers(0, 6, size=200)  # Class 6 has no example.
  for k in (1, 3, 5):
    assert zse.top_k_accuracy(logits, labels, k) == pytest.approx(
        sk.top_k_accuracy_score(labels, logits, k=k, labels=np.arange(7)))
  predictions = logits.argmax(axis=1)
  per_class = zse.per_class_accuracy(predictions, labels, 7)
  recall = sk.recall_score(labels, predictions, labels=np.arange(6), average=None)
  assert sorted(per_class) == list(range(6))
  np.testing.assert_allclose([per_class[c] for c in range(6)], recall)
  assert np.mean(list(per_class.values())) == pytest.approx(
      sk.balanced_accuracy_score(labels, predictions))


def shapes_config(data_dir: str):
  """The tiny config on shapes/tiny, with a zero-shot evaluator of `shape1`."""
  config = tiny.get_config()
  config.data.update(name="shapes", config="tiny", data_dir=data_dir,
                     image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25))
  config.evals = ml_collections.ConfigDict({
      "shape": {"type": "zero_shot", "label": "shape1", "templates": TEMPLATES}})
  return config


def test_the_evaluator_matches_an_independent_computation(shapes_dir, tmp_path):
  """A trained tiny model's zero-shot shape accuracy on shapes/tiny: the prompt ensemble
  computed here by hand (embed, normalise, average, normalise), scored by scikit-learn."""
  config = shapes_config(shapes_dir)
  outcome = run_lib.execute(config, str(tmp_path), "all")
  results = outcome.results["shape"]
  assert os.path.exists(tmp_path / "eval_test_zero_shot_shape1.json")
  assert os.path.exists(tmp_path / "eval_test_zero_shot_shape1.png")
  exp = experiment_lib.prepare(config, str(tmp_path), allow_new_tokenizer=False)
  names = sources.class_names(exp.builder, "shape1")
  labels = pipeline.read_labels(sources.open_split(exp.builder, "test", decode_images=False),
                                "shape1")
  images = experiment_lib.embed_images(exp, outcome.variables,
                                       sources.open_split(exp.builder, "test"))
  classes = []
  for name in names:
    prompts = experiment_lib.embed_texts(exp, outcome.variables,
                                         [t.replace("{}", name) for t in TEMPLATES])
    prompts = prompts / np.linalg.norm(prompts, axis=1, keepdims=True)
    classes.append(prompts.mean(axis=0) / np.linalg.norm(prompts.mean(axis=0)))
  logits = (images / np.linalg.norm(images, axis=1, keepdims=True)) @ np.stack(classes).T
  everything = np.arange(len(names))
  assert results["num_examples"] == len(labels) and results["classes"] == list(names)
  assert results["top1"] == pytest.approx(sk.accuracy_score(labels, logits.argmax(axis=1)))
  assert results["top5"] == pytest.approx(sk.top_k_accuracy_score(
      labels, logits, k=min(5, len(names)), labels=everything))
  assert results["mean_per_class_accuracy"] == pytest.approx(
      sk.balanced_accuracy_score(labels, logits.argmax(axis=1)))
  assert results["chance_top1"] == pytest.approx(1 / len(names))


@pytest.mark.parametrize("block, message", [
    ({"type": "zero_shot"}, "a 'zero_shot' evaluator needs a label"),
    ({"type": "zero_shot", "label": "shape1", "templates": ("a photo",)},
     "templates=('a photo',) is not allowed; it must be a non-empty tuple of strings, each "
     "with a '{}'"),
    ({"type": "zero_shot", "label": "shape1", "ks": (1,)},
     "ks is not an option of a 'zero_shot' evaluator")])
def test_bad_declarations_are_refused_before_any_work(block, message):
  config = tiny.get_config()
  config.evals = ml_collections.ConfigDict({"z": block})
  with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
    settings.check(config)


def test_a_label_the_dataset_lacks_is_named(shapes_dir):
  config = shapes_config(shapes_dir)
  config.evals.shape.label = "colour"
  with pytest.raises(UsageError, match="evals.shape.label='colour' is not a class-label "
                     "feature of shapes/tiny"):
    settings.check_with_dataset(config)
