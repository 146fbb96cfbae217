"""CLIP ViT-B/16 on CPU: image-tower inference against PyTorch, and train-step memory.

  python -m benchmarks.vit_b16
  python -m benchmarks.vit_b16 --nomemory --repeats=3 --passes=1   # throughput only

1. Throughput. transformers' `CLIPVisionModelWithProjection` (ViT-B/16, `--image_size`,
   quick_gelu, LayerNorm epsilon 1e-5, 512-d projection), randomly initialised after
   `torch.manual_seed(--seed)`, runs in eval mode under `torch.inference_mode()` with
   `torch.set_num_threads(--torch_threads)` in one long-lived worker process of
   `--torch_python` (this venv has no torch; the worker is `_TORCH_WORKER`, driven by one-line
   commands on its stdin). Its state dict goes through a temporary .safetensors into mmalign's
   ViT (`hf_clip.CLIP_VIT` options) and Projection by `importers.initialise`, so both sides
   hold the same weights. mmalign's forward is the tower then the projection, jitted, without
   the l2 normalisation: torch's `image_embeds`. One random batch of `--batch_size` images
   (NHWC float32 here, the same values transposed to NCHW there) is embedded once by both;
   the parity figure is max |mmalign − torch| / max |torch| over the projected features, and
   the run fails (after writing the report) if it exceeds PARITY_TOLERANCE. After a warm-up
   (compile; one untimed pass each), `--repeats` rounds alternate the order (round 1: mmalign
   then PyTorch, round 2: PyTorch then mmalign, ...). A measurement is `--passes` forward
   passes of the batch (each waited for with `block_until_ready` on the JAX side; timed inside
   the worker on the torch side, so no pipe traffic is counted); its figure is seconds per
   batch. Reported: each measurement, min and median seconds per batch and images/s, and the
   ratio mmalign / PyTorch images/s from the medians and from the mins.

2. Memory. For each (remat, scan_layers) in SETTINGS, one training step of the image tower
   plus projection (l2-normalised, as in a dual encoder) at `--train_batch` images, loss the
   symmetric InfoNCE against fixed text embeddings given as an argument:
   `jax.jit(jax.value_and_grad(loss)).lower(params, images, text).compile()`, on abstract
   shapes (`jax.eval_shape`: nothing is allocated, nothing runs). Reported from XLA's
   `memory_analysis()`: temp (scratch), argument and output sizes, and compile seconds.

Writes `<out_dir>/vit_b16.json` (every figure) and `.md`, naming the command, date, CPUs
and the jax/flax/torch/transformers versions.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # For `python benchmarks/vit_b16.py` as well as `-m`.
  sys.path.insert(0, ROOT)

# pylint: disable=wrong-import-position
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from benchmarks.report import write_report
from mmalign.checkpoints import hf_clip, importers
from mmalign.models.heads import Projection, l2_normalize
from mmalign.models.vit import ViT
# pylint: enable=wrong-import-position

_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per inference batch.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Interleaved timing rounds (≥3).")
_PASSES = flags.DEFINE_integer("passes", 3, "Forward passes per measurement.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Images are [b, size, size, 3].")
_TRAIN_BATCH = flags.DEFINE_integer("train_batch", 64, "Images per training step (memory).")
_SEED = flags.DEFINE_integer("seed", 0, "torch.manual_seed for the weights; numpy seed for "
                             "the images.")
_TORCH_PYTHON = flags.DEFINE_string("torch_python", "/work/torchenv/bin/python",
                                    "A Python with torch, transformers, safetensors, numpy.")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 2, "torch.set_num_threads.")
_THROUGHPUT = flags.DEFINE_bool("throughput", True, "Run part 1 (inference vs PyTorch).")
_MEMORY = flags.DEFINE_bool("memory", True, "Run part 2 (train-step memory).")
_OUT_DIR = flags.DEFINE_string("out_dir", os.path.join(ROOT, "benchmarks", "results"),
                               "Where vit_b16.json and .md go.")

PATCH, WIDTH, EMBED_DIM = 16, 768, 512
PARITY_TOLERANCE = 1e-4
TEMPERATURE = 0.07  # Of the memory benchmark's InfoNCE; does not change memory.
# (remat, scan_layers) of the ViT in the memory benchmark; the first is the plain path.
SETTINGS = (("none", False), ("full", False), ("none", True), ("full", True), ("dots", True))
MIB = 2.0 ** 20


def torch_config(image_size: int) -> dict[str, Any]:
  """transformers.CLIPVisionConfig kwargs of CLIP ViT-B/16 at `image_size`."""
  return dict(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=12,
              num_attention_heads=12, image_size=image_size, patch_size=PATCH,
              hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=EMBED_DIM)


# The PyTorch side, run as `<torch_python> -P -c _TORCH_WORKER seed threads weights config`
# (-P and a scratch cwd: this repository's `kernels` package must not shadow the pip one
# transformers imports). Writes the weights, then answers each stdin command with one line
# "@@ <json>": `images <npy>` (NHWC float32) loads the batch, `embed <npy>` writes its
# image_embeds, `time <n>` runs n forward passes and gives their seconds, `quit` ends.
_TORCH_WORKER = r"""
import json, sys, time
import numpy as np
import safetensors.torch
import torch
import transformers

