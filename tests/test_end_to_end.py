"""Tiny end-to-end runs: build → train → eval → ScaNN search → restore, and bad input."""

import glob
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import tiny
from mmalign import experiment as experiment_lib
from mmalign import run as run_lib
from mmalign.retrieval import search as search_lib
from mmalign.train import state as train_state
from mmalign.train import trainer
from tests.trees import assert_trees_bitwise_equal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(data_dir, **train_overrides):
  config = tiny.get_config()
  config.data.data_dir = data_dir
  for key, value in train_overrides.items():
    config.train[key] = value
  return config


@pytest.fixture(scope="module")
def trained(tiny_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("workdir"))
  config = _config(tiny_data_dir)
  state = trainer.train(experiment_lib.for_training(config, workdir))
  return config, workdir, state


def test_training_writes_checkpoint_tokenizer_and_metrics(trained):
  config, workdir, state = trained
  assert int(state["step"]) == config.train.steps
  assert os.path.exists(os.path.join(workdir, "tokenizer", "tokenizer.model"))
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(config.train.steps)))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records] == [2, 4, 6]
  assert all(np.isfinite(r["loss"]) and r["steps_per_s"] > 0 for r in records)
  assert all(r["examples_per_s"] == pytest.approx(r["steps_per_s"] * config.train.batch_size)
             for r in records)


