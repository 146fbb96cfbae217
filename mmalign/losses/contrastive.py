"""Contrastive alignment losses, computed through the kernels API (kernels/api.py).

The implementation (`impl`: reference / xla_chunked / pallas, or "auto") and its block sizes
come from the config (`loss.kernel`), so nothing here hides a knob.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from kernels import api as kernels_api
from mmalign.registry import Registry

LOSSES = Registry("loss")


@LOSSES.register("infonce")
def symmetric_infonce(text_emb: jnp.ndarray, image_emb: jnp.ndarray, scale: jnp.ndarray,
                      *, impl: str = "auto", block_kwargs: dict[str, Any] | None = None,
                      **unused) -> jnp.ndarray:
  """CLIP's loss: ½ (mean CE over rows + mean CE over columns), positives on the diagonal;
  text_emb, image_emb: [n, d]; scale: scalar multiplier (not its log)."""
  del unused
  return kernels_api.infonce(text_emb, image_emb, scale, impl=impl, **(block_kwargs or {}))


def image_rows_infonce(text_emb: jnp.ndarray, image_emb: jnp.ndarray, scale: jnp.ndarray,
                       image_to_text: jnp.ndarray, *, impl: str = "auto",
                       block_kwargs: dict[str, Any] | None = None, **unused) -> jnp.ndarray:
  """InfoNCE with rows = images, columns = texts (`data.sampling="images"` batches).

  Images as rows because each has exactly one caption, while a caption may be shared by
  several images (the kernels' multi-positive column); texts without an image are only
  negatives, and one image per text gives `symmetric_infonce`. text_emb: [T, d]; image_emb:
  [B, d]; scale: scalar; image_to_text: [B] int in [0, T).
  """
  del unused
  return kernels_api.infonce(image_emb, text_emb, scale, image_to_text, impl=impl,
                             **(block_kwargs or {}))


@LOSSES.register("sigmoid")
def sigmoid(text_emb: jnp.ndarray, image_emb: jnp.ndarray, scale: jnp.ndarray, *,
            bias: jnp.ndarray, impl: str = "auto",
            block_kwargs: dict[str, Any] | None = None, **unused) -> jnp.ndarray:
  """SigLIP's loss: −Σ_ij log σ(z_ij (s·t_i·i_j + b)) / n; z_ij = 1 if i = j, else −1."""
  del unused
  return kernels_api.sigmoid(text_emb, image_emb, scale, bias, impl=impl,
                             **(block_kwargs or {}))
