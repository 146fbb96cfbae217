"""Fusion modules: one vector per example from a text encoding and an image encoding.

Every module in `FUSIONS` maps one `FusionInputs` to `fused [batch, out_dim]` in its compute
dtype (formulas: design survey §4.2). `present [batch, 2]` marks per example whether its text /
image exists; a module then uses the other modality alone, or with neither a finite default.
Unread values (padding, a missing modality) are zeroed with `where`, so even NaN cannot leak.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import struct

from mmalign.errors import UsageError
from mmalign.models.text_encoders import TransformerBlock, masked_mean
from mmalign.registry import Registry

FUSIONS = Registry("fusion module")
register_fusion = FUSIONS.register


def build_fusion(name: str, *, config_key: str | None = None, **kwargs) -> nn.Module:
  """The fusion module `name` built from config kwargs; unknown names list the registered ones."""
  return FUSIONS.get(name, config_key=config_key)(**kwargs)


@struct.dataclass
class FusionInputs:
  """Both encoders' outputs for one batch, with what is valid in them.

  A frozen pytree, so it passes through `jax.jit` as one argument. Masks mark valid
  positions; `present` marks whether an example has the modality at all.
  """
  text_pooled: jnp.ndarray  # [b, dt]
  text_seq: jnp.ndarray  # [b, lt, dt]
  text_mask: jnp.ndarray  # [b, lt] bool: valid tokens (tokens != 0 for our tokenizer)
  image_pooled: jnp.ndarray  # [b, di]
  image_seq: jnp.ndarray  # [b, li, di]
  image_mask: jnp.ndarray  # [b, li] bool: valid patches (all True for the CNN)
  present: jnp.ndarray  # [b, 2] bool: (has text, has image)

  @classmethod
  def create(cls, text: tuple[jnp.ndarray, jnp.ndarray], image: tuple[jnp.ndarray, jnp.ndarray],
             *, text_mask=None, image_mask=None, present=None) -> FusionInputs:
    """From encoder outputs `(pooled, sequence)`; masks left out mean "all valid"."""
    text_pooled, text_seq = text
    image_pooled, image_seq = image
    text_mask = jnp.ones(text_seq.shape[:2], bool) if text_mask is None else text_mask
    image_mask = jnp.ones(image_seq.shape[:2], bool) if image_mask is None else image_mask
    present = jnp.ones((text_pooled.shape[0], 2), bool) if present is None else present
    return cls(text_pooled, text_seq, jnp.asarray(text_mask, bool), image_pooled, image_seq,
               jnp.asarray(image_mask, bool), jnp.asarray(present, bool))

  @property
  def has_text(self) -> jnp.ndarray:  # [b] bool
    return self.present[:, 0].astype(bool)

  @property
  def has_image(self) -> jnp.ndarray:  # [b] bool
    return self.present[:, 1].astype(bool)

  def sanitized(self) -> FusionInputs:
    """Masks folded with presence (so sequence modules need only the masks); unread values zeroed.

    Raises UsageError naming the offending shapes, rather than a broadcasting error deep inside.
    """
    b, lt, dt = self.text_seq.shape
    _, li, di = self.image_seq.shape
    expected = {"text_pooled": (b, dt), "text_mask": (b, lt), "image_pooled": (b, di),
                "image_seq": (b, li, di), "image_mask": (b, li), "present": (b, 2)}
    wrong = {k: getattr(self, k).shape for k, v in expected.items() if getattr(self, k).shape != v}
    if wrong:
      raise UsageError(f"FusionInputs shapes disagree with text_seq {self.text_seq.shape}: "
                       f"got {wrong}, expected { {k: expected[k] for k in wrong} }")
    text_mask = self.text_mask.astype(bool) & self.has_text[:, None]  # [b, lt]
    image_mask = self.image_mask.astype(bool) & self.has_image[:, None]  # [b, li]
    return self.replace(
        text_pooled=jnp.where(self.has_text[:, None], self.text_pooled, 0),
        text_seq=jnp.where(text_mask[..., None], self.text_seq, 0),
        text_mask=text_mask,
        image_pooled=jnp.where(self.has_image[:, None], self.image_pooled, 0),
        image_seq=jnp.where(image_mask[..., None], self.image_seq, 0),
        image_mask=image_mask)


class _Fusion(nn.Module):
  """Fields and helpers every fusion module shares (compute and parameter dtypes)."""
  # (registered name, {string field: allowed values}), checked at construction.
  choices: ClassVar[tuple[str, dict[str, tuple[str, ...]]]] = ("", {})
  dtype: Any = jnp.float32  # Compute dtype, e.g. jnp.bfloat16; the output has it too.
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    name, fields = self.choices
    for field, allowed in fields.items():
      if getattr(self, field) not in allowed:
        raise UsageError(f"{name}.{field} must be one of {', '.join(allowed)}; "
                         f"got {getattr(self, field)!r}")
    super().__post_init__()

  def _dense(self, features: int, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  def _to_width(self, x: jnp.ndarray, width: int, name: str) -> jnp.ndarray:
    """A learned linear map to `width`, skipped when `x` already has it (no hidden projection)."""
    return x if x.shape[-1] == width else self._dense(width, name)(x)

  def _pooled(self, inputs: FusionInputs) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(text [b, dt], image [b, di]) pooled vectors in the compute dtype, zero where missing."""
    return inputs.text_pooled.astype(self.dtype), inputs.image_pooled.astype(self.dtype)


