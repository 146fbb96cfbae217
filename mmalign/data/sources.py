"""Builds registered datasets offline (array_record) and opens their splits.

TFDS is used without TensorFlow: datasets are written as array_record and read
back with random access (`as_data_source`), never through `tfds.load`.
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from mmalign.data import builders  # noqa: F401  (registers every builder)
from mmalign.data.registry import DATASETS
from mmalign.errors import UsageError

DEFAULT_DATA_DIR = os.path.join(os.path.expanduser("~"), ".cache", "mmalign", "tfds")


def get_builder(name: str, config: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The builder for `name`/`config`; unknown names fail listing the allowed ones."""
  builder_cls = DATASETS.get(name, config_key="data.name")
  configs = [c.name for c in builder_cls.BUILDER_CONFIGS]
  if config not in configs:
    raise UsageError(f"unknown config {config!r} of dataset {name!r} (config key "
                     f"'data.config'); available: {', '.join(configs)}")
  return builder_cls(config=config, data_dir=data_dir or DEFAULT_DATA_DIR,
                     file_format="array_record")


def ensure_built(builder: tfds.core.DatasetBuilder) -> None:
  """Generates the dataset unless a complete copy already exists.

  TFDS writes into a temporary directory and renames it when done, so an
  interrupted build never leaves a half-written dataset behind.
  """
  if not builder.is_prepared():
    builder.download_and_prepare(file_format="array_record")


def open_split(builder: tfds.core.DatasetBuilder, split: str, *, decode_images: bool = True):
  """Random-access source of one split; skip image decoding for caption-only passes."""
  decoders = None if decode_images else {"image": tfds.decode.SkipDecoding()}
  if split not in builder.info.splits:
    raise UsageError(f"dataset {builder.name} has no split {split!r}; "
                     f"available: {', '.join(builder.info.splits)}")
  return builder.as_data_source(split=split, decoders=decoders)


def class_names(builder: tfds.core.DatasetBuilder, key: str, *,
                config_key: str = "task.label") -> list[str]:
  """Names of the classes of the ClassLabel feature `key` (index = label value)."""
  features = builder.info.features
  labels = sorted(name for name, feature in features.items()
                  if isinstance(feature, tfds.features.ClassLabel))
  if key not in labels:
    raise UsageError(f"{config_key}={key!r} is not a class-label feature of "
                     f"{builder.name}/{builder.builder_config.name}; its class labels are: "
                     f"{', '.join(labels) or 'none'}")
  return list(features[key].names)
