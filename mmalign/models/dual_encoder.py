"""Dual encoder: two towers projected into one L2-normalised space."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mmalign.models import image_encoders, recurrent, text_encoders  # noqa: F401 (registration)
from mmalign.models.registry import IMAGE_ENCODERS, TEXT_ENCODERS


def l2_normalize(x: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
  return x * jnp.reciprocal(jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps))


class DualEncoder(nn.Module):
  """Text and image towers chosen by name, linear projections, learnable scale.

  The scale (the InfoNCE inverse temperature) is learned as its log, so it
  stays positive; it is clipped at `max_scale` as in CLIP.
  """
  text_encoder: str
  text_kwargs: dict[str, Any]
  image_encoder: str
  image_kwargs: dict[str, Any]
  embed_dim: int = 256
  init_scale: float = 10.0
  max_scale: float = 100.0

  def setup(self):
    self.text_tower = TEXT_ENCODERS.get(self.text_encoder, config_key="model.text_encoder")(
        **self.text_kwargs)
    self.image_tower = IMAGE_ENCODERS.get(self.image_encoder,
                                          config_key="model.image_encoder")(**self.image_kwargs)
    self.text_projection = nn.Dense(self.embed_dim, use_bias=False)
    self.image_projection = nn.Dense(self.embed_dim, use_bias=False)
    self.log_scale = self.param("log_scale", nn.initializers.constant(np.log(self.init_scale)),
                                ())

  def embed_text(self, tokens, *, train: bool = False):
    """tokens [b, l] int32 → [b, embed_dim] float32, unit norm."""
    pooled, _ = self.text_tower(tokens, train=train)
    return l2_normalize(self.text_projection(pooled).astype(jnp.float32))

  def embed_image(self, images, *, train: bool = False):
    """images [b, h, w, c] float32 → [b, embed_dim] float32, unit norm."""
    pooled, _ = self.image_tower(images, train=train)
    return l2_normalize(self.image_projection(pooled).astype(jnp.float32))

  def scale(self):
    return jnp.minimum(jnp.exp(self.log_scale), self.max_scale)

  def __call__(self, tokens, images, *, train: bool = False):
    return (self.embed_text(tokens, train=train), self.embed_image(images, train=train),
            self.scale())
