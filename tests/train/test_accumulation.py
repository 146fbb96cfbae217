"""Micro-batches and the gradient cache against one full batch (mmalign/train/accumulation.py).

Tolerance: float32 throughout; losses agree within RTOL = 1e-5 relative, and
every gradient entry within RTOL × the largest full-batch gradient entry (a
leaf whose gradient is ~0, such as a conv bias under GroupNorm, cannot be
compared relative to itself). The largest residual seen is ~3e-7 of the
largest entry: float32 rounding of sums taken in another order.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmalign.errors import UsageError
from mmalign.models.build import build_dual_encoder
from mmalign import mesh as mesh_lib
from mmalign.train import accumulation, step as step_lib
from tests.train import tiny_model

RTOL = 1e-5
MICRO = 4


@functools.cache
def _gradients(loss: str, how: str, image_encoder: str = "cnn"):
  """(loss, metrics, grads, model_state) of one way ("full", "micro", "cache")."""
  model, objective, params, model_state = tiny_model.setup(loss, image_encoder)
  fn = {"full": accumulation.full_batch,
        "micro": functools.partial(accumulation.micro_batched, micro_batches=MICRO),
        "cache": functools.partial(accumulation.gradient_cache, micro_batches=MICRO)}[how]
  forward = step_lib.train_forward(model)
  return jax.jit(lambda p: fn(forward, objective, p, model_state, tiny_model.random_batch(),
                              jax.random.key(1)))(params)


def _mesh_batch(mesh, train_config) -> dict:
  """The random batch on the mesh, grown (from 16 rows) where MICRO micro-batches would not
  split over every batch shard (32 rows on 8 devices); train_config.batch_size set to it."""
  rows = math.lcm(tiny_model.BATCH, MICRO * mesh_lib.batch_devices(mesh))
  train_config.batch_size = rows
  return jax.device_put(tiny_model.random_batch(rows), mesh_lib.batch_sharded(mesh))


def _assert_gradients_close(got, expected, rtol=RTOL):
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(expected))
  for (path, g), e in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(expected),
                          strict=True):
    np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol * scale, err_msg=str(path))


def test_split_rows_is_strided_and_merge_rows_inverts_it():
  x = jnp.arange(12).reshape(12, 1)
  micro = accumulation.split_rows(x, 3)
  assert micro.shape == (3, 4, 1)
  np.testing.assert_array_equal(micro[1, :, 0], [1, 4, 7, 10])  # Rows j, j + m, ...
  np.testing.assert_array_equal(accumulation.merge_rows(micro), x)
  with pytest.raises(UsageError, match="train.micro_batches=5"):
    accumulation.split_rows(x, 5)


def test_micro_batches_equal_the_full_batch_for_a_mean_over_pairs():
  full, micro = _gradients("regression", "full"), _gradients("regression", "micro")
  np.testing.assert_allclose(micro[0], full[0], rtol=RTOL)
  _assert_gradients_close(micro[2], full[2])


def test_micro_batches_change_a_contrastive_loss():
  # The documented difference: negatives come from the micro-batch only, so the
  # loss is that of 4-way instead of 16-way classification (about log 4 vs log 16
  # at initialisation) and the gradients are not the full batch's.
  full, micro = _gradients("infonce", "full"), _gradients("infonce", "micro")
  assert float(micro[0]) < 0.7 * float(full[0])
  with pytest.raises(AssertionError):
    _assert_gradients_close(micro[2], full[2], rtol=1e-2)


@pytest.mark.parametrize("loss", ["infonce", "sigmoid"])
def test_gradient_cache_equals_the_full_batch(loss):
  full, cached = _gradients(loss, "full"), _gradients(loss, "cache")
  np.testing.assert_allclose(cached[0], full[0], rtol=RTOL)
  np.testing.assert_allclose(cached[1]["scale"], full[1]["scale"], rtol=RTOL)
  _assert_gradients_close(cached[2], full[2])


def test_batch_norm_statistics_are_averaged_over_micro_batches():
  # One moving-average update per step, with the mean of the micro-batch statistics.
  model, objective, params, model_state = tiny_model.setup("regression", "vgg")
  forward = step_lib.train_forward(model)
  micro = accumulation.split_rows(tiny_model.random_batch(), MICRO)
  one_micro_batch = jax.jit(lambda j: accumulation.full_batch(
      forward, objective, params, model_state, jax.tree.map(lambda x: x[j], micro),
      jax.random.fold_in(jax.random.key(1), j))[3])
  per_micro = [one_micro_batch(j) for j in range(MICRO)]
  expected = jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs), 0), *per_micro)
  got = _gradients("regression", "micro", "vgg")[3]
  assert jax.tree.leaves(got) and jax.tree.structure(got) == jax.tree.structure(expected)
  for g, e, old in zip(jax.tree.leaves(got), jax.tree.leaves(expected),
                       jax.tree.leaves(model_state)):
    np.testing.assert_allclose(g, e, rtol=RTOL, atol=1e-7)
    assert not np.allclose(g, old)  # The statistics did move.


def test_train_step_with_micro_batches_matches_one_batch():
  model, objective, params, _ = tiny_model.setup("regression")
  config = tiny_model.config("regression").train
  optimizer = optax.sgd(1.0)
  mesh = mesh_lib.make_mesh()
  batch = _mesh_batch(mesh, config)
  results = []
  for micro_batches in (1, MICRO):
    config.micro_batches = micro_batches
    state = {"params": jax.tree.map(jnp.copy, params),  # The step donates its state.
             "opt_state": optimizer.init(params),
             "step": jnp.zeros((), jnp.int32)}
    step, state = step_lib.build_train_step(config, model, objective, optimizer, mesh, state)
    results.append(step(state, batch))
  (one, one_metrics), (many, many_metrics) = results
  np.testing.assert_allclose(many_metrics["loss"], one_metrics["loss"], rtol=RTOL)
  np.testing.assert_allclose(many_metrics["grad_norm"], one_metrics["grad_norm"], rtol=RTOL)
  # SGD with learning rate 1: the parameters moved by exactly the (accumulated) gradients.
  scale = max(float(jnp.abs(p).max()) for p in jax.tree.leaves(params))
  for a, b in zip(jax.tree.leaves(many["params"]), jax.tree.leaves(one["params"])):
    np.testing.assert_allclose(a, b, atol=RTOL * scale)


def test_gradient_cache_refuses_models_with_fused_heads():
  config = tiny_model.config("infonce")
  config.model.fusion = "concat"
  model = build_dual_encoder(config.model, vocab_size=128, max_length=24)
  with pytest.raises(UsageError, match="train.gradient_cache.*model.fusion"):
    step_lib.make_train_step(model, None, None, mesh_lib.make_mesh(), 0, micro_batches=2,
                             gradient_cache=True)


def _one_step(loss: str, image_encoder: str, **train):
  """(new state, metrics) of one SGD(1.0) step of build_train_step with `train` overrides."""
  model, objective, params, model_state = tiny_model.setup(loss, image_encoder)
  config = tiny_model.config(loss, image_encoder).train
  for key, value in train.items():
    config[key] = value
  optimizer = optax.sgd(1.0)
  mesh = mesh_lib.make_mesh()
  state = {"params": jax.tree.map(jnp.copy, params),  # The step donates its state.
           "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}
  if model_state:
    state["model_state"] = jax.tree.map(jnp.copy, model_state)
  batch = _mesh_batch(mesh, config)
  step, state = step_lib.build_train_step(config, model, objective, optimizer, mesh, state)
  return step(state, batch)


def _assert_states_close(got, expected):
  scale = max(float(jnp.abs(p).max()) for p in jax.tree.leaves(expected["params"]))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(expected),
                          strict=True):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=RTOL * scale, err_msg=str(path))


@pytest.mark.parametrize("loss,image_encoder", [("infonce", "cnn"), ("sigmoid", "vgg")])
def test_host_loop_gradient_cache_equals_the_scanned_one(loss, image_encoder):
  # Same keys, same pieces, separate programs: the same step, BatchNorm statistics included
  # (vgg). Both are the full-batch step too, up to ghost batch norm (module docstring).
  cache = {"micro_batches": MICRO, "gradient_cache": True}
  host, host_metrics = _one_step(loss, image_encoder, gradient_cache_loop="host", **cache)
  scan, scan_metrics = _one_step(loss, image_encoder, gradient_cache_loop="scan", **cache)
  for key in ("loss", "grad_norm", "scale"):
    np.testing.assert_allclose(host_metrics[key], scan_metrics[key], rtol=RTOL, err_msg=key)
  _assert_states_close(host, scan)
  assert int(host["step"]) == 1
  if image_encoder == "cnn":  # No BatchNorm: equal to one pass over the whole batch.
    full, full_metrics = _one_step(loss, image_encoder)
    np.testing.assert_allclose(host_metrics["loss"], full_metrics["loss"], rtol=RTOL)
    _assert_states_close(host, full)


def test_host_loop_memory_is_its_largest_program_and_below_one_pass():
  model, objective, params, _ = tiny_model.setup("infonce")
  mesh = mesh_lib.make_mesh()
  optimizer = optax.sgd(1.0)
  state = {"params": params, "opt_state": optimizer.init(params),
           "step": jnp.zeros((), jnp.int32)}
  batch = tiny_model.random_batch(64)
  memory = {}
  for loop in ("host", None):
    step = step_lib.make_train_step(model, objective, optimizer, mesh, 0,
                                    micro_batches=1 if loop is None else 4,
                                    gradient_cache=loop is not None,
                                    gradient_cache_loop=loop or "scan")
    memory[loop] = step_lib.compiled_memory(step, state, batch)
  assert isinstance(step_lib.make_train_step(
      model, objective, optimizer, mesh, 0, micro_batches=4, gradient_cache=True,
      gradient_cache_loop="host"), step_lib.HostLoopGradientCache)
  assert set(memory["host"]) == {"temp", "argument", "output"}
  # One micro-batch of 16 rows' activations against all 64 rows' at once.
  assert 0 < memory["host"]["temp"] < memory[None]["temp"]
