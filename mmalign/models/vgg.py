"""VGG image encoder (Simonyan & Zisserman 2015), with optional normalisation.

A layout is a list of 3×3 conv widths and "M" (2×2 max-pool); the standard ones are named
("11", "13", "16", "19"). With `norm="none"` and `pooling="fc"` parameter counts equal
torchvision's; with a norm the convs drop their bias (the norm's offset replaces it).
With `norm="batch"` a training step needs `mutable=["batch_stats"]` (see conv_norms.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


def _global_average(module: VGG, features, *, train: bool):
  """features [b, h, w, c] → [b, c]: no parameters, any input size."""
  del module, train
  return features.mean(axis=(1, 2))


def _fc_stack(module: VGG, features, *, train: bool):
  """Flatten → (Dense, ReLU, Dropout) × fc_layers → [b, fc_width]; the first kernel's shape
  depends on the input size."""
  x = features.reshape(features.shape[0], -1)  # [b, h·w·c]
  for i in range(module.fc_layers):
    x = nn.Dense(module.fc_width, dtype=module.dtype, param_dtype=module.param_dtype,
                 name=f"fc{i + 1}")(x)
    x = nn.Dropout(module.dropout, deterministic=not train)(nn.relu(x))
  return x


# pooling name → function(module, features [b, h, w, c], train) → pooled [b, d].
VGG_POOLINGS: dict[str, Callable[..., jnp.ndarray]] = {"mean": _global_average,
                                                       "fc": _fc_stack}


@register_image_encoder("vgg")
class VGG(nn.Module):
  """Stacks of 3×3 convs (+ norm) + ReLU separated by 2×2 max-pools.

  `layout`: a name from VGG_LAYOUTS or a sequence of widths and "M". `norm`: see
  conv_norms.NORMS. `pooling`: "mean" (pooled [b, last width]) or "fc" (pooled
  [b, fc_width]). With `num_classes`, pooled becomes logits `[b, num_classes]`; a dual
  encoder leaves it None. `sequence [b, h'·w', C]`: the final feature map, flattened.
  Unknown layout or pooling names raise ValueError.
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
    if self.pooling not in VGG_POOLINGS:
      raise ValueError(f"VGG pooling {self.pooling!r} is not one of {sorted(VGG_POOLINGS)}")
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
    pooled = VGG_POOLINGS[self.pooling](self, x, train=train)  # [b, d]
    if self.num_classes is not None:
      pooled = nn.Dense(self.num_classes, name="head", **dense)(pooled)
    return pooled, sequence
