"""An mmalign CLIP or SigLIP written back in Hugging Face's or open_clip's layout.

The inverse of `hf_clip` (and, through its renaming, `open_clip`): every parameter of a
`vit` + `clip_text` dual encoder goes to the tensor name and shape it came from, by the
same table (`hf_clip.clip_path`), so an import followed by an export returns the file's
tensors bit for bit. `write` adds what a reader needs beside the weights: a Hugging Face
`config.json` (CLIPModel or SiglipModel), or open_clip's model config; and the run's
tokenizer file when it came with the checkpoint. Why through the import table: one mapping
per layout, read both ways, cannot drift.
"""

from __future__ import annotations

import os

import numpy as np
from flax import traverse_util

from mmalign import utils
from mmalign.checkpoints import hf_clip, importers, open_clip
from mmalign.errors import UsageError

LAYOUTS = ("hf_clip", "open_clip")
# How a parameter goes back to its source tensor of shape `source`, by `hf_clip.KINDS` kind;
# the kinds missing here are plain reshapes.
_INVERSE = {
    "copy": lambda p, source: p,
    "conv": lambda p, source: np.transpose(p, (3, 2, 0, 1)),
    "linear": lambda p, source: p.reshape(source[1], source[0]).T,
    "linear_out": lambda p, source: p.reshape(source[1], source[0]).T,
}


def hf_tensors(variables: dict, siglip: bool) -> dict[str, np.ndarray]:
  """{CLIPModel / SiglipModel tensor name: array} for every parameter of a `vit` +
  `clip_text` dual encoder. Raises UsageError for a parameter no name maps to."""
  flat = importers.unstack_layers({k: np.asarray(v) for k, v in traverse_util.flatten_dict(
      variables["params"], sep="/").items()})
  flat = {f"params/{k}": v for k, v in flat.items()}
  depths = {prefix: sum(1 for k in flat if k.startswith(f"{tower}/block")
                        and k.endswith("/norm1/scale"))
            for prefix, (tower, _, _) in hf_clip.TOWERS.items()}
  out, placed = {}, set()
  if not siglip:  # CLIP has no sigmoid bias.
    flat.pop(hf_clip.LOGIT_BIAS, None)
  for name in _candidate_names(depths, siglip):
    target, kind = hf_clip.clip_path(name)
    if target not in flat:
      continue
    source = (1,) if kind == "scalar" and siglip else hf_clip.source_shape(kind,
                                                                           flat[target].shape)
    inverse = _INVERSE.get(kind, lambda p, shape: p.reshape(shape))
    out[name] = np.array(inverse(flat[target], source), order="C")  # 0-d stays 0-d.
    placed.add(target)
  unplaced = sorted(set(flat) - placed)
  if unplaced:
    raise UsageError(f"export: {', '.join(unplaced)} has no place in the "
                     f"{'SigLIP' if siglip else 'CLIP'} layout (a vit + clip_text model "
                     "exports; other towers do not)")
  if siglip:  # torch's MultiheadAttention keeps the pooling's projections fused.
    for field in ("weight", "bias"):
      parts = [out.pop(f"vision_model.head.attention.{p}_proj.{field}") for p in "qkv"]
      out[f"vision_model.head.attention.in_proj_{field}"] = np.concatenate(parts, axis=0)
  return out


