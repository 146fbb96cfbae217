"""Tiled XLA kernels against the reference: values and gradients, awkward shapes, bf16."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import reference, xla_chunked


def _inputs(n, m, d=8, seed=0, dtype=jnp.float32):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return (jax.random.normal(k1, (n, d)).astype(dtype),
          jax.random.normal(k2, (m, d)).astype(dtype))


def _assert_trees_close(got, expected, rtol):
  """Each leaf within rtol of the reference, relative to the leaf's largest entry."""
  for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    g, e = np.asarray(g, np.float64), np.asarray(e, np.float64)
    assert g.shape == e.shape
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol * max(np.abs(e).max(), 1e-6))


# (N, M, block, positives): square, rectangular both ways, blocks that do not divide,
# a block larger than M, and multi-positive columns with some images left empty.
CASES = {
    "square_exact": (32, 32, 16, "diagonal"),
    "square_ragged": (37, 37, 16, "diagonal"),
    "wide_ragged": (37, 53, 16, "random"),
    "tall_ragged": (53, 37, 16, "random"),
    "block_above_m": (20, 11, 64, "random"),
    "shared_images": (12, 8, 3, "shared"),
}


def _positives(kind, n, m):
  if kind == "diagonal":
    return None
  if kind == "shared":  # Images 0 and 3 each have several captions; 5, 6, 7 have none.
    return jnp.array([0, 0, 0, 1, 2, 3, 3, 3, 3, 4, 0, 1])[:n]
  return jax.random.randint(jax.random.PRNGKey(n * m), (n,), 0, m)


@pytest.mark.parametrize("case", CASES)
def test_infonce_values_and_gradients(case):
  n, m, block, kind = CASES[case]
  text, image = _inputs(n, m)
  positives = _positives(kind, n, m)
  scale = jnp.float32(7.0)
  chunked = functools.partial(xla_chunked.infonce_loss, block_size=block)
  grad = lambda fn: jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))(
      text, image, scale, positives)
  _assert_trees_close(grad(chunked), grad(reference.infonce_loss), rtol=2e-5)


@pytest.mark.parametrize("case", ["square_ragged", "wide_ragged", "shared_images"])
def test_sigmoid_values_and_gradients(case):
  n, m, block, kind = CASES[case]
  text, image = _inputs(n, m, seed=1)
  positives = _positives(kind, n, m)
  args = (text, image, jnp.float32(5.0), jnp.float32(-4.0), positives)
  chunked = functools.partial(xla_chunked.sigmoid_loss, block_size=block)
  grad = lambda fn: jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))(*args)
  _assert_trees_close(grad(chunked), grad(reference.sigmoid_loss), rtol=2e-5)


def test_large_logits_stay_finite():
  """s = 100 on unnormalised d=64 inputs: logits in the thousands, no overflow."""
  text, image = _inputs(37, 53, d=64, seed=2)
  positives = _positives("random", 37, 53)
  scale = jnp.float32(100.0)
  for chunked, ref, args in [
      (xla_chunked.infonce_loss, reference.infonce_loss, (text, image, scale, positives)),
      (xla_chunked.sigmoid_loss, reference.sigmoid_loss,
       (text, image, scale, jnp.float32(-10.0), positives))]:
    argnums = tuple(range(len(args) - 1))
    got = jax.jit(jax.value_and_grad(functools.partial(chunked, block_size=16), argnums))(*args)
    _assert_trees_close(got, jax.jit(jax.value_and_grad(ref, argnums))(*args), rtol=1e-4)


def test_bfloat16_inputs():
  text, image = _inputs(37, 37, seed=3, dtype=jnp.bfloat16)
  scale = jnp.asarray(4.0, jnp.bfloat16)
  fn = jax.jit(jax.value_and_grad(functools.partial(xla_chunked.infonce_loss, block_size=16),
                                  argnums=(0, 1, 2)))
  value, grads = fn(text, image, scale)
  assert value.dtype == jnp.float32
  assert all(g.dtype == jnp.bfloat16 for g in grads)  # Cotangents match the primals.
  expected = jax.jit(jax.value_and_grad(reference.infonce_loss, argnums=(0, 1, 2)))(
      text, image, scale)
  _assert_trees_close((value, grads), expected, rtol=1e-2)  # Grads rounded to bf16.
  np.testing.assert_allclose(value, expected[0], rtol=1e-5)  # The value is float32 throughout.


