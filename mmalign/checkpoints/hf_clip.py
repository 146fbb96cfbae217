"""Hugging Face `transformers` CLIP (`.safetensors`) into the `vit` image encoder.

A CLIPModel or CLIPVisionModel(WithProjection) file names its vision tower `vision_model.*`
(files saved by transformers ≥ 5's bare CLIPVisionModel drop that prefix: they are read as if
it were there). That tower is mmalign's ViT built with CLIP's options (see `CLIP_VIT`), so each
tensor has one place: a Linear's weight [out, in] becomes a kernel [in, out], reshaped to
flax attention's [width, heads, head_dim] (query/key/value) or [heads, head_dim, width]
(out); the patch conv [out, in, kh, kw] a kernel [kh, kw, in, out]; LayerNorm weight/bias
its scale/bias. `visual_projection.weight` (no bias) becomes the dual encoder's image
projection when the model has one (`projection_kwargs.hidden=()`, `embed_dim` its size).

Not written yet: the text tower (`text_model.*`, `text_projection.weight`) and `logit_scale`
are ignored, and said to be.
"""

from __future__ import annotations

import re

import numpy as np
from flax import traverse_util

from mmalign.checkpoints import Imported, files
from mmalign.errors import UsageError

TOWER = "params/image_tower"
PROJECTION = "params/image_projection/mlp/out/kernel"
PREFIX = "vision_model."
# The `vit` options under which these weights give CLIP's outputs (the parameter tree cannot
# tell them: an importer cannot check them).
CLIP_VIT = {"pooling": "cls", "patch_bias": False, "norm_embeddings": True,
            "final_norm_on": "pooled", "activation": "quick_gelu", "norm_epsilon": 1e-5}
TEXT_NOTE = ("the CLIP text tower (text_model.*, text_projection, logit_scale) is ignored: "
             "its import is not written yet")

_NORMS = {"pre_layrnorm": "embedding_norm", "post_layernorm": "final_norm",
          "layer_norm1": "norm1", "layer_norm2": "norm2"}
_LINEARS = {"self_attn.q_proj": "attention/query", "self_attn.k_proj": "attention/key",
            "self_attn.v_proj": "attention/value", "self_attn.out_proj": "attention/out",
            "mlp.fc1": "mlp_in", "mlp.fc2": "mlp_out"}
_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(\w+(?:\.\w+)?)\.(weight|bias)")
_NORM = re.compile(r"(pre_layrnorm|post_layernorm)\.(weight|bias)")

# How a tensor becomes its parameter, given the parameter's shape here `s`: (the source shape
# that fits it, the conversion). A Linear's kernel here has its input axes first: one for
# Dense and query/key/value, two (heads, head_dim) for attention's out.
_KINDS = {
    "copy": (lambda s: s, lambda v, s: v),
    "reshape": (lambda s: (int(np.prod(s)),), lambda v, s: v.reshape(s)),  # Heads' biases.
    "cls": (lambda s: s[2:], lambda v, s: v.reshape(s)),  # [width] → [1, 1, width]
    "positions": (lambda s: s[1:], lambda v, s: v.reshape(s)),  # [n, width] → [1, n, width]
    "conv": (lambda s: (s[3], s[2], s[0], s[1]), lambda v, s: files.conv_kernel(v)),
    "linear": (lambda s: (int(np.prod(s[1:])), s[0]), lambda v, s: v.T.reshape(s)),
    "linear_out": (lambda s: (s[2], s[0] * s[1]), lambda v, s: v.T.reshape(s)),
}


