"""The jit-compiled training step: forward, objective, gradients, optimizer update.

Kept apart from the loop (trainer.py), so that how a step is computed can change without
touching checkpointing or logging. `train.on_nonfinite`: "stop" (the loop raises on
`metrics["state_finite"]`) or "skip" (a step whose loss, gradient norm or updated state is
NaN/inf keeps the old state and reports `metrics["skipped"] = 1`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from mmalign import settings
from mmalign.errors import UsageError
from mmalign.train import utilisation
from mmalign.train import accumulation, precision, sharding
from mmalign.train.optimizer import locked_towers
from mmalign import mesh as mesh_lib


def train_forward(model) -> accumulation.Forward:
  """forward(params, model_state, batch, rng) -> (outputs, new_model_state), train mode."""
  def forward(params, model_state, batch, rng):
    return model.apply({"params": params, **model_state}, batch["tokens"], batch["images"],
                       train=True, rngs={"dropout": rng}, mutable=list(model_state))
  return forward


def _update(optimizer, state_shardings, skip_nonfinite: bool):
  """apply(state, loss, metrics, grads, new_model_state) -> (state, metrics), shared by
  the one-program step and the host loop so that both update, count and skip alike."""
  def apply(state, loss, metrics, grads, new_model_state):
    if state_shardings is not None:  # Reduce-scatter into the parameters' shards.
      grads = jax.lax.with_sharding_constraint(grads, state_shardings["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    grad_norm = optax.global_norm(grads)
    metrics = {"loss": loss, **metrics, "grad_norm": grad_norm}
    new_state = {"params": params, "opt_state": opt_state}
    if state.get("model_state"):
      new_state["model_state"] = dict(new_model_state)
    # The updated state is checked too: a NaN learning rate leaves loss and gradient
    # finite but every parameter NaN.
    checks = [jnp.isfinite(x).all() for x in jax.tree.leaves(new_state)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    state_finite = jnp.stack(checks).all() if checks else jnp.bool_(True)
    if skip_nonfinite:  # The data and the step counter move on; nothing else does.
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & state_finite
      old = {key: state[key] for key in new_state}
      new_state = jax.tree.map(lambda new, kept: jnp.where(finite, new, kept), new_state, old)
      metrics["skipped"] = (~finite).astype(jnp.float32)
    else:
      metrics["state_finite"] = state_finite.astype(jnp.float32)
    return {**new_state, "step": state["step"] + 1}, metrics
  return apply


def make_train_step(model, objective, optimizer, mesh, seed: int, *, state_shardings=None,
                    micro_batches: int = 1, gradient_cache: bool = False,
                    gradient_cache_loop: str = "scan", skip_nonfinite: bool = False):
  """`step(state, batch) -> (state, metrics)`, jit-compiled, donating its input state.

  The batch is sharded over the mesh's batch axes; the state by `state_shardings` (a tree
  matching the state), else replicated. Dropout keys are `fold_in(key(seed), step)`, so a
  resumed run draws the same ones. With `gradient_cache`, micro_batches > 1 and
  `gradient_cache_loop="host"` the step is a HostLoopGradientCache, with the same result.
  """
  if gradient_cache:
    accumulation.check_gradient_cache(model)
  state_sharding = mesh_lib.replicated(mesh) if state_shardings is None else state_shardings
  batch_sharding = mesh_lib.batch_sharded(mesh)
  base_key = jax.random.key(seed)
  forward = train_forward(model)
  apply = _update(optimizer, state_shardings, skip_nonfinite)
  if gradient_cache and micro_batches > 1 and gradient_cache_loop == "host":
    return HostLoopGradientCache(forward, objective, apply, base_key, micro_batches=micro_batches,
                                 mesh=mesh, state_sharding=state_sharding)
  gradients = accumulation.full_batch if micro_batches == 1 else functools.partial(
      accumulation.gradient_cache if gradient_cache else accumulation.micro_batched,
      micro_batches=micro_batches, mesh=mesh)

  def step_fn(state, batch):
    rng = jax.random.fold_in(base_key, state["step"])
    loss, metrics, grads, new_model_state = gradients(
        forward, objective, state["params"], state.get("model_state", {}), batch, rng)
    return apply(state, loss, metrics, grads, new_model_state)

  return jax.jit(step_fn, in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, mesh_lib.replicated(mesh)), donate_argnums=(0,))


class HostLoopGradientCache:
  """The gradient-cache step as a Python loop over four separately compiled programs: m
  embedding passes, the loss, m backward passes into one donated gradient buffer, the
  update; the result of `accumulation.gradient_cache`. Why: one program either loops (slow
  convolutions on XLA:CPU) or, unrolled, keeps every micro-batch live at once.
  """

  def __init__(self, forward, objective, apply, base_key, *, micro_batches: int, mesh,
               state_sharding):
    m = micro_batches

    def micro_batch(batch, j):  # Rows j, j + m, ... of the batch, [B/m, ...].
      return jax.tree.map(lambda x: x[j], accumulation.split_rows(batch, m, mesh))

    def embed(params, model_state, batch, step, j):
      return accumulation.embed_micro_batch(forward, params, model_state, micro_batch(batch, j),
                                            jax.random.fold_in(base_key, step), j)

    def loss(embedded, batch):  # embedded: m (outputs, model_state) pairs.
      outputs, model_states = jax.tree.map(lambda *xs: jnp.stack(xs), *embedded)
      loss, metrics, cotangents = accumulation.loss_and_cotangents(
          objective, outputs, batch, micro_batches=m, mesh=mesh)
      return loss, metrics, cotangents, accumulation.mean_over_micro_batches(model_states)

    def backprop(grad_sum, params, model_state, batch, step, j, cotangents):
      grads = accumulation.backprop_micro_batch(
          forward, params, model_state, micro_batch(batch, j),
          jax.random.fold_in(base_key, step), j, jax.tree.map(lambda c: c[j], cotangents))
      return jax.tree.map(jnp.add, grad_sum, grads)

    self.micro_batches = m
    self._embed = jax.jit(embed)
    self._loss = jax.jit(loss)
    self._zeros = jax.jit(lambda params: jax.tree.map(jnp.zeros_like, params))
    self._backprop = jax.jit(backprop, donate_argnums=(0,))
    self._apply = jax.jit(apply, out_shardings=(state_sharding, mesh_lib.replicated(mesh)),
                          donate_argnums=(0,))

  def __call__(self, state, batch):
    params, model_state, step = state["params"], state.get("model_state", {}), state["step"]
    embedded = [self._embed(params, model_state, batch, step, j) for j in range(self.micro_batches)]
    loss, metrics, cotangents, new_model_state = self._loss(embedded, batch)
    grads = self._zeros(params)
    for j in range(self.micro_batches):
      grads = self._backprop(grads, params, model_state, batch, step, j, cotangents)
    return self._apply(state, loss, metrics, grads, new_model_state)

  def memory_analysis(self, state, batch) -> dict:
    """`compiled_memory` of this step: each figure's largest over the four programs,
    compiled on the step's argument shapes; nothing runs."""
    params, model_state, step = state["params"], state.get("model_state", {}), state["step"]
    embedded = [jax.eval_shape(self._embed, params, model_state, batch, step, j)
                for j in range(self.micro_batches)]
    loss, metrics, cotangents, new_model_state = jax.eval_shape(self._loss, embedded, batch)
    grads = jax.eval_shape(lambda p: p, params)
    programs = [(self._embed, (params, model_state, batch, step, 0)),
                (self._loss, (embedded, batch)),
                (self._backprop, (grads, params, model_state, batch, step, 0, cotangents)),
                (self._apply, (state, loss, metrics, grads, new_model_state))]
    analyses = [fn.lower(*args).compile().memory_analysis() for fn, args in programs]
    return {name: max(int(getattr(a, f"{name}_size_in_bytes")) for a in analyses)
            for name in ("temp", "argument", "output")}


