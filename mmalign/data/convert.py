"""Converts a user's own image–caption data into a TFDS dataset that reads without TensorFlow.

    python -m mmalign.data.convert --source=captions.jsonl --name=my_data --data_dir=DIR

The dataset directory `<data_dir>/<name>/1.0.0/` holds array_record shards
`<name>-<split>.array_record-<i:05d>-of-<n:05d>`, dataset_info.json, features.json and
conversion_report.json; open it with `tfds.builder_from_directory(dir).as_data_source(split)`.
One record per image, holding all its captions (features: `features_for`), and splits are
by image (`split_of(key)`), so no caption of a held-out image is ever trained on.

The work is cut into units (`images_per_shard` images in key order, or one webdataset tar)
converted independently, unit u by process u % process_count. A unit publishes its report
last, so an interrupted run resumes by redoing only the units without one; `finalize` then
names the parts as TFDS shards in unit order, which makes the result independent of how
many processes converted it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import time
from collections import Counter

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from PIL import Image
from tensorflow_datasets.core import dataset_info, file_adapters

from mmalign.data.images import png_bytes
from mmalign.data.split import split_of
from mmalign.errors import UsageError
from mmalign.utils import say, write_json

VERSION = "1.0.0"
SPLITS = ("train", "validation", "test")
FORMATS = ("jsonl", "csv", "folder", "webdataset")
FOLDER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
WEBDATASET_IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
# webdataset's key rule: the member name up to the first dot of its base name.
_WEBDATASET_MEMBER = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # TFDS dataset names are snake_case.
_PARTS = ".parts"
_LISTED = 20  # Names listed in a message, then "and N more".


@dataclasses.dataclass
class Example:
  key: str  # The image path relative to the source, or the webdataset key.
  image: str | bytes | None  # A file path, or the bytes themselves (webdataset).
  captions: list[str]
  label: str | None = None
  split: str | None = None  # Given by the manifest; otherwise `split_of(key)`.


@dataclasses.dataclass
class Plan:
  format: str
  units: list  # list[list[Example]] (manifests, folders) or list[str] (tar paths).
  label_names: list[str] | None


def dataset_dir_of(data_dir: str, name: str) -> str:
  return os.path.join(data_dir, name, VERSION)


def features_for(label_names: list[str] | None) -> tfds.features.FeaturesDict:
  """The record layout; `label` (index into sorted class names) only when labelled."""
  features = {"image": tfds.features.Image(shape=(None, None, 3)),
              "captions": tfds.features.Sequence(tfds.features.Text()),
              "key": tfds.features.Text()}
  if label_names is not None:
    features["label"] = tfds.features.ClassLabel(names=label_names)
  return tfds.features.FeaturesDict(features)


def infer_format(source: str) -> str:
  if os.path.isdir(source):
    return "webdataset" if any(f.endswith(".tar") for f in os.listdir(source)) else "folder"
  for suffix in ("jsonl", "csv"):
    if source.endswith("." + suffix):
      return suffix
  raise UsageError(f"cannot tell the format of --source={source!r}: pass --format, one of "
                   f"{', '.join(FORMATS)}")


def read_jsonl(path: str) -> list[Example]:
  """Lines `{"image", "caption" | "captions", "label"?, "split"?}`; one Example per image."""
  rows = []
  for number, line in enumerate(_read_text(path).split("\n"), 1):
    if not line.strip():
      continue
    where = f"{path} line {number}"
    try:
      entry = json.loads(line)
    except json.JSONDecodeError as e:
      raise UsageError(f"{where} is not valid JSON ({e.msg})") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not (
        "caption" in entry or "captions" in entry):
      raise UsageError(f'{where} needs "image" (a path) and "caption" or "captions"')
    captions = entry["captions"] if "captions" in entry else [entry["caption"]]
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
      raise UsageError(f'{where}: captions must be text ("caption": str or "captions": [str])')
    rows.append((where, entry["image"], captions, entry.get("label"), entry.get("split")))
  return _merge(rows, os.path.dirname(path))


def read_csv(path: str) -> list[Example]:
  """A header with `image`, `caption` and optional `label`, `split`; rows merge by image."""
  reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
  missing = {"image", "caption"} - set(reader.fieldnames or ())
  if missing:
    raise UsageError(f"{path} lacks the column(s) {', '.join(sorted(missing))} in its header")
  rows = [(f"{path} line {reader.line_num}", row["image"], [row["caption"] or ""],
           row.get("label") or None, row.get("split") or None) for row in reader]
  return _merge(rows, os.path.dirname(path))


def _merge(rows, base_dir: str) -> list[Example]:
  """One Example per image path (normalised), its captions in row order."""
  merged: dict[str, Example] = {}
  for where, image, captions, label, split in rows:
    if not image:
      raise UsageError(f"{where}: the image path is empty")
    if split is not None and split not in SPLITS:
      raise UsageError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    if label is not None and not isinstance(label, str):
      raise UsageError(f"{where}: label {label!r} must be text")
    key = os.path.normpath(image).replace(os.sep, "/")
    example = merged.setdefault(key, Example(key, os.path.join(base_dir, image), [], label, split))
    if (example.label, example.split) != (label, split):
      raise UsageError(f"{where}: image {key!r} has label/split {label!r}/{split!r} here but "
                       f"{example.label!r}/{example.split!r} on an earlier line")
    example.captions.extend(c.strip() for c in captions if c.strip())
  return list(merged.values())


def read_folder(root: str) -> list[Example]:
  """ImageFolder: `root/<class>/.../<image>` (label = class) or images directly in root.

  Captions are the lines of a sidecar `<stem>.txt`, else the class name with `_` as space.
  """
  examples = []
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = [d for d in subdirs if not d.startswith(".")]
    for file in files:
      if not file.lower().endswith(FOLDER_IMAGE_SUFFIXES):
        continue
      path = os.path.join(directory, file)
      key = os.path.relpath(path, root).replace(os.sep, "/")
      label = key.split("/")[0] if "/" in key else None
      sidecar = os.path.splitext(path)[0] + ".txt"
      if os.path.isfile(sidecar):
        captions = [line.strip() for line in _read_text(sidecar).splitlines() if line.strip()]
      else:
        captions = [label.replace("_", " ")] if label else []
      examples.append(Example(key, path, captions, label))
  return examples


def _read_text(path: str) -> str:
  try:
    with open(path, encoding="utf-8", newline="") as f:
      return f.read()
  except OSError as e:
    raise UsageError(f"cannot read {path}: {e.strerror}") from None
  except UnicodeDecodeError:
    raise UsageError(f"{path} is not UTF-8 text") from None


def make_plan(source: str, fmt: str | None = None, images_per_shard: int = 1000) -> Plan:
  """Reads the manifest (or lists the folder or tars) and cuts it into work units."""
  if not os.path.exists(source):
    raise UsageError(f"--source={source!r} does not exist")
  fmt = fmt or infer_format(source)
  if fmt not in FORMATS:
    raise UsageError(f"--format={fmt!r} is not one of {', '.join(FORMATS)}")
  if images_per_shard < 1:
    raise UsageError(f"--images_per_shard={images_per_shard} must be >= 1")
  if fmt == "webdataset":
    listing = os.listdir(source) if os.path.isdir(source) else []
    tars = sorted(f for f in listing if f.endswith(".tar"))
    if not tars:
      raise UsageError(f"--source={source!r} holds no .tar files")
    return Plan(fmt, [os.path.join(source, t) for t in tars], None)
  if fmt == "folder" and not os.path.isdir(source):
    raise UsageError(f"--source={source!r} is not a folder, as --format=folder needs")
  examples = {"jsonl": read_jsonl, "csv": read_csv, "folder": read_folder}[fmt](source)
  if not examples:
    raise UsageError(f"no images found in --source={source!r}")
  examples.sort(key=lambda e: e.key)
  units = [examples[i:i + images_per_shard] for i in range(0, len(examples), images_per_shard)]
  return Plan(fmt, units, _label_names(examples))


def _label_names(examples: list[Example]) -> list[str] | None:
  labelled = [e for e in examples if e.label is not None]
  if not labelled:
    return None
  if len(labelled) < len(examples):
    unlabelled = next(e for e in examples if e.label is None)
    raise UsageError(f"{len(labelled)} of {len(examples)} images have a label but "
                     f"{unlabelled.key!r} has none: label every image or none")
  return sorted({e.label for e in labelled})


def _fingerprint(plan: Plan) -> str:
  """Identifies the units' content, so a resumed run cannot mix parts of other inputs."""
  units = [(os.path.basename(u), os.path.getsize(u)) if isinstance(u, str) else
           [(e.key, e.captions, e.label, e.split) for e in u] for u in plan.units]
  return hashlib.sha256(json.dumps(units).encode("utf-8")).hexdigest()