def vision_path(name: str) -> tuple[str | None, str]:
  """(this model's `params/...` path for tensor `name`, or None if it has none; its kind, a
  key of `_KINDS`). Names are a CLIPModel file's (`vision_model.*`)."""
  if name == "visual_projection.weight":
    return PROJECTION, "linear"
  if not name.startswith(PREFIX):
    return None, ""
  name = name[len(PREFIX):]
  embeddings = {"embeddings.class_embedding": (f"{TOWER}/cls_token", "cls"),
                "embeddings.patch_embedding.weight": (f"{TOWER}/patch_embed/kernel", "conv"),
                "embeddings.position_embedding.weight": (f"{TOWER}/pos_embed", "positions")}
  if name in embeddings:
    return embeddings[name]
  leaf = {"weight": "scale", "bias": "bias"}
  match = _NORM.fullmatch(name)
  if match:
    return f"{TOWER}/{_NORMS[match[1]]}/{leaf[match[2]]}", "copy"
  match = _LAYER.fullmatch(name)
  if match is None:
    return None, ""  # embeddings.position_ids, in files of older transformers.
  layer, module, field = match.groups()
  block = f"{TOWER}/block{layer}"
  if module in _NORMS:
    return f"{block}/{_NORMS[module]}/{leaf[field]}", "copy"
  if module not in _LINEARS:
    return None, ""
  target = f"{block}/{_LINEARS[module]}"
  attention = module.startswith("self_attn")
  if field == "bias":
    return f"{target}/bias", "reshape" if attention and module != "self_attn.out_proj" else "copy"
  return f"{target}/kernel", "linear_out" if module == "self_attn.out_proj" else "linear"


def source_shape(kind: str, shape) -> tuple[int, ...]:
  """The shape a tensor of `kind` must have to fill a parameter of `shape` here."""
  return tuple(_KINDS[kind][0](tuple(shape)))


def convert(value: np.ndarray, kind: str, shape) -> np.ndarray:
  """The tensor as the parameter of `shape` here (`source_shape(kind, shape)` checked)."""
  return _KINDS[kind][1](value, tuple(shape))


def is_clip_vision(names) -> bool:
  """A CLIP vision tower: `vision_model.embeddings.*` names, or a bare CLIPVisionModel's
  (`embeddings.class_embedding` beside `pre_layrnorm.*`)."""
  names = set(names)
  return (any(n.startswith(PREFIX + "embeddings.") for n in names)
          or {"embeddings.class_embedding", "pre_layrnorm.weight"} <= names)


def load_vision(path: str, variables: dict, tokenizer) -> Imported:
  """Every `vision_model.*` tensor (and `visual_projection.weight` where the model has an
  image projection) in this model's layout; the rest is ignored.

  `variables` gives the attention heads and the parameters' shapes: a tensor whose shape
  cannot fill its parameter raises UsageError naming it and both shapes. The file does not
  hold the head count (config.json does: ViT-B's is 12, the `vit` variant "B"'s), nor the
  options: the ViT must be built with `CLIP_VIT`'s to give CLIP's outputs (a note says so).
  """
  del tokenizer
  tensors = files.read_safetensors(path)
  if not any(n.startswith(PREFIX) for n in tensors):  # A bare CLIPVisionModel's file.
    tensors = {PREFIX + name: value for name, value in tensors.items()}
  shapes = {name: tuple(x.shape) for name, x in
            traverse_util.flatten_dict(variables, sep="/").items()}
  if f"{TOWER}/block0/attention/query/kernel" not in shapes:
    raise UsageError(f"init.checkpoint {path!r} is a CLIP vision tower: set "
                     f"model.image_encoder=vit")
  arrays, ignored, notes = {}, [], []
  for name, value in tensors.items():
    target, kind = vision_path(name)
    if target == PROJECTION and target not in shapes:
      notes.append(f"{name} ignored: the model has no image projection")
      target = None
    if target is None:
      ignored.append(name)
      continue
    if target not in shapes:  # importers.initialise says so.
      arrays[target] = value
      continue
    wanted = source_shape(kind, shapes[target])
    if tuple(value.shape) != wanted:
      raise UsageError(f"init.checkpoint {path!r}: {name} has shape {tuple(value.shape)} "
                       f"there and {wanted} in this model ({target} {shapes[target]})")
    arrays[target] = convert(value, kind, shapes[target])
  if any(not n.startswith(PREFIX) and n != "visual_projection.weight" for n in ignored):
    notes.append(TEXT_NOTE)
  notes.append("CLIP's outputs need model.image_kwargs.vit with "
               + ", ".join(f"{k}={v!r}" for k, v in CLIP_VIT.items()))
  return Imported(arrays, ignored=tuple(ignored), notes=tuple(notes))
