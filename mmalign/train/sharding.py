"""Which arrays of the train state are split over the mesh's fsdp axis, and how.

An array with at least `min_size` elements is split along its largest dimension that the
fsdp axis size divides (the last such one on ties); every other array is replicated. Why
shapes alone: optimizer moments get their parameter's sharding without knowing the
optimizer's state layout.
"""

from __future__ import annotations

import math

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmalign.mesh import FSDP_AXIS


def partition_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
  """P() (replicated) or P(..., "fsdp", ...) on the chosen dimension of `shape`."""
  if fsdp_size <= 1 or math.prod(shape) < min_size:
    return P()
  divisible = [d for d, n in enumerate(shape) if n % fsdp_size == 0]
  if not divisible:
    return P()
  dim = max(divisible, key=lambda d: (shape[d], d))
  return P(*(FSDP_AXIS if d == dim else None for d in range(len(shape))))


def state_shardings(tree, mesh: Mesh, min_size: int):
  """A NamedSharding for every leaf of `tree` (arrays or ShapeDtypeStructs); min_size in
  elements (`train.fsdp_min_size`)."""
  fsdp_size = mesh.shape.get(FSDP_AXIS, 1)
  return jax.tree.map(
      lambda x: NamedSharding(mesh, partition_spec(tuple(x.shape), fsdp_size, min_size)), tree)

