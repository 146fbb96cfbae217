"""Image encoders for small images."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from mmalign.models.registry import register_image_encoder


@register_image_encoder("cnn")
class SmallCNN(nn.Module):
  """VGG-like stages of 3×3 convolutions, each stage halving the resolution.

  GroupNorm, so there are no running statistics and no dependence on batch mates. `pooled
  [b, width]` sees the whole final map (its mean and flattening), so position is kept;
  `sequence [b, patches, width]` is the final map projected per position.
  """
  channels: Sequence[int] = (64, 128, 256)
  convs_per_stage: int = 1
  width: int = 256
  groups: int = 8  # GroupNorm groups; 0 disables normalisation.
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = images.astype(self.dtype)
    for stage, channels in enumerate(self.channels):
      for conv in range(self.convs_per_stage):
        x = nn.Conv(channels, (3, 3), name=f"conv_{stage}_{conv}", **kw)(x)
        if self.groups:
          x = nn.GroupNorm(num_groups=min(self.groups, channels), **kw)(x)
        x = nn.gelu(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    batch, height, width, channels = x.shape
    features = x.reshape(batch, height * width, channels)  # [b, patches, c]
    pooled = nn.Dense(self.width, name="head", **kw)(
        jnp.concatenate([features.mean(axis=1), x.reshape(batch, -1)], axis=-1))
    sequence = nn.Dense(self.width, name="sequence", **kw)(features)  # [b, patches, width]
    return pooled, sequence


# Importing this module registers every image encoder; these live in their own files.
# pylint: disable-next=wrong-import-position,unused-import
from mmalign.models import resnet, vgg, vit  # noqa: E402,F401
