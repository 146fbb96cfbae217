"""Your own files end to end: built-in images written as JPEG with a JSONL manifest and as
webdataset shards (with corrupt files), converted, trained on and scored by each protocol."""

import io
import json
import tarfile

import ml_collections
import numpy as np
from PIL import Image

from experiments.configs import tiny
from mmalign import experiment as experiment_lib
from mmalign import run as run_lib
from mmalign.data import convert, pipeline, sources
from mmalign.data.split import split_of
from mmalign.eval import linear_probe_evaluator as lpe

IMAGES = 120


def glyph_files(tiny_data_dir: str) -> list[tuple[str, bytes, str]]:
  """(file name, JPEG bytes, caption) of built-in unicode_glyphs training examples."""
  source = sources.open_split(sources.get_builder("unicode_glyphs", "tiny", tiny_data_dir),
                              "train")
  files = []
  for i in range(IMAGES):
    example = source[i]
    buffer = io.BytesIO()
    Image.fromarray(example["image"][..., 0]).save(buffer, format="JPEG", quality=95)
    files.append((f"glyph{i:03d}.jpg", buffer.getvalue(), pipeline.text_of(example["caption"])))
  return files


def own_config(name: str, data_dir: str) -> ml_collections.ConfigDict:
  config = tiny.get_config()
  config.data.update(name=name, config=None, data_dir=data_dir, image_size=24,
                     random_crop_min_area=0.8, random_flip=True)
  config.eval.split = "test"
  config.train.steps, config.train.checkpoint_every = 4, 2
  return config


def test_a_jsonl_manifest_converts_trains_and_evaluates(tiny_data_dir, tmp_path):
  folder = tmp_path / "images"
  folder.mkdir()
  lines = []
  for name, data, caption in glyph_files(tiny_data_dir):
    (folder / name).write_bytes(data)
    lines.append({"image": name, "caption": caption, "label": caption.split()[0]})
  (folder / "cut.jpg").write_bytes(glyph_files(tiny_data_dir)[0][1][:200])
  (folder / "notes.jpg").write_bytes(b"not an image")
  lines += [{"image": "cut.jpg", "caption": "cut"}, {"image": "notes.jpg", "caption": "notes"}]
  for line in lines[-2:]:
    line["label"] = "latin"
  (folder / "manifest.jsonl").write_text("\n".join(map(json.dumps, lines)))
  data_dir = str(tmp_path / "tfds")
  convert.convert(str(folder / "manifest.jsonl"), "my_glyphs", data_dir)
  with open(f"{data_dir}/my_glyphs/1.0.0/conversion_report.json", encoding="utf-8") as f:
    report = json.load(f)
  assert report["corrupt_count"] == 2
  assert sorted(key for key, _ in report["corrupt"]) == ["cut.jpg", "notes.jpg"]
  assert sum(report["records"].values()) == IMAGES

  config = own_config("my_glyphs", data_dir)
  config.evals = ml_collections.ConfigDict({
      "retrieval": {"type": "retrieval", "split": "test"},
      "zero_shot": {"type": "zero_shot", "split": "test", "label": "label"},
      "probe": {"type": "linear_probe", "split": "test", "label": "label", "steps": 20},
      "fused_probe": {"type": "linear_probe", "split": "test", "label": "label", "steps": 20,
                      "inputs": "fused"}})
  outcome = run_lib.execute(config, str(tmp_path / "run"), "all")
  assert outcome.step == 4
  test_images = sum(split_of(name) == "test" for name, _, _ in glyph_files(tiny_data_dir))
  assert outcome.results["retrieval"]["gallery_images"] == test_images
  assert outcome.results["zero_shot"]["num_examples"] == test_images
  assert 0.0 <= outcome.results["probe"]["top1"] <= 1.0
  # The fused probe reads [t, i, t·i] of each example's own caption and image.
  exp = experiment_lib.prepare(config, str(tmp_path / "run"), allow_new_tokenizer=False)
  fused, labels = lpe.LinearProbeEvaluator(exp, split="test", label="label",
                                           inputs="fused").features(outcome.variables, "test")
  source = sources.open_split(exp.builder, "test")
  text = experiment_lib.embed_texts(exp, outcome.variables,
                                    [source[i]["caption"] for i in range(len(source))])
  image = experiment_lib.embed_images(exp, outcome.variables, source)
  np.testing.assert_allclose(fused, np.concatenate([text, image, text * image], axis=1),
                             rtol=1e-5, atol=1e-6)
  assert len(labels) == test_images and 0.0 <= outcome.results["fused_probe"]["top1"] <= 1.0


def test_webdataset_shards_convert_in_two_processes_and_train(tiny_data_dir, tmp_path):
  shards = tmp_path / "shards"
  shards.mkdir()
  files = glyph_files(tiny_data_dir)
  for shard in range(3):
    with tarfile.open(shards / f"{shard:05d}.tar", "w") as tar:
      members = [(f"{name[:-4]}.jpg", data) for name, data, _ in files[shard::3]]
      members += [(f"{name[:-4]}.txt", caption.encode()) for name, _, caption in files[shard::3]]
      members += [(f"broken{shard}.jpg", b"\xff\xd8\xff" + bytes(40)),
                  (f"broken{shard}.txt", b"broken")]
      for member, data in sorted(members):
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  data_dir = str(tmp_path / "tfds")
  for process in range(2):
    convert.convert(str(shards), "my_shards", data_dir, process_index=process, process_count=2)
  report = convert.finalize("my_shards", data_dir)
  assert report["corrupt_count"] == 3
  assert sum(report["records"].values()) == IMAGES
  outcome = run_lib.execute(own_config("my_shards", data_dir), str(tmp_path / "run"), "all")
  results = outcome.results["retrieval"]
  assert results["gallery_images"] == results["num_text_queries"] == report["records"]["test"]
  assert np.isfinite(results["text_to_image"]["recall@1"])
