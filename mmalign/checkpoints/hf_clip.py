"""Hugging Face `transformers` CLIP and SigLIP (`.safetensors`) into `vit` and `clip_text`.

A CLIPModel file names its towers `vision_model.*` and `text_model.*` (files of a bare
CLIPVisionModel or CLIPTextModel saved by transformers ≥ 5 drop the prefix: they are read as
if it were there). Each tower is mmalign's ViT built with CLIP's options (`CLIP_VIT`) or its
`clip_text` Transformer, so each tensor has one place: a Linear's weight [out, in] becomes a
kernel [in, out], reshaped to flax attention's [width, heads, head_dim] (query/key/value) or
[heads, head_dim, width] (out); the patch conv [out, in, kh, kw] a kernel [kh, kw, in, out];
LayerNorm weight/bias its scale/bias. `visual_projection.weight` and `text_projection.weight`
(no bias) become the dual encoder's projections (`projection_kwargs.hidden=()`, `embed_dim`
their size) and `logit_scale` its `log_scale` (both store the log). A tower the model builds
otherwise (a ResNet, bag_of_words) stays newly initialised: its tensors are ignored, with a
note, as in LiT with a new text tower.

A SiglipModel file has the same names plus the patch conv's bias, the vision tower's
attention-pooling head (`vision_model.head.*`, its attention's query/key/value fused in
`in_proj_*` as torch's MultiheadAttention keeps them), the text head (`text_model.head`,
with a bias: the text projection) and `logit_bias` (the sigmoid loss's `bias`); its image
side has no projection (`image_projection_kwargs.linear=False`).
"""

from __future__ import annotations

import re

import numpy as np
from flax import traverse_util

from mmalign.checkpoints import Imported, files
from mmalign.errors import UsageError

# Source prefix → (this model's tower, its projection's kernel, the encoder it needs).
TOWERS = {"vision_model.": ("params/image_tower", "params/image_projection/mlp/out/kernel",
                            "model.image_encoder=vit"),
          "text_model.": ("params/text_tower", "params/text_projection/mlp/out/kernel",
                          "model.text_encoder=clip_text")}
PROJECTIONS = {"visual_projection.weight": "vision_model.",
               "text_projection.weight": "text_model."}
LOG_SCALE, LOGIT_BIAS = "params/log_scale", "params/bias"
PAIR = {"logit_scale": LOG_SCALE, "logit_bias": LOGIT_BIAS}  # Loaded when both towers are.
# The `vit` options under which these weights give CLIP's outputs (the parameter tree cannot
# tell them: an importer cannot check them). `clip_text`'s defaults are CLIP's.
CLIP_VIT = {"pooling": "cls", "patch_bias": False, "norm_embeddings": True,
            "final_norm_on": "pooled", "activation": "quick_gelu", "norm_epsilon": 1e-5}
SIGLIP_VIT = {"pooling": "map", "patch_bias": True, "norm_embeddings": False,
              "final_norm_on": "all", "activation": "gelu_tanh", "norm_epsilon": 1e-6}
# clip_text options for SigLIP's text tower (clip_text's defaults are CLIP's).
SIGLIP_TEXT = {"causal": False, "pooling": "last", "activation": "gelu_tanh",
               "norm_epsilon": 1e-6}

_NORMS = {"pre_layrnorm": "embedding_norm", "post_layernorm": "final_norm",
          "final_layer_norm": "final_norm", "layer_norm1": "norm1", "layer_norm2": "norm2",
          "head.layernorm": "map_head/norm"}
_EMBEDDINGS = {"embeddings.class_embedding": ("cls_token", "cls"),
               "embeddings.patch_embedding.weight": ("patch_embed/kernel", "conv"),
               "embeddings.position_embedding.weight": ("pos_embed", "positions"),
               "embeddings.patch_embedding.bias": ("patch_embed/bias", "copy"),
               "embeddings.token_embedding.weight": ("embed/embedding", "copy"),
               "head.probe": ("map_head/probe", "copy")}
_LINEARS = {"self_attn.q_proj": "attention/query", "self_attn.k_proj": "attention/key",
            "self_attn.v_proj": "attention/value", "self_attn.out_proj": "attention/out",
            "mlp.fc1": "mlp_in", "mlp.fc2": "mlp_out"}
_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(\w+(?:\.\w+)?)\.(weight|bias)")
_NORM = re.compile(r"(pre_layrnorm|post_layernorm|final_layer_norm|head\.layernorm)\."
                   r"(weight|bias)")
_HEAD = re.compile(r"head\.(attention\.[qkv]_proj|attention\.out_proj|mlp\.fc1|mlp\.fc2)\."
                   r"(weight|bias)")
