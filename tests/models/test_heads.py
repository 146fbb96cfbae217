"""Heads on tiny shapes: outputs, values against numpy, dtypes, gradients, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmalign.models.heads import MLP, Classifier, Projection

B, DIM = 4, 6
X = jnp.asarray(np.random.default_rng(0).normal(size=(B, DIM)), jnp.float32)

HEADS = {"projection": Projection, "classifier": Classifier}
# name → (kwargs, output width); every head appears with a linear and an MLP body.
CASES = {
    "projection_linear": ("projection", dict(out_dim=5), 5),
    "projection_mlp": ("projection", dict(out_dim=5, hidden=(7,), l2_normalize=False), 5),
    "classifier_linear": ("classifier", dict(num_classes=3), 3),
    "classifier_mlp": ("classifier", dict(num_classes=3, hidden=(7, 4)), 3),
    "classifier_dropout": ("classifier", dict(num_classes=4, hidden=(7,), dropout=0.5), 4),
}


def _random_params(module, seed=0):
  """numpy-drawn parameters: non-zero biases make the numpy comparisons check them too."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), X)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.5, s.dtype), shapes)


def _gelu(x):  # flax's nn.gelu default: the tanh approximation.
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _reference(params, x, hidden_layers):
  """The MLP body in float64 numpy."""
  mlp = {k: {n: np.asarray(v, np.float64) for n, v in layer.items()}
         for k, layer in params["params"]["mlp"].items()}
  x = np.asarray(x, np.float64)
  for n in range(hidden_layers):
    x = _gelu(x @ mlp[f"hidden_{n}"]["kernel"] + mlp[f"hidden_{n}"]["bias"])
  return x @ mlp["out"]["kernel"] + mlp["out"].get("bias", 0.0)


@pytest.mark.parametrize("key", sorted(CASES))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_shape_dtype_and_values(key, dtype):
  """float32 output whatever the compute dtype; bfloat16 keeps float32 parameters."""
  name, kwargs, out_dim = CASES[key]
  module = HEADS[name](dtype=dtype, **kwargs)
  params = _random_params(module)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
  out = jax.jit(module.apply)(params, X)
  assert out.shape == (B, out_dim) and out.dtype == jnp.float32
  expected = _reference(params, X, len(kwargs.get("hidden", ())))
  if name == "projection" and kwargs.get("l2_normalize", True):
    expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
  tolerance = 1e-5 if dtype == jnp.float32 else 5e-2
  np.testing.assert_allclose(out, expected, rtol=tolerance, atol=tolerance)


def test_projection_has_no_bias_by_default_and_unit_rows():
  module = Projection(out_dim=5)
  params = module.init(jax.random.PRNGKey(0), X)  # The real initialisers, once.
  assert set(params["params"]["mlp"]["out"]) == {"kernel"}
  out = module.apply(params, X)
  np.testing.assert_allclose(jnp.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)
  # An all-zero input has no direction: zeros, not NaN.
  assert (module.apply(params, jnp.zeros((1, DIM))) == 0).all()


@pytest.mark.parametrize("key", sorted(CASES))
def test_gradient_reaches_every_parameter(key):
  name, kwargs, out_dim = CASES[key]
  module = HEADS[name](**kwargs)
  params = _random_params(module)
  weights = jnp.asarray(np.random.default_rng(1).normal(size=(B, out_dim)), jnp.float32)
  grads = jax.jit(jax.grad(lambda p: (module.apply(p, X) * weights).sum()))(params)
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    assert np.abs(np.asarray(grad)).max() > 0, jax.tree_util.keystr(path)


def test_dropout_only_when_training():
  name, kwargs, _ = CASES["classifier_dropout"]
  module = HEADS[name](**kwargs)
  params = _random_params(module)
  apply = jax.jit(module.apply, static_argnames="train")
  evaluation = apply(params, X)
  np.testing.assert_array_equal(apply(params, X, train=False), evaluation)
  rngs = {"dropout": jax.random.PRNGKey(3)}
  assert not np.allclose(apply(params, X, train=True, rngs=rngs), evaluation)


def test_mlp_without_hidden_layers_is_linear():
  module = MLP(3)
  params = _random_params(module)
  np.testing.assert_allclose(module.apply(params, 2 * X) - module.apply(params, X),
                             module.apply(params, X) - module.apply(params, 0 * X), atol=1e-5)
