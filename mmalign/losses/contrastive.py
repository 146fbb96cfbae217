"""Contrastive alignment losses, computed through the kernels API (kernels/api.py).

The implementation (reference / xla_chunked / pallas, or "auto": Pallas on
GPU and TPU, the tiled XLA path on CPU) and its block sizes come from the
config (`loss.kernel`), so nothing here hides a knob.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from kernels import api as kernels_api
from mmalign.registry import Registry

LOSSES = Registry("loss")


@LOSSES.register("infonce")
def symmetric_infonce(text_emb: jnp.ndarray, image_emb: jnp.ndarray, scale: jnp.ndarray,
                      *, impl: str = "reference", block_kwargs: dict[str, Any] | None = None,
                      **unused) -> jnp.ndarray:
  """CLIP's loss: ½ (mean CE over rows + mean CE over columns), positives on the diagonal.

  text_emb, image_emb: [n, d]; scale: scalar multiplier (not its log).
  """
  del unused
  return kernels_api.infonce(text_emb, image_emb, scale, impl=impl, **(block_kwargs or {}))


@LOSSES.register("sigmoid")
def sigmoid(text_emb: jnp.ndarray, image_emb: jnp.ndarray, scale: jnp.ndarray, *,
            bias: jnp.ndarray, impl: str = "reference",
            block_kwargs: dict[str, Any] | None = None, **unused) -> jnp.ndarray:
  """SigLIP's loss: −Σ_ij log σ(z_ij (s·t_i·i_j + b)) / n, z = +1 on the diagonal, −1 elsewhere."""
  del unused
  return kernels_api.sigmoid(text_emb, image_emb, scale, bias, impl=impl,
                             **(block_kwargs or {}))
