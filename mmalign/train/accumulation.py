"""The gradients of one step over the global batch: whole, in micro-batches, or with a
gradient cache. All three return `(loss, metrics, grads, new_model_state)`.

  full_batch      one forward and backward pass over the B rows (`train.micro_batches=1`).
  micro_batched   m passes over micro-batches of B/m rows (the activation memory of B/m),
                  averaged. Exact (up to rounding) for losses that are a mean over pairs;
                  NOT for contrastive ones, whose negatives shrink to the micro-batch.
  gradient_cache  the contrastive batch stays B (Gao et al. 2021): pass 1 embeds the m
                  micro-batches without gradients, the loss and its gradient w.r.t. the
                  embeddings are taken on the whole batch, pass 2 recomputes each
                  micro-batch and pulls its slice back into the params. Same result as
                  full_batch; not for fused heads (`model.fusion`, `task.label`).

Micro-batch j holds rows j, j + m, j + 2m, ..., so each device keeps its own rows (B/m must
divide by the batch shards), and draws dropout from `fold_in(rng, j)` in both passes.
BatchNorm normalises each micro-batch on its own ("ghost" batch norm); the m running
statistics are averaged into one update per step, so `momentum` keeps its meaning.
On CPU `train.gradient_cache_loop="host"` (step.HostLoopGradientCache) avoids XLA:CPU's
slow convolutions inside `lax.scan`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmalign.errors import UsageError
from mmalign import mesh as mesh_lib

# forward(params, model_state, batch, rng) -> (outputs, new_model_state), in train mode.
Forward = Callable[[dict, dict, dict, jax.Array], tuple[dict, dict]]
CACHEABLE_OUTPUTS = ("text_emb", "image_emb", "scale", "bias")


def check_gradient_cache(model) -> None:
  """Fails, naming the config keys, for a model with fused heads."""
  if getattr(model, "fusion", None) is not None or getattr(model, "num_classes", 0):
    raise UsageError(
        "train.gradient_cache=True caches only the text and image embeddings, but "
        "model.fusion / task.label add heads scored on pairs inside the forward pass; "
        "use train.gradient_cache=False (plain micro-batches) with them")


def split_rows(tree, micro_batches: int, mesh: Mesh | None = None):
  """Every leaf [B, ...] → [m, B/m, ...]; micro-batch j holds rows j, j + m, ..."""
  def split(x):
    if x.shape[0] % micro_batches:
      raise UsageError(f"the batch of {x.shape[0]} rows does not split into "
                       f"train.micro_batches={micro_batches}")
    x = jnp.swapaxes(x.reshape(x.shape[0] // micro_batches, micro_batches, *x.shape[1:]), 0, 1)
    if mesh is not None:  # Keep each device's rows where they are.
      x = lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, mesh_lib.batch_axes(mesh))))
    return x
  return jax.tree.map(split, tree)


def merge_rows(tree):
  """Inverse of split_rows: every leaf [m, B/m, ...] → [B, ...] in the batch's order."""
  return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:]), tree)


def mean_over_micro_batches(tree):
  return jax.tree.map(lambda x: x.mean(0) if jnp.issubdtype(x.dtype, jnp.floating) else x[-1], tree)


def full_batch(forward: Forward, objective, params, model_state, batch, rng):
  """One forward and backward pass over the whole batch."""
  def loss_of(p):
    outputs, new_model_state = forward(p, model_state, batch, rng)
    loss, metrics = objective(outputs, batch)
    return loss, ({**metrics, "scale": outputs["scale"]}, new_model_state)

  (loss, (metrics, new_model_state)), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
  return loss, metrics, grads, new_model_state


