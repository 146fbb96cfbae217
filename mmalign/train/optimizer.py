"""AdamW with linear warm-up and cosine decay; no decay on biases, norms or the scale."""

from __future__ import annotations

import re

import jax
import optax

from mmalign.train.precision import DTYPES


def learning_rate_schedule(*, peak: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup_steps,
      decay_steps=total_steps, end_value=0.0)


def _decay_mask(params):
  """Decay only matrices and kernels (ndim ≥ 2); embeddings included, as in CLIP."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def param_path(path) -> str:
  """"text_tower/embed/embedding" for a jax.tree_util key path."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def frozen_labels(params, patterns: tuple[str, ...]):
  """"frozen" for parameters whose path matches any regex in `patterns`, else "trained"."""
  compiled = [re.compile(p) for p in patterns]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "frozen" if any(c.search(param_path(path)) for c in compiled)
      else "trained", params)


def locked_towers(params, patterns: tuple[str, ...]) -> tuple[str, ...]:
  """The towers every parameter of which a `frozen` regex matches (LiT's locked tower)."""
  labels = frozen_labels(params, tuple(patterns)) if patterns else {}
  return tuple(tower for tower in ("text_tower", "image_tower") if tower in labels
               and all(label == "frozen" for label in jax.tree.leaves(labels[tower])))


def _adam_moments_in(dtype, *, b1: float, b2: float) -> optax.GradientTransformation:
  """optax.scale_by_adam with both moments stored in `dtype` (optax's mu_dtype covers mu only).

  The update itself runs in float32 (the float32 gradients promote the stored
  moments); scale_by_adam casts the new moments back to their stored dtype.
  """
  adam = optax.scale_by_adam(b1=b1, b2=b2, mu_dtype=dtype)

  def init(params):
    state = adam.init(params)
    return state._replace(nu=jax.tree.map(lambda x: x.astype(dtype), state.nu))
  return optax.GradientTransformation(init, adam.update)


def scale_by_path(multipliers: tuple[tuple[str, float], ...]) -> optax.GradientTransformation:
  """Each update times the multiplier of the first (regex, multiplier) whose regex matches
  the parameter's path (1 when none does): a learning rate per parameter group, e.g. a
  lower one for pretrained towers. Stateless."""
  compiled = [(re.compile(pattern), float(multiplier)) for pattern, multiplier in multipliers]

  def factor(path) -> float:
    name = param_path(path)
    return next((m for pattern, m in compiled if pattern.search(name)), 1.0)

  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(lambda path, u: u * factor(path), updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def adamw(schedule: optax.Schedule, *, weight_decay: float, b1: float = 0.9, b2: float = 0.98,
          grad_clip_norm: float | None = 1.0, frozen: tuple[str, ...] = (),
          moments_dtype: str = "float32",
          learning_rate_multipliers: tuple[tuple[str, float], ...] = ()
          ) -> optax.GradientTransformation:
  """AdamW; parameters matching a `frozen` regex get no update at all (no weight decay),
  and are left out of the gradient-norm clipping, so freezing does not change the rest.

  moments_dtype (`train.optimizer_moments_dtype`): "bfloat16" stores Adam's moments in
  bfloat16, halving the optimizer's memory; the state has the same tree either way.
  learning_rate_multipliers: `scale_by_path` after AdamW (a group's learning rate and
  weight decay both scale); absent when empty, so older checkpoints keep their tree.
  """
  chain = [optax.clip_by_global_norm(grad_clip_norm)] if grad_clip_norm else []
  if moments_dtype == "float32":
    chain.append(optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay,
                             mask=_decay_mask))
  else:  # optax.adamw's own chain, with the moments stored in moments_dtype.
    chain.append(optax.chain(
        _adam_moments_in(DTYPES[moments_dtype], b1=b1, b2=b2),
        optax.add_decayed_weights(weight_decay, _decay_mask),
        optax.scale_by_learning_rate(schedule)))
  if learning_rate_multipliers:
    chain.append(scale_by_path(tuple(learning_rate_multipliers)))
  trained = optax.chain(*chain)
  if not frozen:
    return trained
  return optax.multi_transform({"trained": trained, "frozen": optax.set_to_zero()},
                               lambda params: frozen_labels(params, tuple(frozen)))
