"""Every registered searcher, through the same API, against float64 numpy brute force.

The traps of the retrieval issue are tested for each searcher: missing results come back
as id -1 / score -inf (never item 0), NaN/inf rows are refused by row number, k above
the gallery is clamped to its size, and empty and one-item galleries work.
"""

import numpy as np
import pytest

from mmalign.registry import UnknownNameError
from mmalign.retrieval import searchers
from mmalign.retrieval.exact_index import ExactConfig
from mmalign.retrieval.scann_index import ScannConfig
from tests.retrieval.reference import clustered, cosine, numpy_top_k

NAMES = ("scann", "exact")
# Small galleries: ScaNN searches these by brute force, so both must be exact.
EXACT_ATOL = 1e-5


def test_registry_lists_both_and_names_unknown():
  assert searchers.SEARCHERS.names() == ["exact", "scann"]
  with pytest.raises(UnknownNameError, match="retrieval.searcher.*registered: exact, scann"):
    searchers.build_index("faiss", np.eye(3))


@pytest.mark.parametrize("name", NAMES)
def test_batched_and_single_queries_match_numpy(name):
  rng = np.random.default_rng(1)
  gallery = rng.normal(size=(300, 12)) * rng.uniform(0.5, 3, (300, 1))  # Not normalised.
  queries = np.asfortranarray(rng.normal(size=(40, 12)) * 7)  # float64, Fortran order.
  ids = rng.permutation(10_000)[:300]
  index = searchers.build_index(name, gallery, ids=ids)
  scores, found = index.search(queries, 10)
  assert scores.shape == found.shape == (40, 10)
  assert scores.dtype == np.float32 and found.dtype == np.int64
  expected_scores, expected_ids = numpy_top_k(queries, gallery, 10, ids)
  np.testing.assert_allclose(scores, expected_scores, atol=EXACT_ATOL)  # Cosine, not dot.
  np.testing.assert_array_equal(found, expected_ids)
  one_scores, one_ids = index.search(queries[7], 10)  # [d] -> [k]
  assert one_ids.shape == (10,)
  np.testing.assert_array_equal(one_ids, expected_ids[7])
  np.testing.assert_allclose(one_scores, expected_scores[7], atol=EXACT_ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_default_k_is_the_configs(name):
  config = {"scann": ScannConfig(num_neighbors=3), "exact": ExactConfig(num_neighbors=3)}[name]
  index = searchers.build_index(name, np.random.default_rng(2).normal(size=(50, 4)), config)
  assert index.search(np.ones((2, 4)))[1].shape == (2, 3)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", [7, 8, 20])
def test_k_above_gallery_size_is_clamped(name, k):
  rng = np.random.default_rng(3)
  gallery, queries = rng.normal(size=(7, 5)), rng.normal(size=(4, 5))
  index = searchers.build_index(name, gallery)
  for single in (False, True):
    scores, found = index.search(queries[0] if single else queries, k)
    scores, found = np.atleast_2d(scores), np.atleast_2d(found)
    expected_scores, expected_ids = numpy_top_k(queries[:1] if single else queries, gallery, k)
    np.testing.assert_array_equal(found, expected_ids[:, :7])
    np.testing.assert_allclose(scores, expected_scores[:, :7], atol=EXACT_ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_one_item_gallery(name):
  gallery = np.array([[3.0, 4.0]])
  index = searchers.build_index(name, gallery, ids=[0])
  scores, found = index.search(np.array([[1.0, 0.0], [0.0, -2.0]]), 3)
  np.testing.assert_array_equal(found, [[0], [0]])  # k = 3 clamped to the one item.
  np.testing.assert_allclose(scores[:, 0], [0.6, -0.8], atol=EXACT_ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_empty_gallery_returns_empty_rows_and_can_be_filled(name):
  index = searchers.build_index(name, np.zeros((0, 4)))
  assert index.count == 0 and index.dim == 4
  scores, found = index.search(np.ones((2, 4)), 3)
  assert found.shape == scores.shape == (2, 0)
  scores, found = index.search(np.ones(4), 2)
  assert found.tolist() == []
  index.upsert([12], [[0.0, 0.0, 0.0, 2.0]])
  scores, found = index.search(np.array([[0.0, 0.0, 1.0, 1.0]]), 2)
  np.testing.assert_array_equal(found, [[12]])
  np.testing.assert_allclose(scores[0, 0], np.sqrt(0.5), atol=EXACT_ATOL)


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_and_degenerate_inputs_are_refused_by_row(name):
  rng = np.random.default_rng(4)
  gallery = rng.normal(size=(50, 8)).astype(np.float32)
  index = searchers.build_index(name, gallery)
  queries = rng.normal(size=(6, 8))
  queries[[1, 4], 2] = [np.nan, np.inf]
  with pytest.raises(ValueError, match=r"queries has NaN or inf in 2 row\(s\): rows \[1, 4\]"):
    index.search(queries)  # Batched: ScaNN alone would return garbage for these rows.
  with pytest.raises(ValueError, match=r"queries has NaN or inf.*rows \[0\]"):
    index.search(queries[1])  # Single.
  with pytest.raises(ValueError, match=r"zero-norm row\(s\): rows \[0\]"):
    index.search(np.zeros(8))
  with pytest.raises(ValueError, match="queries has dim 6 but the index holds dim 8"):
    index.search(np.ones((2, 6)))
  with pytest.raises(ValueError, match="k must be a positive integer"):
    index.search(np.ones((1, 8)), 0)

  bad = gallery.copy()
  bad[7, 2] = np.nan
  bad[30, 0] = -np.inf
  with pytest.raises(ValueError, match=r"embeddings has NaN or inf.*rows \[7, 30\]"):
    searchers.build_index(name, bad)
  bad = gallery.copy()
  bad[11] = 0
  with pytest.raises(ValueError, match=r"zero-norm.*rows \[11\]"):
    searchers.build_index(name, bad)
  with pytest.raises(ValueError, match="2-D"):
    searchers.build_index(name, gallery[None])
  with pytest.raises(ValueError, match=r"distinct; repeated: \[3\]"):
    searchers.build_index(name, gallery[:3], ids=[3, 1, 3])
  with pytest.raises(ValueError, match=r"NaN or inf.*rows \[1\]"):
    index.upsert([100, 101], np.stack([gallery[0], np.full(8, np.nan)]))
  assert index.count == 50  # A refused upsert changes nothing.


@pytest.mark.parametrize("name", NAMES)
def test_empty_query_batch(name):
  index = searchers.build_index(name, np.eye(4))
  scores, found = index.search(np.zeros((0, 4)), 2)
  assert scores.shape == found.shape == (0, 2)


@pytest.mark.parametrize("name", NAMES)
def test_tree_sized_gallery_finds_true_neighbours(name):
  """On 5000 clustered points ScaNN uses its tree; every id it returns must carry its
  true cosine (so a padded id 0 would be caught), and recall must be high."""
  gallery, queries = clustered(0, num=5000, num_queries=100)
  index = searchers.build_index(name, gallery)
  scores, found = index.search(queries, 10)
  _, exact = numpy_top_k(queries, gallery, 10)
  assert np.all(found >= 0)
  true = np.take_along_axis(cosine(queries, gallery), found, 1)
  np.testing.assert_allclose(scores, true, atol=1e-4)
  assert np.all(np.diff(scores, axis=1) <= 1e-6)  # Best first.
  hits = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found.tolist(), exact.tolist())])
  assert hits >= (1.0 if name == "exact" else 0.95)
