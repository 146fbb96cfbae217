"""The cost of checkpoint integrity checks for a ViT-B/16-sized train state.

  python -m benchmarks.checkpoint_integrity                    # ≈1 GB state, 5 repeats
  python -m benchmarks.checkpoint_integrity --depth=2 --repeats=3   # smoke test, ≈180 MB

`Checkpointer.save` checks that every array is finite (`nonfinite_leaves`) and
stores a SHA-256 per array (`checksums`); `restore` recomputes the checksums.
This times both functions alone and a save and a restore through `Checkpointer`
with the checks ("checked") and with both functions replaced by no-ops ("plain"),
each into a fresh directory under `--workdir`, all interleaved within each repeat
so that a busy machine slows every variant alike. Saves are timed synchronous
(write and commit) and asynchronous (the part that blocks the training loop,
which is where the checks run). Restores read what was just written, so mostly
from the page cache: the worst case for the checks' relative cost.

The state is `{params, opt_state: {mu, nu}, step}` with the shapes of ViT-B/16
without a head (12 blocks of width 768, MLP 3072: 85.8M float32 parameters,
≈1.03 GB with both Adam moments), filled with random numbers, as trained weights
compress about as badly; no model is built.

Writes `<out_dir>/checkpoint_integrity.json` and `.md`, naming the command,
JAX version, device and date, as every results table must.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # For `python benchmarks/checkpoint_integrity.py` as well as `-m`.
  sys.path.insert(0, ROOT)

# pylint: disable=wrong-import-position
import jax
import numpy as np

from benchmarks.report import write_report
from mmalign.train import checkpoint
# pylint: enable=wrong-import-position

_REPEATS = flags.DEFINE_integer("repeats", 5, "Interleaved rounds of every measurement (≥3).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed rounds first (the finite check compiles "
                               "per shape); their figures go to the JSON only.")
_DEPTH = flags.DEFINE_integer("depth", 12, "Transformer blocks (ViT-B: 12).")
_WIDTH = flags.DEFINE_integer("width", 768, "Model width (ViT-B: 768; MLP is 4× wider).")
_PATCH = flags.DEFINE_integer("patch_size", 16, "Patch size (ViT-B/16: 16).")
_IMAGE = flags.DEFINE_integer("image_size", 224, "Image side, for the position embedding.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the checkpoints are written "
                               "(default: a new temporary directory, removed at the end).")
_OUT_DIR = flags.DEFINE_string("out_dir", os.path.join(ROOT, "benchmarks", "results"),
                               "Where checkpoint_integrity.json and .md go.")

# (name, what is timed), in table order.
MEASUREMENTS = (
    ("checksums", "`checksums(state)`: SHA-256 of every array"),
    ("nonfinite_leaves", "`nonfinite_leaves(state)`: the finite check"),
    ("save_plain", "`Checkpointer.save`, synchronous, checks off"),
    ("save_checked", "`Checkpointer.save`, synchronous, with the checks"),
    ("async_save_plain", "`Checkpointer.save`, asynchronous: blocking part, checks off"),
    ("async_save_checked", "`Checkpointer.save`, asynchronous: blocking part, with the checks"),
    ("restore_plain", "`Checkpointer.restore`, checks off"),
    ("restore_checked", "`Checkpointer.restore`, verifying the checksums"),
)
# (row, checked, plain, the checks it runs) of the overhead ratios.
OVERHEADS = (("save", "save_checked", "save_plain", ("nonfinite_leaves", "checksums")),
             ("async save (blocking)", "async_save_checked", "async_save_plain",
              ("nonfinite_leaves", "checksums")),
             ("restore", "restore_checked", "restore_plain", ("checksums",)))


def vit_params(rng, *, depth: int, width: int, patch: int, image: int) -> dict[str, Any]:
  """Random float32 arrays with the parameter shapes of a ViT (no head), as a nested dict."""
  mlp, tokens = 4 * width, (image // patch) ** 2 + 1

  def array(*shape):
    return jax.device_put(rng.standard_normal(shape, dtype=np.float32) * 0.02)

  def norm():
    return {"scale": array(width), "bias": array(width)}

  params = {"embedding": {"kernel": array(patch, patch, 3, width), "bias": array(width)},
            "cls": array(1, 1, width), "pos_embedding": array(1, tokens, width),
            "encoder_norm": norm()}
  for i in range(depth):
    params[f"block_{i}"] = {
        "norm_1": norm(), "norm_2": norm(),
        "attention": {name: {"kernel": array(width, width), "bias": array(width)}
                      for name in ("query", "key", "value", "out")},
        "mlp": {"in": {"kernel": array(width, mlp), "bias": array(mlp)},
                "out": {"kernel": array(mlp, width), "bias": array(width)}}}
  return params


def train_state(rng, **shape) -> dict[str, Any]:
  """{params, opt_state: {mu, nu}, step}: what a checkpoint holds, Adam-sized."""
  params = vit_params(rng, **shape)
  return {"params": params,
          "opt_state": {"mu": vit_params(rng, **shape),
                        "nu": jax.tree.map(lambda x: x * x, vit_params(rng, **shape))},
          "step": jax.numpy.asarray(1000, jax.numpy.int32)}


@contextlib.contextmanager
def checks_off():
  """Replaces the checksums and the finite check by no-ops inside the block."""
  saved = checkpoint.checksums, checkpoint.nonfinite_leaves
  checkpoint.checksums, checkpoint.nonfinite_leaves = (lambda state: {}), (lambda state: [])
  try:
    yield
  finally:
    checkpoint.checksums, checkpoint.nonfinite_leaves = saved


def _timed(fn) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  seconds = time.perf_counter() - start
  _release_freed_memory()
  return seconds


def _release_freed_memory() -> None:
  """Hands freed heap back to the OS, untimed: glibc keeps it in per-thread arenas,
  which grew this process from 3 to 6 GB over the rounds."""
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):  # Not glibc.
    pass


def one_round(state, abstract, root: str, *, checked_first: bool) -> dict[str, float]:
  """Seconds of every measurement once; leaves nothing under `root`."""
  seconds = {"checksums": _timed(lambda: checkpoint.checksums(state)),
             "nonfinite_leaves": _timed(lambda: checkpoint.nonfinite_leaves(state))}
  for variant in ("checked", "plain") if checked_first else ("plain", "checked"):
    with checks_off() if variant == "plain" else contextlib.nullcontext():
      workdir = os.path.join(root, variant)
      saver = checkpoint.Checkpointer(workdir, async_save=False)
      seconds[f"save_{variant}"] = _timed(lambda: saver.save(1, state, {}, force=True))
      saver.close()
      loader = checkpoint.Checkpointer(workdir, async_save=False)
      seconds[f"restore_{variant}"] = _timed(lambda: loader.restore(abstract, {}, 1)[0])
      loader.close()
      shutil.rmtree(workdir)
      saver = checkpoint.Checkpointer(workdir, async_save=True)
      seconds[f"async_save_{variant}"] = _timed(lambda: saver.save(1, state, {}, force=True))
      saver.wait()
      saver.close()
      shutil.rmtree(workdir)
  return seconds


def _describe(device) -> str:
  kind = device.device_kind
  return device.platform if kind == device.platform else f"{device.platform} ({kind})"


def to_markdown(report: dict[str, Any]) -> str:
  gb = report["state_bytes"] / 1e9
  lines = [
      "# Checkpoint integrity checks: cost for a ViT-B/16-sized train state",
      "",
      f"Command: `{report['command']}`  ",
      f"JAX {report['jax_version']}, orbax-checkpoint {report['orbax_version']}, device "
      f"{report['device']}, {report['date']}.  ",
      f"State: {report['shape']}: {report['params']:,} float32 parameters and two Adam "
      f"moments, {report['leaves']} arrays, {gb:.2f} GB. {report['repeats']} interleaved "
      f"rounds after {report['warmup']} untimed one(s); checkpoints written to "
      f"{report['filesystem']}, restored right after (page cache). {report['cpu_count']} "
      f"CPUs; 1-minute load average at the end: "
      f"{report['load_average_1min']} (above ~1 means other jobs shared the machine); peak "
      f"RSS {report['peak_rss_gb']:.1f} GB.",
      "",
      "| what | min s | median s | GB/s (median) |",
      "|---|---:|---:|---:|",
  ]
  for name, what in MEASUREMENTS:
    row = report["results"][name]
    lines.append(f"| {what} | {row['min_s']:.3f} | {row['median_s']:.3f} | "
                 f"{gb / row['median_s']:.2f} |")
  lines += ["", "Overhead of the checks: measured (checked / plain − 1, of the min and of "
            "the median times) and estimated from the checks timed alone (their medians / "
            "plain median); on a shared machine the estimate is the steadier figure.", "",
            "| operation | measured, min | measured, median | checks alone / plain |",
            "|---|---:|---:|---:|"]
  for name, row in report["overheads"].items():
    lines.append(f"| {name} | {row['min']:+.0%} | {row['median']:+.0%} | "
                 f"{row['checks_alone_median']:+.0%} |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  if _REPEATS.value < 3:
    raise app.UsageError("--repeats must be at least 3")
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  shape = dict(depth=_DEPTH.value, width=_WIDTH.value, patch=_PATCH.value,
               image=_IMAGE.value)
  state = train_state(np.random.default_rng(0), **shape)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  leaves = jax.tree.leaves(state)
  state_bytes = sum(x.nbytes for x in leaves)
  params = sum(x.size for x in jax.tree.leaves(state["params"]))
  print(f"state: {params:,} parameters, {len(leaves)} arrays, {state_bytes / 1e9:.2f} GB",
        flush=True)
  root = _WORKDIR.value or tempfile.mkdtemp(prefix="checkpoint_integrity_")
  os.makedirs(root, exist_ok=True)
  warmup, rounds = [], []
  try:
    for i in range(_WARMUP.value + _REPEATS.value):
      # Alternating which variant goes first, so neither always meets a colder page cache.
      seconds = one_round(state, abstract, root, checked_first=i % 2 == 1)
      (warmup if i < _WARMUP.value else rounds).append(seconds)
      print(f"{'warm-up' if i < _WARMUP.value else 'round'} {i + 1}: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()), flush=True)
  finally:
    if not _WORKDIR.value:
      shutil.rmtree(root, ignore_errors=True)
  results = {name: {"seconds": [r[name] for r in rounds],
                    "min_s": min(r[name] for r in rounds),
                    "median_s": statistics.median(r[name] for r in rounds)}
             for name, _ in MEASUREMENTS}
  overheads = {
      row: {"min": results[checked]["min_s"] / results[plain]["min_s"] - 1,
            "median": results[checked]["median_s"] / results[plain]["median_s"] - 1,
            "checks_alone_median": sum(results[c]["median_s"] for c in checks)
                                   / results[plain]["median_s"]}
      for row, checked, plain, checks in OVERHEADS}
  device = jax.devices()[0]
  report = dict(
      command=" ".join(["python -m benchmarks.checkpoint_integrity"]
                       + [shlex.quote(a) for a in sys.argv[1:]]),
      jax_version=jax.__version__, orbax_version=ocp.__version__, device=_describe(device),
      date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      shape=(f"ViT depth {shape['depth']}, width {shape['width']}, patch {shape['patch']}, "
             f"image {shape['image']}"),
      params=params, leaves=len(leaves), state_bytes=state_bytes, repeats=_REPEATS.value,
      warmup=_WARMUP.value, warmup_seconds=warmup,
      filesystem=("a temporary directory" if not _WORKDIR.value else _WORKDIR.value)
      + f" ({os.path.dirname(root) or root})",
      results=results, overheads=overheads, cpu_count=os.cpu_count(),
      load_average_1min=round(os.getloadavg()[0], 2),
      peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
  write_report(_OUT_DIR.value, "checkpoint_integrity", report, to_markdown(report))


if __name__ == "__main__":
  app.run(main)
