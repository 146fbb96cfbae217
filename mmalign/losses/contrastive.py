"""Contrastive alignment losses in plain jnp (the kernels issue adds tiled ones)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmalign.registry import Registry

LOSSES = Registry("loss")


@LOSSES.register("infonce")
def symmetric_infonce(text_emb: jnp.ndarray, image_emb: jnp.ndarray, scale: jnp.ndarray,
                      **unused) -> jnp.ndarray:
  """CLIP's loss: ½ (mean CE over rows + mean CE over columns), positives on the diagonal.

  text_emb, image_emb: [n, d]; scale: scalar multiplier (not its log).
  """
  del unused
  logits = scale * text_emb @ image_emb.T  # [n, n]
  diagonal = jnp.diagonal(logits)
  text_to_image = jax.nn.logsumexp(logits, axis=1) - diagonal
  image_to_text = jax.nn.logsumexp(logits, axis=0) - diagonal
  return 0.5 * (text_to_image.mean() + image_to_text.mean())
