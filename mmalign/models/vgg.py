"""VGG image encoder (Simonyan & Zisserman 2015), with optional normalisation.

A layout is a list of 3×3 conv widths and "M" (2×2 max-pool); the standard ones are named
("11", "13", "16", "19"). With `norm="none"` and `pooling="fc"` parameter counts equal
torchvision's; with a norm the convs drop their bias (the norm's offset replaces it).
With `norm="batch"` a training step needs `mutable=["batch_stats"]` (see conv_norms.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mmalign.models.conv_norms import get_norm
from mmalign.models.registry import register_image_encoder

POOL = "M"


def stage_layout(channels: Sequence[int], convs: Sequence[int]) -> tuple[int | str, ...]:
  """Per-stage widths and conv counts → a layout with a max-pool after every stage."""
  if len(channels) != len(convs):
    raise ValueError(f"{len(channels)} stage widths but {len(convs)} conv counts")
  layout: list[int | str] = []
  for width, count in zip(channels, convs):
    layout += [width] * count + [POOL]
  return tuple(layout)


_IMAGENET_WIDTHS = (64, 128, 256, 512, 512)
VGG_LAYOUTS: dict[str, tuple[int | str, ...]] = {
    "11": stage_layout(_IMAGENET_WIDTHS, (1, 1, 2, 2, 2)),  # Config A.
    "13": stage_layout(_IMAGENET_WIDTHS, (2, 2, 2, 2, 2)),  # Config B.
    "16": stage_layout(_IMAGENET_WIDTHS, (2, 2, 3, 3, 3)),  # Config D.
    "19": stage_layout(_IMAGENET_WIDTHS, (2, 2, 4, 4, 4)),  # Config E.
}


@register_image_encoder("vgg")
class VGG(nn.Module):
  """Stacks of 3×3 convs (+ norm) + ReLU separated by 2×2 max-pools.

  `layout`: a name from VGG_LAYOUTS or a sequence of widths and "M". `norm`: see
  conv_norms.NORMS. `pooling`: "mean" (global average, pooled [b, last width], any input size)
  or "fc" (flatten, then (Dense, ReLU, Dropout) × fc_layers: pooled [b, fc_width], the first
  kernel sized by the input). With `num_classes`, pooled becomes logits `[b, num_classes]`.
  `sequence [b, h'·w', C]`: the final feature map, flattened. Unknown layout or pooling names
  raise ValueError.
  """
  layout: str | Sequence[int | str] = "11"
  norm: str = "batch"
  groups: int = 32
  pooling: str = "mean"  # "mean" | "fc"
  fc_width: int = 4096
  fc_layers: int = 2
  dropout: float = 0.5  # Only in the "fc" pooling, as in the original.
  num_classes: int | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def resolved_layout(self) -> tuple[int | str, ...]:
    if isinstance(self.layout, str):
      if self.layout not in VGG_LAYOUTS:
        raise ValueError(f"VGG layout {self.layout!r} is not one of {sorted(VGG_LAYOUTS)}")
      return VGG_LAYOUTS[self.layout]
    return tuple(self.layout)

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    if self.pooling not in ("mean", "fc"):
      raise ValueError(f"VGG pooling {self.pooling!r} is not one of ['fc', 'mean']")
    kind = get_norm(self.norm)
    dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = images.astype(self.dtype)  # [b, h, w, c]
    conv = 0
    for item in self.resolved_layout():
      if item == POOL:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        continue
      conv += 1
      x = nn.Conv(int(item), (3, 3), padding=((1, 1), (1, 1)), use_bias=kind.conv_bias,
                  kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                  name=f"conv{conv}", **dense)(x)
      x = kind.make(channels=int(item), train=train, groups=self.groups,
                    scale_init=nn.initializers.ones, name=f"norm{conv}", **dense)(x)
      x = nn.relu(x)
    batch, height, width, channels = x.shape
    sequence = x.reshape(batch, height * width, channels)  # [b, h'·w', C]
    if self.pooling == "mean":
      pooled = x.mean(axis=(1, 2))  # [b, C]
    else:
      pooled = x.reshape(batch, -1)  # [b, h'·w'·C]
      for i in range(self.fc_layers):
        pooled = nn.Dense(self.fc_width, name=f"fc{i + 1}", **dense)(pooled)
        pooled = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(pooled))
    if self.num_classes is not None:
      pooled = nn.Dense(self.num_classes, name="head", **dense)(pooled)
    return pooled, sequence