def unit_examples(plan: Plan, unit: int):
  """The Examples of one unit; a webdataset tar is streamed, not held in memory."""
  if plan.format != "webdataset":
    yield from plan.units[unit]
    return
  try:
    with tarfile.open(plan.units[unit]) as tar:
      key, files = None, {}
      for member in tar:
        match = _WEBDATASET_MEMBER.match(member.name) if member.isfile() else None
        if not match:
          continue
        if match.group(1) != key:
          if key is not None:
            yield _webdataset_example(key, files)
          key, files = match.group(1), {}
        suffix = match.group(2).lower()
        if suffix in WEBDATASET_IMAGE_SUFFIXES + ("txt", "json"):
          files.setdefault(suffix, tar.extractfile(member).read())
      if key is not None:
        yield _webdataset_example(key, files)
  except tarfile.TarError as e:
    raise UsageError(f"{plan.units[unit]} is not a readable tar file ({e})") from None


def _webdataset_example(key: str, files: dict[str, bytes]) -> Example:
  """Captions: the non-empty lines of key.txt, then key.json's "caption" or "captions"."""
  image = next((files[s] for s in WEBDATASET_IMAGE_SUFFIXES if s in files), None)
  captions = files["txt"].decode("utf-8", "replace").splitlines() if "txt" in files else []
  captions += _json_captions(files["json"]) if "json" in files else []
  return Example(key, image, [c.strip() for c in captions if c.strip()])


