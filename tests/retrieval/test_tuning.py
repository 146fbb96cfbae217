"""tune() reaches its recall target on a small gallery, checked by numpy brute force.

Whether a point meets the target is a recall measurement, so these tests never depend
on timing; only which of the qualifying points is fastest does.
"""

import numpy as np
import pytest

from mmalign import utils
from mmalign.retrieval import searchers, tuning
from mmalign.retrieval.manifest import Provenance
from mmalign.retrieval.scann_index import ScannConfig, ScannIndex
from tests.retrieval.reference import numpy_top_k, recall, unit_rows


@pytest.fixture(scope="module")
def hard_data():
  """Isotropic points: the default quarter of the leaves gives well under 0.95."""
  rng = np.random.default_rng(7)
  gallery = unit_rows(rng.normal(size=(4000, 24)))
  tune_queries = unit_rows(rng.normal(size=(150, 24)))
  test_queries = unit_rows(rng.normal(size=(150, 24)))
  return gallery, tune_queries, test_queries


def test_tune_from_embeddings_reaches_target_and_records_it(hard_data, tmp_path):
  gallery, tune_queries, test_queries = hard_data
  ids = np.arange(4000) + 1000
  index, record = tuning.tune(gallery, tune_queries, target_recall=0.95, k=10, ids=ids,
                              provenance=Provenance(split="test"), repeats=1)
  chosen = record["chosen"]
  assert record["met"] and record["measured_recall"] >= 0.95
  assert index.params["tree"]["num_leaves"] == chosen["num_leaves"]
  assert index.params["tree"]["num_leaves_to_search"] == chosen["leaves_to_search"]
  assert index.params["reorder"] == chosen["reorder"]
  assert {p["num_leaves"] for p in record["sweep"]} == {32, 63, 126}  # sqrt(n) x 0.5/1/2.
  # The recorded recall is what an independent count gives for the tuned index.
  _, exact = numpy_top_k(tune_queries, gallery, 10, ids)
  assert recall(index.search(tune_queries, 10)[1], exact) == pytest.approx(
      record["measured_recall"])
  # It generalises to other held-out queries (with a little slack).
  _, exact = numpy_top_k(test_queries, gallery, 10, ids)
  assert recall(index.search(test_queries, 10)[1], exact) >= 0.92
  # And it is saved in the manifest; the loaded index searches at the tuned point.
  loaded = searchers.load_index(index.save(tmp_path / "ix"))
  assert loaded.tuning == record and loaded.provenance.split == "test"
  np.testing.assert_array_equal(loaded.search(tune_queries, 10)[1],
                                index.search(tune_queries, 10)[1])


def test_tune_an_existing_index_changes_only_query_knobs(hard_data):
  gallery, tune_queries, _ = hard_data
  index = ScannIndex.build(gallery, ScannConfig(num_leaves_to_search=1, reorder=10))
  _, exact = numpy_top_k(tune_queries, gallery, 10)
  assert recall(index.search(tune_queries, 10)[1], exact) < 0.5
  tuned, record = tuning.tune(index, tune_queries, target_recall=0.9, k=10, gallery=gallery,
                              repeats=1)
  assert tuned is index and record["met"]
  assert recall(index.search(tune_queries, 10)[1], exact) >= 0.9
  with pytest.raises(ValueError, match="needs gallery"):
    tuning.tune(index, tune_queries)


def test_brute_force_gallery_needs_no_tuning():
  rng = np.random.default_rng(0)
  index, record = tuning.tune(rng.normal(size=(200, 8)), rng.normal(size=(20, 8)), k=5)
  assert index.is_brute_force and record["met"] and record["measured_recall"] == 1.0


def test_choose_prefers_fastest_qualifying_else_most_accurate():
  points = [tuning.SweepPoint(10, 1, 20, 0.80, 900.0), tuning.SweepPoint(10, 4, 20, 0.96, 300.0),
            tuning.SweepPoint(10, 3, 50, 0.95, 400.0), tuning.SweepPoint(10, 9, 50, 0.99, 100.0)]
  assert tuning.choose(points, 0.95) == (points[2], True)
  assert tuning.choose(points, 0.995) == (points[3], False)


def test_exact_neighbours_and_recall_against_numpy():
  rng = np.random.default_rng(1)
  gallery, queries = unit_rows(rng.normal(size=(500, 6))), unit_rows(rng.normal(size=(30, 6)))
  found = tuning.exact_neighbours(gallery, queries, 7, chunk=8)
  _, expected = numpy_top_k(queries, gallery, 7)
  np.testing.assert_array_equal(np.sort(found, 1), np.sort(expected, 1))
  half = expected.copy()
  half[:, 3:] = -1  # Missing slots never count as hits.
  assert tuning.recall_at_k(half, expected) == pytest.approx(3 / 7)


def test_leaf_ladder():
  assert tuning.leaf_ladder(1) == [1]
  ladder = tuning.leaf_ladder(1000)
  assert ladder[0] == 1 and ladder[-1] == 1000 and ladder == sorted(set(ladder))
  assert len(ladder) >= 10


def test_batched_qps_warms_up_then_keeps_the_fastest_run(monkeypatch):
  """Timing is faked: runs take 4, 2 and 3 s, so QPS must be 100 queries / 2 s."""
  ticks = iter([0.0, 4.0, 10.0, 12.0, 20.0, 23.0])
  monkeypatch.setattr(utils.time, "perf_counter", lambda: next(ticks))
  calls = []

  def search(queries):
    calls.append(len(queries))
    return [[row] for row in range(len(queries))]

  qps, found = tuning.batched_qps(search, np.zeros((100, 4), np.float32), repeats=3)
  assert calls == [8, 100, 100, 100]
  assert qps == pytest.approx(50.0)
  assert isinstance(found, np.ndarray) and found.shape == (100, 1)
