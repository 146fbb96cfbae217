"""Linear-probe evaluator: its plumbing recomputed by hand, its probe against scikit-learn."""

import ml_collections
import pytest
from sklearn.linear_model import LogisticRegression

from mmalign import experiment as experiment_lib
from mmalign import run as run_lib
from mmalign import settings
from mmalign.errors import UsageError
from mmalign.eval import linear_probe_evaluator as lpe
from mmalign.tasks import probe
from tests.eval.test_zero_shot_evaluator import shapes_config

WEIGHT_DECAYS = (1e-4, 3.0)


def test_the_probe_is_chosen_on_validation_and_scored_on_the_split(shapes_dir, tmp_path):
  config = shapes_config(shapes_dir)
  config.evals = ml_collections.ConfigDict({"probe": {
      "type": "linear_probe", "label": "shape1", "weight_decays": WEIGHT_DECAYS,
      "steps": 200}})
  outcome = run_lib.execute(config, str(tmp_path), "all")
  results = outcome.results["probe"]
  exp = experiment_lib.prepare(config, str(tmp_path), allow_new_tokenizer=False)
  evaluator = lpe.LinearProbeEvaluator(exp, split="test", label="shape1",
                                       weight_decays=WEIGHT_DECAYS, steps=200)
  data = {split: evaluator.features(outcome.variables, split)
          for split in ("train", "validation", "test")}
  classes = len(results["classes"])
  validation = {}
  for weight_decay in WEIGHT_DECAYS:
    head = probe.train_probe(*data["train"], classes, steps=200, weight_decay=weight_decay)
    validation[f"{weight_decay:g}"] = float(
        (head.predict(data["validation"][0]) == data["validation"][1]).mean())
  assert results["validation_accuracy"] == validation
  best = max(WEIGHT_DECAYS, key=lambda w: validation[f"{w:g}"])
  assert results["weight_decay"] == best
  head = probe.train_probe(*data["train"], classes, steps=200, weight_decay=best)
  assert results["top1"] == pytest.approx(
      float((head.predict(data["test"][0]) == data["test"][1]).mean()))
  # An independent logistic regression on the same features lands close by.
  reference = LogisticRegression(max_iter=2000).fit(*data["train"])
  assert abs(reference.score(*data["test"]) - results["top1"]) <= 0.2


def test_bad_declarations_are_refused(shapes_dir):
  config = shapes_config(shapes_dir)
  config.evals = ml_collections.ConfigDict({"probe": {"type": "linear_probe"}})
  with pytest.raises(UsageError, match="a 'linear_probe' evaluator needs a label"):
    settings.check(config)
  config.evals.probe.label = "shape1"
  config.evals.probe.weight_decays = (-1.0,)
  with pytest.raises(UsageError, match="weight_decays=\\(-1.0,\\) is not allowed"):
    settings.check(config)
  config.evals.probe.weight_decays = (1e-4,)
  config.evals.probe.validation_split = "dev"
  with pytest.raises(UsageError, match="evals.probe.validation_split='dev': dataset shapes/tiny "
                     "has no such split"):
    settings.check_with_dataset(config)
