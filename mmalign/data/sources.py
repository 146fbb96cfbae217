"""Builds registered datasets offline (array_record) and opens their splits.

TFDS is used without TensorFlow: datasets are written as array_record and read
back with random access (`as_data_source`), never through `tfds.load`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

import tensorflow_datasets as tfds
from array_record.python import array_record_module
from google.protobuf import json_format

from mmalign.data import builders  # noqa: F401  (registers every builder)
from mmalign.data import external
from mmalign.data.registry import DATASETS
from mmalign.errors import UsageError

DEFAULT_DATA_DIR = os.path.join(os.path.expanduser("~"), ".cache", "mmalign", "tfds")


def get_builder(name: str, config: str, data_dir: str | None = None, *,
                features: dict | None = None, splits: dict | None = None):
  """The built-in builder `name`/`config`, or else the TFDS dataset prepared in `data_dir`
  (`external.open_prepared`, seen through `features` and `splits`)."""
  if name not in DATASETS.names():
    return external.open_prepared(name, config, data_dir, features or {}, splits or {},
                                  built_in=tuple(DATASETS.names()))
  if features or splits:
    raise UsageError(f"data.features and data.splits map a prepared TFDS dataset; the "
                     f"built-in dataset {name!r} already has image, caption and group")
  builder_cls = DATASETS.get(name, config_key="data.name")
  configs = [c.name for c in builder_cls.BUILDER_CONFIGS]
  if config not in configs:
    raise UsageError(f"unknown config {config!r} of dataset {name!r} (config key "
                     f"'data.config'); available: {', '.join(configs)}")
  data_dir = data_dir or DEFAULT_DATA_DIR
  try:  # Reads dataset_info.json when the dataset is already built there.
    return builder_cls(config=config, data_dir=data_dir, file_format="array_record")
  except json_format.ParseError as e:
    directory = os.path.join(data_dir, name, config, str(builder_cls.VERSION))
    raise _corrupt(directory, f"its dataset_info.json: {e}") from None


def ensure_built(builder: tfds.core.DatasetBuilder) -> None:
  """Generates the dataset unless a complete copy already exists.

  A build holds an exclusive lock on `<data_dir>/<name>/<config>.build.lock`, because two
  concurrent builds would both generate and the later rename would fail; the waiter then
  reuses the result. A prepared dataset is used without locking or writing, so a read-only
  data_dir can hold it; an unbuilt one there is a UsageError.
  """
  if builder.is_prepared():
    return
  with _build_lock(builder):
    if builder.is_prepared():  # Built by another process while this one waited.
      builder.info.read_from_directory(builder.data_dir)
    else:
      builder.download_and_prepare(file_format="array_record")


@contextlib.contextmanager
def _build_lock(builder: tfds.core.DatasetBuilder):
  path = os.path.dirname(os.fspath(builder.data_dir)) + ".build.lock"
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lock = open(path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
  except OSError as e:
    raise UsageError(
        f"data.data_dir={os.fspath(builder.data_dir_root)!r} is not writable ({e.strerror}) "
        f"and {builder.name}/{builder.builder_config.name} is not built there; pass a "
        "writable data.data_dir, or build it elsewhere and point data.data_dir there"
    ) from None
  with lock:  # Closing the file releases the lock, also when the build fails.
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield


def open_split(builder: tfds.core.DatasetBuilder, split: str, *, decode_images: bool = True):
  """Random-access source of one split; skip image decoding for caption-only passes.

  Damaged cached files raise UsageError naming the directory to delete: shard record
  counts are checked here (footers only), record checksums when read.
  """
  decoders = None if decode_images else {"image": tfds.decode.SkipDecoding()}
  if split not in builder.info.splits:
    raise UsageError(f"dataset {builder.name} has no split {split!r}; "
                     f"available: {', '.join(builder.info.splits)}")
  checked = () if getattr(builder, "external", False) else builder.info.splits[split]
  for shard in getattr(checked, "file_instructions", ()):  # Files mmalign wrote itself.
    problem = _shard_problem(shard.filename, shard.examples_in_shard)
    if problem:
      raise _corrupt(builder.data_dir, f"{os.path.basename(shard.filename)} {problem}")
  return _CheckedSource(builder.as_data_source(split=split, decoders=decoders),
                        builder.data_dir)


def _shard_problem(path: str, expected: int) -> str | None:
  """What is wrong with an array_record shard that should hold `expected` records."""
  if not os.path.isfile(path):
    return "is missing"
  try:
    reader = array_record_module.ArrayRecordReader(path, "readahead_buffer_size:0")
    found = reader.num_records() if reader.ok() else None
    reader.close()  # Raises for a damaged file, as num_records may.
  except RuntimeError:
    found = None
  if found is None:
    return "is unreadable (truncated?)"
  if found != expected:
    return f"holds {found} records, dataset_info.json says {expected}"
  return None


def _corrupt(directory: str, problem: str) -> UsageError:
  return UsageError(f"cached dataset {directory} is corrupt: {' '.join(problem.split())}; "
                    "delete that directory and rerun to rebuild it")


class _CheckedSource:
  """A split's data source whose storage errors name the dataset directory to rebuild."""

  def __init__(self, source, directory: str):
    self._source = source
    self._directory = directory

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, key):
    try:
      return self._source[key]
    except RuntimeError as e:  # array_record/riegeli: "Corrupted Riegeli/records file: ..."
      raise _corrupt(self._directory, str(e)) from None

  def __iter__(self):
    return (self[i] for i in range(len(self)))

  def __getattr__(self, name):  # Called only for names this class lacks.
    if name.startswith("_"):  # Keeps copy/pickle from recursing before __init__.
      raise AttributeError(name)
    return getattr(self._source, name)


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
