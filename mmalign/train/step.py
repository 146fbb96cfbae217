"""The jit-compiled training step: forward, objective, gradients, optimizer update.

Kept apart from the loop (trainer.py) so that how a step is computed (shardings,
precision, accumulation) can change without touching checkpointing or logging.
"""

from __future__ import annotations

import jax
import optax

from mmalign.train import mesh as mesh_lib


def make_train_step(model, objective, optimizer, mesh, seed: int):
  """jit-compiled step: batch sharded over `data`, state replicated.

  Dropout keys are `fold_in(key(seed), step)`: a resumed run draws the same
  ones. State collections (BatchNorm statistics) are updated in train mode.
  """
  replicated = mesh_lib.replicated(mesh)
  batch_sharding = mesh_lib.batch_sharded(mesh)
  base_key = jax.random.key(seed)

  def step_fn(state, batch):
    model_state = state.get("model_state", {})
    rngs = {"dropout": jax.random.fold_in(base_key, state["step"])}

    def loss_of(params):
      outputs, new_model_state = model.apply(
          {"params": params, **model_state}, batch["tokens"], batch["images"], train=True,
          rngs=rngs, mutable=list(model_state))
      loss, metrics = objective(outputs, batch)
      return loss, ({**metrics, "scale": outputs["scale"]}, new_model_state)

    (loss, (metrics, new_model_state)), grads = jax.value_and_grad(loss_of, has_aux=True)(
        state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, **metrics, "grad_norm": optax.global_norm(grads)}
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
    if model_state:
      new_state["model_state"] = dict(new_model_state)
    return new_state, metrics

  return jax.jit(step_fn, in_shardings=(replicated, batch_sharding),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))