seed, threads, weights, config = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(threads)
torch.manual_seed(seed)
model = transformers.CLIPVisionModelWithProjection(
    transformers.CLIPVisionConfig(**json.loads(config))).eval()
safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                            weights)
images = None


def reply(**fields):
  print("@@ " + json.dumps(fields), flush=True)


reply(torch=torch.__version__, transformers=transformers.__version__,
      threads=torch.get_num_threads(),
      attention=getattr(model.config, "_attn_implementation", None),
      params=sum(p.numel() for p in model.parameters()))
for line in sys.stdin:
  command, *args = line.split()
  with torch.inference_mode():
    if command == "images":
      images = torch.from_numpy(np.ascontiguousarray(np.load(args[0]).transpose(0, 3, 1, 2)))
      reply(shape=list(images.shape))
    elif command == "embed":
      np.save(args[0], model(pixel_values=images).image_embeds.numpy())
      reply(path=args[0])
    elif command == "time":
      start = time.perf_counter()
      for _ in range(int(args[0])):
        model(pixel_values=images)
      reply(seconds=time.perf_counter() - start)
    else:
      break
"""


class TorchWorker:
  """The `_TORCH_WORKER` process: started once, then asked one command at a time."""

  def __init__(self, python: str, scratch: str, weights: str, image_size: int):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [python, "-P", "-c", _TORCH_WORKER, str(_SEED.value), str(_TORCH_THREADS.value),
               weights, json.dumps(torch_config(image_size))]
    self._process = subprocess.Popen(command, cwd=scratch, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
    self.info = self._read()  # Versions, threads; the weights are written by now.

  def ask(self, line: str) -> dict[str, Any]:
    self._process.stdin.write(line + "\n")
    self._process.stdin.flush()
    return self._read()

  def _read(self) -> dict[str, Any]:
    for line in self._process.stdout:
      if line.startswith("@@ "):
        return json.loads(line[3:])
    raise SystemExit(f"the torch worker ({_TORCH_PYTHON.value}) exited with "
                     f"{self._process.wait()}; its stderr is above")

  def close(self) -> None:
    if self._process.poll() is None:
      self._process.stdin.write("quit\n")
      self._process.stdin.close()
      self._process.wait(timeout=60)


def mmalign_forward(weights: str, image_size: int):
  """(jitted forward(variables, images NHWC) → image_embeds [b, 512], variables from the
  file through `importers.initialise`, the import's log lines)."""
  tower = ViT(variant="B", patch_size=PATCH, **hf_clip.CLIP_VIT)
  projection = Projection(EMBED_DIM, l2_normalize=False)  # torch's image_embeds: not normed.
  params = {"image_tower": tower.init(jax.random.key(0),
                                      jnp.zeros((1, image_size, image_size, 3)))["params"],
            "image_projection": projection.init(jax.random.key(1),
                                                jnp.zeros((1, WIDTH)))["params"]}
  variables, lines = importers.initialise(
      {"params": params}, ml_collections.ConfigDict({"checkpoint": weights, "format": None}),
      tokenizer=None)

  @jax.jit
  def forward(variables, images):
    pooled, _ = tower.apply({"params": variables["params"]["image_tower"]}, images)
    return projection.apply({"params": variables["params"]["image_projection"]}, pooled)

  return forward, variables, lines


def summarise(seconds: list[float], batch: int) -> dict[str, Any]:
  """Seconds per batch of each measurement → min, median and images/s of each."""
  low, mid = min(seconds), statistics.median(seconds)
  return {"seconds_per_batch": seconds, "min_s": low, "median_s": mid,
          "images_per_s_from_min": batch / low, "images_per_s_from_median": batch / mid}


def throughput(batch: int, image_size: int, repeats: int, passes: int) -> dict[str, Any]:
  """Part 1: parity, then interleaved timing of mmalign and PyTorch (module docstring)."""
  rng = np.random.default_rng(_SEED.value)
  images = rng.standard_normal((batch, image_size, image_size, 3), dtype=np.float32)
  with tempfile.TemporaryDirectory(prefix="vit_b16_") as scratch:
    weights = os.path.join(scratch, "clip_vision.safetensors")
    worker = TorchWorker(_TORCH_PYTHON.value, scratch, weights, image_size)
    try:
      np.save(os.path.join(scratch, "images.npy"), images)
      worker.ask(f"images {os.path.join(scratch, 'images.npy')}")
      forward, variables, lines = mmalign_forward(weights, image_size)
      print("\n".join(lines), flush=True)
      images_jax = jax.device_put(images)
      start = time.perf_counter()
      ours = np.asarray(forward(variables, images_jax))  # Compiles, then runs once.
      first_call_s = time.perf_counter() - start
      theirs = np.load(worker.ask(f"embed {os.path.join(scratch, 'embeds.npy')}")["path"])
      parity = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))
      print(f"parity: max |mmalign - torch| / max |torch| = {parity:.3g}", flush=True)

      def time_mmalign(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
          forward(variables, images_jax).block_until_ready()
        return time.perf_counter() - start

      timers = {"mmalign": time_mmalign,
                "pytorch": lambda n: worker.ask(f"time {n}")["seconds"]}
      for timer in timers.values():  # Warm-up: one untimed pass each.
        timer(1)
      seconds: dict[str, list[float]] = {name: [] for name in timers}
      for round_index in range(repeats):
        order = list(timers) if round_index % 2 == 0 else list(timers)[::-1]
        for name in order:
          seconds[name].append(timers[name](passes) / passes)
          print(f"round {round_index + 1}/{repeats} {name}: {seconds[name][-1]:.3f} s/batch",
                flush=True)
    finally:
      worker.close()
  result = {name: summarise(values, batch) for name, values in seconds.items()}
  return {
      "batch_size": batch, "image_size": image_size, "repeats": repeats, "passes": passes,
      "torch_worker": worker.info, "import_log": lines, "mmalign_first_call_s": first_call_s,
      "parity_max_abs_diff_over_max_abs": parity, "parity_tolerance": PARITY_TOLERANCE,
      "parity_ok": parity <= PARITY_TOLERANCE,
      "order": "round r (from 0): mmalign then pytorch if r is even, else pytorch then mmalign",
      **result,
      "ratio_mmalign_over_pytorch_images_per_s_from_median":
          result["pytorch"]["median_s"] / result["mmalign"]["median_s"],
      "ratio_mmalign_over_pytorch_images_per_s_from_min":
          result["pytorch"]["min_s"] / result["mmalign"]["min_s"],
  }


def train_step_memory(remat: str, scan: bool, batch: int, image_size: int) -> dict[str, Any]:
  """Part 2, one setting: XLA's memory analysis of the compiled (not run) training step."""
  tower = ViT(variant="B", patch_size=PATCH, remat=remat, scan_layers=scan, **hf_clip.CLIP_VIT)
  projection = Projection(EMBED_DIM)  # l2-normalised, as in a dual encoder.
  params = jax.eval_shape(lambda: {
      "image_tower": tower.init(jax.random.key(0),
                                jnp.zeros((1, image_size, image_size, 3)))["params"],
      "image_projection": projection.init(jax.random.key(1), jnp.zeros((1, WIDTH)))["params"]})
  images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
  text = jax.ShapeDtypeStruct((batch, EMBED_DIM), jnp.float32)

  def loss(params, images, text):
    pooled, _ = tower.apply({"params": params["image_tower"]}, images, train=True)
    embeds = projection.apply({"params": params["image_projection"]}, pooled, train=True)
    logits = embeds @ l2_normalize(text).T / TEMPERATURE  # [b images, b texts]
    diagonal = jnp.arange(batch)
    image_to_text = jax.nn.log_softmax(logits, axis=1)[diagonal, diagonal]
    text_to_image = jax.nn.log_softmax(logits, axis=0)[diagonal, diagonal]
    return -0.5 * jnp.mean(image_to_text + text_to_image)

  start = time.perf_counter()
  compiled = jax.jit(jax.value_and_grad(loss)).lower(params, images, text).compile()
  compile_s = time.perf_counter() - start
  stats = compiled.memory_analysis()
  # Not peak_memory_in_bytes: XLA:CPU gives arguments + outputs there, leaving out temp.
  sizes = {f"{field}_size_in_bytes": getattr(stats, f"{field}_size_in_bytes")
           for field in ("temp", "argument", "output", "alias")}
  return {"remat": remat, "scan_layers": scan, "batch_size": batch, "image_size": image_size,
          "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))),
          "compile_s": compile_s, **sizes,
          **{k.replace("_in_bytes", "_mib"): v / MIB for k, v in sizes.items()}}


def to_markdown(report: dict[str, Any]) -> str:
  """The results tables."""
  lines = [
      "# CLIP ViT-B/16 on CPU: inference against PyTorch, train-step memory",
      "",
      f"Command: `{report['command']}`  ",
      f"{report['date']}; {report['cpus']} CPUs ({report['cpu_model']}); 1-minute load average "
      f"at the end: {report['load_average_1min']:.2f} (this run keeps {report['cpus']} CPUs busy: "
      f"above ~{report['cpus']} means other jobs shared the machine).  ",
      f"JAX {report['versions']['jax']} (jaxlib {report['versions']['jaxlib']}), flax "
      f"{report['versions']['flax']}, NumPy {report['versions']['numpy']}, Python "
      f"{report['versions']['python']}"
      + (f"; PyTorch {report['versions']['torch']}, transformers "
         f"{report['versions']['transformers']} in {report['torch_python']}."
         if "torch" in report["versions"] else "."),
  ]
  part = report.get("throughput")
  if part:
    worker = part["torch_worker"]
    lines += [
        "",
        f"## Image-tower inference, batch {part['batch_size']}, {part['image_size']} px",
        "",
        f"Same weights on both sides (transformers' CLIPVisionModelWithProjection, random "
        f"init, torch seed {report['seed']}, imported through `importers.initialise`). "
        f"PyTorch: eval mode, `torch.inference_mode()`, {worker['threads']} threads, attention "
        f"`{worker['attention']}`. mmalign: `jax.jit` of tower + projection, first call "
        f"(compile and one pass) {part['mmalign_first_call_s']:.1f} s. Each measurement is "
        f"{part['passes']} forward pass(es) of the batch, its figure their mean; "
        f"{part['repeats']} rounds, order alternating "
        "(mmalign first in odd rounds, PyTorch first in even ones).",
        "",
        f"Parity (projected features, one batch): max |mmalign − PyTorch| / max |PyTorch| = "
        f"{part['parity_max_abs_diff_over_max_abs']:.2e} "
        f"({'≤' if part['parity_ok'] else '>'} {part['parity_tolerance']:g}: "
        f"{'ok' if part['parity_ok'] else 'FAILED'}).",
        "",
        "| implementation | min s / batch | median s / batch | images/s (min) | "
        "images/s (median) | s / batch per round |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, label in (("mmalign", "mmalign (JAX)"), ("pytorch", "PyTorch")):
      row = part[name]
      lines.append(f"| {label} | {row['min_s']:.3f} | {row['median_s']:.3f} | "
                   f"{row['images_per_s_from_min']:.2f} | "
                   f"{row['images_per_s_from_median']:.2f} | "
                   f"{', '.join(f'{s:.3f}' for s in row['seconds_per_batch'])} |")
    from_median = part["ratio_mmalign_over_pytorch_images_per_s_from_median"]
    from_min = part["ratio_mmalign_over_pytorch_images_per_s_from_min"]
    lines += ["", f"mmalign / PyTorch images/s: {from_median:.2f}× from the medians, "
              f"{from_min:.2f}× from the mins."]
  rows = report.get("train_step_memory")
  if rows:
    plain = rows[0]["temp_size_in_bytes"]
    lines += [
        "",
        f"## Training step memory, batch {rows[0]['batch_size']}, {rows[0]['image_size']} px",
        "",
        "`jax.jit(jax.value_and_grad(loss)).lower(...).compile().memory_analysis()` of image "
        "tower + projection (l2-normalised), symmetric InfoNCE against fixed text embeddings; "
        "abstract inputs, compiled only. Temp is XLA's scratch memory (activations kept for the "
        "backward pass, intermediates); arguments are the parameters, images and text "
        "embeddings; outputs the loss and gradients.",
        "",
        "| remat | scan_layers | temp MiB | temp vs plain | argument MiB | output MiB | "
        "compile s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
      lines.append(f"| {row['remat']} | {row['scan_layers']} | {row['temp_size_mib']:.1f} | "
                   f"{row['temp_size_in_bytes'] / plain:.2f}× | "
                   f"{row['argument_size_mib']:.1f} | {row['output_size_mib']:.1f} | "
                   f"{row['compile_s']:.1f} |")
  return "\n".join(lines) + "\n"


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def main(argv):
  del argv
  if _REPEATS.value < 3:
    raise app.UsageError("--repeats must be >= 3")
  if _PASSES.value < 1:
    raise app.UsageError("--passes must be >= 1")
  report: dict[str, Any] = {
      "command": " ".join(["python -m benchmarks.vit_b16"]
                          + [shlex.quote(a) for a in sys.argv[1:]]),
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "cpus": os.cpu_count(), "cpu_model": _cpu_model(), "seed": _SEED.value,
      "torch_python": _TORCH_PYTHON.value,
      "versions": {"jax": jax.__version__, "jaxlib": importlib.metadata.version("jaxlib"),
                   "flax": flax.__version__, "numpy": np.__version__,
                   "python": platform.python_version()},
      "jax_device": str(jax.devices()[0]),
  }
  if _THROUGHPUT.value:
    part = throughput(_BATCH.value, _IMAGE_SIZE.value, _REPEATS.value, _PASSES.value)
    report["throughput"] = part
    report["versions"].update(torch=part["torch_worker"]["torch"],
                              transformers=part["torch_worker"]["transformers"])
  if _MEMORY.value:
    report["train_step_memory"] = []
    for remat, scan in SETTINGS:
      row = train_step_memory(remat, scan, _TRAIN_BATCH.value, _IMAGE_SIZE.value)
      report["train_step_memory"].append(row)
      print(f"remat={remat} scan_layers={scan}: temp {row['temp_size_mib']:.1f} MiB, "
            f"compiled in {row['compile_s']:.1f} s", flush=True)
  report["load_average_1min"] = os.getloadavg()[0]
  write_report(_OUT_DIR.value, "vit_b16", report, to_markdown(report))
  if _THROUGHPUT.value and not report["throughput"]["parity_ok"]:
    parity = report["throughput"]["parity_max_abs_diff_over_max_abs"]
    raise SystemExit(f"parity check failed: {parity:.3g} > {PARITY_TOLERANCE}")


if __name__ == "__main__":
  app.run(main)