def _event_records(path: str) -> list[bytes]:
  """The payloads of a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
  records, data = [], open(path, "rb").read()
  offset = 0
  while offset < len(data):
    length = struct.unpack("<Q", data[offset:offset + 8])[0]
    records.append(data[offset + 12:offset + 12 + length])
    offset += 12 + length + 4
  return records


def test_training_writes_tensorboard_events(trained):
  config, workdir, _ = trained
  files = glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
  assert len(files) == 1
  records = _event_records(files[0])
  for tag in (b"loss", b"steps_per_s", b"examples_per_s", b"learning_rate"):
    # One event per logged step (2, 4, 6) for every scalar.
    assert sum(tag in r for r in records) >= len(range(2, config.train.steps + 1, 2)), tag


def test_restored_params_equal_trained_params(trained):
  config, workdir, state = trained
  exp = experiment_lib.prepare(config, workdir, allow_new_tokenizer=False)
  variables, step = train_state.restore_variables(exp)
  assert step == config.train.steps
  assert_trees_bitwise_equal(variables, train_state.variables_of(state))


def test_evaluation_from_checkpoint(trained):
  config, workdir, _ = trained
  exp = experiment_lib.prepare(config, workdir, allow_new_tokenizer=False)
  results = run_lib.train_and_evaluate(exp, train=False).results["retrieval"]
  with open(os.path.join(workdir, "eval_test.json")) as f:
    assert json.load(f) == json.loads(json.dumps(results))
  for direction in ("text_to_image", "image_to_text"):
    recalls = [results[direction][f"recall@{k}"] for k in config.eval.ks]
    assert all(0.0 <= r <= 1.0 for r in recalls) and recalls == sorted(recalls)
  # Tiny galleries are searched exactly by ScaNN, so it must agree with exact search.
  assert results["searcher"]["name"] == "scann" and results["searcher"]["brute_force"]
  assert results["searcher"]["recall_at_k_vs_exact"] == 1.0
  assert results["gallery_images"] > results["num_text_queries"] > 0


def test_search_returns_k_hits_and_contact_sheet(trained):
  config, workdir, _ = trained
  exp = experiment_lib.prepare(config, workdir, allow_new_tokenizer=False)
  variables, step = train_state.restore_variables(exp)
  hits, sheet = search_lib.search(exp, variables, step, "latin small letter a with grave",
                                  k=4, split="test",
                                  scann_config=search_lib.scann_config(config))
  assert [h.rank for h in hits] == [1, 2, 3, 4]
  scores = [h.score for h in hits]
  assert scores == sorted(scores, reverse=True)
  assert os.path.getsize(sheet) > 0
  # The index is saved once per (step, split) and reused.
  assert os.path.exists(os.path.join(workdir, "scann", f"test_step{step}", "manifest.json"))


def test_resume_matches_uninterrupted_run(tiny_data_dir, tmp_path):
  """Stop at step 4, restart to step 6: same parameters as one run to step 6."""
  interrupted, straight = str(tmp_path / "interrupted"), str(tmp_path / "straight")
  trainer.train(experiment_lib.for_training(_config(tiny_data_dir, checkpoint_every=2), interrupted), stop_after=4)
  resumed = trainer.train(experiment_lib.for_training(_config(tiny_data_dir, checkpoint_every=2), interrupted))
  uninterrupted = trainer.train(experiment_lib.for_training(_config(tiny_data_dir, checkpoint_every=2), straight))
  assert_trees_bitwise_equal(resumed["params"], uninterrupted["params"])
  assert_trees_bitwise_equal(resumed["opt_state"], uninterrupted["opt_state"])


def test_training_with_a_sharded_loss(tiny_data_dir, tmp_path):
  config = _config(tiny_data_dir, steps=3, warmup_steps=1, log_every=1)
  config.loss.distributed = "ring"
  state = trainer.train(experiment_lib.for_training(config, str(tmp_path / "ring")))
  with open(tmp_path / "ring" / "metrics.jsonl") as f:
    assert all(np.isfinite(json.loads(line)["loss"]) for line in f)
  assert int(state["step"]) == 3


def _launch(*args, workdir):
  command = [sys.executable, os.path.join(ROOT, "launch.py"),
             f"--config={os.path.join(ROOT, 'experiments', 'configs', 'tiny.py')}",
             f"--workdir={workdir}", *args]
  return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)


def _error_line(result) -> str:
  lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert result.returncode == 2, result.stderr[-2000:]
  assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("args, culprit", [
    (["--config.train.no_such_key=1"], "--config.train.no_such_key"),
    (["--config.data.name=no_such_dataset"], "data.name"),
    (["--config.model.text_encoder=no_such_encoder"], "model.text_encoder"),
    (["--mode=search", "--query= "], "--query"),
])
def test_bad_input_fails_with_one_line(args, culprit, tiny_data_dir, tmp_path):
  result = _launch(f"--config.data.data_dir={tiny_data_dir}", *args,
                   workdir=str(tmp_path / "w"))
  assert culprit in _error_line(result)


@pytest.mark.slow
def test_encoders_and_fusion_switch_by_overrides(tiny_data_dir, tmp_path):
  result = _launch(f"--config.data.data_dir={tiny_data_dir}", "--config.model.text_encoder=gru",
                   "--config.model.image_encoder=resnet", "--config.model.fusion=cross_attention",
                   "--config.loss.matching_weight=1.0", "--mode=train",
                   workdir=str(tmp_path / "w"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "matching_loss=" in result.stdout
  with open(tmp_path / "w" / "checkpoints" / "6" / "meta" / "metadata") as f:
    meta = json.load(f)
  assert meta["model_config"]["text_encoder"] == "gru"
  assert meta["model_config"]["fusion"] == "cross_attention"


@pytest.mark.slow
def test_unwritable_workdir_is_named(tiny_data_dir, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  result = _launch(f"--config.data.data_dir={tiny_data_dir}", workdir=str(blocker / "w"))
  assert "--workdir" in _error_line(result)


@pytest.mark.slow
def test_other_model_shape_refused_and_workdir_kept(trained, tiny_data_dir):
  config, workdir, _ = trained
  before = {p: os.path.getmtime(os.path.join(d, p)) for d, _, files in os.walk(workdir)
            for p in files}
  result = _launch(f"--config.data.data_dir={tiny_data_dir}", "--config.model.embed_dim=8",
                   "--mode=train", workdir=workdir)
  line = _error_line(result)
  assert "model_config" in line or "embed_dim" in result.stderr
  after = {p: os.path.getmtime(os.path.join(d, p)) for d, _, files in os.walk(workdir)
           for p in files}
  # Nothing written, nothing lost; only the lock file names its last holder.
  assert {p: t for p, t in after.items() if p != ".lock"} == {
      p: t for p, t in before.items() if p != ".lock"}


@pytest.mark.slow
def test_index_mode_then_image_query_through_the_launcher(trained, tiny_data_dir, tmp_path):
  config, workdir, _ = trained
  result = _launch(f"--config.data.data_dir={tiny_data_dir}", "--mode=index", workdir=workdir)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "(images)" in result.stdout and "_text (captions)" in result.stdout
  image = tmp_path / "query.png"
  exp = experiment_lib.prepare(config, workdir, allow_new_tokenizer=False)
  from mmalign.data import sources  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  Image.fromarray(np.asarray(sources.open_split(exp.builder, "test")[0]["image"])[..., 0]).save(
      image)
  result = _launch(f"--config.data.data_dir={tiny_data_dir}", "--mode=search",
                   f"--query_image={image}", "--k=3", workdir=workdir)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "captions for the image" in result.stdout and " 3. " in result.stdout
