"""Input checks and ScaNN's padding, on the helpers every searcher goes through."""

import numpy as np
import pytest

from mmalign.retrieval import vectors


def test_unit_rows_is_float32_c_contiguous_unit_and_leaves_input_alone():
  rng = np.random.default_rng(0)
  x = np.asfortranarray(rng.normal(size=(20, 6)) * rng.uniform(0.1, 9, (20, 1)))  # float64, F
  before = x.copy()
  rows = vectors.unit_rows(x, "gallery")
  assert rows.dtype == np.float32 and rows.flags.c_contiguous and rows.shape == (20, 6)
  np.testing.assert_allclose(np.linalg.norm(rows.astype(np.float64), axis=1), 1, atol=1e-6)
  np.testing.assert_allclose(rows, x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-6)
  np.testing.assert_array_equal(x, before)
  already = vectors.unit_rows(rows, "gallery")
  assert already is not rows  # Always a copy, even when nothing had to change.


def test_rows_whose_squares_overflow_float32_are_still_normalised():
  x = np.array([[3e30, 4e30], [1.0, 0.0]], np.float32)
  np.testing.assert_allclose(vectors.unit_rows(x, "x"), [[0.6, 0.8], [1.0, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_rows_are_named(bad_value):
  x = np.ones((30, 4), np.float32)
  x[[3, 17], 1] = bad_value
  with pytest.raises(ValueError, match=r"queries has NaN or inf in 2 row\(s\): rows \[3, 17\]"):
    vectors.unit_rows(x, "queries")


def test_many_bad_rows_are_listed_shortly():
  x = np.zeros((40, 3))
  with pytest.raises(ValueError, match=r"40 zero-norm row\(s\): rows \[0, 1, .*9, \.\.\.\]"):
    vectors.unit_rows(x, "embeddings")


def test_shape_dtype_and_width_errors():
  with pytest.raises(ValueError, match="2-D"):
    vectors.unit_rows(np.ones(3), "x")
  with pytest.raises(ValueError, match="real numbers"):
    vectors.unit_rows(np.array([["a"]]), "x")
  with pytest.raises(ValueError, match="queries has dim 5 but the index holds dim 4"):
    vectors.unit_rows(np.ones((2, 5)), "queries", dim=4)


@pytest.mark.parametrize("k", [0, -1, 2.5, True, None])
def test_k_must_be_a_positive_integer(k):
  with pytest.raises(ValueError, match="k must be a positive integer"):
    vectors.check_k(k)


def test_item_ids_checks():
  np.testing.assert_array_equal(vectors.item_ids(None, 3), [0, 1, 2])
  with pytest.raises(ValueError, match=r"distinct; repeated: \[5\]"):
    vectors.item_ids([5, 1, 5], 3)
  with pytest.raises(ValueError, match=r"negative at rows \[1\]"):
    vectors.item_ids([0, -1], 2)
  with pytest.raises(ValueError, match="one id per row"):
    vectors.item_ids([0, 1], 3)


def test_finish_marks_scann_padding_missing_never_item_zero():
  """ScaNN pads with position 0 and NaN; position 0 is a real item (id 40 here)."""
  ids = np.array([40, 41, 42], np.int64)
  scores = np.array([[0.9, 0.5, np.nan], [np.nan, np.nan, np.nan]], np.float32)
  positions = np.array([[2, 0, 0], [0, 0, 0]], np.uint32)
  out_scores, out_ids = vectors.finish(scores, positions, 5, ids)
  np.testing.assert_array_equal(out_ids, [[42, 40, -1, -1, -1], [-1] * 5])
  np.testing.assert_array_equal(out_scores[0, :2], np.float32([0.9, 0.5]))
  assert np.all(out_scores[0, 2:] == -np.inf) and np.all(out_scores[1] == -np.inf)
  assert out_ids.dtype == np.int64 and out_scores.dtype == np.float32


def test_finish_on_an_empty_index():
  out_scores, out_ids = vectors.finish(np.zeros((2, 0)), np.zeros((2, 0)), 3,
                                       np.zeros(0, np.int64))
  assert out_ids.shape == (2, 3) and np.all(out_ids == vectors.MISSING_ID)
  assert np.all(out_scores == vectors.MISSING_SCORE)