def compiled_memory(train_step, state, batch) -> dict | None:
  """{"temp", "argument", "output"}: bytes per device of the compiled step, None if unknown
  (a HostLoopGradientCache: the largest over its programs, which run one at a time)."""
  return compiled_costs(train_step, state, batch)[0]


def compiled_costs(train_step, state, batch) -> tuple[dict | None, float | None]:
  """(`compiled_memory`, FLOPs of one step on all devices or None) from one compilation,
  the one the loop then reuses (same arguments)."""
  if isinstance(train_step, HostLoopGradientCache):
    return train_step.memory_analysis(state, batch), None
  compiled = train_step.lower(state, batch).compile()
  analysis = compiled.memory_analysis()
  memory = None if analysis is None else {
      name: int(getattr(analysis, f"{name}_size_in_bytes"))
      for name in ("temp", "argument", "output")}
  return memory, utilisation.step_flops(compiled)


def build_train_step(train_config, model, objective, optimizer, mesh, state):
  """(step, state placed on the mesh) from `config.train` (defaults in `settings.RULES`).

  `mesh`: `mesh.make_mesh(train_config.get("mesh"))`. UsageError unless train.batch_size
  splits into micro_batches micro-batches over the mesh's batch shards.
  """
  value = lambda key: settings.value(train_config, key, section="train")
  micro_batches = int(value("micro_batches"))
  dtype = precision.DTYPES[value("compute_dtype")]
  shards = mesh_lib.batch_devices(mesh) * max(micro_batches, 1)
  if train_config.batch_size % shards:
    raise UsageError(
        f"train.batch_size={train_config.batch_size} must divide into "
        f"train.micro_batches={micro_batches} micro-batches over the "
        f"{mesh_lib.batch_devices(mesh)} batch shards of train.mesh "
        f"({dict(mesh.shape)}): make it a multiple of {shards}")
  shardings = sharding.state_shardings(state, mesh, int(value("fsdp_min_size")))
  locked = locked_towers(state["params"], tuple(train_config.get("frozen", ())))
  if locked:  # LiT: a tower with every parameter frozen runs in inference mode.
    model = model.clone(locked_towers=locked)
  step = make_train_step(precision.with_compute_dtype(model, dtype), objective, optimizer, mesh,
                         train_config.seed, state_shardings=shardings,
                         micro_batches=micro_batches, gradient_cache=bool(value("gradient_cache")),
                         gradient_cache_loop=str(value("gradient_cache_loop")),
                         skip_nonfinite=value("on_nonfinite") == "skip")
  return step, jax.device_put(state, shardings)
