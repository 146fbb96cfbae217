"""big_vision SigLIP checkpoints (`.npz` of the flattened parameter tree) into `vit` and
`clip_text`.

big_vision is flax too: its attention kernels ([width, heads, head_dim]), Dense kernels
([in, out]) and patch conv ([kh, kw, in, out]) have mmalign's layout already, so each array
is only renamed (`params/img/Transformer/encoderblock_3/MlpBlock_0/Dense_0/kernel` →
`params/image_tower/block3/mlp_in/kernel`), its position tables lose their leading 1, and the
temperature `t` and bias `b` become `log_scale` and `bias`. The tree is SigLIP's
(`two_towers` with a `vit` image tower pooled by `MAPHead_0` and a `proj.image_text.text_
transformer` text tower read at its last token with `head`); the towers must be built with
SigLIP's options (hf_clip.SIGLIP_VIT, SIGLIP_TEXT).
"""

from __future__ import annotations

import re
import zipfile

import numpy as np
from flax import traverse_util

from mmalign.checkpoints import Imported
from mmalign.errors import UsageError

_TOWERS = {"img/Transformer/": "image_tower/", "txt/Encoder_0/": "text_tower/"}
_MODULES = {"LayerNorm_0": "norm1", "LayerNorm_1": "norm2", "MlpBlock_0/Dense_0": "mlp_in",
            "MlpBlock_0/Dense_1": "mlp_out", "MultiHeadDotProductAttention_0": "attention"}
_HEAD_MODULES = {"LayerNorm_0": "norm", "MlpBlock_0/Dense_0": "mlp_in",
                 "MlpBlock_0/Dense_1": "mlp_out", "MultiHeadDotProductAttention_0": "attention"}
_FIXED = {"img/embedding/kernel": "image_tower/patch_embed/kernel",
          "img/embedding/bias": "image_tower/patch_embed/bias",
          "img/pos_embedding": "image_tower/pos_embed",
          "img/Transformer/encoder_norm/scale": "image_tower/final_norm/scale",
          "img/Transformer/encoder_norm/bias": "image_tower/final_norm/bias",
          "img/MAPHead_0/probe": "image_tower/map_head/probe",
          "txt/Embed_0/embedding": "text_tower/embed/embedding",
          "txt/pos_embedding": "text_tower/positions",
          "txt/Encoder_0/encoder_norm/scale": "text_tower/final_norm/scale",
          "txt/Encoder_0/encoder_norm/bias": "text_tower/final_norm/bias",
          "txt/head/kernel": "text_projection/mlp/out/kernel",
          "txt/head/bias": "text_projection/mlp/out/bias",
          "t": "log_scale", "b": "bias"}
_BLOCK = re.compile(r"(img/Transformer/|txt/Encoder_0/)encoderblock_(\d+)/(.+)/(\w+)")
_HEAD = re.compile(r"img/MAPHead_0/(.+)/(\w+)")


def big_vision_path(name: str) -> str | None:
  """This model's `params/...` path for an array of a big_vision SigLIP checkpoint (named
  with or without its leading `params/`), or None if it has none."""
  name = name.removeprefix("params/")
  if name in _FIXED:
    return f"params/{_FIXED[name]}"
  match = _BLOCK.fullmatch(name)
  if match:
    tower, layer, module, leaf = match.groups()
    target = _module(module, _MODULES)
    return target and f"params/{_TOWERS[tower]}block{layer}/{target}/{leaf}"
  match = _HEAD.fullmatch(name)
  if match:
    target = _module(match[1], _HEAD_MODULES)
    return target and f"params/image_tower/map_head/{target}/{match[2]}"
  return None


def _module(module: str, table: dict) -> str | None:
  """`MultiHeadDotProductAttention_0/query` → `attention/query`, by `table`."""
  for source, target in table.items():
    if module == source or module.startswith(source + "/"):
      return target + module[len(source):]
  return None


def is_big_vision(names) -> bool:
  return any(n.removeprefix("params/").startswith(("img/", "txt/")) for n in names)


def load(path: str, variables: dict, tokenizer) -> Imported:
  """Every array with a place in this model; position tables and the scalars reshaped to
  fit (both hold the same values). Raises UsageError for an unreadable file or an array whose
  size differs from its parameter's (naming both shapes)."""
  del tokenizer
  try:
    with np.load(path, allow_pickle=False) as archive:
      arrays = {name: archive[name] for name in archive.files}
  except (OSError, ValueError, zipfile.BadZipFile) as error:
    raise UsageError(f"init.checkpoint {path!r} is not a readable .npz file: "
                     f"{str(error).splitlines()[0]}") from None
  shapes = {name: tuple(x.shape) for name, x in
            traverse_util.flatten_dict(variables, sep="/").items()}
  out, ignored = {}, []
  for name, value in arrays.items():
    target = big_vision_path(name)
    if target is None:
      ignored.append(name)
      continue
    wanted = shapes.get(target)
    if wanted is not None and value.shape != wanted:
      if value.size != int(np.prod(wanted)) or name.removeprefix("params/") not in (
          "img/pos_embedding", "txt/pos_embedding", "t", "b"):
        raise UsageError(f"init.checkpoint {path!r}: {name} has shape {value.shape} there "
                         f"and {wanted} in this model ({target})")
      value = value.reshape(wanted)
    out[target] = value
  return Imported(out, ignored=tuple(ignored), notes=(
      "SigLIP's outputs need model.image_kwargs.vit and text_kwargs.clip_text with SigLIP's "
      "options (experiments/configs/siglip.py)",))
