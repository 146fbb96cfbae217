"""Utilisation in the training log: XLA's FLOP count of a sharded program against 2·m·n·k,
and `mfu` = FLOPs per step × steps/s ÷ peak in every log record."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from experiments.configs import tiny
from mmalign import experiment as experiment_lib
from mmalign.train import trainer, utilisation


def test_the_flops_of_a_matmul_sharded_over_every_device_are_two_m_n_k():
  m, n, k = 64 * jax.device_count(), 48, 32
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  rows = NamedSharding(mesh, PartitionSpec("data", None))
  a = jax.device_put(jnp.ones((m, k), jnp.float32), rows)
  b = jax.device_put(jnp.ones((k, n), jnp.float32), NamedSharding(mesh, PartitionSpec()))
  compiled = jax.jit(jnp.matmul, out_shardings=rows).lower(a, b).compile()
  assert utilisation.step_flops(compiled) == pytest.approx(2 * m * n * k, rel=0.01)


def test_peaks_come_from_the_config_or_the_host():
  assert utilisation.peak_flops(2e12) == (2e12 * jax.device_count(), "train.peak_flops")
  peak, source = utilisation.peak_flops()
  assert peak > 1e8 and "measured" in source  # CPU: the host's matmul rate.


def test_every_log_record_carries_its_utilisation(tiny_data_dir, tmp_path):
  config = tiny.get_config()
  config.data.data_dir = tiny_data_dir
  config.train.update(steps=4, log_every=2, checkpoint_every=4, peak_flops=1e9)
  trainer.train(experiment_lib.for_training(config, str(tmp_path)))
  with open(tmp_path / trainer.STEP_MEMORY) as f:
    flops = json.load(f)["flops"]
  with open(tmp_path / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert flops > 0 and len(records) == 2
  for record in records:
    np.testing.assert_allclose(record["mfu"], flops * record["steps_per_s"]
                               / (1e9 * jax.device_count()), rtol=1e-9)
    assert record["step_time_s"] == pytest.approx(1 / record["steps_per_s"])
    assert record["input_wait_s"] >= 0


def test_profile_steps_write_a_trace_for_tensorboard(tiny_data_dir, tmp_path):
  config = tiny.get_config()
  config.data.data_dir = tiny_data_dir
  config.train.update(steps=4, log_every=4, checkpoint_every=4, profile_steps=(2, 3))
  trainer.train(experiment_lib.for_training(config, str(tmp_path)))
  traces = list((tmp_path / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
