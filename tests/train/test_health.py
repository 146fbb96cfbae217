"""The loop reads nothing back from the devices between the steps that log, save, evaluate
or stop, yet a NaN at step k still stops the run naming k with nothing of it saved."""

import collections
import json

from jax._src import array as jax_array  # The one funnel of array reads.
import numpy as np
import pytest

from experiments.configs import tiny
from mmalign import experiment as experiment_lib
from mmalign.data import pipeline
from mmalign.train import health as health_lib
from mmalign.train import trainer
from mmalign.train.checkpoint import Checkpointer
from tests.trees import assert_trees_bitwise_equal


def _config(data_dir, **train):
  config = tiny.get_config()
  config.data.data_dir = data_dir
  config.train.update({"steps": 8, "checkpoint_every": 4, "log_every": 4, **train})
  return config


def test_no_read_between_log_steps_and_the_same_bits(tiny_data_dir, tmp_path, monkeypatch):
  """Every read of a device array (jax.device_get, np.asarray, float) goes through
  `ArrayImpl._value`; counted there, since on CPU `jax.transfer_guard` has nothing to guard
  (the arrays already live on the host)."""
  reads, current = collections.Counter(), {"step": 0}
  value = jax_array.ArrayImpl._value
  monkeypatch.setattr(jax_array.ArrayImpl, "_value", property(
      lambda self: reads.update([current["step"]]) or value.fget(self)))
  update = health_lib.Health.update

  def tracked(self, step, metrics):
    current["step"] = step
    return update(self, step, metrics)

  monkeypatch.setattr(health_lib.Health, "update", tracked)
  sparse = trainer.train(experiment_lib.for_training(_config(tiny_data_dir),
                                                     str(tmp_path / "sparse")))
  # Logging and saving steps only (0: before the loop; orbax also saves a run's first step).
  assert set(reads) - {0} == {1, 4, 8}
  monkeypatch.undo()
  every_step = trainer.train(experiment_lib.for_training(
      _config(tiny_data_dir, log_every=1, checkpoint_every=1), str(tmp_path / "every")))
  assert_trees_bitwise_equal(sparse, every_step)
  with open(tmp_path / "sparse" / "metrics.jsonl") as f:
    assert [json.loads(line)["step"] for line in f] == [4, 8]


def test_a_nan_between_checks_is_named_and_nothing_of_it_is_saved(tiny_data_dir, tmp_path,
                                                                  monkeypatch):
  clean_batch = pipeline.TrainBatches.__call__

  def poisoned(self, step):
    batch = clean_batch(self, step)
    if step >= 5:  # Step index 5 is the sixth step: between the checks at steps 4 and 8.
      batch["images"] = np.full_like(batch["images"], np.nan)
    return batch

  monkeypatch.setattr(pipeline.TrainBatches, "__call__", poisoned)
  with pytest.raises(trainer.NonFiniteLossError, match=r"loss nan .* at step 6;"):
    trainer.train(experiment_lib.for_training(_config(tiny_data_dir), str(tmp_path)))
  assert Checkpointer(str(tmp_path)).latest_step() == 4
  with open(tmp_path / "metrics.jsonl") as f:
    assert [json.loads(line)["step"] for line in f] == [4]
