"""Any TFDS dataset already prepared in a data_dir, read through mmalign's example contract.

`data.name` that is not a built-in dataset names a dataset prepared (array_record) under
`data.data_dir`, e.g. `coco_captions` with `data.config=2017`, `imagenet2012`, or one written
by `mmalign.data.convert`. It is opened from its files alone (`builder_from_files`), so its
TFDS code, which may need TensorFlow, is never imported and nothing is downloaded.

`data.features` maps the dataset's features onto the contract (`pipeline.SplitIndex`):
  image:   the image feature (default "image");
  caption: a text feature, a sequence of texts ("captions/text" in coco_captions), or a
           class-label feature whose class names become the captions (default: "caption",
           "captions", else "label");
  group:   an integer feature naming what an example shows (default: the image itself, or
           the class when captions are class names).
An image with several captions becomes one example per caption, all of one group, with
`image_record` telling which examples share the image (the COCO/Flickr retrieval protocol
scores each caption against distinct images). `data.splits` names splits after TFDS split
expressions, e.g. `{"train": "train+restval", "validation": "val"}`.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import read_only_builder

from mmalign.errors import UsageError

FEATURE_ROLES = ("image", "caption", "group")
DEFAULT_CAPTION_FEATURES = ("caption", "captions", "label")


@dataclasses.dataclass(frozen=True)
class _Info:
  """The part of `tfds.core.DatasetInfo` mmalign reads, under mmalign's split names."""
  splits: dict
  features: dict


@dataclasses.dataclass(frozen=True)
class _Config:
  name: str


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Where each role lives in the dataset's examples (paths split on "/")."""
  image: str
  caption: str
  caption_is_label: bool
  group: str | None


class ExternalDataset:
  """A prepared TFDS dataset seen as mmalign's builders are: `info.splits`, `info.features`
  (image + the dataset's class labels), `as_data_source(split, decoders)`."""

  external = True

  def __init__(self, builder: tfds.core.DatasetBuilder, features: dict, splits: dict):
    self._builder = builder
    self.name = builder.name
    self.builder_config = _Config(builder.builder_config.name if builder.builder_config
                                  else "")
    self.version = builder.version
    self.data_dir = os.fspath(builder.data_dir)
    self._layout = _layout(builder, dict(features))
    own = builder.info.splits
    mapped = dict(splits)
    for name, expression in mapped.items():
      try:
        own[expression]  # pylint: disable=pointless-statement
      except (KeyError, ValueError) as e:
        raise UsageError(f"data.splits.{name}={expression!r} is not a split of {self.label}: "
                         f"{' '.join(str(e).split())[:200]}; its splits: {', '.join(own)}"
                         ) from None
    self._splits = {**{name: name for name in own}, **mapped}
    labels = {name: feature for name, feature in builder.info.features.items()
              if isinstance(feature, tfds.features.ClassLabel)}
    self.info = _Info(
        splits={name: own[expression] for name, expression in self._splits.items()},
        features={"image": builder.info.features[self._layout.image], **labels})

  @property
  def label(self) -> str:
    return f"{self.name}/{self.builder_config.name}" if self.builder_config.name else self.name

  def is_prepared(self) -> bool:
    return True

  def as_data_source(self, split: str, decoders=None) -> "CaptionExamples":
    """The split, one example per (image, caption); `decoders` may skip image decoding."""
    decode = not (decoders and isinstance(decoders.get("image"), tfds.decode.SkipDecoding))
    captions, groups, image_records, labels = self._captions(split)
    return CaptionExamples(self._records(split, decode), self._layout.image, captions, groups,
                           image_records, labels, decode)

  def _records(self, split: str, decode: bool):
    decoders = None if decode else {self._layout.image: tfds.decode.SkipDecoding()}
    return self._builder.as_data_source(split=self._splits[split], decoders=decoders)

  @functools.lru_cache(maxsize=None)
  def _captions(self, split: str):
    """(captions, groups, image records, {label: values}) of every example of the split,
    read once without decoding an image."""
    source = self._records(split, decode=False)
    captions: list[str] = []
    groups, image_records = [], []
    label_names = tuple(self.info.features)[1:]
    labels = {name: [] for name in label_names}
    names = (self._builder.info.features[self._layout.caption].names
             if self._layout.caption_is_label else None)
    for record in range(len(source)):
      example = source[record]
      value = _at(example, self._layout.caption)
      texts = [names[int(value)]] if names else _texts(value)
      group = (int(_at(example, self._layout.group)) if self._layout.group
               else int(value) if names else record)
      captions.extend(texts)
      groups.extend([group] * len(texts))
      image_records.extend([record] * len(texts))
      for name in label_names:
        labels[name].extend([int(example[name])] * len(texts))
    return (captions, np.asarray(groups, np.int64), np.asarray(image_records, np.int64),
            {name: np.asarray(values, np.int64) for name, values in labels.items()})


