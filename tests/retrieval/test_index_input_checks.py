"""Caller mistakes at the `Index` API are refused with one-line UsageErrors, for every
searcher: ids that are not integers (1.7 must not delete item 1), k that is not a
positive int, k far above the index size (clamped, never padded: k = 10**12 must not
allocate 10**12 slots), and saved ids that are repeated or negative.
"""

import json
import os

import numpy as np
import pytest

from mmalign.errors import UsageError
from mmalign.retrieval import manifest as manifest_lib
from mmalign.retrieval import searchers
from mmalign.retrieval.manifest import IndexFileError

NAMES = ("scann", "exact")


def _index(name, count=7, dim=5):
  gallery = np.random.default_rng(0).normal(size=(count, dim))
  return searchers.build_index(name, gallery, ids=np.arange(count) + 10), gallery


def _one_line_usage_error(excinfo, *needles):
  message = str(excinfo.value)
  assert isinstance(excinfo.value, UsageError) and "\n" not in message
  for needle in needles:
    assert needle in message, message


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [[11.7], 11.0, [True], [np.True_], ["11"], [11, True],
                                 np.array([11.0]), [None]])
def test_delete_refuses_ids_that_are_not_integers(name, bad):
  index, _ = _index(name)
  with pytest.raises(UsageError) as excinfo:
    index.delete(bad)
  _one_line_usage_error(excinfo, "ids must be integers")
  assert index.ids.tolist() == list(range(10, 17))  # Nothing was deleted.


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [[20.5], [True], ["20"], np.array([20.0])])
def test_upsert_refuses_ids_that_are_not_integers(name, bad):
  index, _ = _index(name)
  with pytest.raises(UsageError) as excinfo:
    index.upsert(bad, np.ones((1, 5)))
  _one_line_usage_error(excinfo, "ids must be integers")
  assert index.count == 7


@pytest.mark.parametrize("name", NAMES)
def test_integer_ids_of_any_integer_type_still_work(name):
  index, _ = _index(name)
  index.delete(np.array([10], np.uint8))
  index.delete(np.int32(11))
  index.delete([])
  index.upsert(np.array([40], np.int16), np.ones((1, 5)))
  assert sorted(index.ids.tolist()) == [12, 13, 14, 15, 16, 40]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", [0, -3, 2.0, True, "5"])
def test_k_must_be_a_positive_int(name, k):
  index, _ = _index(name)
  with pytest.raises(UsageError) as excinfo:
    index.search(np.ones((2, 5)), k)
  _one_line_usage_error(excinfo, "k must be a positive integer")


@pytest.mark.parametrize("name", NAMES)
def test_k_above_the_index_size_is_clamped_not_padded(name):
  index, gallery = _index(name)
  queries = np.random.default_rng(1).normal(size=(3, 5))
  scores, found = index.search(queries, 10**12)
  assert scores.shape == found.shape == (3, 7)
  assert np.all(found >= 10) and np.all(np.isfinite(scores))
  for row in found:
    assert sorted(row.tolist()) == list(range(10, 17))  # Every item, once.
  one_scores, one_found = index.search(queries[0], 10**12)
  assert one_found.shape == (7,)
  np.testing.assert_array_equal(one_found, found[0])
  np.testing.assert_allclose(one_scores, scores[0], atol=1e-5)
  assert index.search(queries, 3)[1].shape == (3, 3)  # k <= size: unchanged.


@pytest.mark.parametrize("name", NAMES)
def test_an_empty_index_returns_empty_rows(name):
  index = searchers.build_index(name, np.zeros((0, 4)))
  scores, found = index.search(np.ones((2, 4)), 10**12)
  assert scores.shape == found.shape == (2, 0)
  assert index.search(np.ones(4), 3)[1].shape == (0,)


def _saved_with_ids(tmp_path, name, ids, rewrite_manifest):
  index, _ = _index(name)
  directory = index.save(tmp_path / "index")
  np.save(os.path.join(directory, "ids.npy"), np.asarray(ids, np.int64))
  if rewrite_manifest:  # Consistent checksums: only the ids themselves are wrong.
    with open(os.path.join(directory, manifest_lib.MANIFEST), encoding="utf-8") as f:
      fields = json.load(f)
    for key in ("format", "versions", "files"):
      fields.pop(key)
    manifest_lib.write(directory, fields)
  return directory


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("rewrite_manifest", [True, False])
@pytest.mark.parametrize("ids, culprit", [
    ([10, 11, 12, 11, 14, 15, 16], r"repeated: [11]"),
    ([10, 11, -1, 13, 14, 15, 16], r"negative at rows [2]"),
])
def test_load_refuses_repeated_and_negative_ids(tmp_path, name, rewrite_manifest, ids,
                                                culprit):
  directory = _saved_with_ids(tmp_path, name, ids, rewrite_manifest)
  with pytest.raises(IndexFileError) as excinfo:
    searchers.load_index(directory, verify=False)
  _one_line_usage_error(excinfo, "ids.npy", directory, culprit)