def _json_captions(data: bytes) -> list[str]:
  try:
    meta = json.loads(data)
  except ValueError:  # Also UnicodeDecodeError.
    return []
  found = meta.get("captions", meta.get("caption")) if isinstance(meta, dict) else None
  found = [found] if isinstance(found, str) else found if isinstance(found, list) else []
  return [c for c in found if isinstance(c, str)]


def encode_image(image: str | bytes) -> bytes:
  """Bytes for the Image feature: an RGB JPEG as it is (no second lossy encoding),
  anything else as RGB PNG, with transparency composited on white.

  Raises whatever PIL raises for a file it cannot fully decode.
  """
  if isinstance(image, str):
    with open(image, "rb") as f:
      image = f.read()
  if not image:
    raise ValueError("empty file")
  with Image.open(io.BytesIO(image)) as picture:
    picture.load()
    if picture.format == "JPEG" and picture.mode == "RGB":
      return image
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
      rgba = picture.convert("RGBA")
      picture = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return png_bytes(np.asarray(picture.convert("RGB")))


def _reason(error: Exception) -> str:
  """Why an image was skipped, free of object addresses so reruns report the same."""
  if isinstance(error, Image.UnidentifiedImageError):
    return "not an image format PIL can identify"
  if isinstance(error, OSError) and error.strerror:
    return error.strerror  # File errors: "No such file or directory".
  return f"{type(error).__name__}: {error}"


def convert_unit(plan: Plan, unit: int, parts_dir: str) -> dict:
  """Writes one unit's parts, one array_record file per split it has, then its report."""
  for split in SPLITS:  # Left by an interrupted attempt.
    if os.path.exists(_part_path(parts_dir, unit, split)):
      os.remove(_part_path(parts_dir, unit, split))
  features = features_for(plan.label_names)
  writers, records, captions = {}, Counter(), Counter()
  corrupt, incomplete, images = [], 0, 0
  try:
    for example in unit_examples(plan, unit):
      if example.image is None or not example.captions:
        incomplete += 1
        continue
      images += 1
      try:
        image = encode_image(example.image)
      except Exception as e:  # pylint: disable=broad-except  # PIL raises many kinds.
        corrupt.append([example.key, _reason(e)])
        continue
      split = example.split or split_of(example.key)
      if split not in writers:
        writers[split] = array_record_module.ArrayRecordWriter(
            _part_path(parts_dir, unit, split), "group_size:1")  # Fast random access.
      record = {"image": image, "captions": example.captions, "key": example.key}
      if plan.label_names is not None:
        record["label"] = example.label
      writers[split].write(features.serialize_example(record))
      records[split] += 1
      captions[split] += len(example.captions)
  finally:
    for writer in writers.values():
      writer.close()
  report = {"unit": unit, "images": images, "records": dict(records),
            "captions": dict(captions), "corrupt": corrupt, "incomplete": incomplete,
            "bytes": {s: os.path.getsize(_part_path(parts_dir, unit, s)) for s in writers}}
  write_json(_report_path(parts_dir, unit), report)
  return report


