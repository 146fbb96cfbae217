"""torchvision ResNet and VGG state dicts (`.safetensors`) into the `resnet`/`vgg` encoders.

torchvision names a tensor by module (`layer2.0.downsample.1.running_var`); mmalign's
ResNet has the same layout (v1.5, explicit paddings, BatchNorm eps 1e-5), so each tensor
has one place: `conv*.weight` [out, in, kh, kw] becomes a kernel [kh, kw, in, out], a
BatchNorm's weight/bias its scale/bias and its running mean/var the `batch_stats`. The
classifier (`fc.*`) and `num_batches_tracked` have no place in an encoder and are ignored.

VGG numbers its modules in one `features` sequence (conv, [BatchNorm,] ReLU, max-pool);
mmalign's VGG numbers its convs and norms `conv1, norm1, conv2, ...`. Its norm-free convs
drop the bias, so a `_bn` variant's conv bias is folded into the norm's running mean (exact:
a BatchNorm subtracts it again). The hidden layers `classifier.0`/`.3` become `fc1`/`fc2`
of a `pooling="fc"` model; the 1000-way `classifier.6` is ignored.
"""

from __future__ import annotations

import re

import numpy as np

from mmalign.checkpoints import Imported, files
from mmalign.errors import UsageError

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
      arrays[target] = files.conv_kernel(value) if is_conv else value
  return Imported(arrays, ignored=tuple(ignored))


_VGG_FEATURE = re.compile(r"features\.(\d+)\.(weight|bias|running_mean|running_var|"
                          r"num_batches_tracked)")
_VGG_CLASSIFIER = re.compile(r"classifier\.([036])\.(weight|bias)")
_VGG_FC = {"0": "fc1", "3": "fc2"}  # classifier.6, the 1000-way output, has no place.


def vgg_modules(names) -> tuple[dict[int, int], dict[int, int]]:
  """({features index of each conv: its number here}, {index of each BatchNorm: its number}):
  a conv has a weight and no running statistics; a BatchNorm follows its conv."""
  found = [match.groups() for match in map(_VGG_FEATURE.fullmatch, names) if match]
  norms = {int(index) for index, field in found if field == "running_mean"}
  convs = sorted({int(index) for index, field in found if field == "weight"} - norms)
  numbers = {index: number for number, index in enumerate(convs, 1)}
  return numbers, {index: numbers[index - 1] for index in norms if index - 1 in numbers}


def vgg_path(name: str, convs: dict[int, int], norms: dict[int, int], *,
             fc_stack: bool = True) -> tuple[str | None, str]:
  """(this model's `collection/path` for torchvision tensor `name`, or None if it has none;
  how to convert the array: "conv", "dense" (transpose), "dense_chw" (transpose and reorder
  the input from C,H,W to H,W,C), "fold" (subtract from the path's running mean) or "copy").
  `convs`, `norms`: from `vgg_modules`; `fc_stack`: whether the model has `fc1`, `fc2`."""
  match = _VGG_FEATURE.fullmatch(name)
  if match:
    index, field = int(match[1]), match[2]
    if index in convs:
      if field == "weight":
        return f"params/{TOWER}/conv{convs[index]}/kernel", "conv"
      if index + 1 in norms:
        return f"batch_stats/{TOWER}/norm{convs[index]}/mean", "fold"
      return f"params/{TOWER}/conv{convs[index]}/bias", "copy"
    if index not in norms or field not in _NORM_FIELDS:  # num_batches_tracked
      return None, ""
    collection, leaf = _NORM_FIELDS[field]
    return f"{collection}/{TOWER}/norm{norms[index]}/{leaf}", "copy"
  match = _VGG_CLASSIFIER.fullmatch(name)
  if match is None or match[1] not in _VGG_FC or not fc_stack:
    return None, ""
  layer, field = _VGG_FC[match[1]], match[2]
  if field == "bias":
    return f"params/{TOWER}/{layer}/bias", "copy"
  return f"params/{TOWER}/{layer}/kernel", "dense_chw" if layer == "fc1" else "dense"


def is_vgg(names) -> bool:
  """Every name is a VGG one (so no ResNet, AlexNet or MobileNet file is claimed) and there
  is a `features` weight."""
  return (any(_VGG_FEATURE.fullmatch(n) for n in names if n.endswith(".weight"))
          and all(_VGG_FEATURE.fullmatch(n) or _VGG_CLASSIFIER.fullmatch(n) for n in names))


def load_vgg(path: str, variables: dict, tokenizer) -> Imported:
  """Every tensor of a torchvision VGG-11/13/16/19 (or `_bn`) state dict, in this model's
  layout. `variables` says whether the model has an fc stack (`pooling="fc"`); without one
  `classifier.0`/`.3` are ignored too. The fc stack takes torchvision's 7×7 final map (its
  average pool is the identity there), i.e. 224 px input."""
  del tokenizer
  tensors = files.read_safetensors(path)
  convs, norms = vgg_modules(tensors)
  if not convs:
    raise UsageError(f"init.checkpoint {path!r} holds no VGG conv (features.<i>.weight)")
  channels = tensors[f"features.{max(convs)}.weight"].shape[0]  # The last conv's width.
  fc_stack = "fc1" in variables.get("params", {}).get(TOWER, {})
  arrays, ignored, folds = {}, [], []
  for name, value in tensors.items():
    target, how = vgg_path(name, convs, norms, fc_stack=fc_stack)
    if target is None:
      ignored.append(name)
    elif how == "fold":
      folds.append((target, value))
    elif how == "dense_chw" and value.shape[1] % channels:
      raise UsageError(f"init.checkpoint {path!r}: {name} has {value.shape[1]} inputs, not a "
                       f"multiple of the last conv's {channels} channels")
    else:
      arrays[target] = convert_vgg(value, how, channels)
  for target, bias in folds:  # BatchNorm(x + b) with mean m is BatchNorm(x) with mean m - b.
    arrays[target] = arrays[target] - bias
  notes = () if fc_stack or not any(n.startswith("classifier") for n in tensors) else (
      "classifier.0/.3 ignored: the model has no fc stack (its pooling is not \"fc\")",)
  return Imported(arrays, ignored=tuple(ignored), notes=notes)


def convert_vgg(value: np.ndarray, how: str, channels: int) -> np.ndarray:
  """A tensor as `vgg_path` says, but "fold"; `channels`: the last conv's width."""
  if how == "conv":
    return files.conv_kernel(value)
  if how == "dense":
    return value.T
  if how == "dense_chw":  # [out, C·h·w] (torchvision flattens C,H,W) → [h·w·C, out] (H,W,C).
    out, inputs = value.shape
    return value.reshape(out, channels, inputs // channels).transpose(2, 1, 0).reshape(
        inputs, out)
  return value
