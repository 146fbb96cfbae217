"""Vision Transformer image encoder (Dosovitskiy et al. 2021).

Laid out like timm's `vit_base_patch16_224` (parameter counts equal), with its LayerNorm
epsilon and exact GELU, so ported weights give the same outputs. Position embeddings are sized
by the image shape seen at `init`, not interpolated. CLIP's vision tower (OpenAI, Hugging Face
`CLIPVisionModel`) is the same Transformer with `patch_bias=False, norm_embeddings=True,
final_norm_on="pooled", activation="quick_gelu", norm_epsilon=1e-5`; SigLIP's with
`pooling="map", activation="gelu_tanh"`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmalign.models.registry import register_image_encoder

# variant → (width, depth, heads); the MLP is 4× wide in all of them.
VIT_VARIANTS: dict[str, tuple[int, int, int]] = {"Ti": (192, 12, 3), "S": (384, 12, 6),
                                                 "B": (768, 12, 12), "L": (1024, 24, 16)}
LAYER_NORM_EPSILON = 1e-6
# Exact GELU (ViT, timm); x·sigmoid(1.702x) (CLIP); GELU's tanh approximation (SigLIP).
ACTIVATIONS = ("gelu", "quick_gelu", "gelu_tanh")
POOLINGS = ("cls", "mean", "map")


def activate(x, activation: str):
  """The MLP's nonlinearity by name (one of ACTIVATIONS)."""
  if activation == "quick_gelu":
    return x * nn.sigmoid(1.702 * x)
  return nn.gelu(x, approximate=activation == "gelu_tanh")


class ViTBlock(nn.Module):
  """Pre-LN Transformer block: x + Attn(LN(x)), then x + MLP(LN(x)); dropout as in ViT."""
  heads: int
  mlp_dim: int
  dropout: float = 0.0
  activation: str = "gelu"  # One of ACTIVATIONS, in the MLP.
  norm_epsilon: float = LAYER_NORM_EPSILON
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool, mask=None):  # x: [b, tokens, width]
    """mask: [b, 1, tokens, tokens] bool, which tokens each token may attend to; None: all."""
    dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    drop = nn.Dropout(self.dropout, deterministic=not train)
    y = nn.LayerNorm(epsilon=self.norm_epsilon, name="norm1", **dense)(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.heads, dropout_rate=self.dropout,
                                        deterministic=not train, name="attention",
                                        **dense)(y, y, mask=mask)
    x = x + drop(y)
    y = nn.LayerNorm(epsilon=self.norm_epsilon, name="norm2", **dense)(x)
    y = drop(activate(nn.Dense(self.mlp_dim, name="mlp_in", **dense)(y), self.activation))
    y = nn.Dense(x.shape[-1], name="mlp_out", **dense)(y)
    return x + drop(y)


# What a rematerialised block keeps for the backward pass (the rest is recomputed): nothing,
# or the outputs of its matrix multiplications.
REMAT_POLICIES = {"none": None, "full": jax.checkpoint_policies.nothing_saveable,
                  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


class _LayerStep(ViTBlock):
  """A ViTBlock called `(x, mask) → (x, None)` with `train` fixed: the form `nn.remat`
  (a static flag cannot be a traced argument) and `nn.scan` (carry, input) take. Same
  parameters as ViTBlock."""
  training: bool = False

  def __call__(self, x, mask):  # pylint: disable=arguments-differ
    return super().__call__(x, train=self.training, mask=mask), None


def transformer_layers(x, mask, *, depth: int, block: dict, train: bool, remat: str = "none",
                       scan: bool = False):
  """`depth` ViTBlocks over x [b, tokens, width], created in the calling module's scope as
  `block{i}`, or with `scan` as one `blocks` whose parameters have a leading [depth] axis.

  `remat` (a REMAT_POLICIES key) recomputes each block's activations in the backward pass;
  scan compiles one block instead of `depth`; outputs and gradients stay the plain path's.
  Use both: on XLA:CPU an unrolled remat saves no memory. Raises ValueError for unknown `remat`.
  """
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat {remat!r} is not one of {list(REMAT_POLICIES)}")
  layer = _LayerStep if remat == "none" else nn.remat(_LayerStep, policy=REMAT_POLICIES[remat],
                                                      prevent_cse=not scan)
  if scan:
    stack = nn.scan(layer, variable_axes={"params": 0},
                    split_rngs={"params": True, "dropout": True}, in_axes=nn.broadcast,
                    length=depth)
    return stack(**block, training=train, name="blocks")(x, mask)[0]
  for i in range(depth):
    x = layer(**block, training=train, name=f"block{i}")(x, mask)[0]
  return x


class MAPHead(nn.Module):
  """Multi-head attention pooling (Lee et al. 2019; SigLIP's head): a learned probe attends
  over the tokens, then a residual MLP on its LayerNorm. [b, tokens, width] → [b, width]."""
  heads: int
  mlp_dim: int
  activation: str = "gelu"
  norm_epsilon: float = LAYER_NORM_EPSILON
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    batch, _, width = x.shape
    probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, width),
                       self.param_dtype)
    y = nn.MultiHeadDotProductAttention(num_heads=self.heads, name="attention", **dense)(
        jnp.broadcast_to(probe.astype(self.dtype), (batch, 1, width)), x)  # [b, 1, width]
    z = nn.LayerNorm(epsilon=self.norm_epsilon, name="norm", **dense)(y)
    z = activate(nn.Dense(self.mlp_dim, name="mlp_in", **dense)(z), self.activation)
    return (y + nn.Dense(width, name="mlp_out", **dense)(z))[:, 0]


