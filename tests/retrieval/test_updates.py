"""upsert / delete by id: after any sequence of updates, search equals brute force over the
items the index should now hold (for ScaNN's tree, probing every leaf and reordering all
candidates, so the comparison is exact)."""

import numpy as np
import pytest

from mmalign.retrieval import searchers
from mmalign.retrieval.scann_index import ScannConfig
from tests.retrieval.reference import clustered, numpy_top_k

CASES = [("exact", 300, None), ("scann", 300, None),
         ("scann", 3000, ScannConfig(num_leaves=20, num_leaves_to_search=20, reorder=3000))]


def _check(index, truth: dict, queries, k=10):
  """truth: {id: vector}; compares ids and scores with numpy over exactly those items."""
  ids = np.array(sorted(truth))
  gallery = np.stack([truth[i] for i in ids])
  assert index.count == len(ids) and sorted(index.ids.tolist()) == ids.tolist()
  scores, found = index.search(queries, k)
  expected_scores, expected_ids = numpy_top_k(queries, gallery, k, ids)
  np.testing.assert_array_equal(found, expected_ids)
  np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


@pytest.mark.parametrize("name, num, config", CASES)
def test_upserts_and_deletes_match_brute_force(name, num, config, tmp_path):
  gallery, queries = clustered(5, num=num + 200, num_queries=40, dim=16)
  extra, gallery = gallery[num:], gallery[:num]
  rng = np.random.default_rng(0)
  ids = rng.permutation(10 * num)[:num]
  index = searchers.build_index(name, gallery, config, ids=ids)
  truth = dict(zip(ids.tolist(), gallery))
  _check(index, truth, queries)

  # Delete the current best answers of some queries, plus the last-positioned item (the
  # swap-with-last corner case) and one item twice in the same call.
  doomed = set(index.search(queries[:5], 2)[1].ravel().tolist()) | {int(index.ids[-1])}
  index.delete(sorted(doomed) + [min(doomed)])
  for i in doomed:
    del truth[i]
  _check(index, truth, queries)

  # Upsert: move five kept items onto the queries themselves (updates), add new ones.
  moved = [int(i) for i in index.ids[:5]]
  new_ids = [10 * num + j for j in range(100)]
  index.upsert(moved + new_ids, np.concatenate([queries[10:15] * 3.0, extra[:100]]))
  truth.update(zip(moved, queries[10:15]))
  truth.update(zip(new_ids, extra[:100]))
  _check(index, truth, queries)
  _, found = index.search(queries[10:15], 1)
  np.testing.assert_array_equal(found[:, 0], moved)  # Each query finds its own item.

  # The updated state survives save and load; updates after loading work too.
  loaded = searchers.load_index(index.save(tmp_path / "ix"))
  _check(loaded, truth, queries)
  loaded.delete(new_ids[:50])
  loaded.upsert([new_ids[0]], extra[150:151])
  for i in new_ids[:50]:
    del truth[i]
  truth[new_ids[0]] = extra[150]
  _check(loaded, truth, queries)


@pytest.mark.parametrize("name", ["exact", "scann"])
def test_bad_updates_are_named_and_change_nothing(name):
  index = searchers.build_index(name, np.eye(4), ids=[10, 11, 12, 13])
  with pytest.raises(KeyError, match=r"not in the index: \[7, 99\]"):
    index.delete([7, 10, 99])
  with pytest.raises(ValueError, match=r"repeated: \[20\]"):
    index.upsert([20, 20], np.ones((2, 4)))
  with pytest.raises(ValueError, match="one id per row"):
    index.upsert([20], np.ones((2, 4)))
  with pytest.raises(ValueError, match="dim 3 but the index holds dim 4"):
    index.upsert([20], np.ones((1, 3)))
  assert index.ids.tolist() == [10, 11, 12, 13]
  np.testing.assert_array_equal(index.search(np.eye(4), 1)[1][:, 0], [10, 11, 12, 13])


def test_delete_everything_then_refill():
  index = searchers.build_index("scann", np.eye(3))
  index.delete([0, 1, 2])
  assert index.count == 0
  assert index.search(np.ones(3), 2)[1].tolist() == []  # k is clamped to the size.
  index.upsert([5], [[0.0, 1.0, 0.0]])
  assert index.search(np.ones(3), 2)[1].tolist() == [5]