def _part_path(parts_dir: str, unit: int, split: str) -> str:
  return os.path.join(parts_dir, f"{unit:05d}-{split}.array_record")


def _report_path(parts_dir: str, unit: int) -> str:
  return os.path.join(parts_dir, f"{unit:05d}.json")


def convert(source: str, name: str, data_dir: str, *, fmt: str | None = None,
            process_index: int = 0, process_count: int = 1, images_per_shard: int = 1000,
            license: str | None = None) -> str:  # pylint: disable=redefined-builtin
  """Converts this process's units (u % process_count == process_index) that have no
  report yet; with one process also finalizes. Returns the dataset directory."""
  if not _NAME.match(name):
    raise UsageError(f"--name={name!r} must be snake_case (a-z, 0-9, _), as TFDS names are")
  if not 0 <= process_index < process_count:
    raise UsageError(f"--process_index={process_index} must be in [0, --process_count="
                     f"{process_count})")
  directory = dataset_dir_of(data_dir, name)
  _refuse_if_finished(directory)
  plan = make_plan(source, fmt, images_per_shard)
  parts_dir = os.path.join(directory, _PARTS)
  _write_or_check_plan(parts_dir, {
      "source": os.path.abspath(source), "format": plan.format,
      "images_per_shard": images_per_shard, "units": len(plan.units),
      "label_names": plan.label_names, "license": license or "",
      "fingerprint": _fingerprint(plan)})
  todo = [u for u in range(len(plan.units)) if u % process_count == process_index
          and not os.path.exists(_report_path(parts_dir, u))]
  done = sum(os.path.exists(_report_path(parts_dir, u)) for u in range(len(plan.units)))
  started, images = time.perf_counter(), 0
  for unit in todo:
    images += convert_unit(plan, unit, parts_dir)["images"]
    done += 1  # Others' units finished meanwhile are not counted.
    say(f"{name}: {done}/{len(plan.units)} units done, "
        f"{images / (time.perf_counter() - started):.0f} images/s")
  if process_count == 1:
    finalize(name, data_dir)
  else:
    say(f"{name}: process {process_index} of {process_count} done; once all are, run "
        "again with --finalize")
  return directory


def _refuse_if_finished(directory: str) -> None:
  if os.path.exists(os.path.join(directory, "dataset_info.json")):
    raise UsageError(f"{directory} already holds a converted dataset; delete it to convert again")


