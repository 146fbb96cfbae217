"""open_clip and OpenAI CLIP state dicts (`.safetensors`) into the `vit` and `clip_text` towers.

OpenAI's CLIP and open_clip's ViT models share one layout (`visual.transformer.resblocks.*`,
`transformer.resblocks.*`, `token_embedding`, `ln_final`, ...): the same Transformers as
Hugging Face's CLIPModel under other names. Each tensor is renamed to its CLIPModel name, and
transposed where open_clip stores [in, out] (`visual.proj`, `text_projection`); each
attention's fused `in_proj_weight`/`in_proj_bias` is split into query, key and value thirds.
`hf_clip.place` then puts them where that format's tensors go, so both formats share one
mapping. Why not a second mapping: the two layouts are the same modules, so one place per
parameter keeps them equal by construction.
"""

from __future__ import annotations

import re

import numpy as np

from mmalign.checkpoints import Imported, files, hf_clip

_TOWER_PREFIXES = (("visual.transformer.resblocks.", "vision_model.encoder.layers."),
                   ("transformer.resblocks.", "text_model.encoder.layers."))
_RENAMED = {"visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
            "visual.class_embedding": "vision_model.embeddings.class_embedding",
            "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
            "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
            "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
            "visual.ln_post.weight": "vision_model.post_layernorm.weight",
            "visual.ln_post.bias": "vision_model.post_layernorm.bias",
            "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
            "positional_embedding": "text_model.embeddings.position_embedding.weight",
            "ln_final.weight": "text_model.final_layer_norm.weight",
            "ln_final.bias": "text_model.final_layer_norm.bias",
            "logit_scale": "logit_scale"}
TRANSPOSED = {"visual.proj": "visual_projection.weight",
               "text_projection": "text_projection.weight"}
_BLOCK_MODULES = {"ln_1": "layer_norm1", "ln_2": "layer_norm2",
                  "attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1",
                  "mlp.c_proj": "mlp.fc2"}
_BLOCK = re.compile(r"(\d+)\.(ln_1|ln_2|attn\.out_proj|mlp\.c_fc|mlp\.c_proj)\.(weight|bias)")
_IN_PROJ = re.compile(r"(\d+)\.attn\.in_proj_(weight|bias)")


def is_open_clip(names) -> bool:
  """OpenAI's / open_clip's layout: its ViT image tower or its text Transformer."""
  names = set(names)
  return (any(n.startswith("visual.transformer.resblocks.") for n in names)
          or {"token_embedding.weight", "ln_final.weight"} <= names)


def clip_names(name: str, value: np.ndarray) -> dict[str, np.ndarray]:
  """{CLIPModel name: array} for one open_clip tensor (three for a fused in_proj, none for
  a tensor with no CLIPModel counterpart, such as the `attn_mask` buffer)."""
  if name in _RENAMED:
    return {_RENAMED[name]: value}
  if name in TRANSPOSED:
    return {TRANSPOSED[name]: np.ascontiguousarray(value.T)}
  for prefix, clip_prefix in _TOWER_PREFIXES:
    if not name.startswith(prefix):
      continue
    rest = name[len(prefix):]
    match = _BLOCK.fullmatch(rest)
    if match:
      layer, module, field = match.groups()
      return {f"{clip_prefix}{layer}.{_BLOCK_MODULES[module]}.{field}": value}
    match = _IN_PROJ.fullmatch(rest)
    if match:
      layer, field = match.groups()
      return hf_clip.split_in_proj(f"{clip_prefix}{layer}.self_attn.in_proj_{field}", value)
  return {}


def load(path: str, variables: dict, tokenizer) -> Imported:
  """As `hf_clip.load`, for a file in OpenAI's / open_clip's layout; errors and the ignored
  list name the file's tensors (a third of an in_proj as `...in_proj_weight[q]`)."""
  del tokenizer
  tensors, file_names, unplaced = {}, {}, []
  for name, value in files.read_safetensors(path).items():
    renamed = clip_names(name, value)
    if not renamed:
      unplaced.append(name)
    hf_clip.record(name, renamed, tensors, file_names)
  imported = hf_clip.place(path, tensors, variables, file_names)
  return Imported(imported.arrays, imported.ignored + tuple(unplaced), imported.notes)
