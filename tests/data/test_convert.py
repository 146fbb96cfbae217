"""mmalign.data.convert: user data in, a TFDS array_record dataset out, read back through
TFDS's own readers (no TensorFlow) and checked against PIL's decoding of the sources."""

import io
import json
import os
import pathlib
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core import read_only_builder

from mmalign.data import convert as convert_lib
from mmalign.data.split import split_of
from mmalign.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORRUPT = {"truncated.jpg": "truncated", "text.jpg": "text", "empty.jpg": "empty"}


def _noise(h: int, w: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _gradient(h: int, w: int) -> np.ndarray:
  y, x = np.mgrid[0:h, 0:w]
  return np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], -1).astype(np.uint8)


def _encoded(pixels: np.ndarray, fmt: str) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
  return buffer.getvalue()


def _corrupt_bytes(kind: str) -> bytes:
  if kind == "truncated":
    whole = _encoded(_noise(48, 48, 9), "JPEG")
    return whole[:len(whole) // 2]
  return b"this is a caption, not an image\n" if kind == "text" else b""


# Good sources: RGB JPEGs of 40×30 noise and a 64×64 gradient, a greyscale and an RGBA PNG.
IMAGES = {"a.jpg": lambda: _encoded(_noise(30, 40, 0), "JPEG"),
          "b.jpg": lambda: _encoded(_gradient(64, 64), "JPEG"),
          "grey.png": lambda: _encoded(_gradient(20, 24)[..., 0], "PNG"),
          "rgba.png": lambda: _encoded(np.concatenate(
              [_noise(16, 16, 1), _gradient(16, 16)[..., :1]], -1), "PNG")}


def _write_images(folder, names=tuple(IMAGES), corrupt=CORRUPT):
  """Writes the named images (of IMAGES, else small noise JPEGs) and corrupt files."""
  os.makedirs(folder, exist_ok=True)
  for seed, name in enumerate(names):
    with open(os.path.join(folder, name), "wb") as f:
      f.write(IMAGES[name]() if name in IMAGES else _encoded(_noise(8, 8, seed), "JPEG"))
  for name, kind in corrupt.items():
    with open(os.path.join(folder, name), "wb") as f:
      f.write(_corrupt_bytes(kind))
  return folder


def _expected_pixels(data: bytes) -> np.ndarray:
  """The source as RGB: PIL's decoding, transparency composited on white (numpy, ±1)."""
  with Image.open(io.BytesIO(data)) as image:
    if image.mode == "RGBA":
      rgba = np.asarray(image).astype(np.float64)
      alpha = rgba[..., 3:] / 255
      return np.round(rgba[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    return np.asarray(image.convert("RGB"))


def _read_all(dataset_dir: str, decode: bool = True) -> dict[str, tuple[str, dict]]:
  """key -> (split, record) over every split; asserts no key is in two splits."""
  builder = tfds.builder_from_directory(dataset_dir)
  decoders = None if decode else {"image": tfds.decode.SkipDecoding()}
  found = {}
  for split in builder.info.splits:
    for record in builder.as_data_source(split, decoders=decoders):
      key = record["key"].decode() if isinstance(record["key"], bytes) else record["key"]
      assert key not in found, f"{key} is in {found[key][0]} and {split}"
      found[key] = (split, record)
  return found


def _captions(record) -> list[str]:
  return [c.decode() if isinstance(c, bytes) else str(c) for c in record["captions"]]


def _report(dataset_dir: str) -> dict:
  with open(os.path.join(dataset_dir, "conversion_report.json"), encoding="utf-8") as f:
    return json.load(f)


def _check_pixels(found, folder):
  for key, (_, record) in found.items():
    with open(os.path.join(folder, key), "rb") as f:
      expected = _expected_pixels(f.read())
    assert record["image"].dtype == np.uint8 and record["image"].shape == expected.shape, key
    np.testing.assert_allclose(record["image"], expected, atol=1 if "rgba" in key else 0,
                               err_msg=key)


def _write_jsonl(path, entries):
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(e) + "\n" for e in entries)
  return str(path)


def test_jsonl_merges_captions_labels_and_skips_corrupt_images(tmp_path):
  data = _write_images(tmp_path / "data")
  manifest = _write_jsonl(data / "manifest.jsonl", [
      {"image": "a.jpg", "caption": "a noisy cat", "label": "cat"},
      {"image": "b.jpg", "captions": ["a smooth dog", "gradient dog"], "label": "dog"},
      {"image": "./a.jpg", "caption": "the same cat", "label": "cat"},
      {"image": "grey.png", "caption": "grey cat", "label": "cat", "split": "validation"},
      {"image": "rgba.png", "caption": "see-through dog", "label": "dog", "split": "test"},
      {"image": "missing.jpg", "caption": "gone", "label": "dog"},
  ] + [{"image": name, "caption": "broken", "label": "cat"} for name in CORRUPT])
  dataset_dir = convert_lib.convert(manifest, "mine", str(tmp_path / "tfds"), images_per_shard=3)

  found = _read_all(dataset_dir)
  assert set(found) == {"a.jpg", "b.jpg", "grey.png", "rgba.png"}
  assert found["grey.png"][0] == "validation" and found["rgba.png"][0] == "test"
  assert found["a.jpg"][0] == split_of("a.jpg") and found["b.jpg"][0] == split_of("b.jpg")
  assert _captions(found["a.jpg"][1]) == ["a noisy cat", "the same cat"]
  assert _captions(found["b.jpg"][1]) == ["a smooth dog", "gradient dog"]
  names = tfds.builder_from_directory(dataset_dir).info.features["label"].names
  assert names == ["cat", "dog"]
  assert {k: names[r["label"]] for k, (_, r) in found.items()} == {
      "a.jpg": "cat", "b.jpg": "dog", "grey.png": "cat", "rgba.png": "dog"}
  _check_pixels(found, data)

  raw = _read_all(dataset_dir, decode=False)  # RGB JPEGs are stored as they were.
  assert raw["a.jpg"][1]["image"] == (data / "a.jpg").read_bytes()
  report = _report(dataset_dir)
  assert report["corrupt_count"] == 4
  assert sorted(key for key, _ in report["corrupt"]) == sorted([*CORRUPT, "missing.jpg"])
  assert report["images_read"] == 8 and sum(report["records"].values()) == 4
  assert sum(report["captions"].values()) == 6
  assert not os.path.exists(os.path.join(dataset_dir, ".parts"))


def test_csv_merges_rows_and_reads_through_builder_from_files(tmp_path):
  data = _write_images(tmp_path / "data", names=("a.jpg", "b.jpg"), corrupt={})
  (data / "pairs.csv").write_text(
      'image,caption\na.jpg,"one, with a comma"\nb.jpg,two\na.jpg,three\n', encoding="utf-8")
  convert_lib.convert(str(data / "pairs.csv"), "pairs", str(tmp_path / "tfds"))
  builder = read_only_builder.builder_from_files("pairs", data_dir=str(tmp_path / "tfds"))
  assert "label" not in builder.info.features
  records = {r["key"].decode(): r
             for split in builder.info.splits for r in builder.as_data_source(split)}
  assert _captions(records["a.jpg"]) == ["one, with a comma", "three"]
  assert _captions(records["b.jpg"]) == ["two"]


def test_folder_classes_and_sidecar_captions(tmp_path):
  root = tmp_path / "folder"
  _write_images(root / "tabby_cat", names=("a.jpg",), corrupt={"broken.jpg": "truncated"})
  _write_images(root / "tabby_cat" / "more", names=("b.jpg",), corrupt={})
  _write_images(root / "hot_dog", names=("rgba.png",), corrupt={})
  (root / "hot_dog" / "rgba.txt").write_text("a sausage\n\nin a bun\n", encoding="utf-8")
  (root / "notes.md").write_text("not an image", encoding="utf-8")
  dataset_dir = convert_lib.convert(str(root), "folders", str(tmp_path / "tfds"))

  found = _read_all(dataset_dir)
  assert {k: _captions(r) for k, (_, r) in found.items()} == {
      "tabby_cat/a.jpg": ["tabby cat"], "tabby_cat/more/b.jpg": ["tabby cat"],
      "hot_dog/rgba.png": ["a sausage", "in a bun"]}
  names = tfds.builder_from_directory(dataset_dir).info.features["label"].names
  assert {k: names[r["label"]] for k, (_, r) in found.items()} == {
      "tabby_cat/a.jpg": "tabby_cat", "tabby_cat/more/b.jpg": "tabby_cat",
      "hot_dog/rgba.png": "hot_dog"}
  _check_pixels(found, root)
  assert [key for key, _ in _report(dataset_dir)["corrupt"]] == ["tabby_cat/broken.jpg"]


def _write_tar(path, members: dict[str, bytes]):
  with tarfile.open(path, "w") as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def test_webdataset_tars(tmp_path):
  source = tmp_path / "shards"
  source.mkdir()
  a, b, rgba = IMAGES["a.jpg"](), IMAGES["b.jpg"](), IMAGES["rgba.png"]()
  _write_tar(source / "shard-000.tar", {
      "k0.jpg": a, "k0.txt": b"a noisy square\n",
      "k1.png": rgba, "k1.json": json.dumps({"captions": ["see-through"]}).encode()})
  _write_tar(source / "shard-001.tar", {
      "dir/k2.jpg": b, "dir/k2.txt": b"smooth\n\ngradient\n",
      "k3.jpg": a,  # No caption: incomplete.
      "k4.jpg": _corrupt_bytes("truncated"), "k4.txt": b"broken"})
  _write_tar(source / "shard-002.tar", {
      "k5.txt": b"no image",  # Incomplete.
      "k6.jpg": b, "k6.txt": b"first", "k6.json": json.dumps({"caption": "second"}).encode()})
  dataset_dir = convert_lib.convert(str(source), "shards", str(tmp_path / "tfds"))

  found = _read_all(dataset_dir)
  assert {k: _captions(r) for k, (_, r) in found.items()} == {
      "k0": ["a noisy square"], "k1": ["see-through"], "dir/k2": ["smooth", "gradient"],
      "k6": ["first", "second"]}
  assert {k: split for k, (split, _) in found.items()} == {k: split_of(k) for k in found}
  assert len({split for split, _ in found.values()}) == 3
  for key, data in {"k0": a, "k1": rgba, "dir/k2": b}.items():
    np.testing.assert_allclose(found[key][1]["image"], _expected_pixels(data),
                               atol=1 if key == "k1" else 0)
  report = _report(dataset_dir)
  assert report["units"] == 3 and report["incomplete"] == 2
  assert report["corrupt_count"] == 1 and [key for key, _ in report["corrupt"]] == ["k4"]


def _array_records(dataset_dir: str) -> dict[str, bytes]:
  return {f.name: f.read_bytes() for f in sorted(pathlib.Path(dataset_dir).iterdir())
          if ".array_record-" in f.name}


def test_two_processes_resume_and_match_one_process(tmp_path, monkeypatch):
  names = [f"img{i:02d}.jpg" for i in range(9)]
  data = _write_images(tmp_path / "data", names=names, corrupt={"text.jpg": "text"})
  manifest = _write_jsonl(data / "m.jsonl", [{"image": n, "caption": n} for n in names]
                          + [{"image": "text.jpg", "caption": "x"}])
  one = convert_lib.convert(manifest, "d", str(tmp_path / "one"), images_per_shard=2)

  converted = []
  convert_unit = convert_lib.convert_unit
  monkeypatch.setattr(convert_lib, "convert_unit",
                      lambda plan, unit, parts: converted.append(unit) or
                      convert_unit(plan, unit, parts))
  two_data_dir = str(tmp_path / "two")
  run = lambda index: convert_lib.convert(manifest, "d", two_data_dir, images_per_shard=2,
                                          process_index=index, process_count=2)
  two = run(0)
  assert converted == [0, 2, 4]
  with pytest.raises(UsageError, match=r"units 1, 3 of 5 have no report"):
    convert_lib.finalize("d", two_data_dir)
  with pytest.raises(UsageError, match="other fingerprint, images_per_shard, units"):
    convert_lib.convert(manifest, "d", two_data_dir, images_per_shard=3, process_index=1,
                        process_count=2)
  run(1)
  assert converted == [0, 2, 4, 1, 3]
  parts = os.path.join(two, ".parts")
  os.remove(os.path.join(parts, "00002.json"))  # As if killed before its report...
  for part in os.listdir(parts):
    if part.startswith("00002-"):  # ...halfway through a part.
      with open(os.path.join(parts, part), "r+b") as f:
        f.truncate(10)
  run(0)
  assert converted == [0, 2, 4, 1, 3, 2]
  convert_lib.finalize("d", two_data_dir)

  assert _array_records(two) == _array_records(one) and len(_array_records(one)) >= 3
  splits = lambda d: {s: i.shard_lengths for s, i in
                      tfds.builder_from_directory(d).info.splits.items()}
  assert splits(two) == splits(one)
  assert _report(two)["corrupt"] == _report(one)["corrupt"]
  assert [key for key, _ in _report(one)["corrupt"]] == ["text.jpg"]
  assert set(_read_all(two)) == set(names)
  with pytest.raises(UsageError, match="already holds a converted dataset"):
    run(0)


@pytest.mark.parametrize("files, expected", [
    ({}, "does not exist"),
    ({"m.jsonl": '{"image": "a.jpg", "caption": "x"}\n{"image": oops}\n'}, "line 2 is not valid"),
    ({"m.jsonl": '{"image": "a.jpg"}\n'}, '"caption" or "captions"'),
    ({"m.jsonl": '{"image": "a.jpg", "caption": "x", "split": "dev"}\n'}, "split 'dev'"),
    ({"m.jsonl": '{"image": "a.jpg", "caption": "x", "label": "cat"}\n'
                 '{"image": "b.jpg", "caption": "y"}\n'}, "label every image or none"),
    ({"m.csv": "image,text\na.jpg,x\n"}, "lacks the column(s) caption"),
    ({"m.jsonl": "\n"}, "no images found"),
    ({"m.txt": "a.jpg x\n"}, "cannot tell the format"),
])
def test_bad_input_is_a_one_line_usage_error(tmp_path, files, expected):
  for name, text in files.items():
    (tmp_path / name).write_text(text, encoding="utf-8")
  source = str(tmp_path / (next(iter(files)) if files else "nothing.jsonl"))
  with pytest.raises(UsageError) as error:
    convert_lib.convert(source, "bad", str(tmp_path / "tfds"))
  assert expected in str(error.value) and "\n" not in str(error.value)


def test_importing_defines_no_flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  assert "images_per_shard" not in flags.FLAGS


def test_cli(tmp_path):
  data = _write_images(tmp_path / "data", names=("a.jpg", "grey.png"),
                       corrupt={"empty.jpg": "empty"})
  manifest = _write_jsonl(data / "m.jsonl", [{"image": n, "caption": n} for n in
                                             ("a.jpg", "grey.png", "empty.jpg")])
  command = [sys.executable, "-m", "mmalign.data.convert", f"--source={manifest}",
             "--name=cli_data", f"--data_dir={tmp_path / 'tfds'}", "--license=CC0 1.0"]
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr
  assert "corrupt: empty.jpg" in done.stdout
  builder = read_only_builder.builder_from_files("cli_data", data_dir=str(tmp_path / "tfds"))
  assert builder.info.redistribution_info.license == "CC0 1.0"
  assert manifest in builder.info.description
  again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
  assert again.returncode == 2 and again.stderr.strip().count("\n") == 0
  assert "already holds a converted dataset" in again.stderr