@register_fusion("concat")
class Concat(_Fusion):
  """m = [t; i]: nothing is lost, the downstream head learns the interaction.

  A missing modality becomes a learned "missing" vector (or zeros), so the head can tell
  "absent" from "present but small". out_dim = wt + wi (+ 2 with `indicator`), where
  w = `width` or the input's own width.
  """
  width: int | None = None  # Common width both are mapped to first; None keeps their own.
  missing: str = "learned"  # "learned" | "zeros": what stands in for a missing modality.
  indicator: bool = False  # Append the presence bits [b, 2] as features.
  choices = ("concat", {"missing": ("learned", "zeros")})

  @nn.compact
  def __call__(self, inputs: FusionInputs, *, train: bool = False) -> jnp.ndarray:
    inputs = inputs.sanitized()
    parts = []
    for name, x, has in (("text", inputs.text_pooled, inputs.has_text),
                         ("image", inputs.image_pooled, inputs.has_image)):
      x = x.astype(self.dtype)
      if self.width is not None:
        x = self._to_width(x, self.width, f"{name}_proj")
      fill = jnp.zeros((x.shape[-1],), self.dtype)
      if self.missing == "learned":
        fill = self.param(f"{name}_missing", nn.initializers.normal(0.02), (x.shape[-1],),
                          self.param_dtype).astype(self.dtype)
      parts.append(jnp.where(has[:, None], x, fill))
    if self.indicator:
      parts.append(inputs.present.astype(self.dtype))
    return jnp.concatenate(parts, axis=-1)  # [b, out_dim]


