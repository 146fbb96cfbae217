"""The mesh from `train.mesh` and the fsdp partitioning rule (no extra devices needed).

What runs on 8 simulated devices (shards really split, trajectories equal to
one device) is in test_multidevice.py.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from mmalign.errors import UsageError
from mmalign import mesh as mesh_lib
from mmalign.train import sharding, step as step_lib
from tests import trees
from tests.train import tiny_model


@pytest.mark.parametrize("config, devices, shape", [
    (None, 8, (8, 1)),
    ({"data": -1, "fsdp": 4}, 8, (2, 4)),
    ({"data": 2, "fsdp": -1}, 8, (2, 4)),
    ({"fsdp": 8}, 8, (1, 8)),  # An axis left out has size 1.
    (ml_collections.ConfigDict({"data": -1, "fsdp": 1}), 1, (1, 1)),
])
def test_mesh_shape_fills_in_the_remaining_devices(config, devices, shape):
  assert mesh_lib.mesh_shape(config, devices) == shape


@pytest.mark.parametrize("config, message", [
    ({"data": 2, "fsdp": 2}, "has 4 devices but there are 8"),
    ({"data": -1, "fsdp": 3}, "cannot be split into groups of 3"),
    ({"data": -1, "fsdp": -1}, "-1 to one axis"),
    ({"data": 0}, "size >= 1"),
    ({"data": -1, "model": 2}, r"unknown train.mesh axis\(es\) \['model'\]; allowed: data, fsdp"),
])
def test_bad_mesh_configs_name_train_mesh(config, message):
  with pytest.raises(UsageError, match=message):
    mesh_lib.mesh_shape(config, 8)


def test_make_mesh_on_this_process():
  mesh = mesh_lib.make_mesh()
  assert mesh.axis_names == ("data", "fsdp")
  assert mesh.shape["data"] * mesh.shape["fsdp"] == jax.device_count()
  assert mesh_lib.batch_sharded(mesh).spec == P(("data", "fsdp"))
  flat = mesh_lib.loss_mesh(mesh)
  assert flat.axis_names == (mesh_lib.LOSS_AXIS,)
  assert list(flat.devices) == list(mesh.devices.flat)  # Same order: rows stay put.
  with pytest.raises(UsageError, match="train.mesh"):
    mesh_lib.make_mesh({"data": jax.device_count() + 1})


@pytest.mark.parametrize("shape, fsdp, spec", [
    ((1024, 64), 4, P("fsdp", None)),  # The largest dimension.
    ((64, 1024), 4, P(None, "fsdp")),
    ((256, 256), 4, P(None, "fsdp")),  # Ties: the last one.
    ((1026, 64), 4, P(None, "fsdp")),  # The largest that divides by the axis size.
    ((1025, 63), 4, P()),  # None divides: replicated.
    ((64, 64), 4, P()),  # Below min_size.
    ((1024, 64), 1, P()),  # No fsdp axis to split over.
    ((), 4, P()),  # Scalars.
])
def test_partition_rule(shape, fsdp, spec):
  assert sharding.partition_spec(shape, fsdp, min_size=2 ** 14) == spec


def test_state_shardings_cover_params_and_moments_alike():
  mesh = mesh_lib.make_mesh()
  _, _, params, _ = tiny_model.setup()
  optimizer = optax.adamw(1e-3)
  state = {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}
  shardings = sharding.state_shardings(state, mesh, min_size=1)
  assert jax.tree.structure(shardings) == jax.tree.structure(state)
  adam = shardings["opt_state"][0]
  assert jax.tree.leaves(adam.mu) == jax.tree.leaves(shardings["params"])
  assert adam.count.spec == shardings["step"].spec == P()


def test_batch_size_must_split_over_shards_and_micro_batches():
  model, objective, params, _ = tiny_model.setup()
  config = tiny_model.config().train  # batch_size 16
  config.micro_batches = 3
  state = {"params": params, "opt_state": optax.sgd(1.0).init(params),
           "step": jnp.zeros((), jnp.int32)}
  with pytest.raises(UsageError, match="train.batch_size=16.*train.micro_batches=3"):
    step_lib.build_train_step(config, model, objective, optax.sgd(1.0), mesh_lib.make_mesh(),
                              state)


def test_sharded_leaves_names_the_split_arrays():
  mesh = mesh_lib.make_mesh()
  tree = {"big": jax.ShapeDtypeStruct((64, 32), np.float32),
          "small": jax.ShapeDtypeStruct((3,), np.float32)}
  # On one device the fsdp axis has size 1: nothing is split.
  assert trees.sharded_leaves(sharding.state_shardings(tree, mesh, min_size=1)) == {}
