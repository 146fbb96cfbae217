"""The training input pipeline on CPU at 224 px: JPEG decode, resize and crop, normalise, batch.

  python -m benchmarks.input_pipeline
  python -m benchmarks.input_pipeline --images=256 --steps=8 --repeats=3   # quicker

1. Data, made as a user would. `--images` synthetic photos, 640×480 and 480×640 alternating,
   of smooth random content (bicubic-upsampled noise at four scales plus fine grain, so the
   JPEGs hold detail and decode at a realistic cost), saved as JPEG quality 90 with a JSONL
   manifest `{"image", "caption"}` in a temporary folder, then converted by
   `mmalign.data.convert.convert` into a TFDS array_record dataset (JPEG bytes kept as they
   are). Its train split (the ~80% of images `split_of` assigns there) is what is read.

2. Opened as the trainer opens it: `sources.get_builder` / `open_split`, `index_split` on the
   undecoded split, a SentencePiece tokenizer trained on the captions, and
   `pipeline.TrainBatches(..., global_batch=--batch_size, normalization=CLIP's mean/std at
   --image_size)` in two variants: centre crop (no augmentation: shorter side resized
   bicubic to 224, centre crop, CLIP's eval preprocessing) and random resized crop + flip
   (`Augmentation(--crop_min_area, flip=True)`, the training augmentation).

3. Pipeline timing. A measurement creates `pipeline.train_iterator(batches, start_step=0,
   num_steps=--steps, num_threads=T, prefetch=--prefetch)` and pulls all its batches: the
   time from creating the iterator to holding the last batch, so the pipeline's fill is
   counted. Every (variant, T in --threads) is measured once untimed (warm-up: imports, page
   cache), then in each of `--repeats` rounds, in an order that alternates (forward in odd
   rounds, reversed in even ones), interleaved with the component timings below, because
   the machine is shared. Each measurement also records this process's CPU-seconds (all
   threads): CPUs busy = CPU / wall, and images per CPU-second, the per-core cost that time
   taken by other jobs does not inflate.

4. Component costs, single-threaded on the caller's thread, over the first
   `--component_images` train examples, in the same rounds: decode (`source[i]["image"]`:
   array_record read, TFDS parse, PIL JPEG decode), resize + centre crop
   (`pipeline.resize_and_crop` of the decoded images), random resized crop + flip
   (`pipeline.Augmentation` of them), normalise + batch (`np.stack` of the 224² crops,
   then `ImageNormalization`, `--batch_size` at a time as TrainBatches does), and whole
   batches built serially by calling `TrainBatches` directly (no grain), which the
   components should add up to.

Writes `<out_dir>/input_pipeline.json` (every timing) and `.md` (the tables and the input
cores a training rate needs), naming the command, date, CPUs and package versions.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import io
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # For `python benchmarks/input_pipeline.py` as well as `-m`.
  sys.path.insert(0, ROOT)

# pylint: disable=wrong-import-position
import numpy as np
from PIL import Image

from benchmarks.report import write_report
from mmalign import utils
from mmalign.data import convert, pipeline, sources
from mmalign.data.tokenizer import TextSettings, Tokenizer
# pylint: enable=wrong-import-position

_IMAGES = flags.DEFINE_integer("images", 512, "Synthetic JPEGs written and converted.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per batch (global_batch).")
_STEPS = flags.DEFINE_integer("steps", 16, "Batches pulled per pipeline measurement.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Interleaved timing rounds (>= 3).")
_THREADS = flags.DEFINE_list("threads", ["1", "2"], "grain.ReadOptions num_threads values.")
_PREFETCH = flags.DEFINE_integer("prefetch", 4, "grain prefetch_buffer_size (the trainer's).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Images come out [b, size, size, 3].")
_CROP_MIN_AREA = flags.DEFINE_float("crop_min_area", 0.35, "Augmentation.crop_min_area of "
                                    "the random resized crop variant.")
_COMPONENT_IMAGES = flags.DEFINE_integer("component_images", 128, "Images per component "
                                         "timing (single-threaded).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic images and of TrainBatches.")
_OUT_DIR = flags.DEFINE_string("out_dir", os.path.join(ROOT, "benchmarks", "results"),
                               "Where input_pipeline.json and .md go.")

NAME = "bench_images"  # The converted dataset's TFDS name.
SIZES = ((480, 640), (640, 480))  # [h, w] of the synthetic photos, alternating (COCO-like).
JPEG_QUALITY = 90
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
# (amplitude in grey levels, cells across 640 px) of the smooth noise layers, then the grain.
LAYERS, GRAIN = ((90, 4), (45, 16), (30, 64), (20, 200)), 8.0
WORDS = ("red", "small", "old", "wooden", "striped", "bright", "dark", "tall")
THINGS = ("dog", "bus", "kitchen", "bicycle", "street", "table", "giraffe", "pizza", "boat")
VARIANTS = ("centre crop", "random resized crop + flip")


def synthetic_photo(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
  """uint8 [height, width, 3]: noise at LAYERS' scales, upsampled bicubic, plus GRAIN."""
  pixels = np.full((height, width, 3), 128.0, np.float32)
  for amplitude, cells in LAYERS:
    grid = rng.uniform(-1, 1, (max(2, height * cells // 640), max(2, width * cells // 640), 3))
    for channel in range(3):
      layer = Image.fromarray(grid[..., channel].astype(np.float32))
      pixels[..., channel] += amplitude * np.asarray(
          layer.resize((width, height), Image.Resampling.BICUBIC))
  pixels += rng.normal(0.0, GRAIN, pixels.shape)
  return np.clip(pixels, 0, 255).astype(np.uint8)


def make_dataset(folder: str, count: int, seed: int) -> dict[str, Any]:
  """Writes `count` JPEGs and captions.jsonl into `folder`, converts them into
  `<folder>/tfds`; returns the JPEG sizes and the conversion's seconds."""
  rng = np.random.default_rng(seed)
  lines, sizes = [], []
  for i in range(count):
    height, width = SIZES[i % len(SIZES)]
    buffer = io.BytesIO()
    Image.fromarray(synthetic_photo(height, width, rng)).save(buffer, format="JPEG",
                                                              quality=JPEG_QUALITY)
    with open(os.path.join(folder, f"{i:06d}.jpg"), "wb") as f:
      f.write(buffer.getvalue())
    sizes.append(len(buffer.getvalue()))
    caption = f"a {WORDS[i % len(WORDS)]} {THINGS[(i // len(WORDS)) % len(THINGS)]} number {i}"
    lines.append(json.dumps({"image": f"{i:06d}.jpg", "caption": caption}))
    if (i + 1) % 128 == 0:
      utils.say(f"wrote {i + 1}/{count} JPEGs")
  manifest = os.path.join(folder, "captions.jsonl")
  with open(manifest, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  convert_s = timed(lambda: convert.convert(manifest, NAME, os.path.join(folder, "tfds")))["wall_s"]
  return {"images": count, "sizes_hw": [list(s) for s in SIZES], "jpeg_quality": JPEG_QUALITY,
          "jpeg_bytes_mean": float(np.mean(sizes)), "jpeg_bytes_min": int(min(sizes)),
          "jpeg_bytes_max": int(max(sizes)), "convert_s": convert_s}


def summarise(measurements: list[dict[str, float]], images: int) -> dict[str, Any]:
  """`timed` measurements of `images` images each → min and median seconds, images/s from
  each, and the process's CPU-seconds: CPUs busy (CPU / wall) and images per CPU-second."""
  seconds = [m["wall_s"] for m in measurements]
  cpu = [m["cpu_s"] for m in measurements]
  low, mid = min(seconds), statistics.median(seconds)
  return {"seconds": seconds, "cpu_seconds": cpu,
          "load_average_1min": [m["load_average_1min"] for m in measurements],
          "images": images, "min_s": low, "median_s": mid,
          "images_per_s_from_min": images / low, "images_per_s_from_median": images / mid,
          "ms_per_image_min": 1e3 * low / images, "ms_per_image_median": 1e3 * mid / images,
          "cpus_busy_median": statistics.median(c / s for c, s in zip(cpu, seconds)),
          "images_per_cpu_s_median": images / statistics.median(cpu)}


def timed(fn: Callable[[], Any]) -> dict[str, float]:
  """One call of `fn` (`utils.time_calls`, no warm-up: the caller's rounds warm): its wall
  seconds, this process's CPU-seconds meanwhile (all threads), the load average after."""
  cpu = time.process_time()
  wall = utils.time_calls(fn, repeats=1, warmup=0)[1][0]
  return {"wall_s": wall, "cpu_s": time.process_time() - cpu,
          "load_average_1min": os.getloadavg()[0]}


def pull(batches: pipeline.TrainBatches, steps: int, threads: int, prefetch: int,
         size: int) -> None:
  """Creates the trainer's iterator and pulls `steps` batches, checking their images."""
  iterator = pipeline.train_iterator(batches, start_step=0, num_steps=steps,
                                     num_threads=threads, prefetch=prefetch)
  count = 0
  for batch in iterator:
    count += 1
    images = batch["images"]
    if images.dtype != np.float32 or images.shape[1:] != (size, size, 3):
      raise RuntimeError(f"a batch's images are {images.dtype} {images.shape}, not float32 "
                         f"[b, {size}, {size}, 3]")
  if count != steps:
    raise RuntimeError(f"the iterator gave {count} batches, not {steps}")


def run(data_dir: str) -> dict[str, Any]:
  """Parts 2-4 of the module docstring on the dataset converted into `data_dir`."""
  size, batch_size, steps = _IMAGE_SIZE.value, _BATCH.value, _STEPS.value
  threads = [int(t) for t in _THREADS.value]
  builder = sources.get_builder(NAME, None, data_dir)
  source = sources.open_split(builder, "train")
  index = pipeline.index_split(sources.open_split(builder, "train", decode_images=False))
  if len(index.groups) < batch_size:
    raise app.UsageError(f"the train split holds {len(index.groups)} images, fewer than "
                         f"--batch_size={batch_size}: raise --images")
  tokenizer = Tokenizer.train(index.tokenizer_corpus, TextSettings(vocab_size=256))
  normalization = pipeline.ImageNormalization(CLIP_MEAN, CLIP_STD, size)
  augmentation = pipeline.Augmentation(_CROP_MIN_AREA.value, True)
  batches = {
      variant: pipeline.TrainBatches(source, index, tokenizer, global_batch=batch_size,
                                     seed=_SEED.value, normalization=normalization,
                                     augmentation=augment)
      for variant, augment in zip(VARIANTS, (None, augmentation))}
  utils.say(f"train split: {len(index.groups)} images, "
            f"{batches[VARIANTS[0]].steps_per_epoch} batches of {batch_size} per epoch")

  # Component inputs, decoded once here; the timed calls redo their own part only.
  examples = list(range(min(_COMPONENT_IMAGES.value, len(source))))
  decoded = [source[i]["image"] for i in examples]
  cropped = [pipeline.resize_and_crop(image, size) for image in decoded]
  serial_steps = max(1, len(examples) // batch_size)
  jobs: dict[str, tuple[Callable[[], Any], int]] = {
      "decode": (lambda: [source[i]["image"] for i in examples], len(examples)),
      "resize + centre crop": (
          lambda: [pipeline.resize_and_crop(image, size) for image in decoded], len(examples)),
      "random resized crop + flip": (
          lambda: [augmentation(image, size, np.random.default_rng([_SEED.value, n]))
                   for n, image in enumerate(decoded)], len(examples)),
      "normalise + batch": (lambda: [normalization(np.stack(cropped[i:i + batch_size]))
                                     for i in range(0, len(cropped), batch_size)],
                            len(examples)),
      **{f"serial TrainBatches, {variant}": (
          lambda b=batches[variant]: [b(step) for step in range(serial_steps)],
          serial_steps * batch_size) for variant in VARIANTS},
      **{f"pipeline, {variant}, {t} thread{'s' if t > 1 else ''}": (
          lambda b=batches[variant], t=t: pull(b, steps, t, _PREFETCH.value, size),
          steps * batch_size) for variant in VARIANTS for t in threads},
  }
  warmup = {}
  for name, (fn, _) in jobs.items():
    warmup[name] = timed(fn)
    utils.say(f"warm-up {name}: {warmup[name]['wall_s']:.2f} s")
  measured: dict[str, list[dict[str, float]]] = {name: [] for name in jobs}
  for round_index in range(_REPEATS.value):
    order = list(jobs) if round_index % 2 == 0 else list(jobs)[::-1]
    for name in order:
      fn, images = jobs[name]
      m = timed(fn)
      measured[name].append(m)
      utils.say(f"round {round_index + 1}/{_REPEATS.value} {name}: {m['wall_s']:.2f} s, "
                f"{images / m['wall_s']:.0f} images/s, {m['cpu_s'] / m['wall_s']:.2f} CPUs busy")
  results = {name: {**summarise(measured[name], images), "warmup": warmup[name]}
             for name, (_, images) in jobs.items()}
  return {
      "train_images": len(index.groups), "steps_per_epoch": batches[VARIANTS[0]].steps_per_epoch,
      "batch_size": batch_size, "steps": steps, "threads": threads, "prefetch": _PREFETCH.value,
      "image_size": size, "crop_min_area": _CROP_MIN_AREA.value,
      "normalization": {"mean": CLIP_MEAN, "std": CLIP_STD},
      "component_images": len(examples), "serial_steps": serial_steps,
      "repeats": _REPEATS.value,
      "order": "round r (from 0): the jobs in listed order if r is even, reversed if odd",
      "jobs": list(jobs), "results": results,
  }


def pipeline_row(part: dict[str, Any], variant: str, threads: int) -> dict[str, Any]:
  return part["results"][f"pipeline, {variant}, {threads} thread{'s' if threads > 1 else ''}"]


def per_core(part: dict[str, Any], variant: str) -> float:
  """Images/s one input core gives: the 1-thread pipeline's images per CPU-second (median),
  which time taken by other jobs on a shared machine does not lower."""
  return pipeline_row(part, variant, 1)["images_per_cpu_s_median"]


def scaling(part: dict[str, Any], variant: str, threads: int) -> float:
  """The `threads`-thread pipeline's median images/s over the 1-thread one's."""
  return (pipeline_row(part, variant, threads)["images_per_s_from_median"]
          / pipeline_row(part, variant, 1)["images_per_s_from_median"])


def to_markdown(report: dict[str, Any]) -> str:
  """The results tables and the cores paragraph."""
  part, data, versions = report["pipeline"], report["data"], report["versions"]
  loads = [load for row in part["results"].values() for load in row["load_average_1min"]]
  lines = [
      f"# Input pipeline on CPU: {part['image_size']} px JPEG decode, crop, normalise, batch",
      "",
      f"Command: `{report['command']}`  ",
      f"{report['date']}; {report['cpus']} CPUs ({report['platform']}); 1-minute load average "
      f"{report['load_average_1min_start']:.2f} at the start, "
      f"{report['load_average_1min_end']:.2f} at the end (the 2-thread runs keep 2 CPUs busy: "
      f"above ~{report['cpus']} means other jobs shared the machine).  ",
      f"Pillow {versions['pillow']} (libjpeg-turbo {versions['libjpeg_turbo']}), grain "
      f"{versions['grain']}, tensorflow-datasets {versions['tensorflow-datasets']}, "
      f"array-record {versions['array-record']}, NumPy {versions['numpy']}, Python "
      f"{versions['python']}. Images are decoded by {report['image_decoder']}.",
      "",
      f"Data: {data['images']} synthetic photos, 640×480 and 480×640 alternating, JPEG quality "
      f"{data['jpeg_quality']}, {data['jpeg_bytes_mean'] / 1e3:.0f} KB on average "
      f"({data['jpeg_bytes_min'] / 1e3:.0f}–{data['jpeg_bytes_max'] / 1e3:.0f} KB; COCO "
      f"train2017's average roughly 160 KB), converted by `mmalign.data.convert` in "
      f"{data['convert_s']:.1f} s; its train split holds {part['train_images']} images. "
      f"Read through `pipeline.TrainBatches` (batch {part['batch_size']}, CLIP's mean/std, "
      f"{part['image_size']} px) and `pipeline.train_iterator` (prefetch "
      f"{part['prefetch']}), as the trainer does.",
      "",
      f"## Pipeline throughput, batch {part['batch_size']}",
      "",
      f"A measurement creates the iterator and pulls {part['steps']} batches "
      f"({part['steps'] * part['batch_size']} images). Centre crop: shorter side resized "
      f"(bicubic) to {part['image_size']}, centre crop (CLIP's eval preprocessing, and the "
      f"trainer's without augmentation). Random resized crop + flip: "
      f"`Augmentation({part['crop_min_area']}, flip=True)` (training). One warm-up "
      f"measurement each, then {part['repeats']} rounds interleaving every configuration and "
      "component timing, order alternating. CPUs busy is this process's CPU-seconds (all "
      "threads) over the wall seconds of a measurement; images per CPU-second divides the "
      "images by those CPU-seconds. 1-minute load average after each measurement: "
      f"{min(loads):.2f}–{max(loads):.2f}.",
      "",
      "| preprocessing | threads | min s | median s | images/s (min) | images/s (median) | "
      "CPUs busy (median) | images per CPU-s (median) | s per round |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---|",
  ]
  for variant in VARIANTS:
    for threads in part["threads"]:
      row = pipeline_row(part, variant, threads)
      lines.append(
          f"| {variant} | {threads} | {row['min_s']:.2f} | {row['median_s']:.2f} | "
          f"{row['images_per_s_from_min']:.0f} | {row['images_per_s_from_median']:.0f} | "
          f"{row['cpus_busy_median']:.2f} | {row['images_per_cpu_s_median']:.0f} | "
          f"{', '.join(f'{s:.2f}' for s in row['seconds'])} |")
  lines += [
      "",
      "## Where the time goes (single thread)",
      "",
      f"Each component over {part['component_images']} train images on the caller's thread; "
      f"serial TrainBatches builds {part['serial_steps']} whole batch(es) by calling it "
      "directly, without grain.",
      "",
      "| component | ms / image (min) | ms / image (median) | images/s (median) | "
      "CPUs busy (median) |",
      "|---|---:|---:|---:|---:|",
  ]
  components = [name for name in part["jobs"] if not name.startswith("pipeline")]
  for name in components:
    row = part["results"][name]
    lines.append(f"| {name} | {row['ms_per_image_min']:.2f} | {row['ms_per_image_median']:.2f} "
                 f"| {row['images_per_s_from_median']:.0f} | {row['cpus_busy_median']:.2f} |")
  results = part["results"]
  crops = {VARIANTS[0]: "resize + centre crop", VARIANTS[1]: "random resized crop + flip"}
  sums = {}
  for variant in VARIANTS:
    for stat, suffix in (("median", ""), ("min", " min")):
      sums[variant + suffix] = sum(results[name][f"ms_per_image_{stat}"] for name in
                                   ("decode", crops[variant], "normalise + batch"))
  decode = results["decode"]["ms_per_image_median"]
  lines += [""] + [
      f"{variant}: decode + crop + normalise = {sums[variant]:.2f} ms/image (medians; "
      f"{sums[variant + ' min']:.2f} from the mins), serial TrainBatches "
      f"{results[f'serial TrainBatches, {variant}']['ms_per_image_median']:.2f} "
      f"({results[f'serial TrainBatches, {variant}']['ms_per_image_min']:.2f}); decode is "
      f"{100 * decode / sums[variant]:.0f}% of the sum.  " for variant in VARIANTS]
  centre, augmented = per_core(part, VARIANTS[0]), per_core(part, VARIANTS[1])
  batch, rate = 256, 2.0
  lines += [
      "",
      "## Input cores a training rate needs",
      "",
      f"One input core (the 1-thread pipeline's images per CPU-second, medians) gives "
      f"{centre:.0f} images/s with the centre crop and {augmented:.0f} images/s with random "
      "resized crop + flip, so "
      "cores ≈ batch × steps/s ÷ (images/s per core). For example, batch "
      f"{batch} at {rate:g} steps/s needs {batch * rate:.0f} images/s: "
      f"{batch * rate / centre:.1f} cores with the centre crop, "
      f"{batch * rate / augmented:.1f} with the augmentation, for the input pipeline alone and "
      "with `num_threads` set to match (the trainer's default is 2); the host's cores that "
      "drive the accelerator come on top. The rule assumes threads scale with cores"
      + "".join(
          f"; here {t} threads gave {scaling(part, VARIANTS[0], t):.2f}× the 1-thread rate "
          f"(centre crop) and {scaling(part, VARIANTS[1], t):.2f}× (augmented) on "
          f"{report['cpus']} CPUs" for t in part["threads"] if t > 1) + ".",
  ]
  return "\n".join(lines) + "\n"


def _versions() -> dict[str, str]:
  from PIL import features  # pylint: disable=import-outside-toplevel
  found = {name: importlib.metadata.version(name) for name in
           ("pillow", "grain", "tensorflow-datasets", "array-record", "numpy", "sentencepiece")}
  found["libjpeg_turbo"] = features.version_feature("libjpeg_turbo") or "absent"
  found["python"] = platform.python_version()
  return found


def _image_decoder() -> str:
  try:
    import cv2  # pylint: disable=import-outside-toplevel
  except ImportError:
    return "PIL (TFDS's fallback: OpenCV is not installed)"
  return f"OpenCV {cv2.__version__} (TFDS's first choice)"


def main(argv):
  del argv
  if _REPEATS.value < 3:
    raise app.UsageError("--repeats must be >= 3")
  if _STEPS.value < 1 or _BATCH.value < 1:
    raise app.UsageError("--steps and --batch_size must be >= 1")
  if "1" not in _THREADS.value:
    raise app.UsageError("--threads must include 1: the per-core figure is its row")
  logging.getLogger("absl").setLevel(logging.ERROR)  # TFDS's "OpenCV is not installed".
  report: dict[str, Any] = {
      "command": " ".join(["python -m benchmarks.input_pipeline"]
                          + [shlex.quote(a) for a in sys.argv[1:]]),
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "cpus": os.cpu_count(), "platform": platform.platform(),
      "machine": platform.machine(), "processor": platform.processor(),
      "load_average_1min_start": os.getloadavg()[0], "seed": _SEED.value,
      "versions": _versions(), "image_decoder": _image_decoder(),
  }
  folder = tempfile.mkdtemp(prefix="input_pipeline_")
  try:
    report["data"] = make_dataset(folder, _IMAGES.value, _SEED.value)
    report["pipeline"] = run(os.path.join(folder, "tfds"))
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  report["load_average_1min_end"] = os.getloadavg()[0]
  markdown = to_markdown(report)
  write_report(_OUT_DIR.value, "input_pipeline", report, markdown)
  utils.say(markdown)


if __name__ == "__main__":
  app.run(main)
