"""A real dataset's TFDS metadata with no records, served by `tfds.testing.mock_data`:
offline, without the dataset's TFDS code or TensorFlow (which mock_data's own random
examples would need to encode images)."""

import contextlib
import os
import zlib

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import dataset_info, file_adapters

from mmalign.data.images import png_bytes

# coco_captions/2017's features, less the object boxes.
COCO_CAPTIONS = {
    "image": tfds.features.Image(encoding_format="jpeg"),
    "image/id": np.int64,
    "captions": tfds.features.Sequence({"id": np.int64, "text": tfds.features.Text()}),
}
WORDS = ("a", "red", "blue", "dog", "cat", "on", "the", "grass", "beach", "two", "people",
         "riding", "bike", "table", "with", "food")
# imagenet2012's features.
IMAGENET = {
    "image": tfds.features.Image(encoding_format="jpeg"),
    "label": tfds.features.ClassLabel(names=["tench", "goldfish", "great white shark",
                                             "tiger shark", "hammerhead", "electric ray",
                                             "stingray", "cock", "hen", "ostrich"]),
    "file_name": tfds.features.Text(),
}


def write_metadata(data_dir: str, name: str, config: str | None, version: str,
                   features: dict, splits: dict[str, int]) -> str:
  """dataset_info.json + features.json under data_dir/name[/config]/version."""
  root = os.path.join(data_dir, name, *([config] if config else []), version)
  os.makedirs(root, exist_ok=True)
  identity = dataset_info.DatasetIdentity(name=name, version=tfds.core.Version(version),
                                          data_dir=root, module_name="", config_name=config)
  info = dataset_info.DatasetInfo(builder=identity, features=tfds.features.FeaturesDict(features))
  info.set_file_format(file_adapters.FileFormat.ARRAY_RECORD)
  template = tfds.core.ShardedFileTemplate(data_dir=root, dataset_name=name,
                                           filetype_suffix="array_record")
  info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0,
                          filename_template=template.replace(split=split))
      for split, n in splits.items()]))
  info.write_to_directory(root)
  return root


def fake_example(features: tfds.features.FeaturesDict, split: str, index: int,
                 skip_image: bool) -> dict:
  """Example `index` of `split` as TFDS decodes it: images of varying size (PNG bytes when
  image decoding is skipped), 1–5 captions, ids unique per example."""
  example = {}
  for name, feature in features.items():  # Their order varies between processes.
    rng = np.random.default_rng([zlib.crc32(split.encode()), index, zlib.crc32(name.encode())])
    if isinstance(feature, tfds.features.Image):
      pixels = rng.integers(0, 256, (rng.integers(20, 60), rng.integers(20, 60), 3), np.uint8)
      example[name] = png_bytes(pixels) if skip_image else pixels
    elif isinstance(feature, tfds.features.ClassLabel):
      example[name] = int(rng.integers(feature.num_classes))
    elif isinstance(feature, tfds.features.Text):
      example[name] = _sentence(rng)
    elif isinstance(feature, tfds.features.Sequence):
      count = int(rng.integers(1, 6))
      example[name] = {"id": np.arange(count, dtype=np.int64) + 10 * index,
                       "text": np.array([_sentence(rng) for _ in range(count)], object)}
    else:
      example[name] = np.int64(1000 + index)
  return example


def _sentence(rng) -> bytes:
  return " ".join(rng.choice(WORDS, size=int(rng.integers(3, 8)))).encode()


@contextlib.contextmanager
def mock_examples(data_dir: str):
  """`tfds.testing.mock_data` serving `fake_example`s for every split of the datasets whose
  metadata `data_dir` holds."""
  def as_data_source(builder, split, decoders=None, **unused):
    skip = bool(decoders) and isinstance(decoders.get("image"), tfds.decode.SkipDecoding)
    count = builder.info.splits[split].num_examples
    return [fake_example(builder.info.features, split, i, skip) for i in range(count)]
  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES,
                              as_data_source_fn=as_data_source, data_dir=data_dir):
    yield


COCO_SPLITS = {"train": 40, "restval": 12, "val": 10, "test": 10}


@contextlib.contextmanager
def coco_and_imagenet(data_dir: str, imagenet_splits: dict[str, int]):
  """coco_captions/2017 (COCO_SPLITS) and imagenet2012 (`imagenet_splits`) in `data_dir`,
  served by `mock_examples`."""
  write_metadata(data_dir, "coco_captions", "2017", "1.1.0", COCO_CAPTIONS, COCO_SPLITS)
  write_metadata(data_dir, "imagenet2012", None, "5.1.0", IMAGENET, imagenet_splits)
  with mock_examples(data_dir):
    yield data_dir
