"""Orthogonal Procrustes against scipy, on exact rotations, and with unequal widths."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from mmalign.alignment import fit_procrustes_map, orthogonal_procrustes


def _random_orthogonal(d: int, rng) -> np.ndarray:
  q, r = np.linalg.qr(rng.normal(size=(d, d)))
  return q * np.sign(np.diag(r))  # Haar-distributed, determinant ±1.


def test_matches_scipy():
  rng = np.random.default_rng(0)
  source, target = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
  expected, _ = scipy.linalg.orthogonal_procrustes(source, target)
  np.testing.assert_allclose(orthogonal_procrustes(source, target), expected, atol=1e-12)


def test_recovers_a_random_rotation_exactly():
  rng = np.random.default_rng(1)
  rotation = _random_orthogonal(6, rng)
  source = rng.normal(size=(40, 6))
  w = orthogonal_procrustes(source, source @ rotation)
  np.testing.assert_allclose(w, rotation, atol=1e-12)


def test_result_is_orthogonal():
  rng = np.random.default_rng(2)
  w = orthogonal_procrustes(rng.normal(size=(30, 5)), rng.normal(size=(30, 5)))
  np.testing.assert_allclose(w.T @ w, np.eye(5), atol=1e-12)
  np.testing.assert_allclose(w @ w.T, np.eye(5), atol=1e-12)


def test_centred_map_recovers_a_rotation_about_shifted_means():
  rng = np.random.default_rng(3)
  rotation = _random_orthogonal(4, rng)
  source = rng.normal(size=(25, 4)) + 5.0  # Far from the origin, as ReLU features are.
  target = (source - 5.0) @ rotation - 2.0
  fitted = fit_procrustes_map(source, target)
  np.testing.assert_allclose(fitted.rotation, rotation, atol=1e-12)
  held_out = rng.normal(size=(7, 4)) + 5.0
  np.testing.assert_allclose(fitted.apply(held_out), (held_out - 5.0) @ rotation - 2.0,
                             atol=1e-12)
  uncentred = fit_procrustes_map(source, target, center=False)
  np.testing.assert_array_equal(uncentred.source_mean, np.zeros(4))
  assert np.abs(uncentred.rotation - rotation).max() > 1e-2  # The shift spoils it.


def test_wider_source_equals_zero_padding_the_target():
  rng = np.random.default_rng(4)
  source, target = rng.normal(size=(30, 6)), rng.normal(size=(30, 4))
  w = orthogonal_procrustes(source, target)  # [6, 4]
  assert w.shape == (6, 4)
  np.testing.assert_allclose(w.T @ w, np.eye(4), atol=1e-12)
  padded, _ = scipy.linalg.orthogonal_procrustes(source, np.pad(target, [(0, 0), (0, 2)]))
  np.testing.assert_allclose(w, padded[:, :4], atol=1e-10)


def test_narrower_source_has_orthonormal_rows():
  rng = np.random.default_rng(5)
  w = orthogonal_procrustes(rng.normal(size=(30, 3)), rng.normal(size=(30, 5)))
  assert w.shape == (3, 5)
  np.testing.assert_allclose(w @ w.T, np.eye(3), atol=1e-12)


def test_accepts_jax_arrays():
  rng = np.random.default_rng(6)
  source, target = rng.normal(size=(20, 4)), rng.normal(size=(20, 4))
  fitted = fit_procrustes_map(jnp.asarray(source, jnp.float32), jnp.asarray(target, jnp.float32))
  expected, _ = scipy.linalg.orthogonal_procrustes(source - source.mean(0),
                                                   target - target.mean(0))
  np.testing.assert_allclose(fitted.rotation, expected, atol=1e-5)


def test_bad_inputs_raise_clear_errors():
  rng = np.random.default_rng(7)
  with pytest.raises(ValueError, match="paired rows"):
    orthogonal_procrustes(rng.normal(size=(10, 3)), rng.normal(size=(9, 3)))
  with pytest.raises(ValueError, match="paired rows"):
    fit_procrustes_map(rng.normal(size=(10, 3)), rng.normal(size=(9, 3)))
  with pytest.raises(ValueError, match="2-D"):
    orthogonal_procrustes(rng.normal(size=10), rng.normal(size=10))
  with pytest.raises(ValueError, match="at least one pair"):
    orthogonal_procrustes(np.zeros((0, 3)), np.zeros((0, 3)))
  with pytest.raises(ValueError, match="NaN"):
    orthogonal_procrustes(np.full((4, 2), np.nan), np.ones((4, 2)))
  fitted = fit_procrustes_map(rng.normal(size=(10, 3)), rng.normal(size=(10, 3)))
  with pytest.raises(ValueError, match="width 3"):
    fitted.apply(np.ones((2, 4)))
