"""Initialising a model from published weights (`config.init`), one importer per format.

An importer (`IMPORTERS[format](path, variables, tokenizer) -> Imported`) reads a local
file into arrays keyed by this model's variable paths (`params/text_tower/embed/embedding`,
`batch_stats/image_tower/stem/norm/mean`); `initialise` checks each one's place, shape and
values and swaps it into the freshly initialised variables. A new format is one module
here, one line in IMPORTERS and, to be detected, a line in `format_of`. Why keyed by path:
the run can then print exactly what was loaded and what stays newly initialised.
"""

from __future__ import annotations

import collections
import json
import os
import re

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mmalign.checkpoints import (Imported, big_vision, files, glove, hf_clip, open_clip,
                                 torchvision)
from mmalign.data import pretrained_tokenizer
from mmalign.errors import UsageError
from mmalign.registry import Registry

IMPORTERS: Registry = Registry("checkpoint format")
IMPORTERS.register("glove")(glove.load)
IMPORTERS.register("torchvision_resnet")(torchvision.load_resnet)
IMPORTERS.register("torchvision_vgg")(torchvision.load_vgg)
IMPORTERS.register("hf_clip")(hf_clip.load)
IMPORTERS.register("hf_siglip")(hf_clip.load)
IMPORTERS.register("open_clip")(open_clip.load)
IMPORTERS.register("big_vision")(big_vision.load)

# Formats a .safetensors file is recognised as, by its tensor names; at most one may claim it.
RECOGNISED_BY_NAMES = {"torchvision_resnet": torchvision.is_resnet,
                       "torchvision_vgg": torchvision.is_vgg,
                       "hf_clip": hf_clip.is_clip,
                       "hf_siglip": hf_clip.is_siglip,
                       "open_clip": open_clip.is_open_clip}


HF_WEIGHTS = "model.safetensors"  # In a Hugging Face folder.


def checkpoint_file(init_config) -> str:
  """The weights file `init.checkpoint` names: the path, or a Hugging Face folder's
  model.safetensors. Raises UsageError for a missing path or a folder without one."""
  path = init_config.checkpoint
  if not os.path.exists(path):
    raise UsageError(f"init.checkpoint={path!r} does not exist")
  if os.path.isdir(path):
    if not os.path.exists(os.path.join(path, HF_WEIGHTS)):
      raise UsageError(f"init.checkpoint={path!r} is a folder without {HF_WEIGHTS}")
    return os.path.join(path, HF_WEIGHTS)
  return path


def tokenizer_path(init_config) -> str | None:
  """The tokenizer to use instead of training one: `init.tokenizer`, else the tokenizer
  file of a Hugging Face folder given as `init.checkpoint`, else None."""
  if init_config.get("tokenizer"):
    return init_config.tokenizer
  path = init_config.get("checkpoint")
  if path and os.path.isdir(path):
    return pretrained_tokenizer.in_folder(path)
  return None


def format_of(init_config) -> str:
  """`init.format`, else the format the file's suffix (and tensor names) say."""
  if init_config.get("format"):
    return init_config.format  # settings.RULES checked it against IMPORTERS.
  path = checkpoint_file(init_config)
  suffix = os.path.splitext(path)[1].lower()
  if suffix in (".txt", ".vec"):
    return "glove"
  if suffix == ".npz":
    return "big_vision"
  if suffix == ".safetensors":
    names = files.tensor_names(path)
    claimed = [name for name, recognises in RECOGNISED_BY_NAMES.items() if recognises(names)]
    if len(claimed) == 1:
      return claimed[0]
    if claimed:
      raise UsageError(f"init.checkpoint={path!r}: its tensor names match {' and '.join(claimed)}"
                       f"; set init.format to one of them")
    raise UsageError(f"init.checkpoint={path!r}: its tensor names match no known layout; "
                     f"set init.format to one of {', '.join(IMPORTERS.names())}")
  if suffix in files.TORCH_SUFFIXES:
    raise files.torch_file_error(path)
  raise UsageError(f"init.checkpoint={path!r}: cannot tell its format from {suffix or 'no'} "
                   f"suffix; set init.format to one of {', '.join(IMPORTERS.names())}")


def check(init_config) -> None:
  """Before any work: the files exist and the checkpoint's format is known."""
  if init_config.get("tokenizer") and not os.path.exists(init_config.tokenizer):
    raise UsageError(f"init.tokenizer={init_config.tokenizer!r} does not exist")
  if init_config.get("checkpoint"):
    format_of(init_config)


