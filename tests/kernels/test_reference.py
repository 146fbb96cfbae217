"""The oracle against float64 numpy/scipy, written from the formulas independently."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from kernels import reference


def _inputs(n, m, d=8, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(m, d)).astype(np.float32)


def _numpy_infonce(text, image, scale, positives):
  logits = scale * text.astype(np.float64) @ image.astype(np.float64).T  # [N, M]
  n, m = logits.shape
  rows = np.arange(n)
  row_ce = logsumexp(logits, axis=1) - logits[rows, positives]
  column_ce = []
  for j in range(m):
    members = positives == j
    if members.any():
      column_ce.append(logsumexp(logits[:, j]) - logsumexp(logits[members, j]))
  return 0.5 * (row_ce.mean() + np.mean(column_ce))


def _numpy_sigmoid(text, image, scale, bias, positives):
  logits = scale * text.astype(np.float64) @ image.astype(np.float64).T + bias
  signs = -np.ones_like(logits)
  signs[np.arange(len(text)), positives] = 1.0
  return np.logaddexp(0.0, -signs * logits).sum() / len(text)  # −log σ(x) = log(1 + e^−x).


@pytest.mark.parametrize("scale", [1.0, 10.0, 100.0])
def test_infonce_diagonal(scale):
  text, image = _inputs(12, 12)
  got = reference.infonce_loss(text, image, jnp.float32(scale))
  np.testing.assert_allclose(got, _numpy_infonce(text, image, scale, np.arange(12)), rtol=1e-5)
  assert got.dtype == jnp.float32


def test_infonce_multi_positive_and_empty_columns():
  text, image = _inputs(10, 7, seed=1)
  positives = np.array([0, 0, 0, 2, 2, 3, 5, 5, 6, 0])  # Images 1 and 4 have no caption.
  got = reference.infonce_loss(text, image, jnp.float32(5.0), jnp.asarray(positives))
  np.testing.assert_allclose(got, _numpy_infonce(text, image, 5.0, positives), rtol=1e-5)


def test_infonce_explicit_diagonal_equals_default():
  text, image = _inputs(9, 9, seed=2)
  np.testing.assert_allclose(reference.infonce_loss(text, image, 3.0, jnp.arange(9)),
                             reference.infonce_loss(text, image, 3.0), rtol=1e-6)


def test_infonce_needs_square_without_positives():
  text, image = _inputs(4, 5)
  with pytest.raises(ValueError, match="N == M"):
    reference.infonce_loss(text, image, 1.0)


@pytest.mark.parametrize("positives", [None, np.array([1, 1, 0, 4, 4, 4])])
def test_sigmoid(positives):
  text, image = _inputs(6, 6 if positives is None else 5, seed=3)
  expected_positives = np.arange(6) if positives is None else positives
  got = reference.sigmoid_loss(text, image, jnp.float32(10.0), jnp.float32(-10.0),
                               None if positives is None else jnp.asarray(positives))
  np.testing.assert_allclose(
      got, _numpy_sigmoid(text, image, 10.0, -10.0, expected_positives), rtol=1e-5)


def test_bfloat16_inputs_give_float32():
  text, image = _inputs(8, 8, seed=4)
  got = reference.infonce_loss(jnp.asarray(text, jnp.bfloat16), jnp.asarray(image, jnp.bfloat16),
                               jnp.asarray(2.0, jnp.bfloat16))
  assert got.dtype == jnp.float32
  rounded = [np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32) for x in (text, image)]
  np.testing.assert_allclose(got, _numpy_infonce(*rounded, 2.0, np.arange(8)), rtol=1e-5)


def test_correspondence():
  text, image = _inputs(6, 9, seed=5)
  target = np.random.default_rng(6).normal(size=(6, 9))
  expected = np.square(target - text.astype(np.float64) @ image.astype(np.float64).T).sum()
  np.testing.assert_allclose(reference.correspondence_loss(text, image, target), expected,
                             rtol=1e-5)


def test_top_k_matches_argsort():
  queries, keys = _inputs(5, 30, seed=7)
  scores = queries.astype(np.float64) @ keys.astype(np.float64).T
  values, indices = reference.top_k(queries, keys, 7)
  expected = np.argsort(-scores, axis=1, kind="stable")[:, :7]
  assert indices.dtype == jnp.int32 and values.dtype == jnp.float32
  np.testing.assert_array_equal(indices, expected)
  np.testing.assert_allclose(values, np.take_along_axis(scores, expected, 1), rtol=1e-5)
  with pytest.raises(ValueError, match="k must be"):
    reference.top_k(queries, keys, 31)