def open_clip_tensors(hf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """CLIPModel tensors renamed to OpenAI's / open_clip's layout: the inverse of
  `open_clip.clip_names` (query, key and value fused back into `in_proj`)."""
  out = {}
  for name in _open_clip_candidates(hf):
    if ".in_proj_" in name:
      block, field = name.rsplit(".attn.in_proj_", 1)
      parts = [hf.get(f"{_clip_block(block)}.self_attn.{p}_proj.{field}") for p in "qkv"]
      if all(part is not None for part in parts):
        out[name] = np.concatenate(parts, axis=0)
      continue
    (clip_name,) = open_clip.clip_names(name, np.zeros((1, 1), np.float32))
    if clip_name in hf:
      value = hf[clip_name]
      out[name] = np.ascontiguousarray(value.T) if name in open_clip.TRANSPOSED else value
  return out


def write(variables: dict, model, tokenizer, layout: str, out_dir: str) -> list[str]:
  """Writes the model's weights (and config, and a published tokenizer) to `out_dir` in
  `layout` (one of LAYOUTS); returns the files written. Raises UsageError for another
  layout or a model that is not `vit` + `clip_text`."""
  if layout not in LAYOUTS:
    raise UsageError(f"export layout {layout!r} is not one of {list(LAYOUTS)}")
  if (model.text_encoder, model.image_encoder) != ("clip_text", "vit"):
    raise UsageError(f"export writes vit + clip_text models; this one is "
                     f"{model.image_encoder} + {model.text_encoder}")
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  siglip = model.image_kwargs.get("pooling") == "map"
  tensors = hf_tensors(variables, siglip)
  os.makedirs(out_dir, exist_ok=True)
  if layout == "open_clip":
    if siglip:
      raise UsageError("export layout 'open_clip' holds CLIP models; write SigLIP as hf_clip")
    tensors = open_clip_tensors(tensors)
    weights, config_name, config = "open_clip_model.safetensors", "open_clip_config.json", {
        "model_cfg": _open_clip_config(model)}
  else:
    positions = variables["params"]["image_tower"]["pos_embed"].shape[1]
    patches = positions - (model.image_kwargs.get("pooling", "cls") == "cls")
    image_size = int(round(patches ** 0.5)) * model.image_kwargs.get("patch_size", 16)
    weights, config_name, config = "model.safetensors", "config.json", _hf_config(
        model, siglip, image_size)
  save_file(tensors, os.path.join(out_dir, weights))
  utils.write_json(os.path.join(out_dir, config_name), config)
  written = [weights, config_name]
  saved = getattr(tokenizer, "published_file", None)
  if saved is not None:
    written.append(saved(out_dir))
  return [os.path.join(out_dir, name) for name in written]


def _candidate_names(depths: dict[str, int], siglip: bool) -> list[str]:
  """Every tensor name a CLIPModel (or SiglipModel) of these depths holds, its attention
  pooling's query/key/value still apart."""
  linears = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
             "mlp.fc1", "mlp.fc2"]
  if siglip:
    names = ["logit_scale", "logit_bias", "text_model.head.weight", "text_model.head.bias"]
    vision = ["embeddings.patch_embedding.weight", "embeddings.patch_embedding.bias",
              "embeddings.position_embedding.weight", "head.probe", "post_layernorm",
              "head.layernorm"]
    vision += ["head.attention." + m.split(".")[1] for m in linears[:4]]
    vision += ["head.mlp.fc1", "head.mlp.fc2"]
  else:
    names = ["logit_scale", "visual_projection.weight", "text_projection.weight"]
    vision = ["embeddings.class_embedding", "embeddings.patch_embedding.weight",
              "embeddings.position_embedding.weight", "pre_layrnorm", "post_layernorm"]
  towers = {"vision_model.": vision,
            "text_model.": ["embeddings.token_embedding.weight",
                            "embeddings.position_embedding.weight", "final_layer_norm"]}
  for prefix, depth in depths.items():
    modules = towers[prefix] + [f"encoder.layers.{i}.{m}" for i in range(depth)
                                for m in linears + ["layer_norm1", "layer_norm2"]]
    for module in modules:
      if module.endswith((".weight", ".bias", "embedding", "probe")):
        names.append(prefix + module)
      else:
        names += [f"{prefix}{module}.weight", f"{prefix}{module}.bias"]
  return names


