"""The jit-compiled training step: forward, objective, gradients, optimizer update.

Kept apart from the loop (trainer.py) so that how a step is computed (shardings,
precision, accumulation) can change without touching checkpointing or logging.

`build_train_step` reads those choices from `config.train` (each key optional,
with the default that reproduces the plain data-parallel float32 step):
  mesh                     {"data": -1, "fsdp": 1}: the device mesh (mesh.py)
  fsdp_min_size            arrays of at least this many elements are split over
                           the fsdp axis (sharding.py)
  micro_batches            1; m > 1 accumulates gradients over m micro-batches
  gradient_cache           False; True keeps the contrastive batch whole across
                           micro-batches (accumulation.py)
  compute_dtype            "float32" | "bfloat16" (precision.py)
  optimizer_moments_dtype  "float32" | "bfloat16", read by `optimizer.adamw`
  on_nonfinite             "stop" (the loop raises) | "skip" (the step keeps the
                           old params, optimizer and model state when the loss or
                           the gradient norm is NaN/inf; metrics["skipped"] = 1)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from mmalign.errors import UsageError
from mmalign.train import accumulation, precision, sharding
from mmalign.train import mesh as mesh_lib


def train_forward(model) -> accumulation.Forward:
  """forward(params, model_state, batch, rng) -> (outputs, new_model_state), train mode."""
  def forward(params, model_state, batch, rng):
    return model.apply({"params": params, **model_state}, batch["tokens"], batch["images"],
                       train=True, rngs={"dropout": rng}, mutable=list(model_state))
  return forward


NONFINITE_POLICIES = ("stop", "skip")


def make_train_step(model, objective, optimizer, mesh, seed: int, *, state_shardings=None,
                    micro_batches: int = 1, gradient_cache: bool = False,
                    skip_nonfinite: bool = False):
  """jit-compiled `step(state, batch) -> (state, metrics)`.

  The batch is sharded over the mesh's batch axes; the state is placed by
  `state_shardings` (a tree matching the state, e.g. `sharding.state_shardings`)
  or replicated when None. The step donates its input state.

  Dropout keys are `fold_in(key(seed), step)` (micro-batch j: folded again
  with j): a resumed run draws the same ones. State collections (BatchNorm
  statistics) are updated in train mode.
  """
  if micro_batches < 1:
    raise UsageError(f"train.micro_batches={micro_batches} must be >= 1")
  if gradient_cache:
    accumulation.check_gradient_cache(model)
  state_sharding = mesh_lib.replicated(mesh) if state_shardings is None else state_shardings
  batch_sharding = mesh_lib.batch_sharded(mesh)
  base_key = jax.random.key(seed)
  if micro_batches == 1:
    gradients = accumulation.full_batch
  else:
    gradients = functools.partial(
        accumulation.gradient_cache if gradient_cache else accumulation.micro_batched,
        micro_batches=micro_batches, mesh=mesh)

  forward = train_forward(model)

  def step_fn(state, batch):
    model_state = state.get("model_state", {})
    rng = jax.random.fold_in(base_key, state["step"])
    loss, metrics, grads, new_model_state = gradients(
        forward, objective, state["params"], model_state, batch, rng)
    if state_shardings is not None:  # Reduce-scatter into the parameters' shards.
      grads = jax.lax.with_sharding_constraint(grads, state_shardings["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    grad_norm = optax.global_norm(grads)
    metrics = {"loss": loss, **metrics, "grad_norm": grad_norm}
    new_state = {"params": params, "opt_state": opt_state}
    if model_state:
      new_state["model_state"] = dict(new_model_state)
    if skip_nonfinite:  # The data and the step counter move on; nothing else does.
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      old = {key: state[key] for key in new_state}
      new_state = jax.tree.map(lambda new, kept: jnp.where(finite, new, kept), new_state, old)
      metrics["skipped"] = (~finite).astype(jnp.float32)
    return {**new_state, "step": state["step"] + 1}, metrics

  return jax.jit(step_fn, in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, mesh_lib.replicated(mesh)), donate_argnums=(0,))


def build_train_step(train_config, model, objective, optimizer, mesh, state):
  """(step, state placed on the mesh) from `config.train`; see the module docstring.

  `mesh` should come from `mesh.make_mesh(train_config.get("mesh"))`, and the
  objective be built with `mesh.loss_mesh(mesh)` when `loss.distributed` is set.
  """
  micro_batches = int(train_config.get("micro_batches", 1))
  gradient_cache = bool(train_config.get("gradient_cache", False))
  dtype = precision.dtype_of(train_config.get("compute_dtype", "float32"),
                             "train.compute_dtype")
  shards = mesh_lib.batch_devices(mesh) * max(micro_batches, 1)
  if train_config.batch_size % shards:
    raise UsageError(
        f"train.batch_size={train_config.batch_size} must divide into "
        f"train.micro_batches={micro_batches} micro-batches over the "
        f"{mesh_lib.batch_devices(mesh)} batch shards of train.mesh "
        f"({dict(mesh.shape)}): make it a multiple of {shards}")
  on_nonfinite = train_config.get("on_nonfinite", "stop")
  if on_nonfinite not in NONFINITE_POLICIES:
    raise UsageError(f"train.on_nonfinite={on_nonfinite!r}; allowed: "
                     f"{', '.join(NONFINITE_POLICIES)}")
  shardings = sharding.state_shardings(
      state, mesh, int(train_config.get("fsdp_min_size", sharding.DEFAULT_MIN_SIZE)))
  step = make_train_step(precision.with_compute_dtype(model, dtype), objective, optimizer, mesh,
                         train_config.seed, state_shardings=shardings,
                         micro_batches=micro_batches, gradient_cache=gradient_cache,
                         skip_nonfinite=on_nonfinite == "skip")
  return step, jax.device_put(state, shardings)
