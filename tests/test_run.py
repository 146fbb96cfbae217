"""The run sequence (mmalign/run.py) and the declared evaluators: built once, run by one
function, periodic evaluation into the metrics log, the configured searcher honoured."""

import json
import os

import ml_collections
import pytest

from experiments.configs import tiny
from mmalign import experiment as experiment_lib
from mmalign import run as run_lib
from mmalign.data import sources
from mmalign.data.tokenizer import Tokenizer
from mmalign.eval import evaluators as evaluators_lib


def _config(data_dir, **train):
  config = tiny.get_config()
  config.data.data_dir = data_dir
  config.train.update(train)
  return config


def _counting(monkeypatch, owner, name, counts):
  original = getattr(owner, name)

  def counted(*args, **kwargs):
    counts[name] = counts.get(name, 0) + 1
    return original(*args, **kwargs)

  monkeypatch.setattr(owner, name, counted)


def test_mode_all_builds_dataset_tokenizer_and_model_once(tiny_data_dir, tmp_path, monkeypatch):
  counts = {}
  _counting(monkeypatch, sources, "get_builder", counts)
  _counting(monkeypatch, Tokenizer, "train", counts)
  _counting(monkeypatch, Tokenizer, "load", counts)
  _counting(monkeypatch, experiment_lib, "build_dual_encoder", counts)
  run_lib.execute(_config(tiny_data_dir), str(tmp_path), "all")  # What launch.py runs.
  assert counts == {"get_builder": 1, "train": 1, "build_dual_encoder": 1}
  counts.clear()
  run_lib.execute(_config(tiny_data_dir), str(tmp_path), "all")  # Resumes: loads.
  assert counts == {"get_builder": 1, "load": 1, "build_dual_encoder": 1}


def test_default_evaluators_follow_the_task():
  config = tiny.get_config()
  assert [(d.name, d.type, d.split) for d in evaluators_lib.declared(config)] == [
      ("retrieval", "retrieval", "test")]
  config.task.label = "color1"
  assert [d.type for d in evaluators_lib.declared(config)] == ["retrieval", "classification"]


def test_declared_evaluators_run_periodically_and_at_the_end(tiny_data_dir, tmp_path):
  config = _config(tiny_data_dir, steps=6, log_every=3)
  config.evals = ml_collections.ConfigDict({
      "retrieval": {"type": "retrieval"},
      "val": {"type": "retrieval", "split": "validation", "every_steps": 2, "ks": (1, 3)}})
  outcome = run_lib.train_and_evaluate(experiment_lib.for_training(config, str(tmp_path)))
  assert set(outcome.results) == {"retrieval", "val"} and outcome.step == 6
  assert outcome.results["val"]["split"] == "validation"
  with open(tmp_path / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  periodic = [r["step"] for r in records if "val/text_to_image/recall@1" in r]
  assert periodic == [2, 4]  # Step 6 is the final evaluation's.
  assert all("retrieval/text_to_image/recall@1" not in r for r in records)
  assert os.path.exists(tmp_path / "eval_validation.json")
  assert os.path.exists(tmp_path / "eval_test.json")
  tags = set()
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  import struct  # pylint: disable=import-outside-toplevel
  for name in os.listdir(tmp_path / "tensorboard"):
    with open(tmp_path / "tensorboard" / name, "rb") as f:
      data = f.read()
    while data:
      length = struct.unpack("<Q", data[:8])[0]
      event = event_pb2.Event.FromString(data[12:12 + length])
      tags.update(v.tag for v in event.summary.value)
      data = data[12 + length + 4:]
  assert "val/image_to_text/recall_3" in tags  # TensorBoard turns "@" into "_".


def test_the_retrieval_evaluator_uses_the_configured_searcher(tiny_data_dir, tmp_path):
  config = _config(tiny_data_dir, steps=3)
  config.retrieval.searcher = "exact"
  outcome = run_lib.train_and_evaluate(experiment_lib.for_training(config, str(tmp_path)))
  searcher = outcome.results["retrieval"]["searcher"]
  assert searcher["name"] == "exact" and searcher["recall_at_k_vs_exact"] == 1.0


@pytest.mark.parametrize("evals, named", [
    ({"r": {"type": "bogus"}}, "evals.r.type='bogus'"),
    ({"r": {"type": "retrieval", "every_steps": 0}}, "evals.r.every_steps=0"),
    ({"r": {"type": "retrieval", "topk": 3}}, "evals.r.topk is not an option"),
    ({"r": {"type": "classification"}}, "needs task.label"),
])
def test_bad_evaluator_declarations_are_named(evals, named):
  from mmalign import settings  # pylint: disable=import-outside-toplevel
  from mmalign.errors import UsageError  # pylint: disable=import-outside-toplevel
  config = tiny.get_config()
  config.evals = ml_collections.ConfigDict(evals)
  with pytest.raises(UsageError, match=named):
    settings.check(config)
