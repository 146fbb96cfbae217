"""benchmarks/scaling.py --quick: one and two simulated devices, a table with MFU."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_quick_scaling_benchmark_writes_its_table(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  done = subprocess.run([sys.executable, "-m", "benchmarks.scaling", "--quick",
                         f"--out_dir={tmp_path}"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(tmp_path / "scaling_quick.json") as f:
    rows = json.load(f)["results"]
  assert [r["devices"] for r in rows] == [1, 2] and all(r["status"] == "ok" for r in rows)
  assert rows[1]["mesh"] == {"data": 2, "fsdp": 1}
  assert all(r["examples_per_s"] > 0 and 0 < r["mfu"] < 1 for r in rows)
  # The batch is split over the devices, so each holds about half the step's memory.
  assert rows[1]["step_memory_per_device_mib"] < rows[0]["step_memory_per_device_mib"]
  assert "| 2 | data 2 × fsdp 1 |" in (tmp_path / "scaling_quick.md").read_text()
