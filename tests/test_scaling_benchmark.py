"""benchmarks/scaling.py --quick: training on one and two simulated devices with figures
read from the trainer's logs, and sharded retrieval on one and two processes."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quick_scaling_benchmark_writes_its_tables(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  done = subprocess.run([sys.executable, "-m", "benchmarks.scaling", "--quick",
                         f"--out_dir={tmp_path}"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(tmp_path / "scaling_quick.json") as f:
    report = json.load(f)
  train = report["train"]["results"]
  assert [r["devices"] for r in train] == [1, 2] and all(r["status"] == "ok" for r in train)
  assert train[1]["mesh"] == {"data": 2, "fsdp": 1}
  # Read from the second logged window (steps 3-4), as the trainer logged it.
  assert all(r["logged_step"] == 4 and r["examples_per_s"] > 0 and 0 < r["mfu"] < 1
             and r["flops_per_step"] > 0 for r in train)
  # The batch is split over the devices, so each holds about half the step's memory.
  assert train[1]["step_memory_per_device_mib"] < train[0]["step_memory_per_device_mib"]
  retrieval = report["retrieval"]["results"]
  assert [r["processes"] for r in retrieval] == [1, 2]
  assert all(r["status"] == "ok" and r["qps_min"] > 0 for r in retrieval)
  # The two-shard search reaches the one-shard recall (builds are deterministic).
  assert retrieval[1]["recall_at_10"] >= retrieval[0]["recall_at_10"] >= 0.95
  markdown = (tmp_path / "scaling_quick.md").read_text()
  assert "| 2 | data 2 × fsdp 1 |" in markdown and "## Sharded retrieval" in markdown
