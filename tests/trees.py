"""Pytree comparisons shared by the tests."""

import jax
import numpy as np


def assert_trees_bitwise_equal(a, b) -> None:
  """Same structure and every leaf identical, bit for bit."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