_HEAD_MODULES = {"attention.q_proj": "self_attn.q_proj", "attention.k_proj": "self_attn.k_proj",
                 "attention.v_proj": "self_attn.v_proj",
                 "attention.out_proj": "self_attn.out_proj", "mlp.fc1": "mlp.fc1",
                 "mlp.fc2": "mlp.fc2"}

# How a tensor becomes its parameter, given the parameter's shape here `s`: (the source shape
# that fits it, the conversion). A Linear's kernel here has its input axes first: one for
# Dense and query/key/value, two (heads, head_dim) for attention's out.
KINDS = {
    "copy": (lambda s: s, lambda v, s: v),
    "reshape": (lambda s: (int(np.prod(s)),), lambda v, s: v.reshape(s)),  # Heads' biases.
    "cls": (lambda s: s[2:], lambda v, s: v.reshape(s)),  # [width] → [1, 1, width]
    "positions": (lambda s: s[1:], lambda v, s: v.reshape(s)),  # [n, width] → [1, n, width]
    "scalar": (lambda s: s, lambda v, s: v),  # CLIP's () or SigLIP's [1]: `place` reshapes.
  "conv": (lambda s: (s[3], s[2], s[0], s[1]), lambda v, s: files.conv_kernel(v)),
    "linear": (lambda s: (int(np.prod(s[1:])), s[0]), lambda v, s: v.T.reshape(s)),
    "linear_out": (lambda s: (s[2], s[0] * s[1]), lambda v, s: v.T.reshape(s)),
}


def clip_path(name: str) -> tuple[str | None, str]:
  """(this model's `params/...` path for tensor `name` of a CLIPModel file, or None if it has
  none; its kind, a key of `KINDS`)."""
  if name in PROJECTIONS:
    return TOWERS[PROJECTIONS[name]][1], "linear"
  if name in PAIR:
    return PAIR[name], "scalar"
  if name in ("text_model.head.weight", "text_model.head.bias"):  # SigLIP's text projection.
    kernel = TOWERS["text_model."][1]
    return (kernel, "linear") if name.endswith("weight") else (kernel[:-len("kernel")] + "bias",
                                                               "copy")
  prefix = next((p for p in TOWERS if name.startswith(p)), None)
  if prefix is None:
    return None, ""
  tower, name = TOWERS[prefix][0], name[len(prefix):]
  if name in _EMBEDDINGS:
    target, kind = _EMBEDDINGS[name]
    if prefix == "text_model." and target == "pos_embed":  # clip_text's table is [n, width].
      target, kind = "positions", "copy"
    return f"{tower}/{target}", kind
  leaf = {"weight": "scale", "bias": "bias"}
  match = _NORM.fullmatch(name)
  if match:
    return f"{tower}/{_NORMS[match[1]]}/{leaf[match[2]]}", "copy"
  match = _HEAD.fullmatch(name)
  if match:  # SigLIP's attention-pooling head: a block's names, under map_head.
    module, field = _HEAD_MODULES[match[1]], match[2]
    return _block_path(f"{tower}/map_head", module, field)
  match = _LAYER.fullmatch(name)
  if match is None:
    return None, ""  # embeddings.position_ids, in files of older transformers.
  layer, module, field = match.groups()
  return _block_path(f"{tower}/block{layer}", module, field)


def _block_path(block: str, module: str, field: str) -> tuple[str | None, str]:
  """A Transformer block's (or the pooling head's) tensor: its path under `block`, kind."""
  leaf = {"weight": "scale", "bias": "bias"}
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
  return tuple(KINDS[kind][0](tuple(shape)))


def convert(value: np.ndarray, kind: str, shape) -> np.ndarray:
  """The tensor as the parameter of `shape` here (`source_shape(kind, shape)` checked)."""
  return KINDS[kind][1](value, tuple(shape))


def _with_prefixes(names) -> dict[str, str]:
  """{name in the file: its CLIPModel name}: a bare CLIPVisionModel's or CLIPTextModel's
  tensors get the prefix their tower has in a CLIPModel."""
  names = list(names)
  if any(n.startswith(tuple(TOWERS)) for n in names):
    return {n: n for n in names}
  if "embeddings.class_embedding" in names:
    return {n: "vision_model." + n for n in names}
  if "embeddings.token_embedding.weight" in names:
    return {n: "text_model." + n for n in names}
  return {n: n for n in names}


def is_clip(names) -> bool:
  """A CLIPModel's tensor names, or a bare CLIPVisionModel's or CLIPTextModel's."""
  renamed = list(_with_prefixes(names).values())
  return not _is_siglip(renamed) and any(
      n.startswith(("vision_model.embeddings.", "text_model.embeddings.")) for n in renamed)


