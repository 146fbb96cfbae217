"""Two local CPU processes train together (jax.distributed + gloo) and agree on the params."""

import json
import os
import sys

import pytest

from tests import processes
from tests.processes import ROOT


_WORKER = """
import hashlib, json, sys
sys.path.insert(0, {root!r})
from mmalign.train import distributed
distributed.initialize({address!r}, 2, {process_id})
import jax, numpy as np
from experiments.configs import tiny
from mmalign import experiment as experiment_lib
from mmalign.train import trainer
config = tiny.get_config()
config.data.data_dir = {data_dir!r}
config.train.update(steps=3, checkpoint_every=3, log_every=1)
state = trainer.train(experiment_lib.for_training(config, {workdir!r}))
digest = hashlib.sha256()
for leaf in jax.tree.leaves(state["params"]):
  digest.update(np.asarray(leaf.addressable_data(0)).tobytes())
print(json.dumps({{"process": jax.process_index(), "count": jax.process_count(),
                  "devices": jax.device_count(), "step": int(state["step"].addressable_data(0)),
                  "params_sha256": digest.hexdigest()}}))
"""


@pytest.mark.slow
def test_two_processes_train_together_and_agree(tiny_data_dir, tmp_path):
  address = processes.coordinator_address()
  outputs = processes.run_together([
      [sys.executable, "-c", _WORKER.format(root=ROOT, address=address, process_id=i,
                                            data_dir=tiny_data_dir, workdir=str(tmp_path))]
      for i in range(2)])
  reports = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
  assert [r["process"] for r in reports] == [0, 1]
  assert all(r["count"] == 2 and r["devices"] == 2 and r["step"] == 3 for r in reports)
  assert reports[0]["params_sha256"] == reports[1]["params_sha256"]
  assert os.path.isdir(tmp_path / "checkpoints" / "3")  # Written once, collectively.
  with open(tmp_path / "metrics.jsonl") as f:  # Only process 0 logs.
    assert [json.loads(line)["step"] for line in f] == [1, 2, 3]


def test_partial_flags_are_a_usage_error():
  from mmalign.errors import UsageError  # pylint: disable=import-outside-toplevel
  from mmalign.train import distributed  # pylint: disable=import-outside-toplevel
  with pytest.raises(UsageError, match="go together"):
    distributed.initialize("localhost:1234", None, None)
  with pytest.raises(UsageError, match="--process_id=2"):
    distributed.initialize("localhost:1234", 2, 2)


def test_single_process_without_flags_or_launcher_does_nothing(monkeypatch):
  from mmalign.train import distributed  # pylint: disable=import-outside-toplevel
  for name in distributed._AUTO_DETECTED:  # pylint: disable=protected-access
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("SLURM_NTASKS", "1")  # A one-task SLURM job is a single process.
  assert distributed.initialize() is False
