"""Mixed precision: bfloat16 compute over float32 master weights, optional bfloat16 moments.

Tolerance: a bfloat16 forward pass keeps ~3 significant digits per operation;
over 4 training steps of the tiny model the loss stays within 1e-2 relative of
the float32 run (seen: ~1e-3). The parameters and optimizer moments must keep
their dtypes exactly.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmalign import mesh as mesh_lib
from mmalign.train import precision, step as step_lib
from mmalign.train.optimizer import adamw
from tests.train import tiny_model

STEPS = 4
LOSS_RTOL = 1e-2


@functools.cache
def _run(compute_dtype: str, moments_dtype: str = "float32"):
  """(losses of STEPS steps, final state) of the tiny model on one repeated batch."""
  model, objective, params, _ = tiny_model.setup()
  config = tiny_model.config().train
  config.compute_dtype = compute_dtype
  optimizer = adamw(optax.constant_schedule(1e-3), weight_decay=1e-4, moments_dtype=moments_dtype)
  state = {"params": jax.tree.map(jnp.copy, params),  # The step donates its state.
           "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}
  mesh = mesh_lib.make_mesh()
  step, state = step_lib.build_train_step(config, model, objective, optimizer, mesh, state)
  batch = jax.device_put(tiny_model.random_batch(), mesh_lib.batch_sharded(mesh))
  losses = []
  for _ in range(STEPS):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  return np.array(losses), state


def _float_dtypes(tree) -> set[str]:
  return {str(x.dtype) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def test_bfloat16_compute_keeps_float32_weights_and_a_close_loss():
  f32_losses, _ = _run("float32")
  bf16_losses, state = _run("bfloat16")
  assert _float_dtypes(state["params"]) == _float_dtypes(state["opt_state"]) == {"float32"}
  assert np.isfinite(bf16_losses).all()
  np.testing.assert_allclose(bf16_losses, f32_losses, rtol=LOSS_RTOL)
  assert not np.array_equal(bf16_losses, f32_losses)  # bfloat16 really was used.


def test_compute_dtype_reaches_every_tower_but_not_the_parameters():
  model, _, params, _ = tiny_model.setup()
  assert precision.with_compute_dtype(model, jnp.float32) is model
  bf16 = precision.with_compute_dtype(model, jnp.bfloat16)
  assert bf16.text_kwargs["dtype"] == bf16.image_kwargs["dtype"] == jnp.bfloat16
  assert bf16.projection_kwargs["dtype"] == jnp.bfloat16
  batch = tiny_model.random_batch(2)
  # Same parameter tree and dtypes, so checkpoints do not depend on the compute dtype.
  bf16_params = jax.jit(bf16.init)(jax.random.key(0), batch["tokens"], batch["images"])["params"]
  assert jax.tree.structure(bf16_params) == jax.tree.structure(params)
  assert _float_dtypes(bf16_params) == {"float32"}
  outputs = jax.jit(bf16.apply)({"params": params}, batch["tokens"], batch["images"])
  assert outputs["text_emb"].dtype == outputs["image_emb"].dtype == jnp.float32  # Heads cast back.


def test_bfloat16_moments_are_stored_in_bfloat16_and_train_alike():
  f32_losses, _ = _run("float32")
  losses, state = _run("float32", "bfloat16")
  adam_state = state["opt_state"][1][0]  # chain(clip, chain(adam, decay, lr)) → adam.
  assert _float_dtypes(adam_state.mu) == _float_dtypes(adam_state.nu) == {"bfloat16"}
  assert _float_dtypes(state["params"]) == {"float32"}
  np.testing.assert_allclose(losses, f32_losses, rtol=LOSS_RTOL)


def test_bfloat16_moments_keep_the_state_tree():
  # The same checkpoint layout whichever dtype the moments are stored in.
  _, _, params, _ = tiny_model.setup()
  trees = [jax.tree.structure(adamw(optax.constant_schedule(1e-3), weight_decay=0.0,
                                    moments_dtype=dtype).init(params))
           for dtype in ("float32", "bfloat16")]
  assert trees[0] == trees[1]