def initialise(variables: dict, init_config, tokenizer) -> tuple[dict, list[str]]:
  """(variables with the checkpoint's arrays in place, lines saying what came from where).

  Raises UsageError naming the tensor for a path this model lacks, a shape that differs
  (both shapes named) or a non-finite value; `variables` is then left as it was.
  """
  path, chosen = checkpoint_file(init_config), format_of(init_config)
  flat = traverse_util.flatten_dict(variables, sep="/")
  # Importers see scanned layers (`blocks`, stacked) as the separate `block{i}` they map to.
  unstacked = unstack_layers(flat)
  if os.path.isdir(init_config.checkpoint):
    check_heads(init_config.checkpoint, unstacked)
  imported: Imported = IMPORTERS.get(chosen)(
      path, traverse_util.unflatten_dict(unstacked, sep="/"), tokenizer)
  imported = Imported(stack_layers(imported.arrays, flat, path), imported.ignored,
                      imported.notes)
  for name, value in imported.arrays.items():
    if name not in flat:
      raise UsageError(f"init.checkpoint {path!r}: {name} has no place in this model")
    if tuple(value.shape) != tuple(flat[name].shape):
      raise UsageError(f"init.checkpoint {path!r}: {name} has shape {tuple(value.shape)} "
                       f"there and {tuple(flat[name].shape)} in this model")
    if not np.all(np.isfinite(value)):
      raise UsageError(f"init.checkpoint {path!r}: {name} holds non-finite values")
  loaded = {name: jnp.asarray(value, flat[name].dtype) for name, value in imported.arrays.items()}
  fresh = sorted(set(flat) - set(loaded))
  lines = [f"init from {path} ({chosen}): loaded {len(loaded)} tensors "
           f"({_count(loaded):,} values)",
           f"  newly initialised: {len(fresh)} tensors ({_count({n: flat[n] for n in fresh}):,} "
           f"values){': ' + ', '.join(fresh) if fresh else ''}"]
  if imported.ignored:
    lines.append(f"  ignored from the checkpoint: {len(imported.ignored)} tensors: "
                 f"{', '.join(imported.ignored)}")
  lines += [f"  {note}" for note in imported.notes]
  return traverse_util.unflatten_dict({**flat, **loaded}, sep="/"), lines


# A Hugging Face config.json's towers, by this model's tower they load into.
_HF_TOWER_CONFIGS = {"vision_config": "params/image_tower", "text_config": "params/text_tower"}


def check_heads(folder: str, unstacked: dict) -> None:
  """The attention heads of a Hugging Face folder's config.json against this model's (a
  head count is no tensor's shape: other counts would load and compute something else).
  Raises UsageError naming both; a folder without config.json is not checked.
  unstacked: {path: array} with scanned layers apart (`unstack_layers`)."""
  path = os.path.join(folder, "config.json")
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    config = json.load(f)
  for section, tower in _HF_TOWER_CONFIGS.items():
    heads = (config.get(section) or {}).get("num_attention_heads")
    kernel = unstacked.get(f"{tower}/block0/attention/query/kernel")  # [width, heads, dim]
    if heads is not None and kernel is not None and kernel.shape[1] != heads:
      raise UsageError(f"init.checkpoint {folder!r}: its config.json has {section}."
                       f"num_attention_heads={heads}, this model's {tower.split('/')[1]} "
                       f"{kernel.shape[1]}; set the encoder's heads to {heads}")


_LAYER = re.compile(r"(.*)/block(\d+)/(.*)")
_SCANNED = re.compile(r"(.*)/blocks/(.*)")


def unstack_layers(flat: dict) -> dict:
  """{path: array} with each scanned `X/blocks/Y` [depth, ...] as `X/block{i}/Y` [...]."""
  out = {}
  for name, value in flat.items():
    match = _SCANNED.fullmatch(name)
    if match is None:
      out[name] = value
      continue
    for i in range(value.shape[0]):
      out[f"{match[1]}/block{i}/{match[2]}"] = value[i]
  return out


def stack_layers(arrays: dict, flat: dict, path: str) -> dict:
  """`arrays` with the `X/block{i}/Y` of a scanned model (`flat` has `X/blocks/Y`) stacked
  in layer order. Raises UsageError naming the parameter if a layer is missing."""
  out, layers = {}, collections.defaultdict(dict)
  for name, value in arrays.items():
    match = _LAYER.fullmatch(name)
    scanned = match and f"{match[1]}/blocks/{match[3]}"
    if match and name not in flat and scanned in flat:
      layers[scanned][int(match[2])] = value
    else:
      out[name] = value
  for name, by_layer in layers.items():
    depth = flat[name].shape[0]
    if sorted(by_layer) != list(range(depth)):
      raise UsageError(f"init.checkpoint {path!r}: {name} (scanned over {depth} layers) gets "
                       f"layers {sorted(by_layer)} only")
    out[name] = np.stack([by_layer[i] for i in range(depth)])
  return out


def _count(arrays: dict) -> int:
  return sum(int(np.prod(a.shape)) for a in arrays.values())
