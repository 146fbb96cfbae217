"""symmetric_infonce against a numpy/scipy reference, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from mmalign.losses.contrastive import LOSSES, symmetric_infonce
from tests.finite_differences import numeric_gradient

N, D, SCALE = 7, 5, 3.0


def _reference(text, image, scale) -> float:
  """½ (mean cross entropy of rows + of columns), targets on the diagonal."""
  logits = scale * np.asarray(text, np.float64) @ np.asarray(image, np.float64).T
  targets = np.arange(len(logits))
  rows = logsumexp(logits, axis=1) - logits[targets, targets]
  cols = logsumexp(logits.T, axis=1) - logits.T[targets, targets]
  return 0.5 * (rows.mean() + cols.mean())


def _inputs(seed=0, dtype=np.float64):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(N, D)).astype(dtype), rng.normal(size=(N, D)).astype(dtype))


@pytest.fixture
def x64():
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", previous)


def test_value_matches_reference_float32():
  text, image = _inputs(dtype=np.float32)
  got = symmetric_infonce(jnp.asarray(text), jnp.asarray(image), jnp.float32(SCALE))
  np.testing.assert_allclose(float(got), _reference(text, image, SCALE), rtol=1e-5)


def test_value_matches_reference_for_several_seeds(x64):
  for seed in range(3):
    text, image = _inputs(seed)
    got = symmetric_infonce(jnp.asarray(text), jnp.asarray(image), jnp.float64(SCALE))
    # The kernels accumulate in float32 whatever the input dtype.
    np.testing.assert_allclose(float(got), _reference(text, image, SCALE), rtol=1e-6)


def test_reference_differs_from_a_rows_only_loss():
  """Guards the reference: a rows-only loss would differ on asymmetric logits."""
  text, image = _inputs(1)
  logits = SCALE * text @ image.T
  rows_only = (logsumexp(logits, axis=1) - np.diag(logits)).mean()
  assert abs(_reference(text, image, SCALE) - rows_only) > 1e-3


def test_gradients_match_finite_differences(x64):
  text, image = _inputs(2)
  grads = jax.grad(symmetric_infonce, argnums=(0, 1, 2))(
      jnp.asarray(text), jnp.asarray(image), jnp.float64(SCALE))
  expected_text = numeric_gradient(lambda t: _reference(t, image, SCALE), text)
  expected_image = numeric_gradient(lambda i: _reference(text, i, SCALE), image)
  expected_scale = numeric_gradient(lambda s: _reference(text, image, s), SCALE)
  assert grads[0].dtype == jnp.float64
  np.testing.assert_allclose(np.asarray(grads[0]), expected_text, atol=1e-5)
  np.testing.assert_allclose(np.asarray(grads[1]), expected_image, atol=1e-5)
  np.testing.assert_allclose(float(grads[2]), float(expected_scale), atol=1e-5)
  assert np.abs(expected_text).max() > 1e-2  # The check is not vacuous.


def test_registered_as_infonce():
  assert LOSSES.get("infonce") is symmetric_infonce


def test_extra_keyword_arguments_are_ignored():
  text, image = _inputs(dtype=np.float32)
  plain = symmetric_infonce(text, image, SCALE)
  np.testing.assert_allclose(symmetric_infonce(text, image, SCALE, chunk_size=3), plain)


def test_aligned_orthogonal_embeddings_with_large_scale_give_near_zero_loss():
  emb = jnp.eye(N, D + N)  # Orthonormal rows.
  assert float(symmetric_infonce(emb, emb, 100.0)) < 1e-6


def test_random_embeddings_at_zero_scale_give_log_n():
  text, image = _inputs(dtype=np.float32)
  np.testing.assert_allclose(float(symmetric_infonce(text, image, 0.0)), np.log(N), rtol=1e-6)


def test_swapping_towers_gives_same_loss():
  text, image = _inputs(3, dtype=np.float32)
  np.testing.assert_allclose(float(symmetric_infonce(text, image, SCALE)),
                             float(symmetric_infonce(image, text, SCALE)), rtol=1e-6)
