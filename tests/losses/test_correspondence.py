"""The correspondence loss against a float64 numpy reference: values, gradients, targets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmalign.errors import UsageError
from mmalign.losses.contrastive import LOSSES
from mmalign.losses.correspondence import correspondence, correspondence_target
from tests.finite_differences import numeric_gradient

N, D = 6, 4
LABELS = np.array([0, 1, 0, 2, 1, 3])  # Two groups with two pairs each.


def _numpy_target(labels=None, soft=False) -> np.ndarray:
  if labels is None:
    return np.eye(N)
  a = (labels[:, None] == labels[None, :]).astype(np.float64)
  return a / a.sum(axis=1, keepdims=True) if soft else a


def _reference(text, image, a) -> float:
  """Σ_ij (A_ij − t_i·i_j)² / n in float64."""
  residual = a - np.asarray(text, np.float64) @ np.asarray(image, np.float64).T
  return float(np.sum(residual ** 2) / len(text))


def _reference_gradients(text, image, a) -> tuple[np.ndarray, np.ndarray]:
  """d/dT = −2/n (A − T Iᵀ) I and d/dI = −2/n (A − T Iᵀ)ᵀ T."""
  text, image = np.asarray(text, np.float64), np.asarray(image, np.float64)
  residual = a - text @ image.T  # [n, n]
  return -2 / N * residual @ image, -2 / N * residual.T @ text


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(N, D)).astype(np.float32),
          rng.normal(size=(N, D)).astype(np.float32))


@pytest.mark.parametrize("impl", ["reference", "xla_chunked"])
@pytest.mark.parametrize("target,soft", [("identity", False), ("labels", False),
                                         ("labels", True)])
def test_value_matches_reference(impl, target, soft):
  labels = LABELS if target == "labels" else None
  for seed in range(3):
    text, image = _inputs(seed)
    got = correspondence(jnp.asarray(text), jnp.asarray(image), jnp.float32(3.0),
                         labels=labels, target=target, soft=soft, impl=impl)
    # xla_chunked expands the square, so its float32 error is absolute, not relative.
    np.testing.assert_allclose(float(got), _reference(text, image, _numpy_target(labels, soft)),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("target,soft", [("identity", False), ("labels", False),
                                         ("labels", True)])
def test_gradients_match_analytic_reference(target, soft):
  labels = LABELS if target == "labels" else None
  text, image = _inputs(1)
  grads = jax.grad(correspondence, argnums=(0, 1, 2))(
      jnp.asarray(text), jnp.asarray(image), jnp.float32(3.0), labels=labels,
      target=target, soft=soft)
  expected_text, expected_image = _reference_gradients(text, image,
                                                       _numpy_target(labels, soft))
  np.testing.assert_allclose(np.asarray(grads[0]), expected_text, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(grads[1]), expected_image, rtol=1e-5, atol=1e-5)
  assert float(grads[2]) == 0.0  # The scale is unused.
  assert np.abs(expected_text).max() > 1e-1  # The check is not vacuous.


def test_analytic_reference_gradient_matches_finite_differences():
  """Guards the hand-derived gradient the test above relies on."""
  text, image = (x.astype(np.float64) for x in _inputs(2))
  a = _numpy_target(LABELS, soft=True)
  expected_text, _ = _reference_gradients(text, image, a)
  numeric = numeric_gradient(lambda t: _reference(t, image, a), text)
  np.testing.assert_allclose(expected_text, numeric, atol=1e-6)


def test_labels_target_marks_every_pair_of_a_group():
  a = np.asarray(correspondence_target(N, jnp.asarray(LABELS), target="labels"))
  np.testing.assert_array_equal(a, _numpy_target(LABELS))
  assert a[0, 2] == a[2, 0] == 1.0 and a[0, 1] == 0.0
  soft = np.asarray(correspondence_target(N, jnp.asarray(LABELS), target="labels", soft=True))
  np.testing.assert_allclose(soft.sum(axis=1), np.ones(N), rtol=1e-6)


def test_labels_target_with_distinct_labels_is_the_identity():
  """One example per group, as the trainer's batches hold: "labels" equals "identity"."""
  text, image = _inputs(3)
  distinct = np.arange(N) * 7
  np.testing.assert_allclose(
      float(correspondence(text, image, 1.0, labels=distinct, target="labels", soft=True)),
      float(correspondence(text, image, 1.0)), rtol=1e-6)


def test_labels_are_ignored_by_the_identity_target():
  text, image = _inputs(4)
  np.testing.assert_allclose(float(correspondence(text, image, 1.0, labels=LABELS)),
                             float(correspondence(text, image, 1.0)), rtol=1e-6)


def test_orthonormal_pairs_give_zero_loss():
  emb = jnp.eye(N, N + 2)  # Unit rows, mutually orthogonal: T·Iᵀ = I.
  assert float(correspondence(emb, emb, 10.0)) < 1e-10


def test_works_under_jit_with_traced_labels():
  text, image = _inputs(5)
  jitted = jax.jit(lambda t, i, labels: correspondence(t, i, 1.0, labels=labels,
                                                       target="labels"))
  np.testing.assert_allclose(float(jitted(text, image, LABELS)),
                             _reference(text, image, _numpy_target(LABELS)), rtol=1e-5)


def test_bad_arguments_raise_clear_errors():
  text, image = _inputs()
  with pytest.raises(UsageError, match="loss.kwargs.target"):
    correspondence(text, image, 1.0, target="diagonal")
  with pytest.raises(ValueError, match="needs labels"):
    correspondence(text, image, 1.0, target="labels")
  with pytest.raises(ValueError, match="shape"):
    correspondence(text, image, 1.0, labels=LABELS[:3], target="labels")
  with pytest.raises(ValueError, match="pairs text i with image i"):
    correspondence(text, image[:3], 1.0)


def test_contrastive_block_sizes_do_not_reach_the_untiled_kernel():
  text, image = _inputs()
  np.testing.assert_allclose(
      float(correspondence(text, image, 1.0, impl="xla_chunked", block_kwargs={"block_size": 2})),
      float(correspondence(text, image, 1.0, impl="reference")), rtol=1e-5)


def test_registered_as_correspondence_and_ignores_extra_keywords():
  assert LOSSES.get("correspondence") is correspondence
  text, image = _inputs()
  np.testing.assert_allclose(float(correspondence(text, image, 1.0, bias=-10.0, chunk=3)),
                             float(correspondence(text, image, 1.0)))
