"""Which arrays of the train state are split over the mesh's fsdp axis, and how.

Rule (a function of the shape alone): an array with at least `min_size`
elements is split along its largest dimension that the fsdp axis size
divides (the last such one on ties); every other array is replicated.

Why shapes alone: optimizer moments get their parameter's sharding without knowing the
optimizer's state layout, and scalars are replicated. Small arrays stay whole: splitting
them saves little memory and costs a gather each.
"""

from __future__ import annotations

import math

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmalign.mesh import FSDP_AXIS
from mmalign.train.optimizer import param_path

DEFAULT_MIN_SIZE = 2 ** 14  # Elements (64 KiB in float32); `train.fsdp_min_size`.


def partition_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int = DEFAULT_MIN_SIZE) -> P:
  """P() (replicated) or P(..., "fsdp", ...) on the chosen dimension of `shape`."""
  if fsdp_size <= 1 or math.prod(shape) < min_size:
    return P()
  divisible = [d for d, n in enumerate(shape) if n % fsdp_size == 0]
  if not divisible:
    return P()
  dim = max(divisible, key=lambda d: (shape[d], d))
  return P(*(FSDP_AXIS if d == dim else None for d in range(len(shape))))


def state_shardings(tree, mesh: Mesh, min_size: int = DEFAULT_MIN_SIZE):
  """A NamedSharding for every leaf of `tree` (arrays or ShapeDtypeStructs)."""
  fsdp_size = mesh.shape.get(FSDP_AXIS, 1)
  return jax.tree.map(
      lambda x: NamedSharding(mesh, partition_spec(tuple(x.shape), fsdp_size, min_size)), tree)


param_shardings = state_shardings  # The same rule; named for the caller's intent.

