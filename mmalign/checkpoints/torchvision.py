"""torchvision ResNet state dicts (`.safetensors`) into the `resnet` image encoder.

torchvision names a tensor by module (`layer2.0.downsample.1.running_var`); mmalign's
ResNet has the same layout (v1.5, explicit paddings, BatchNorm eps 1e-5), so each tensor
has one place: `conv*.weight` [out, in, kh, kw] becomes a kernel [kh, kw, in, out], a
BatchNorm's weight/bias its scale/bias and its running mean/var the `batch_stats`. The
classifier (`fc.*`) and `num_batches_tracked` have no place in an encoder and are ignored.
"""

from __future__ import annotations

import re

import numpy as np

from mmalign.checkpoints import Imported, files

TOWER = "image_tower"
_NORM_FIELDS = {"weight": ("params", "scale"), "bias": ("params", "bias"),
                "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
_UNIT = re.compile(r"(?:layer(\d)\.(\d+)\.(?:(conv|bn)(\d)|downsample\.([01]))|(conv|bn)1)\."
                   r"(\w+)")


def resnet_path(name: str) -> tuple[str | None, bool]:
  """(this model's `collection/path` for torchvision tensor `name`, or None if it has none;
  whether the array is a conv weight to transpose)."""
  match = _UNIT.fullmatch(name)
  if match is None:
    return None, False
  stage, block, layer_kind, layer_index, downsample, stem_kind, field = match.groups()
  if stem_kind:
    unit, kind = "stem", stem_kind
  elif downsample is not None:
    unit = f"stage{stage}_block{int(block) + 1}/shortcut"
    kind = "conv" if downsample == "0" else "bn"
  else:
    unit, kind = f"stage{stage}_block{int(block) + 1}/conv{layer_index}", layer_kind
  if kind == "conv":
    return (f"params/{TOWER}/{unit}/conv/kernel", True) if field == "weight" else (None, False)
  if field not in _NORM_FIELDS:  # num_batches_tracked
    return None, False
  collection, leaf = _NORM_FIELDS[field]
  return f"{collection}/{TOWER}/{unit}/norm/{leaf}", False


def is_resnet(names) -> bool:
  return any(re.fullmatch(r"layer\d\.\d+\.conv\d\.weight", n) for n in names)


def load_resnet(path: str, variables: dict, tokenizer) -> Imported:
  """Every tensor of a torchvision ResNet-18/34/50/101/152 state dict, in this model's
  layout; `variables` is unused (shapes are checked by `importers.initialise`)."""
  del variables, tokenizer
  arrays, ignored = {}, []
  for name, value in files.read_safetensors(path).items():
    target, is_conv = resnet_path(name)
    if target is None:
      ignored.append(name)
    else:
      arrays[target] = np.transpose(value, (2, 3, 1, 0)) if is_conv else value
  return Imported(arrays, ignored=tuple(ignored))
