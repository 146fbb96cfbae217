"""Device mesh and the batch's sharding.

Two axes, shaped by `train.mesh` ({"data": -1, "fsdp": 1} by default; -1: all remaining
devices): parameters are replicated along "data" and large ones split along "fsdp"
(`sharding.py`). The batch is split over both jointly, so every device computes on its own
rows, as in ZeRO-3/FSDP; the distributed losses get the same devices on one flat axis
(`loss_mesh`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from mmalign.errors import UsageError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MESH_AXES = (DATA_AXIS, FSDP_AXIS)
LOSS_AXIS = "batch"  # The flat axis of `loss_mesh`.
DEFAULT_MESH = {DATA_AXIS: -1, FSDP_AXIS: 1}


def mesh_shape(mesh_config: Mapping[str, int] | None, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) sizes from `train.mesh`; at most one -1, filled in from the device count."""
  config = dict(DEFAULT_MESH if mesh_config is None else mesh_config)
  unknown = sorted(set(config) - set(MESH_AXES))
  if unknown:
    raise UsageError(f"unknown train.mesh axis(es) {unknown}; allowed: {', '.join(MESH_AXES)}")
  sizes = [int(config.get(axis, 1)) for axis in MESH_AXES]
  if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
    raise UsageError(f"train.mesh={config} must give each axis a size >= 1, or -1 to one "
                     "axis for all remaining devices")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise UsageError(f"train.mesh={config}: the {num_devices} devices cannot be split into "
                       f"groups of {known}")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise UsageError(f"train.mesh={config} has {math.prod(sizes)} devices but there are "
                     f"{num_devices}; make the product of the sizes {num_devices}, or set "
                     "one axis to -1")
  return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int] | None = None, devices=None) -> Mesh:
  """The ("data", "fsdp") mesh over `devices` (default: all, of every process), ordered by
  jax.make_mesh for the physical topology; Auto axes, so the compiler propagates shardings."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(shape, MESH_AXES, (AxisType.Auto,) * len(MESH_AXES), devices=devices)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """The mesh axes the batch is split over, major to minor."""
  return tuple(axis for axis in MESH_AXES if axis in mesh.shape)


def batch_devices(mesh: Mesh) -> int:
  """How many shards the batch is cut into (the batch size must divide by it)."""
  return math.prod(mesh.shape[axis] for axis in batch_axes(mesh))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the batch axes; the rest whole."""
  return NamedSharding(mesh, P(batch_axes(mesh)))


def loss_mesh(mesh: Mesh) -> Mesh:
  """The mesh's devices, in the same order, on the single axis `LOSS_AXIS`: rows sharded by
  `batch_sharded(mesh)` sit where `P(LOSS_AXIS)` puts them, so the losses reshard nothing."""
  if set(mesh.axis_names) - set(MESH_AXES):
    raise ValueError(f"loss_mesh expects only the axes {MESH_AXES}; got {mesh.axis_names}")
  order = [mesh.axis_names.index(axis) for axis in batch_axes(mesh)]
  devices = np.transpose(mesh.devices, order).reshape(-1)
  return Mesh(devices, (LOSS_AXIS,))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's share into arrays sharded over the batch axes."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
