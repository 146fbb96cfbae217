"""A run killed (SIGKILL), preempted (SIGTERM), fed NaNs or left with a corrupt checkpoint
resumes or stops cleanly, and a resumed run ends bitwise identical to an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments.configs import tiny
from mmalign import experiment as experiment_lib
from mmalign.train import state as train_state
from mmalign.data import pipeline
from mmalign.train import trainer
from mmalign.train.checkpoint import CheckpointRestoreError, Checkpointer
from tests.trees import assert_trees_bitwise_equal

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 40
OVERRIDES = [f"--config.train.steps={STEPS}", "--config.train.checkpoint_every=4",
             "--config.train.log_every=1", "--config.train.keep_checkpoints=3"]


def _config(data_dir):
  config = tiny.get_config()
  config.data.data_dir = data_dir
  config.train.update(steps=STEPS, checkpoint_every=4, log_every=1, keep_checkpoints=3)
  return config


def _start(workdir, data_dir):
  command = [sys.executable, os.path.join(ROOT, "launch.py"),
             f"--config={os.path.join(ROOT, 'experiments', 'configs', 'tiny.py')}",
             f"--workdir={workdir}", "--mode=train", f"--config.data.data_dir={data_dir}",
             *OVERRIDES]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # One CPU device, always.
  return subprocess.Popen(command, cwd=ROOT, env={**env, "JAX_PLATFORMS": "cpu"},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _logged_step(workdir) -> int:
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    return 0
  return json.loads(lines[-1])["step"] if lines and lines[-1].endswith("}") else 0


def _run_until(workdir, data_dir, step, sig):
  """Starts a training process and sends it `sig` once it has logged `step`."""
  process = _start(workdir, data_dir)
  deadline = time.monotonic() + 240
  while _logged_step(workdir) < step and process.poll() is None:
    assert time.monotonic() < deadline, "training did not reach the step in time"
    time.sleep(0.005)
  process.send_signal(sig)
  _, stderr = process.communicate(timeout=240)
  return process.returncode, stderr


def _finish(workdir, data_dir):
  process = _start(workdir, data_dir)
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-3000:]
  return stdout


def _final_params(workdir, data_dir):
  exp = experiment_lib.prepare(_config(data_dir), str(workdir), allow_new_tokenizer=False)
  variables, step = train_state.restore_variables(exp)
  assert step == STEPS
  return variables


@pytest.fixture(scope="module")
def uninterrupted(tiny_data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  _finish(workdir, tiny_data_dir)
  return _final_params(workdir, tiny_data_dir)


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_rerun_is_bitwise_identical(uninterrupted, tiny_data_dir,
                                                                 tmp_path):
  kill_at = int(np.random.default_rng().integers(5, STEPS - 5))
  returncode, _ = _run_until(tmp_path, tiny_data_dir, kill_at, signal.SIGKILL)
  assert returncode == -signal.SIGKILL, f"the run ended before step {kill_at} was killed"
  _finish(tmp_path, tiny_data_dir)
  assert_trees_bitwise_equal(_final_params(tmp_path, tiny_data_dir), uninterrupted)


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_exits_zero(uninterrupted, tiny_data_dir, tmp_path):
  returncode, stderr = _run_until(tmp_path, tiny_data_dir, 6, signal.SIGTERM)
  assert returncode == 0, stderr[-3000:]
  assert "preempted (SIGTERM)" in stderr
  saved = Checkpointer(str(tmp_path)).latest_step()
  assert saved is not None and saved >= 6 and f"checkpoint at step {saved}" in stderr
  assert f"at step {saved}" in _finish(tmp_path, tiny_data_dir)  # "resumed from ... at step"
  assert_trees_bitwise_equal(_final_params(tmp_path, tiny_data_dir), uninterrupted)


def _corrupt(step_dir):
  """Overwrites every data file of a saved step with garbage of the same size."""
  for root, _, files in os.walk(step_dir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "r+b") as f:
        size = os.path.getsize(path)
        f.write(b"\x00garbage" * (size // 8 + 1))


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tiny_data_dir, tmp_path):
  config = _config(tiny_data_dir)
  config.train.update(steps=6, checkpoint_every=3)
  trainer.train(experiment_lib.for_training(config, str(tmp_path)))
  checkpoints = os.path.join(str(tmp_path), "checkpoints")
  assert {"3", "6"} <= set(os.listdir(checkpoints))
  _corrupt(os.path.join(checkpoints, "6"))
  exp = experiment_lib.prepare(config, str(tmp_path), allow_new_tokenizer=False)
  checkpointer = Checkpointer(str(tmp_path))
  abstract = train_state.abstract_train_state(exp)
  with pytest.warns(UserWarning, match=r"checkpoints/6 is unreadable"):
    state, _ = checkpointer.restore_latest_good(abstract, exp.meta())
  checkpointer.close()
  assert int(state["step"]) == 3
  assert {"3", "6.corrupt"} <= set(os.listdir(checkpoints))  # Moved aside, not deleted.
  assert "6" not in os.listdir(checkpoints)
  resumed = trainer.train(experiment_lib.for_training(config, str(tmp_path)))  # Retrains steps 4..6 from the good one.
  assert int(resumed["step"]) == 6
  assert {"3", "6", "6.corrupt"} <= set(os.listdir(checkpoints))


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    tiny_data_dir, tmp_path, monkeypatch):
  config = _config(tiny_data_dir)
  config.train.update(steps=8, checkpoint_every=3)
  clean_batch = pipeline.TrainBatches.__call__

  def poisoned(self, step):
    batch = clean_batch(self, step)
    if step >= 4:  # Step index 4 is the fifth step.
      batch["images"] = np.full_like(batch["images"], np.nan)
    return batch

  monkeypatch.setattr(pipeline.TrainBatches, "__call__", poisoned)
  with pytest.raises(trainer.NonFiniteLossError, match="at step 5"):
    trainer.train(experiment_lib.for_training(config, str(tmp_path)))
  assert Checkpointer(str(tmp_path)).latest_step() == 3
  with open(tmp_path / "metrics.jsonl") as f:
    assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4]


def test_non_finite_steps_can_be_skipped(tiny_data_dir, tmp_path, monkeypatch):
  config = _config(tiny_data_dir)
  config.train.update(steps=6, checkpoint_every=3, on_nonfinite="skip")
  clean_batch = pipeline.TrainBatches.__call__

  def poisoned(self, step):
    batch = clean_batch(self, step)
    if step in (2, 3):  # The third and fourth steps.
      batch["images"] = np.full_like(batch["images"], np.nan)
    return batch

  monkeypatch.setattr(pipeline.TrainBatches, "__call__", poisoned)
  with pytest.warns(UserWarning, match="step 3: non-finite") as caught:
    state = trainer.train(experiment_lib.for_training(config, str(tmp_path)))
  assert sorted(str(w.message)[:6] for w in caught if "non-finite" in str(w.message)) == [
      "step 3", "step 4"]
  assert int(state["step"]) == 6
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))
  with open(tmp_path / "metrics.jsonl") as f:
    skipped = [json.loads(line)["skipped"] for line in f]
  assert skipped == [0, 0, 1, 1, 0, 0]


def test_a_restore_failure_that_is_not_damage_moves_nothing(tiny_data_dir, tmp_path,
                                                              monkeypatch):
  """A good checkpoint that fails to restore for another reason (here a placement error,
  as a one-process checkpoint once raised in a two-process job) stays where it is."""
  config = _config(tiny_data_dir)
  config.train.update(steps=3, checkpoint_every=3)
  trainer.train(experiment_lib.for_training(config, str(tmp_path)))
  exp = experiment_lib.prepare(config, str(tmp_path), allow_new_tokenizer=False)
  checkpointer = Checkpointer(str(tmp_path))

  def misplaced(*args, **kwargs):
    raise ValueError("Array has no addressable shards")

  monkeypatch.setattr(checkpointer, "restore", misplaced)
  with pytest.raises(CheckpointRestoreError, match=r"checkpoints/3 \(ValueError: Array has "
                     r"no addressable shards\).*left in place"):
    checkpointer.restore_latest_good(train_state.abstract_train_state(exp), exp.meta())
  checkpointer.close()
  assert "3" in os.listdir(os.path.join(str(tmp_path), "checkpoints"))
