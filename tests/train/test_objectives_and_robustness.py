"""Every registered objective, the multi-task loss and the robustness options train by
config alone, and modality dropout leaves a classifier that works on the image alone."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import tiny
from mmalign import experiment as experiment_lib
from mmalign import run as run_lib
from mmalign.losses.contrastive import LOSSES
from mmalign.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _losses_logged(workdir: str) -> list[float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f]


@pytest.mark.slow
@pytest.mark.parametrize("name", LOSSES.names())
def test_every_registered_loss_trains_by_config(name, tiny_data_dir, tmp_path):
  config = tiny.get_config()
  config.data.data_dir = tiny_data_dir
  config.loss.name = name
  config.train.update(steps=4, log_every=1, warmup_steps=1)
  state = trainer.train(experiment_lib.for_training(config, str(tmp_path)))
  losses = _losses_logged(str(tmp_path))
  assert int(state["step"]) == 4 and len(losses) == 4
  assert np.isfinite(losses).all()


def _shapes_multitask_config(data_dir, **overrides):
  """shapes/tiny, concat fusion, classify the first shape's colour from the fused pair."""
  config = tiny.get_config()
  config.data.update(name="shapes", config="tiny", data_dir=data_dir)
  config.model.fusion = "concat"
  config.loss.matching_weight = 1.0
  config.task.label = "color1"
  config.loss.task_weight = 1.0
  config.train.update(steps=50, learning_rate=3e-3, warmup_steps=5, log_every=10,
                      checkpoint_every=50)
  config.eval.split = "train"  # The mechanism, not generalisation from 200 scenes.
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  return config


@pytest.mark.slow
def test_modality_dropout_keeps_image_only_classification_well_above_chance(tiny_data_dir,
                                                                            tmp_path):
  config = _shapes_multitask_config(tiny_data_dir, **{"model.modality_dropout": 0.5})
  trainer.train(experiment_lib.for_training(config, str(tmp_path)))
  exp = experiment_lib.prepare(config, str(tmp_path), allow_new_tokenizer=False)
  results = run_lib.train_and_evaluate(exp, train=False).results["classification"]
  majority = results["majority_class_accuracy"]
  assert majority < 0.3  # Six colours and "none": chance is low.
  assert results["image_only"]["accuracy"] > 2 * majority, results
  assert results["text_only"]["accuracy"] > 1.5 * majority, results
  assert results["both"]["accuracy"] > 2 * majority, results
  assert os.path.exists(tmp_path / "eval_train_classification.png")


@pytest.mark.slow
def test_multitask_and_robustness_options_through_the_launcher(tiny_data_dir, tmp_path):
  overrides = [
      f"--config.data.data_dir={tiny_data_dir}", "--config.data.name=shapes",
      "--config.data.config=tiny", "--config.model.fusion=concat",
      "--config.loss.matching_weight=1.0", "--config.task.label=color1",
      "--config.loss.task_weight=0.5", "--config.model.modality_dropout=0.3",
      "--config.data.noisy_pair_fraction=0.25", "--config.loss.modality_weights.image=0.5",
      "--config.train.steps=4", "--config.train.log_every=2"]
  command = [sys.executable, os.path.join(ROOT, "launch.py"),
             f"--config={os.path.join(ROOT, 'experiments', 'configs', 'tiny.py')}",
             f"--workdir={tmp_path}", "--mode=all", *overrides]
  result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "task_loss" in result.stderr + result.stdout
  with open(tmp_path / "eval_test_classification.json") as f:
    results = json.load(f)
  assert results["label"] == "color1" and results["step"] == 4
  assert set(results) >= {"both", "text_only", "image_only"}


def test_task_label_must_be_a_class_label_feature(tiny_data_dir, tmp_path):
  config = _shapes_multitask_config(tiny_data_dir, **{"task.label": "caption"})
  with pytest.raises(Exception, match="task.label='caption'.*color1"):
    trainer.train(experiment_lib.for_training(config, str(tmp_path)))