@register_fusion("weighted_sum")
class WeightedSum(_Fusion):
  """m = α t + (1 − α) i over a common width; out_dim = width.

  `alpha_mode`: "fixed" (α = `alpha`), "scalar" (one learned α, initially `alpha`), "gate"
  (per example and dimension, α = sigmoid(W[t; i] + b)). `width` defaults to the larger input
  width. A missing image sets α to 1, a missing text to 0; neither present gives zeros.
  """
  alpha_mode: str = "scalar"
  alpha: float = 0.5
  width: int | None = None
  choices = ("weighted_sum", {"alpha_mode": ("fixed", "scalar", "gate")})

  def __post_init__(self):
    super().__post_init__()
    if not 0.0 <= self.alpha <= 1.0 or (self.alpha_mode == "scalar" and self.alpha in (0.0, 1.0)):
      raise UsageError(f"weighted_sum.alpha must lie in [0, 1] (open for 'scalar'); "
                       f"got {self.alpha}")

  @nn.compact
  def __call__(self, inputs: FusionInputs, *, train: bool = False) -> jnp.ndarray:
    inputs = inputs.sanitized()
    t, i = self._pooled(inputs)
    width = self.width or max(t.shape[-1], i.shape[-1])
    t = self._to_width(t, width, "text_proj")  # [b, w]
    i = self._to_width(i, width, "image_proj")  # [b, w]
    if self.alpha_mode == "fixed":
      alpha = jnp.asarray(self.alpha, self.dtype)  # []
    elif self.alpha_mode == "scalar":
      initial = np.log(self.alpha / (1 - self.alpha))  # sigmoid(initial) = alpha
      logit = self.param("alpha_logit", nn.initializers.constant(initial), (), self.param_dtype)
      alpha = nn.sigmoid(logit.astype(self.dtype))  # []
    else:
      alpha = nn.sigmoid(self._dense(width, "gate")(jnp.concatenate([t, i], axis=-1)))  # [b, w]
    has_t, has_i = inputs.has_text[:, None], inputs.has_image[:, None]
    alpha = jnp.where(has_t & has_i, alpha, has_t.astype(self.dtype))  # [b, 1 or w]
    # A projected missing modality is its bias, not zero: select rather than rely on α.
    t, i = jnp.where(has_t, t, 0), jnp.where(has_i, i, 0)
    return alpha * t + (1 - alpha) * i


@register_fusion("cross_attention")
class CrossAttention(_Fusion):
  """Tokens of one modality attend to the other's; out_dim = width ("both": 2 × width).

  "text_to_image": text tokens query the valid image patches; the output, mean-pooled over
  valid text tokens, is added to the pooled text, so an example without an image (or a valid
  patch) gets exactly its pooled text, one without text its pooled image. "image_to_text" swaps
  the roles; "both" concatenates the two. `width` defaults to the larger input width; a
  narrower pooled input's projection serves only that fallback (no gradient from full pairs).
  """
  direction: str = "text_to_image"  # "text_to_image" | "image_to_text" | "both"
  width: int | None = None
  heads: int = 1
  dropout: float = 0.0  # On attention weights, training only.
  choices = ("cross_attention", {"direction": ("text_to_image", "image_to_text", "both")})

  @nn.compact
  def __call__(self, inputs: FusionInputs, *, train: bool = False) -> jnp.ndarray:
    inputs = inputs.sanitized()
    t, i = self._pooled(inputs)
    width = self.width or max(t.shape[-1], i.shape[-1])
    streams = {  # modality → (pooled [b, w], sequence [b, l, d], mask [b, l], present [b])
        "text": (self._to_width(t, width, "text_proj"), inputs.text_seq.astype(self.dtype),
                 inputs.text_mask, inputs.has_text),
        "image": (self._to_width(i, width, "image_proj"), inputs.image_seq.astype(self.dtype),
                  inputs.image_mask, inputs.has_image),
    }
    pairs = {"text_to_image": [("text", "image")], "image_to_text": [("image", "text")],
             "both": [("text", "image"), ("image", "text")]}[self.direction]
    outputs = []
    for query, key in pairs:
      q_pooled, q_seq, q_mask, has_q = streams[query]
      k_pooled, k_seq, k_mask, has_k = streams[key]
      attended = nn.MultiHeadDotProductAttention(
          num_heads=self.heads, qkv_features=width, out_features=width, dtype=self.dtype,
          param_dtype=self.param_dtype, dropout_rate=self.dropout, deterministic=not train,
          name=f"{query}_to_{key}")(q_seq, k_seq, mask=k_mask[:, None, None, :])  # [b, lq, w]
      fused = q_pooled + masked_mean(attended, q_mask)  # [b, w]
      # A present key modality without one valid position leaves nothing to attend to.
      can_attend = has_q & has_k & k_mask.any(axis=-1)
      fallback = jnp.where(has_q[:, None], q_pooled, jnp.where(has_k[:, None], k_pooled, 0))
      outputs.append(jnp.where(can_attend[:, None], fused, fallback))
    return jnp.concatenate(outputs, axis=-1)  # [b, out_dim]


