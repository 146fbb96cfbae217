"""experiments/tasks_shapes.py end to end on a few-step model of shapes/tiny."""

import json
import os

import pytest
from PIL import Image

from experiments import tasks_shapes
from experiments.configs import tiny
from mmalign.errors import UsageError
from mmalign import experiment as experiment_lib
from mmalign.train import trainer


def _config(data_dir):
  config = tiny.get_config()
  config.data.name = "shapes"
  config.data.config = "tiny"
  config.data.data_dir = data_dir
  config.data.image_mean = (0.9,) * 3
  config.data.image_std = (0.25,) * 3
  config.train.update(steps=2, warmup_steps=1, log_every=2, checkpoint_every=2)
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  config = _config(str(tmp_path_factory.mktemp("tfds")))
  workdir = str(tmp_path_factory.mktemp("shapes_workdir"))
  trainer.train(experiment_lib.for_training(config, workdir))
  return config, workdir


METRICS = ("accuracy", "macro_f1", "roc_auc", "mAP", "micro_f1", "majority", "chance")


def _metrics(tree) -> list[float]:
  """Every metric value in a nested results dict (None where undefined is skipped)."""
  if not isinstance(tree, dict):
    return []
  found = [v for k, v in tree.items() if k in METRICS and v is not None]
  return found + [x for v in tree.values() for x in _metrics(v)]


@pytest.mark.slow
def test_script_writes_results_in_range(trained, tmp_path):
  config, workdir = trained
  out_dir = str(tmp_path / "out")
  # One negative kind, one attribute, linear heads only: every head shape compiles once.
  settings = tasks_shapes.Settings(probe_steps=10, batch_size=64, mlp_hidden=(),
                                   negatives=("colors",), attributes=("num_shapes",))
  report = tasks_shapes.run(config, workdir, out_dir=out_dir, settings=settings,
                            command="python -m experiments.tasks_shapes --workdir=w")
  for name in ("results.json", "results.md", "tasks.png"):
    assert os.path.getsize(os.path.join(out_dir, name)) > 0
  with open(os.path.join(out_dir, "results.json")) as f:
    saved = json.load(f)
  assert saved["step"] == 2 and saved["num_test"] == report["num_test"] > 0
  for key in ("matching", "zero_shot_shapes", "tags", "attributes"):
    scores = _metrics(saved[key])
    assert len(scores) >= 3 and all(0.0 <= x <= 1.0 for x in scores), (key, scores)
  matching = saved["matching"]["colors"]["linear"]
  # Balanced by construction: any classifier of one modality is right exactly half the time.
  assert matching["text"]["accuracy"] == matching["image"]["accuracy"] == 0.5
  assert matching["fused+dropout"]["text absent"]["accuracy"] == 0.5
  assert -1.0 <= saved["tags"]["zero_shot"]["threshold"] <= 1.0  # A cosine.
  with open(os.path.join(out_dir, "results.md")) as f:
    markdown = f.read()
  for expected in ("python -m experiments.tasks_shapes --workdir=w", "checkpoint step 2",
                   f"JAX {saved['jax_version']}", "| colors | linear | fused |"):
    assert expected in markdown
  with Image.open(os.path.join(out_dir, "tasks.png")) as image:
    assert image.size[0] > 1000


@pytest.mark.parametrize("override, culprit", [
    ({"data.name": "unicode_glyphs"}, "data.name='unicode_glyphs'"),
    ({"split": "train"}, "--split=train"),
    ({}, "holds no trained model"),
])
def test_bad_input_is_a_usage_error(override, culprit, tmp_path):
  config = _config(str(tmp_path))
  split = override.pop("split", "test")
  for key, value in override.items():
    section, name = key.split(".")
    config[section][name] = value
  with pytest.raises(UsageError, match=culprit):
    tasks_shapes.run(config, str(tmp_path), out_dir=str(tmp_path / "out"), split=split)