def micro_batched(forward: Forward, objective, params, model_state, batch, rng, *,
                  micro_batches: int, mesh: Mesh | None = None):
  """Means of loss, metrics and gradients over micro-batches (negatives per micro-batch)."""
  def body(grad_sum, xs):
    j, micro = xs
    loss, metrics, grads, new_model_state = full_batch(
        forward, objective, params, model_state, micro, jax.random.fold_in(rng, j))
    return jax.tree.map(jnp.add, grad_sum, grads), (loss, metrics, new_model_state)

  grad_sum, (losses, metrics, model_states) = lax.scan(
      body, jax.tree.map(jnp.zeros_like, params),
      (jnp.arange(micro_batches), split_rows(batch, micro_batches, mesh)))
  grads = jax.tree.map(lambda g: g / micro_batches, grad_sum)
  return (losses.mean(), mean_over_micro_batches(metrics), grads,
          mean_over_micro_batches(model_states))


def embed_micro_batch(forward: Forward, params, model_state, micro_batch, rng, j):
  """Pass 1 for micro-batch j: (its cacheable outputs, its model state), no gradients."""
  outputs, new_model_state = forward(params, model_state, micro_batch, jax.random.fold_in(rng, j))
  extra = sorted(set(outputs) - set(CACHEABLE_OUTPUTS))
  if extra:
    raise UsageError(f"train.gradient_cache=True cannot cache the model outputs {extra} "
                     "(fused heads); use train.gradient_cache=False")
  return outputs, new_model_state


def loss_and_cotangents(objective, outputs: dict, batch, *, micro_batches: int,
                        mesh: Mesh | None = None):
  """(loss, metrics, cotangents) of the whole batch from the m micro-batches' outputs.

  outputs: embeddings [m, B/m, d]; scale, bias [m] (all equal). cotangents: each
  micro-batch's slice of d loss / d outputs, [m, B/m, d] and [m]; the scalars' gradient is
  shared out evenly, so that the m backward passes add up to it once.
  """
  embeddings = {k: v for k, v in outputs.items() if k in ("text_emb", "image_emb")}
  scalars = {k: v[0] for k, v in outputs.items() if k not in embeddings}
  cached = {**merge_rows(embeddings), **scalars}  # [B, d] in the batch's order.
  (loss, metrics), d_cached = jax.value_and_grad(
      lambda o: objective(o, batch), has_aux=True)(cached)
  cotangents = {**split_rows({k: d_cached[k] for k in embeddings}, micro_batches, mesh),
                **{k: jnp.broadcast_to(d_cached[k] / micro_batches, (micro_batches,))
                   for k in scalars}}
  return loss, {**metrics, "scale": cached["scale"]}, cotangents


def backprop_micro_batch(forward: Forward, params, model_state, micro_batch, rng, j,
                         cotangent: dict):
  """Pass 2 for micro-batch j: recompute its outputs, pull `cotangent` back to params."""
  def cached_outputs(p):
    outputs, _ = forward(p, model_state, micro_batch, jax.random.fold_in(rng, j))
    return {k: outputs[k] for k in cotangent}

  _, pull_back = jax.vjp(cached_outputs, params)
  (grads,) = pull_back(cotangent)
  return grads


def gradient_cache(forward: Forward, objective, params, model_state, batch, rng, *,
                   micro_batches: int, mesh: Mesh | None = None):
  """Full-batch loss and gradients, one micro-batch of activations at a time; both passes
  are `lax.scan`s inside the one compiled step (`gradient_cache_loop="scan"`)."""
  keys = jnp.arange(micro_batches)
  micro = split_rows(batch, micro_batches, mesh)

  def embed(_, xs):
    j, micro_batch = xs
    return None, embed_micro_batch(forward, params, model_state, micro_batch, rng, j)

  _, (outputs, model_states) = lax.scan(embed, None, (keys, micro))
  loss, metrics, cotangents = loss_and_cotangents(objective, outputs, batch,
                                                  micro_batches=micro_batches, mesh=mesh)

  def backprop(grad_sum, xs):
    j, micro_batch, cotangent = xs
    grads = backprop_micro_batch(forward, params, model_state, micro_batch, rng, j, cotangent)
    return jax.tree.map(jnp.add, grad_sum, grads), None

  grads, _ = lax.scan(backprop, jax.tree.map(jnp.zeros_like, params), (keys, micro, cotangents))
  return loss, metrics, grads, mean_over_micro_batches(model_states)