class CaptionExamples:
  """Random access to one split's (image, caption) examples: `image` [h, w, 3] uint8,
  `caption`, `group`, `image_record`, and each class-label feature."""

  def __init__(self, records, image_feature: str, captions: list[str], groups: np.ndarray,
               image_records: np.ndarray, labels: dict[str, np.ndarray], decode: bool):
    self._records, self._image_feature = records, image_feature
    self._captions, self._groups, self._image_records = captions, groups, image_records
    self._labels, self._decode = labels, decode

  def __len__(self) -> int:
    return len(self._captions)

  def __getitem__(self, i: int) -> dict:
    i = int(i)
    example = {"caption": self._captions[i], "group": self._groups[i],
               "image_record": self._image_records[i],
               **{name: values[i] for name, values in self._labels.items()}}
    if self._decode:
      record = self._records[int(self._image_records[i])]
      example["image"] = as_rgb(np.asarray(_at(record, self._image_feature)))
    return example

  def __iter__(self):
    return (self[i] for i in range(len(self)))


def as_rgb(image: np.ndarray) -> np.ndarray:
  """uint8 [h, w], [h, w, 1], [h, w, 3] or [h, w, 4] → [h, w, 3] (alpha over white)."""
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  if image.shape[-1] == 4:
    alpha = image[..., 3:].astype(np.float32) / 255.0
    blended = image[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.round(blended).astype(np.uint8)
  return image


def open_prepared(name: str, config: str, data_dir: str | None, features: dict,
                  splits: dict, built_in: tuple[str, ...] = ()) -> ExternalDataset:
  """The dataset `name`[/`config`] prepared under `data_dir`; UsageError if it is not."""
  full = f"{name}/{config}" if config else name
  not_built_in = f"data.name={name!r} is not a built-in dataset ({', '.join(built_in)})"
  if not data_dir:
    raise UsageError(f"{not_built_in}; to read a prepared TFDS dataset set data.data_dir to "
                     "the folder that holds it")
  try:
    builder = read_only_builder.builder_from_files(full, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise UsageError(
        f"{not_built_in} and {full} is not prepared in "
        f"data.data_dir={data_dir!r}; prepare it there with `tfds build {full} "
        f"--data_dir={data_dir} --file_format=array_record` (or convert your own files: "
        "python -m mmalign.data.convert)") from None
  file_format = builder.info.file_format
  if file_format is not None and file_format.value != "array_record":
    raise UsageError(f"{full} in {data_dir} is stored as {file_format.value}; mmalign reads "
                     f"array_record (random access): rebuild it with `tfds build {full} "
                     f"--data_dir={data_dir} --file_format=array_record`")
  return ExternalDataset(builder, features, splits)


def _layout(builder, features: dict) -> _Layout:
  unknown = sorted(set(features) - set(FEATURE_ROLES))
  if unknown:
    raise UsageError(f"data.features.{unknown[0]}: unknown role; the roles are "
                     f"{', '.join(FEATURE_ROLES)}")
  spec = builder.info.features
  label = f"{builder.name}/{builder.builder_config.name}" if builder.builder_config else \
      builder.name
  available = ", ".join(sorted(_paths(spec)))
  image = features.get("image") or "image"
  caption = features.get("caption") or next(
      (name for name in DEFAULT_CAPTION_FEATURES if name in spec), None)
  if caption is None:
    raise UsageError(f"{label} has no feature named caption, captions or label: set "
                     f"data.features.caption; its features: {available}")
  for role, path in (("image", image), ("caption", caption), ("group", features.get("group"))):
    if path and _feature_at(spec, path) is None:
      raise UsageError(f"data.features.{role}={path!r} is not a feature of {label}; its "
                       f"features: {available}")
  if not isinstance(_feature_at(spec, image), tfds.features.Image):
    raise UsageError(f"data.features.image={image!r} is not an image feature of {label}")
  return _Layout(image, caption, isinstance(_feature_at(spec, caption),
                                            tfds.features.ClassLabel), features.get("group"))


def _feature_at(spec, path: str):
  """The feature at `path` ("captions/text" descends into a Sequence of dicts), or None."""
  if path in spec.keys():
    return spec[path]
  head, _, rest = path.partition("/")
  if not rest or head not in spec.keys():
    return None
  inner = spec[head]
  inner = getattr(inner, "feature", inner)  # A Sequence's element.
  return _feature_at(inner, rest) if isinstance(inner, tfds.features.FeaturesDict) else None


def _paths(spec, prefix: str = "") -> list[str]:
  found = []
  for name, feature in spec.items():
    inner = getattr(feature, "feature", feature)
    if isinstance(inner, tfds.features.FeaturesDict):
      found += _paths(inner, f"{prefix}{name}/")
    else:
      found.append(prefix + name)
  return found


def _at(example: dict, path: str):
  if path in example:
    return example[path]
  head, _, rest = path.partition("/")
  return _at(example[head], rest)


def _texts(value) -> list[str]:
  """One text or a sequence of texts (bytes or str) → list[str]."""
  if isinstance(value, (bytes, str, np.bytes_, np.str_)):
    value = [value]
  return [v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else str(v)
          for v in np.asarray(value, dtype=object).reshape(-1)]