def test_under_jit_with_block_size_static():
  text, image = _inputs(24, 24, seed=4)
  fn = jax.jit(jax.grad(xla_chunked.infonce_loss, argnums=2), static_argnames="block_size")
  np.testing.assert_allclose(fn(text, image, jnp.float32(3.0), block_size=7),
                             jax.jit(jax.grad(reference.infonce_loss, argnums=2))(
                                 text, image, jnp.float32(3.0)),
                             rtol=1e-5)


def test_correspondence_values_and_gradients():
  text, image = _inputs(13, 21, seed=5)
  target = jax.random.normal(jax.random.PRNGKey(6), (13, 21))
  grad = lambda fn: jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))(text, image, target)
  _assert_trees_close(grad(xla_chunked.correspondence_loss),
                      grad(reference.correspondence_loss), rtol=1e-4)


@pytest.mark.parametrize("num_keys,k,block", [(53, 5, 16), (53, 40, 16), (53, 53, 8), (16, 3, 16)])
def test_top_k_matches_argsort(num_keys, k, block):
  queries, keys = _inputs(9, num_keys, seed=7)
  values, indices = jax.jit(xla_chunked.top_k, static_argnums=2, static_argnames="block_size")(
      queries, keys, k, block_size=block)
  scores = np.asarray(queries, np.float64) @ np.asarray(keys, np.float64).T
  expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  assert values.dtype == jnp.float32 and indices.dtype == jnp.int32
  np.testing.assert_array_equal(indices, expected)
  np.testing.assert_allclose(values, np.take_along_axis(scores, expected, 1), rtol=1e-5,
                             atol=1e-5)


def test_top_k_ties_go_to_lower_index():
  keys = jnp.ones((20, 4))  # Every score is equal.
  _, indices = xla_chunked.top_k(jnp.ones((2, 4)), keys, 6, block_size=4)
  np.testing.assert_array_equal(indices, np.tile(np.arange(6), (2, 1)))


@pytest.mark.parametrize("num_keys,k,block,group", [
    (300, 10, 64, 8),     # Several tiles, k below the number of groups.
    (37, 30, 16, 8),      # k above the number of real groups: placeholders must not leak.
    (1000, 1, 128, 32),   # k = 1.
    (129, 129, 64, 16),   # k = every key, ragged last tile.
    (50, 7, 48, 32),      # group does not divide the tile: gcd(32, 48) = 16 is used.
])
def test_top_k_group_pass_matches_numpy(num_keys, k, block, group):
  """The two-pass (group maxima, then rescoring) top-k against a float64 numpy sort."""
  queries, keys = _inputs(23, num_keys, seed=num_keys)
  values, indices = xla_chunked.top_k(queries, keys, k, block_size=block, group_size=group)
  scores = np.asarray(queries, np.float64) @ np.asarray(keys, np.float64).T
  expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  np.testing.assert_array_equal(indices, expected)
  np.testing.assert_allclose(values, np.take_along_axis(scores, expected, 1), rtol=1e-5,
                             atol=1e-5)


def test_top_k_ties_across_groups_go_to_lower_index():
  """Equal group maxima in different tiles: the lower group's items must win."""
  keys = np.zeros((64, 4), np.float32)
  keys[[5, 20, 40, 63], 0] = 1.0  # Four equal best items in four groups of 8.
  _, indices = xla_chunked.top_k(jnp.ones((3, 4)), jnp.asarray(keys), 6, block_size=16,
                                 group_size=8)
  np.testing.assert_array_equal(indices, np.tile([5, 20, 40, 63, 0, 1], (3, 1)))
