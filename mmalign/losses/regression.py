"""Regression alignment: map one modality's embedding onto the other's, pair by pair.

The learned map is the source tower's projection head, trained with the tower below it
(freeze the tower, `train.frozen`, to learn only the map; the closed form on frozen
embeddings is `mmalign.alignment.procrustes`). The target side is held fixed
(`stop_gradient`), as otherwise both towers could collapse onto one constant vector. Only
pairs (i, i) are compared, so there is no kernel: `impl` and `block_kwargs` are ignored.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmalign.errors import UsageError
from mmalign.losses.contrastive import LOSSES

DIRECTIONS = ("text_to_image", "image_to_text")
METRICS = ("mse", "cosine")
_EPS = 1e-6  # Norm floor for "cosine", so a zero row gives cosine 0, not NaN.


def _unit_rows(x: jnp.ndarray) -> jnp.ndarray:
  """[n, d] rows at unit norm; floored under the root, as ‖x‖'s gradient is NaN at 0."""
  squared = jnp.sum(jnp.square(x), axis=1, keepdims=True)  # [n, 1]
  return x * jax.lax.rsqrt(jnp.maximum(squared, _EPS ** 2))


@LOSSES.register("regression")
def regression(text_emb: jnp.ndarray, image_emb: jnp.ndarray, scale: jnp.ndarray, *,
               direction: str = "text_to_image", metric: str = "mse",
               labels: jnp.ndarray | None = None, **unused) -> jnp.ndarray:
  """Mean over pairs of the distance from source_i to the (fixed) target_i.

  text_emb, image_emb: [n, d] float. direction "text_to_image" moves text onto the fixed
  image, "image_to_text" the reverse. metric: "mse" mean_i ‖s_i − t_i‖², "cosine"
  mean_i (1 − cos(s_i, t_i)). `scale`, the bias and `labels` are unused. Returns a scalar,
  float32 (float64 for float64 inputs). Unknown names raise UsageError; unequal shapes
  raise ValueError.
  """
  del scale, labels, unused
  if direction not in DIRECTIONS:
    raise UsageError(f"unknown regression direction {direction!r} (loss.kwargs.direction); "
                     f"allowed: {', '.join(DIRECTIONS)}")
  if metric not in METRICS:
    raise UsageError(f"unknown regression metric {metric!r} (loss.kwargs.metric); "
                     f"allowed: {', '.join(METRICS)}")
  if text_emb.shape != image_emb.shape:
    raise ValueError(f"regression needs matched [n, d] pairs; got text {text_emb.shape} "
                     f"and image {image_emb.shape}")
  source, target = (text_emb, image_emb) if direction == "text_to_image" else (image_emb,
                                                                               text_emb)
  dtype = jnp.promote_types(source.dtype, jnp.float32)  # bfloat16 → float32; float64 kept.
  source = source.astype(dtype)  # [n, d]
  target = jax.lax.stop_gradient(target.astype(dtype))  # [n, d]
  if metric == "mse":
    return jnp.mean(jnp.sum(jnp.square(source - target), axis=1))
  return jnp.mean(1.0 - jnp.sum(_unit_rows(source) * _unit_rows(target), axis=1))
