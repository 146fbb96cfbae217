"""benchmarks/retrieval.py: its pure helpers against numpy, and a --quick smoke run.

The smoke run hides faiss and hnswlib (bench-only peers that tests must never import),
so it also checks that missing peers are skipped with the install hint.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import galleries, retrieval as bench
from tests.retrieval.reference import numpy_top_k

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_mixture_is_unit_float32_deterministic_and_held_out():
  gallery, queries = galleries.mixture(3000, 50, 16, clusters=40, spread=0.6, seed=3)
  assert gallery.shape == (3000, 16) and queries.shape == (50, 16)
  assert gallery.dtype == queries.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(gallery, axis=1), 1, atol=1e-5)
  again, _ = galleries.mixture(3000, 50, 16, clusters=40, spread=0.6, seed=3)
  np.testing.assert_array_equal(gallery, again)
  nearest = (queries @ gallery.T).max(axis=1)
  assert np.all(nearest < 1 - 1e-6)  # No query is a gallery row.


def test_numpy_method_matches_reference():
  rng = np.random.default_rng(0)
  gallery = rng.normal(size=(700, 8)).astype(np.float32)
  gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
  queries = gallery[:90] + 0.1 * rng.normal(size=(90, 8)).astype(np.float32)
  _, expected = numpy_top_k(queries, gallery, 10)
  np.testing.assert_array_equal(bench._numpy_top_k(gallery, queries, 10, chunk=16), expected)


def test_qps_at_targets_and_hardness():
  points = [{"recall": 0.85, "qps": 900.0}, {"recall": 0.93, "qps": 500.0},
            {"recall": 0.96, "qps": 300.0}, {"recall": 0.991, "qps": 100.0}]
  assert bench.qps_at(points, 0.90) == 500.0 and bench.qps_at(points, 0.999) is None
  results = {
      "numpy": {"status": "ok", "kind": "exact", "points": [{"recall": 1.0, "qps": 10.0}]},
      "faiss_flat": {"status": "ok", "kind": "exact", "points": [{"recall": 1.0, "qps": 20.0}]},
      "scann": {"status": "ok", "kind": "approx", "qps_at": {"0.95": 300.0},
                "single_p50_ms": 0.2, "build_s": 31.0, "index_bytes": 110,
                "points": [{"params": {"leaves": 1}, "recall": 0.8, "qps": 1.0}]}}
  t = bench.targets(results, n=25, dim=1, sgemm=100.0, jax_flops=65.0)
  assert t["fastest_exact"] == "faiss_flat"
  assert t["qps_ratio_at_0.95"] == {"value": 15.0, "target": 12.0, "met": True}
  assert t["single_p50_ms"]["met"] and not t["build_s"]["met"]
  assert t["index_size_ratio"]["value"] == pytest.approx(1.1) and t["index_size_ratio"]["met"]
  assert t["jax_tiled_fraction_of_sgemm"]["value"] == pytest.approx(0.65)
  assert not t["jax_tiled_fraction_of_sgemm"]["met"]
  hard = bench.hardness(results)
  assert hard["one_probe_recall"] == {"scann_one_leaf_best_reorder": 0.8} and hard["met"]


@pytest.mark.slow
def test_quick_run_writes_report_and_skips_missing_peers(tmp_path):
  code = ("import sys; sys.modules['faiss'] = None; sys.modules['hnswlib'] = None; "
          "from absl import app; from benchmarks import retrieval; app.run(retrieval.main)")
  done = subprocess.run([sys.executable, "-c", code, "--quick", f"--out_dir={tmp_path}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  for suffix in ("json", "md", "png"):
    assert (tmp_path / f"retrieval.{suffix}").stat().st_size > 0
  with open(tmp_path / "retrieval.json") as f:
    report = json.load(f)
  results = report["synthetic"]["results"]
  for name in ("faiss_flat", "faiss_ivfpq_fs", "faiss_hnsw", "hnswlib"):
    assert results[name]["status"].startswith("skipped:")
    assert "pip install -e .[bench]" in results[name]["status"]
  # Three independent exact searches agree with numpy's ground truth.
  for name in ("jax_tiled", "scann_brute_force"):
    assert min(p["recall"] for p in results[name]["points"]) >= 0.999
  scann = results["scann"]
  assert max(p["recall"] for p in scann["points"]) >= 0.95
  assert scann["tuned_0.95"]["met"] and set(report["synthetic"]["targets"]) >= {
      "qps_ratio_at_0.95", "single_p50_ms", "build_s", "index_size_ratio",
      "jax_tiled_fraction_of_sgemm"}
  markdown = (tmp_path / "retrieval.md").read_text()
  assert "Command: `python -m benchmarks.retrieval --quick" in markdown
  assert "| scann |" in markdown and "Skipped: not run in --quick mode" in markdown