def _open_clip_candidates(hf: dict) -> list[str]:
  names = ["visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding",
           "visual.ln_pre.weight", "visual.ln_pre.bias", "visual.ln_post.weight",
           "visual.ln_post.bias", "visual.proj", "token_embedding.weight",
           "positional_embedding", "ln_final.weight", "ln_final.bias", "text_projection",
           "logit_scale"]
  for prefix, clip_prefix in (("visual.transformer.resblocks.", "vision_model.encoder.layers."),
                              ("transformer.resblocks.", "text_model.encoder.layers.")):
    depth = sum(1 for n in hf if n.startswith(clip_prefix) and n.endswith("layer_norm1.weight"))
    for i in range(depth):
      for module in ("ln_1", "ln_2", "attn.out_proj", "mlp.c_fc", "mlp.c_proj", "attn.in_proj"):
        for field in ("weight", "bias"):
          sep = "_" if module == "attn.in_proj" else "."
          names.append(f"{prefix}{i}.{module}{sep}{field}")
  return names


def _clip_block(open_clip_block: str) -> str:
  """`visual.transformer.resblocks.3` → `vision_model.encoder.layers.3`."""
  layer = open_clip_block.rsplit(".", 1)[-1]
  tower = "vision_model" if open_clip_block.startswith("visual.") else "text_model"
  return f"{tower}.encoder.layers.{layer}"


def _tower_sizes(model) -> tuple[dict, dict]:
  from mmalign.models.vit import ViT  # pylint: disable=import-outside-toplevel
  width, depth, heads, mlp_dim = ViT(**model.image_kwargs).dims()
  vision = {"hidden_size": width, "num_hidden_layers": depth, "num_attention_heads": heads,
            "intermediate_size": mlp_dim, "patch_size": model.image_kwargs.get("patch_size", 16)}
  text_kwargs = model.text_kwargs
  text_width = text_kwargs.get("width", 512)
  text = {"vocab_size": text_kwargs["vocab_size"], "hidden_size": text_width,
          "num_hidden_layers": text_kwargs.get("depth", 12),
          "num_attention_heads": text_kwargs.get("heads", 8),
          "intermediate_size": text_kwargs.get("mlp_dim") or 4 * text_width,
          "max_position_embeddings": text_kwargs.get("max_length", 77)}
  return vision, text


_HF_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}


def _hf_config(model, siglip: bool, image_size: int) -> dict:
  vision, text = _tower_sizes(model)
  vision.update(image_size=image_size, hidden_act=_HF_ACTIVATIONS[model.image_kwargs.get("activation", "gelu")],
                layer_norm_eps=model.image_kwargs.get("norm_epsilon", 1e-6))
  text.update(hidden_act=_HF_ACTIVATIONS[model.text_kwargs.get("activation", "quick_gelu")],
              layer_norm_eps=model.text_kwargs.get("norm_epsilon", 1e-5))
  if siglip:
    text["projection_size"] = model.embed_dim
    return {"architectures": ["SiglipModel"], "model_type": "siglip",
            "text_config": text, "vision_config": vision}
  eot = model.text_kwargs.get("eot_id")
  text.update(eos_token_id=text["vocab_size"] - 1 if eot is None else eot,
              bos_token_id=text["vocab_size"] - 2, pad_token_id=0)
  return {"architectures": ["CLIPModel"], "model_type": "clip",
          "projection_dim": model.embed_dim, "text_config": text, "vision_config": vision}


def _open_clip_config(model) -> dict:
  vision, text = _tower_sizes(model)
  return {"embed_dim": model.embed_dim,
          "quick_gelu": model.image_kwargs.get("activation") == "quick_gelu",
          "vision_cfg": {"layers": vision["num_hidden_layers"], "width": vision["hidden_size"],
                         "head_width": vision["hidden_size"] // vision["num_attention_heads"],
                         "mlp_ratio": vision["intermediate_size"] / vision["hidden_size"],
                         "patch_size": vision["patch_size"]},
          "text_cfg": {"context_length": text["max_position_embeddings"],
                       "vocab_size": text["vocab_size"], "width": text["hidden_size"],
                       "heads": text["num_attention_heads"], "layers": text["num_hidden_layers"],
                       "mlp_ratio": text["intermediate_size"] / text["hidden_size"]}}
