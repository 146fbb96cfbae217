"""Pytree comparisons shared by the tests."""

import jax
import numpy as np


def sharded_leaves(shardings) -> dict:
  """{"params/text_tower/embed/embedding": spec} of the leaves split over the fsdp axis."""
  from mmalign.mesh import FSDP_AXIS  # pylint: disable=import-outside-toplevel
  from mmalign.train.optimizer import param_path  # pylint: disable=import-outside-toplevel
  return {param_path(path): sharding.spec
          for path, sharding in jax.tree_util.tree_leaves_with_path(shardings)
          if FSDP_AXIS in sharding.spec}


def assert_trees_bitwise_equal(a, b) -> None:
  """Same structure and every leaf identical, bit for bit."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