def is_siglip(names) -> bool:
  """A SiglipModel's tensor names, or a bare SiglipVisionModel's or SiglipTextModel's."""
  return _is_siglip(list(_with_prefixes(names).values()))


def _is_siglip(names: list[str]) -> bool:
  return "logit_bias" in names or any(n.startswith(("vision_model.head.", "text_model.head."))
                                      for n in names)


def load(path: str, variables: dict, tokenizer) -> Imported:
  """Every tensor of each CLIP tower this model builds the same way, with its projection
  where the model has one, and `logit_scale` when both towers load; the rest is ignored.

  `variables` gives the attention heads and the parameters' shapes: a tensor whose shape
  cannot fill its parameter raises UsageError naming it and both shapes; so does a file of
  which no tower fits. The file does not hold the head count (config.json does), nor the
  ViT's options: it must be built with `CLIP_VIT`'s to give CLIP's outputs (a note says so).
  """
  del tokenizer
  tensors = files.read_safetensors(path)
  renamed = _with_prefixes(tensors)
  named, file_names = {}, {}
  for old, value in tensors.items():
    record(old, split_in_proj(renamed[old], value), named, file_names)
  return place(path, named, variables, file_names)


def record(file_name: str, parts: dict[str, np.ndarray], named: dict, file_names: dict) -> None:
  """Adds a file tensor's CLIPModel-named parts to `named` and their display names to
  `file_names`: the file's name, or for a third of a fused in_proj `...in_proj_weight[q]`."""
  for new, part in parts.items():
    named[new] = part
    file_names[new] = (file_name if len(parts) == 1
                       else f"{file_name}[{new.rsplit('.', 2)[-2][0]}]")


_IN_PROJ = re.compile(r"(.*)\.in_proj_(weight|bias)")


def split_in_proj(name: str, value: np.ndarray) -> dict[str, np.ndarray]:
  """{name: value}, except that torch's fused attention projection `<x>.in_proj_weight` (or
  `_bias`) [3·width, ...] becomes its query, key and value thirds `<x>.{q,k,v}_proj.weight`."""
  match = _IN_PROJ.fullmatch(name)
  if match is None:
    return {name: value}
  return {f"{match[1]}.{part}_proj.{match[2]}": third
          for part, third in zip("qkv", np.split(value, 3, axis=0))}


def place(path: str, tensors: dict[str, np.ndarray], variables: dict,
          file_names: dict[str, str]) -> Imported:
  """`load` for tensors already named as in a CLIPModel file; `file_names` maps each name
  to the one in the file at `path`, which errors and the ignored list use."""
  shapes = {name: tuple(x.shape) for name, x in
            traverse_util.flatten_dict(variables, sep="/").items()}
  present = [p for p in TOWERS if any(n.startswith(p) for n in tensors)]
  fits = [p for p in present if f"{TOWERS[p][0]}/block0/attention/query/kernel" in shapes]
  if not fits:
    raise UsageError(f"init.checkpoint {path!r} is a CLIP model: set "
                     + " or ".join(TOWERS[p][2] for p in present))
  arrays, ignored, notes = {}, [], []
  for prefix in present:
    if prefix not in fits:
      notes.append(f"{prefix}* ignored: only {TOWERS[prefix][2]} loads it")
  for name, value in tensors.items():
    target, kind = clip_path(name)
    tower = PROJECTIONS.get(name, next((p for p in TOWERS if name.startswith(p)), None))
    if target is None or (tower and tower not in fits) or (
        name in PAIR and len(fits) < len(TOWERS)):
      ignored.append(file_names[name])
      continue
    if target not in shapes and name in PROJECTIONS:
      notes.append(f"{file_names[name]} ignored: the model has no such projection")
      ignored.append(file_names[name])
      continue
    if target not in shapes:  # importers.initialise says so.
      arrays[target] = value
      continue
    if kind == "scalar" and value.size == 1:
      value = value.reshape(shapes[target])
    wanted = source_shape(kind, shapes[target])
    if tuple(value.shape) != wanted:
      raise UsageError(f"init.checkpoint {path!r}: {file_names[name]} has shape "
                       f"{tuple(value.shape)} there and {wanted} in this model ({target} "
                       f"{shapes[target]})")
    arrays[target] = convert(value, kind, shapes[target])
  if "vision_model." in fits:
    siglip = "vision_model.head.probe" in tensors
    notes.append(f"{'SigLIP' if siglip else 'CLIP'}'s outputs need model.image_kwargs.vit with "
                 + ", ".join(f"{k}={v!r}" for k, v in (SIGLIP_VIT if siglip else
                                                         CLIP_VIT).items()))
  return Imported(arrays, ignored=tuple(ignored), notes=tuple(notes))