@register_fusion("joint_transformer")
class JointTransformer(_Fusion):
  """A small Transformer over [text tokens; image patches]; out_dim = width.

  Both sequences are mapped to `width` (default: the larger input width) and tagged with a
  learned modality embedding; padding and missing modalities are masked out. `pool`: masked
  mean over valid tokens ("mean"; neither modality → zeros) or a learned fusion token ("cls";
  neither → a learned default). No positions are added: the text encoder has word order.
  """
  width: int | None = None
  depth: int = 2
  heads: int = 4
  mlp_ratio: int = 4
  dropout: float = 0.0
  pool: str = "mean"  # "mean" | "cls"
  choices = ("joint_transformer", {"pool": ("mean", "cls")})

  @nn.compact
  def __call__(self, inputs: FusionInputs, *, train: bool = False) -> jnp.ndarray:
    inputs = inputs.sanitized()
    batch = inputs.present.shape[0]
    width = self.width or max(inputs.text_seq.shape[-1], inputs.image_seq.shape[-1])
    types = self.param("type_embedding", nn.initializers.normal(0.02), (2, width),
                       self.param_dtype).astype(self.dtype)
    parts = [self._to_width(inputs.text_seq.astype(self.dtype), width, "text_proj") + types[0],
             self._to_width(inputs.image_seq.astype(self.dtype), width, "image_proj") + types[1]]
    masks = [inputs.text_mask, inputs.image_mask]
    if self.pool == "cls":
      cls = self.param("fusion_token", nn.initializers.normal(0.02), (width,), self.param_dtype)
      parts.insert(0, jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, width)))
      masks.insert(0, jnp.ones((batch, 1), bool))
    x = jnp.concatenate(parts, axis=1)  # [b, l, w], l = (1 +) lt + li
    mask = jnp.concatenate(masks, axis=1)  # [b, l]
    attention_mask = nn.make_attention_mask(mask, mask)  # [b, 1, l, l]
    for d in range(self.depth):
      x = TransformerBlock(width, self.heads, self.mlp_ratio, self.dropout, dtype=self.dtype,
                 param_dtype=self.param_dtype, name=f"block_{d}")(x, attention_mask, train=train)
    x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="final_norm")(x)
    return x[:, 0] if self.pool == "cls" else masked_mean(x, mask)


@register_fusion("correspondence")
class Correspondence(_Fusion):
  """The survey's information fusion x = A·m + b with m = [t; i]; out_dim = `out_dim`.

  A is a learned [out_dim, dt + di] matrix (parameter "correspondence"), not the survey's
  [dt, di] correspondence-loss matrix, which cannot multiply m. A missing modality's half of m
  is zeroed and, with `rescale`, the present half doubled (inverted dropout over modalities),
  so x keeps its scale under modality dropout. Neither present → b.
  """
  out_dim: int = 256
  rescale: bool = True

  @nn.compact
  def __call__(self, inputs: FusionInputs, *, train: bool = False) -> jnp.ndarray:
    inputs = inputs.sanitized()
    m = jnp.concatenate(self._pooled(inputs), axis=-1)  # [b, dt + di], zero where missing
    if self.rescale:
      count = inputs.present.sum(axis=-1, keepdims=True).astype(self.dtype)  # [b, 1]
      m = m * (2 / jnp.maximum(count, 1))
    a = self.param("correspondence", nn.initializers.lecun_normal(in_axis=-1, out_axis=-2),
                   (self.out_dim, m.shape[-1]), self.param_dtype)
    b = self.param("bias", nn.initializers.zeros, (self.out_dim,), self.param_dtype)
    return jnp.einsum("bk,ok->bo", m, a.astype(self.dtype)) + b.astype(self.dtype)
