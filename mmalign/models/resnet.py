"""ResNet image encoder (He et al. 2016, torchvision's "v1.5" layout).

v1.5 puts a downsampling bottleneck's stride on its 3×3 conv rather than the first 1×1 (which
would skip three quarters of the input). Parameter counts equal torchvision's, and explicit
paddings (not "SAME") line up the feature maps, so ported weights give the same outputs.
With `norm="batch"` a training step needs `mutable=["batch_stats"]` (see conv_norms.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from mmalign.models.conv_norms import get_norm
from mmalign.models.registry import register_image_encoder

class _ConvNorm(nn.Module):
  """Conv → norm, optionally ReLU: the unit every ResNet layer is made of."""
  features: int
  kernel: int
  stride: int = 1
  relu: bool = True
  zero_init_norm: bool = False  # Starts the residual branch at zero (Goyal et al. 2017).
  norm: str = "batch"
  groups: int = 32
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    kind = get_norm(self.norm)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    pad = (self.kernel - 1) // 2
    x = nn.Conv(self.features, (self.kernel, self.kernel), strides=self.stride,
                padding=((pad, pad), (pad, pad)), use_bias=kind.conv_bias,
                kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                name="conv", **kw)(x)
    scale_init = nn.initializers.zeros if self.zero_init_norm else nn.initializers.ones
    x = kind.make(channels=self.features, train=train, groups=self.groups,
                  scale_init=scale_init, name="norm", **kw)(x)
    return nn.relu(x) if self.relu else x


class _ResidualBlock(nn.Module):
  """relu(convs(x) + shortcut(x)): x [b, h, w, c] → [b, h/stride, w/stride, C]. The shortcut
  is the identity, or a 1×1 conv + norm ("shortcut") when the shape changes (option B)."""
  # Per conv: (features as a multiple of width, kernel, carries the stride); the last has no
  # ReLU and, with zero_init_residual, a zero-initialised norm scale.
  convs: ClassVar[tuple[tuple[int, int, bool], ...]]

  width: int
  stride: int = 1
  zero_init_residual: bool = False
  norm_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

  @nn.compact
  def __call__(self, x, *, train: bool):
    y = x
    for n, (multiple, kernel, strided) in enumerate(self.convs, 1):
      last = n == len(self.convs)
      y = _ConvNorm(multiple * self.width, kernel, self.stride if strided else 1, relu=not last,
                    zero_init_norm=last and self.zero_init_residual, **self.norm_kwargs,
                    name=f"conv{n}")(y, train=train)
    if self.stride != 1 or x.shape[-1] != y.shape[-1]:
      x = _ConvNorm(y.shape[-1], 1, self.stride, relu=False, **self.norm_kwargs,
                    name="shortcut")(x, train=train)
    return nn.relu(y + x)


class BasicBlock(_ResidualBlock):
  """Two 3×3 convs (ResNet-18/34); C = width."""
  convs = ((1, 3, True), (1, 3, False))


class Bottleneck(_ResidualBlock):
  """1×1 reduce → 3×3 (carries the stride: v1.5) → 1×1 expand (ResNet-50 and deeper);
  C = 4·width."""
  convs = ((1, 1, False), (1, 3, True), (4, 1, False))


# depth → (block, blocks per stage); the four stages have base widths 1, 2, 4, 8 × `width`.
RESNET_LAYOUTS: dict[int, tuple[type[nn.Module], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


@register_image_encoder("resnet")
class ResNet(nn.Module):
  """ResNet-18/34/50/101/152; `(pooled, sequence)` per the image encoder contract.

  `sequence [b, h'·w', C]` is the last stage's feature map (C = 8·width for basic blocks,
  32·width for bottlenecks; h' = h/32, or h/8 with `small_input`); `pooled [b, C]` its mean,
  or with `num_classes` logits `[b, num_classes]`. `small_input` replaces the 7×7/2 stem and
  max-pool with one 3×3/1 conv, for 32×32 images where /32 would leave 1×1 maps.
  `zero_init_residual` starts every block as the identity. Raises ValueError for a depth not
  in RESNET_LAYOUTS.
  """
  depth: int = 18
  width: int = 64  # Stem and first-stage channels; 64 is the standard ResNet.
  norm: str = "batch"  # "batch" | "group" | "none"; see conv_norms.NORMS.
  groups: int = 32  # GroupNorm groups (capped by gcd with the channel count).
  small_input: bool = False
  zero_init_residual: bool = False
  num_classes: int | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    if self.depth not in RESNET_LAYOUTS:
      raise ValueError(f"ResNet depth {self.depth} is not one of {sorted(RESNET_LAYOUTS)}")
    block, stage_sizes = RESNET_LAYOUTS[self.depth]
    norm_kwargs = dict(norm=self.norm, groups=self.groups, dtype=self.dtype,
                       param_dtype=self.param_dtype)
    x = images.astype(self.dtype)  # [b, h, w, c]
    kernel, stride = (3, 1) if self.small_input else (7, 2)
    x = _ConvNorm(self.width, kernel, stride, **norm_kwargs, name="stem")(x, train=train)
    if not self.small_input:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # [b, h/4, w/4, width]
    for stage, blocks in enumerate(stage_sizes):
      for i in range(blocks):
        stride = 2 if stage > 0 and i == 0 else 1
        x = block(self.width * 2**stage, stride, self.zero_init_residual, norm_kwargs,
                  name=f"stage{stage + 1}_block{i + 1}")(x, train=train)
    batch, height, width, channels = x.shape
    sequence = x.reshape(batch, height * width, channels)  # [b, h'·w', C]
    pooled = sequence.mean(axis=1)  # [b, C]
    if self.num_classes is not None:
      pooled = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                        name="head")(pooled)  # [b, num_classes] logits
    return pooled, sequence
