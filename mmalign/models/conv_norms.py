"""Normalisation layers for convolutional encoders, chosen by name ("batch", "group", "none").

Shared by VGG and ResNet so both spell BatchNorm the same way (torchvision's momentum and
epsilon). BatchNorm keeps running statistics in the `batch_stats` collection: a training step
must call `apply(variables, images, train=True, mutable=["batch_stats"])` and carry the
returned statistics forward; eval (`train=False`) uses the running averages, so an example's
output does not depend on its batch mates. Under `jax.jit` with a batch-sharded input the
statistics are the global batch's; the running variance averages the biased batch variance.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from mmalign.registry import Registry


@dataclasses.dataclass(frozen=True)
class NormKind:
  """How to build one normalisation layer, and whether the conv before it needs a bias
  (not before a norm with its own offset, which would subtract it away)."""
  make: Callable[..., Callable[[jnp.ndarray], jnp.ndarray]]
  conv_bias: bool


NORMS: Registry[NormKind] = Registry("convolution norm")

BATCH_NORM_MOMENTUM = 0.9  # torchvision's momentum=0.1 in the other convention.
BATCH_NORM_EPSILON = 1e-5


def _batch_norm(*, train: bool, scale_init, dtype, param_dtype, name: str, **unused):
  del unused  # channels, groups
  return nn.BatchNorm(use_running_average=not train, momentum=BATCH_NORM_MOMENTUM,
                      epsilon=BATCH_NORM_EPSILON, scale_init=scale_init, dtype=dtype,
                      param_dtype=param_dtype, name=name)


def _group_norm(*, channels: int, groups: int, scale_init, dtype, param_dtype, name: str,
                **unused):
  """gcd(groups, channels) groups, so `groups=32` stays valid on narrow test models."""
  del unused  # train
  return nn.GroupNorm(num_groups=math.gcd(groups, channels), epsilon=1e-5,
                      scale_init=scale_init, dtype=dtype, param_dtype=param_dtype, name=name)


def _no_norm(**unused):
  del unused
  return lambda x: x


NORMS.register("batch")(NormKind(_batch_norm, conv_bias=False))
NORMS.register("group")(NormKind(_group_norm, conv_bias=False))
NORMS.register("none")(NormKind(_no_norm, conv_bias=True))


def get_norm(name: str, *, config_key: str = "norm") -> NormKind:
  """Looks `name` up; an unknown one fails listing the registered names."""
  return NORMS.get(name, config_key=config_key)
