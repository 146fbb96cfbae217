"""ScannIndex against exact numpy search, on both the brute-force and the tree path."""

import json
import shutil

import numpy as np
import pytest

from mmalign.eval.retrieval_metrics import recall_vs_exact
from mmalign.retrieval.scann_index import (MANIFEST, ScannConfig, ScannIndex,
                                           resolved_tree_params)


def _unit_rows(x: np.ndarray) -> np.ndarray:
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _numpy_top_k(queries, gallery, k):
  """Reference: cosine scores [q, k] and ids [q, k] by full argsort in float64."""
  queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
  scores = queries.astype(np.float64) @ gallery.astype(np.float64).T  # [q, g]
  order = np.argsort(-scores, axis=1)[:, :k]
  return np.take_along_axis(scores, order, 1), order


def _clustered(seed: int, num: int, num_queries: int, dim: int = 32, num_clusters: int = 50):
  """Unit vectors around random centres, like embeddings of a few thousand classes."""
  rng = np.random.default_rng(seed)
  centres = _unit_rows(rng.normal(size=(num_clusters, dim)))
  noise = 0.5 / np.sqrt(dim)
  gallery = centres[rng.integers(0, num_clusters, num)] + noise * rng.normal(size=(num, dim))
  queries = (centres[rng.integers(0, num_clusters, num_queries)]
             + noise * rng.normal(size=(num_queries, dim)))
  return _unit_rows(gallery), _unit_rows(queries)


@pytest.fixture(scope="module")
def tree_data():
  return _clustered(0, num=5000, num_queries=200)


@pytest.fixture(scope="module")
def tree_index(tree_data):
  gallery, _ = tree_data
  return ScannIndex.build(gallery)


def test_small_gallery_is_exact_brute_force():
  rng = np.random.default_rng(1)
  gallery = rng.normal(size=(300, 12)) * rng.uniform(0.5, 3, (300, 1))  # Not normalised.
  queries = rng.normal(size=(40, 12)) * 7
  index = ScannIndex.build(gallery)
  assert index.is_brute_force and index.count == 300 and index.dim == 12
  scores, indices = index.search(queries, 10)
  assert scores.shape == indices.shape == (40, 10)
  assert scores.dtype == np.float32 and indices.dtype == np.int64
  expected_scores, expected_indices = _numpy_top_k(queries, gallery, 10)
  np.testing.assert_allclose(scores, expected_scores, atol=1e-5)  # Cosine, not raw dot.
  np.testing.assert_array_equal(indices, expected_indices)


def test_tree_path_recall_on_clustered_points(tree_data, tree_index):
  gallery, queries = tree_data
  assert not tree_index.is_brute_force
  scores, indices = tree_index.search(queries)  # Default k = num_neighbors = 10.
  _, exact = _numpy_top_k(queries, gallery, 10)
  assert indices.shape == (200, 10)
  assert recall_vs_exact(indices, exact) >= 0.9
  assert np.all(np.diff(scores, axis=1) <= 1e-6)  # Best first.