def _write_or_check_plan(parts_dir: str, plan: dict) -> None:
  path = os.path.join(parts_dir, "plan.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      earlier = json.load(f)
    # The source may be mounted elsewhere on another host; the fingerprint covers content.
    differing = sorted(k for k in plan if k != "source" and earlier.get(k) != plan[k])
    if differing:
      raise UsageError(f"{parts_dir} holds part of a conversion with other {', '.join(differing)}"
                       f"; delete {os.path.dirname(parts_dir)} to start over")
  else:
    write_json(path, plan)


def finalize(name: str, data_dir: str) -> dict:
  """Publishes the converted units as a TFDS dataset and returns the conversion report.

  Refuses (UsageError naming them) while any unit lacks its report.
  """
  directory = dataset_dir_of(data_dir, name)
  _refuse_if_finished(directory)
  parts_dir = os.path.join(directory, _PARTS)
  if not os.path.exists(os.path.join(parts_dir, "plan.json")):
    raise UsageError(f"nothing to finalize in {directory}: convert with --source first")
  with open(os.path.join(parts_dir, "plan.json"), encoding="utf-8") as f:
    plan = json.load(f)
  missing = [u for u in range(plan["units"]) if not os.path.exists(_report_path(parts_dir, u))]
  if missing:
    listed = ", ".join(map(str, missing[:_LISTED]))
    more = f" and {len(missing) - _LISTED} more" if len(missing) > _LISTED else ""
    raise UsageError(f"cannot finalize {name}: units {listed}{more} of {plan['units']} have no "
                     "report yet; run the processes that own them (unit u: process "
                     "u % process_count)")
  reports = []
  for unit in range(plan["units"]):
    with open(_report_path(parts_dir, unit), encoding="utf-8") as f:
      reports.append(json.load(f))
  splits = [_publish_split(name, directory, parts_dir, split, reports) for split in SPLITS]
  info = dataset_info.DatasetInfo(
      builder=dataset_info.DatasetIdentity(name=name, version=tfds.core.Version(VERSION),
                                           data_dir=directory, module_name=""),
      features=features_for(plan["label_names"]),
      description=f"Image–caption pairs converted by mmalign.data.convert from "
                  f"{plan['source']} ({plan['format']}).",
      license=plan["license"] or None)
  info.set_file_format(file_adapters.FileFormat.ARRAY_RECORD)
  info.set_splits(tfds.core.SplitDict([s for s in splits if s is not None]))
  report = _summary(plan, reports)
  write_json(os.path.join(directory, "conversion_report.json"), report)
  info.write_to_directory(directory)  # dataset_info.json last: it marks the dataset done.
  shutil.rmtree(parts_dir)
  _print_summary(name, directory, report)
  return report


def _publish_split(name: str, directory: str, parts_dir: str, split: str,
                   reports: list[dict]) -> tfds.core.SplitInfo | None:
  """Renames the split's non-empty parts, in unit order, to the TFDS shard names."""
  units = [r for r in reports if r["records"].get(split)]
  if not units:
    return None
  template = tfds.core.ShardedFileTemplate(data_dir=directory, dataset_name=name, split=split,
                                           filetype_suffix="array_record")
  for index, report in enumerate(units):
    part = _part_path(parts_dir, report["unit"], split)
    if os.path.exists(part):  # Absent when an interrupted finalize already moved it.
      os.replace(part, template.sharded_filepath(shard_index=index, num_shards=len(units)))
  return tfds.core.SplitInfo(name=split, shard_lengths=[r["records"][split] for r in units],
                             num_bytes=sum(r["bytes"][split] for r in units),
                             filename_template=template)


def _summary(plan: dict, reports: list[dict]) -> dict:
  corrupt = [pair for r in reports for pair in r["corrupt"]]
  return {"source": plan["source"], "format": plan["format"], "units": plan["units"],
          "images_read": sum(r["images"] for r in reports),
          "records": {s: sum(r["records"].get(s, 0) for r in reports) for s in SPLITS},
          "captions": {s: sum(r["captions"].get(s, 0) for r in reports) for s in SPLITS},
          "corrupt_count": len(corrupt), "corrupt": corrupt,
          "incomplete": sum(r["incomplete"] for r in reports)}


def _print_summary(name: str, directory: str, report: dict) -> None:
  per_split = ", ".join(f"{s} {report['records'][s]} images / {report['captions'][s]} captions"
                        for s in SPLITS)
  say(f"{name}: wrote {directory}: {per_split}; read {report['images_read']} images, "
      f"{report['corrupt_count']} corrupt, {report['incomplete']} incomplete samples skipped")
  for key, reason in report["corrupt"][:_LISTED]:
    say(f"  corrupt: {key}: {reason}")
  if report["corrupt_count"] > _LISTED:
    say(f"  and {report['corrupt_count'] - _LISTED} more")


def main(argv):
  import sys  # pylint: disable=import-outside-toplevel
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  values = flags.FLAGS
  try:
    if values.finalize:
      finalize(values.name, values.data_dir)
    elif not values.source:
      raise UsageError("--source is required (unless --finalize)")
    else:
      convert(values.source, values.name, values.data_dir, fmt=values.format,
              process_index=values.process_index, process_count=values.process_count,
              images_per_shard=values.images_per_shard, license=values.license)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("source", None, "A .jsonl or .csv manifest, an image folder, or a "
                      "folder of webdataset .tar files.")
  flags.DEFINE_string("name", None, "Dataset name (snake_case).", required=True)
  flags.DEFINE_string("data_dir", None, "TFDS data_dir to write <name>/1.0.0 into.",
                      required=True)
  flags.DEFINE_enum("format", None, FORMATS, "Input format; inferred from --source if unset.")
  flags.DEFINE_integer("process_index", 0, "This process's index.")
  flags.DEFINE_integer("process_count", 1, "Processes sharing the units (u % count).")
  flags.DEFINE_bool("finalize", False, "Only publish the units all processes converted.")
  flags.DEFINE_integer("images_per_shard", 1000, "Images per work unit and shard.")
  flags.DEFINE_string("license", None, "License text recorded in the dataset's metadata.")


if __name__ == "__main__":
  from absl import app  # pylint: disable=import-outside-toplevel
  _define_flags()
  app.run(main)
