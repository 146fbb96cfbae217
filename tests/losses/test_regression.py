"""The regression loss against numpy: values, gradients, and a fixed target side."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmalign.errors import UsageError
from mmalign.losses.contrastive import LOSSES
from mmalign.losses.regression import regression
from tests.finite_differences import numeric_gradient

N, D = 5, 3


def _reference(source, target, metric) -> float:
  source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
  if metric == "mse":
    return float(np.mean(np.sum((source - target) ** 2, axis=1)))
  cos = np.sum(source * target, axis=1) / (np.linalg.norm(source, axis=1)
                                            * np.linalg.norm(target, axis=1))
  return float(np.mean(1.0 - cos))


def _reference_source_gradient(source, target, metric) -> np.ndarray:
  """d/ds of the reference: 2 (s − t) / n, or −(t̂ − (ŝ·t̂) ŝ) / (n ‖s‖) for cosine."""
  source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
  if metric == "mse":
    return 2 * (source - target) / N
  norm = np.linalg.norm(source, axis=1, keepdims=True)
  s_hat, t_hat = source / norm, target / np.linalg.norm(target, axis=1, keepdims=True)
  cos = np.sum(s_hat * t_hat, axis=1, keepdims=True)
  return -(t_hat - cos * s_hat) / (N * norm)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(N, D)).astype(np.float32),
          rng.normal(size=(N, D)).astype(np.float32))


@pytest.mark.parametrize("metric", ["mse", "cosine"])
@pytest.mark.parametrize("direction", ["text_to_image", "image_to_text"])
def test_value_and_gradients_match_reference(metric, direction):
  text, image = _inputs(1)
  source, target = (text, image) if direction == "text_to_image" else (image, text)
  loss, grads = jax.value_and_grad(regression, argnums=(0, 1))(
      jnp.asarray(text), jnp.asarray(image), 1.0, direction=direction, metric=metric)
  np.testing.assert_allclose(float(loss), _reference(source, target, metric), rtol=1e-5)
  source_grad, target_grad = grads if direction == "text_to_image" else grads[::-1]
  np.testing.assert_allclose(np.asarray(source_grad),
                             _reference_source_gradient(source, target, metric),
                             rtol=1e-5, atol=1e-6)
  # The target side is held fixed: exactly zero, not merely small.
  np.testing.assert_array_equal(np.asarray(target_grad), np.zeros((N, D)))


@pytest.mark.parametrize("metric", ["mse", "cosine"])
def test_analytic_reference_gradient_matches_finite_differences(metric):
  """Guards the hand-derived gradients the test above relies on."""
  source, target = (x.astype(np.float64) for x in _inputs(2))
  numeric = numeric_gradient(lambda s: _reference(s, target, metric), source)
  np.testing.assert_allclose(_reference_source_gradient(source, target, metric), numeric,
                             atol=1e-6)


def test_on_unit_rows_mse_is_twice_the_cosine_loss():
  text, image = _inputs(3)
  text = text / np.linalg.norm(text, axis=1, keepdims=True)
  image = image / np.linalg.norm(image, axis=1, keepdims=True)
  np.testing.assert_allclose(float(regression(text, image, 1.0, metric="mse")),
                             2 * float(regression(text, image, 1.0, metric="cosine")),
                             rtol=1e-5)


def test_matched_pairs_give_zero_loss_and_a_zero_row_gives_no_nan():
  text, _ = _inputs(4)
  assert float(regression(text, text, 1.0)) == 0.0
  assert float(regression(text, text, 1.0, metric="cosine")) < 1e-6
  zero = np.zeros((N, D), np.float32)
  grads = jax.grad(regression)(jnp.asarray(zero), jnp.asarray(text), 1.0, metric="cosine")
  assert np.isfinite(np.asarray(grads)).all()


def test_bf16_inputs_give_a_float32_loss():
  text, image = _inputs(5)
  loss = regression(jnp.asarray(text, jnp.bfloat16), jnp.asarray(image, jnp.bfloat16), 1.0)
  assert loss.dtype == jnp.float32


def test_bad_arguments_raise_clear_errors():
  text, image = _inputs()
  with pytest.raises(UsageError, match="loss.kwargs.direction"):
    regression(text, image, 1.0, direction="both")
  with pytest.raises(UsageError, match="loss.kwargs.metric"):
    regression(text, image, 1.0, metric="l1")
  with pytest.raises(ValueError, match="matched"):
    regression(text, image[:2], 1.0)


def test_registered_as_regression_and_ignores_extra_keywords():
  assert LOSSES.get("regression") is regression
  text, image = _inputs()
  plain = float(regression(text, image, 1.0))
  np.testing.assert_allclose(
      float(regression(text, image, 1.0, labels=np.arange(N), bias=-10.0, impl="auto",
                       block_kwargs={"block_size": 8})), plain)