def test_tree_path_recall_on_isotropic_points_with_more_leaves():
  """Isotropic Gaussians are ScaNN's hardest case (about 0.75 recall@10 at d=32 with the
  default quarter of leaves); probing half the leaves gets it back above 0.9."""
  rng = np.random.default_rng(2)
  gallery = _unit_rows(rng.normal(size=(5000, 32)))
  queries = _unit_rows(rng.normal(size=(200, 32)))
  leaves = resolved_tree_params(ScannConfig(), 5000)["num_leaves"]
  index = ScannIndex.build(gallery, ScannConfig(num_leaves_to_search=leaves // 2))
  _, indices = index.search(queries, 10)
  _, exact = _numpy_top_k(queries, gallery, 10)
  assert recall_vs_exact(indices, exact) >= 0.9


def test_k_above_reorder_returns_k_good_neighbours(tree_data, tree_index):
  gallery, queries = tree_data
  scores, indices = tree_index.search(queries[:50], 150)  # reorder is 100.
  assert indices.shape == (50, 150)
  assert np.all((indices >= 0) & (indices < 5000))
  assert np.all(np.isfinite(scores))
  _, exact = _numpy_top_k(queries[:50], gallery, 150)
  assert recall_vs_exact(indices, exact) >= 0.85


def test_single_query_vector(tree_data, tree_index):
  _, queries = tree_data
  scores, indices = tree_index.search(queries[3], 5)
  batch_scores, batch_indices = tree_index.search(queries[3:4], 5)
  assert indices.shape == (1, 5)
  np.testing.assert_array_equal(indices, batch_indices)
  np.testing.assert_array_equal(scores, batch_scores)


def test_resolved_tree_params():
  assert resolved_tree_params(ScannConfig(), 999) is None  # Below brute_force_below.
  assert resolved_tree_params(ScannConfig(), 10_000) == {
      "num_leaves": 100, "num_leaves_to_search": 25, "training_sample_size": 10_000}
  custom = ScannConfig(num_leaves=400, num_leaves_to_search=1000, training_sample_size=10**9,
                       brute_force_below=10)
  assert resolved_tree_params(custom, 300) is None  # 300 < 2 * 300 leaves.
  assert resolved_tree_params(custom, 1000) == {
      "num_leaves": 400, "num_leaves_to_search": 400, "training_sample_size": 1000}


@pytest.mark.parametrize("num", [300, 5000])
def test_save_load_round_trip_from_moved_directory(tmp_path, num):
  gallery, queries = _clustered(3, num=num, num_queries=64)
  config = ScannConfig(num_neighbors=7, reorder=50)
  index = ScannIndex.build(gallery, config)
  scores, indices = index.search(queries)

  index.save(tmp_path / "original")
  shutil.copytree(tmp_path / "original", tmp_path / "moved")
  shutil.rmtree(tmp_path / "original")  # Nothing may still point at the old path.
  loaded = ScannIndex.load(tmp_path / "moved")

  assert (loaded.dim, loaded.count, loaded.config) == (32, num, config)
  assert loaded.is_brute_force == index.is_brute_force == (num == 300)
  loaded_scores, loaded_indices = loaded.search(queries)
  np.testing.assert_array_equal(loaded_indices, indices)
  np.testing.assert_array_equal(loaded_scores, scores)
  with open(tmp_path / "moved" / MANIFEST) as f:
    manifest = json.load(f)
  assert manifest["dim"] == 32 and manifest["count"] == num
  assert manifest["config"]["reorder"] == 50 and manifest["scann_version"]


def test_load_without_manifest_fails_clearly(tmp_path):
  with pytest.raises(FileNotFoundError, match=MANIFEST):
    ScannIndex.load(tmp_path)


def test_clear_errors():
  rng = np.random.default_rng(4)
  gallery = rng.normal(size=(50, 8)).astype(np.float32)
  index = ScannIndex.build(gallery)

  with pytest.raises(ValueError, match="query dim 6 != index dim 8"):
    index.search(np.ones((2, 6)))
  with pytest.raises(ValueError, match="NaN"):
    index.search(np.full((1, 8), np.nan))
  with pytest.raises(ValueError, match="zero-norm"):
    index.search(np.zeros((1, 8)))
  with pytest.raises(ValueError, match=r"k must be in \[1, 50\]"):
    index.search(np.ones((1, 8)), 51)

  bad = gallery.copy()
  bad[7, 2] = np.nan
  with pytest.raises(ValueError, match="NaN or inf.*row 7"):
    ScannIndex.build(bad)
  bad = gallery.copy()
  bad[11] = 0
  with pytest.raises(ValueError, match="zero-norm.*row 11"):
    ScannIndex.build(bad)
  with pytest.raises(ValueError, match="2-D"):
    ScannIndex.build(gallery[None])
  with pytest.raises(ValueError, match="2-D"):
    ScannIndex.build(gallery[0])


def test_empty_query_batch():
  index = ScannIndex.build(np.eye(4))
  scores, indices = index.search(np.zeros((0, 4)), 2)
  assert scores.shape == indices.shape == (0, 2)