@register_image_encoder("vit")
class ViT(nn.Module):
  """ViT-Ti/S/B/L by `variant`; explicit `width`, `depth`, `heads` or `mlp_dim` (default
  4·width) override the variant's.

  `sequence [b, patches, width]`: the patch tokens without CLS; `pooled [b, width]`: the CLS
  token (`pooling="cls"`, the only one adding it), the mean of `sequence` (`"mean"`) or a
  `MAPHead` over it (`"map"`, SigLIP's). The final LayerNorm acts on every token before pooling
  (`final_norm_on="all"`, timm) or on `pooled` only (`"pooled"`, CLIP's post_layernorm; then
  `sequence` is Hugging Face's un-normed `last_hidden_state[:, 1:]`). With `num_classes`,
  pooled becomes logits `[b, num_classes]`. Raises ValueError for an unknown variant, pooling,
  `final_norm_on` or activation, or an image size that is not a multiple of `patch_size`.
  """
  variant: str = "Ti"
  patch_size: int = 16
  width: int | None = None
  depth: int | None = None
  heads: int | None = None
  mlp_dim: int | None = None
  pooling: str = "cls"  # One of POOLINGS.
  dropout: float = 0.0
  num_classes: int | None = None
  patch_bias: bool = True  # The patch embedding (a conv) has a bias; CLIP's has none.
  norm_embeddings: bool = False  # A LayerNorm right after adding positions (CLIP's pre-norm).
  final_norm_on: str = "all"  # "all" tokens | "pooled" only (see above).
  activation: str = "gelu"  # In the MLPs: one of ACTIVATIONS.
  norm_epsilon: float = LAYER_NORM_EPSILON  # Of every LayerNorm; CLIP's is 1e-5.
  remat: str = "none"  # Memory: one of REMAT_POLICIES (transformer_layers).
  scan_layers: bool = False  # Compile one block: parameters stacked under `blocks`.
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def dims(self) -> tuple[int, int, int, int]:
    """(width, depth, heads, mlp_dim) after applying the overrides to the variant."""
    if self.variant not in VIT_VARIANTS:
      raise ValueError(f"ViT variant {self.variant!r} is not one of {sorted(VIT_VARIANTS)}")
    width, depth, heads = VIT_VARIANTS[self.variant]
    width = self.width or width
    return width, self.depth or depth, self.heads or heads, self.mlp_dim or 4 * width

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    for field, allowed in (("pooling", POOLINGS), ("final_norm_on", ("all", "pooled")),
                           ("activation", ACTIVATIONS)):
      if getattr(self, field) not in allowed:
        raise ValueError(f"ViT {field} {getattr(self, field)!r} is not one of {list(allowed)}")
    width, depth, heads, mlp_dim = self.dims()
    _, height, image_width, _ = images.shape
    if height % self.patch_size or image_width % self.patch_size:
      raise ValueError(f"image size {height}×{image_width} is not a multiple of the patch "
                       f"size {self.patch_size}")
    dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Conv(width, (self.patch_size, self.patch_size), strides=self.patch_size,
                use_bias=self.patch_bias, padding="VALID", name="patch_embed",
                **dense)(images.astype(self.dtype))
    batch = x.shape[0]
    x = x.reshape(batch, -1, width)  # [b, patches, width]
    num_patches = x.shape[1]
    if self.pooling == "cls":
      cls = self.param("cls_token", nn.initializers.zeros, (1, 1, width), self.param_dtype)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, width)), x],
                          axis=1)  # [b, 1 + patches, width]
    positions = self.param("pos_embed", nn.initializers.normal(0.02), (1, x.shape[1], width),
                           self.param_dtype)
    x = x + positions.astype(self.dtype)
    if self.norm_embeddings:
      x = nn.LayerNorm(epsilon=self.norm_epsilon, name="embedding_norm", **dense)(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = transformer_layers(
        x, None, depth=depth, train=train, remat=self.remat, scan=self.scan_layers,
        block=dict(heads=heads, mlp_dim=mlp_dim, dropout=self.dropout,
                   activation=self.activation, norm_epsilon=self.norm_epsilon, **dense))
    final_norm = nn.LayerNorm(epsilon=self.norm_epsilon, name="final_norm", **dense)
    if self.final_norm_on == "all":
      x = final_norm(x)
    sequence = x[:, -num_patches:]  # [b, patches, width]
    if self.pooling == "map":
      pooled = MAPHead(heads, mlp_dim, self.activation, self.norm_epsilon, name="map_head",
                       **dense)(sequence)
    else:
      pooled = x[:, 0] if self.pooling == "cls" else sequence.mean(axis=1)  # [b, width]
    if self.final_norm_on == "pooled":
      pooled = final_norm(pooled)
    if self.num_classes is not None:
      pooled = nn.Dense(self.num_classes, name="head", **dense)(pooled)  # [b, num_classes]
    return pooled, sequence
