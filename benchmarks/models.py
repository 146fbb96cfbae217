"""Forward+backward throughput of every registered image and text encoder.

  python -m benchmarks.models                       # batch 64, writes benchmarks/results/
  python -m benchmarks.models --quick --repeats=1   # smoke test: batch 8, no warm-up
  python -m benchmarks.models --only=resnet,vit --device=gpu

Each encoder is built with a small representative config (IMAGE_KWARGS below;
text encoders get their defaults plus `vocab_size`), jitted as one train-mode
step (loss, gradients, updated BatchNorm statistics), compiled ahead of time,
warmed up, then timed `--repeats` times with `block_until_ready`; the table
reports the median. An encoder that cannot be built from those kwargs is
listed as "skipped: <reason>" rather than stopping the run, so a newly
registered encoder shows up here without editing this file.

Writes `<out_dir>/models_<device>.json` and `.md` (the markdown names the
command, JAX version, device and date, as every results table must).
"""

from __future__ import annotations

import datetime
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # For `python benchmarks/models.py` as well as `-m`.
  sys.path.insert(0, ROOT)

# pylint: disable=wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.report import write_report
from mmalign import utils
from mmalign.models import dual_encoder  # noqa: F401 (registers every encoder)
from mmalign.models.registry import IMAGE_ENCODERS, TEXT_ENCODERS
# pylint: enable=wrong-import-position

_BATCH = flags.DEFINE_integer("batch_size", None, "Examples per step (default 64; 8 if --quick).")
_REPEATS = flags.DEFINE_integer("repeats", None, "Timed steps (default 10; 1 if --quick).")
_WARMUP = flags.DEFINE_integer("warmup", None, "Untimed steps after compiling "
                               "(default 2; 0 if --quick).")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke test: small batch, no warm-up.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "Images are [b, size, size, channels].")
_CHANNELS = flags.DEFINE_integer("channels", 3, "Image channels.")
_TEXT_LENGTH = flags.DEFINE_integer("text_length", 16, "Tokens per caption.")
_VOCAB = flags.DEFINE_integer("vocab_size", 2048, "Text encoders' vocabulary size.")
_ONLY = flags.DEFINE_list("only", [], "Encoder names to run (default: all registered).")
_DEVICE = flags.DEFINE_string("device", "cpu", "JAX platform to run on (cpu, gpu, tpu).")
_OUT_DIR = flags.DEFINE_string("out_dir", os.path.join(ROOT, "benchmarks", "results"),
                               "Where models_<device>.json and .md go.")

# Small representative configs for 32×32 inputs; an encoder missing here runs with defaults.
IMAGE_KWARGS: dict[str, dict[str, Any]] = {
    "cnn": {},
    "vgg": dict(layout="11"),  # VGG-11 with BatchNorm and global average pooling.
    "resnet": dict(depth=18, small_input=True),  # The CIFAR ResNet-18.
    "vit": dict(variant="Ti", patch_size=4),  # 64 patches.
}


def median_seconds(step: Callable[[], Any], *, warmup: int, repeats: int) -> float:
  """Median wall time of `step()` (which must return arrays), after `warmup` calls."""
  return statistics.median(utils.time_calls(step, repeats=repeats, warmup=warmup)[1])


def train_step(model) -> Callable:
  """One train-mode step of an encoder: gradients of a scalar loss, new mutable state.

  Collections other than `params` (BatchNorm's `batch_stats`) are mutable, and
  a dropout rng is passed, exactly as a trainer would.
  """
  def step(params, state, inputs, key):
    def loss_of(params):
      (pooled, sequence), new_state = model.apply(
          {"params": params, **state}, inputs, train=True, mutable=list(state),
          rngs={"dropout": key})
      loss = jnp.mean(jnp.square(pooled.astype(jnp.float32)))
      loss += jnp.mean(jnp.square(sequence.astype(jnp.float32)))
      return loss, new_state
    (loss, new_state), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    return loss, grads, new_state
  return step


def benchmark(kind: str, name: str, kwargs: dict[str, Any], inputs, *, warmup: int,
              repeats: int) -> dict[str, Any]:
  """Builds, compiles and times one encoder; build or compile errors become a skip."""
  row: dict[str, Any] = dict(kind=kind, name=name, config=kwargs,
                             batch_size=int(inputs.shape[0]))
  registry = IMAGE_ENCODERS if kind == "image" else TEXT_ENCODERS
  try:
    model = registry.get(name)(**kwargs)
    # rbg keys: initialisers compile in a fraction of threefry's time.
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), inputs)
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    key = jax.random.key(1, impl="rbg")
    start = time.perf_counter()
    compiled = jax.jit(train_step(model)).lower(params, state, inputs, key).compile()
    row["compile_s"] = time.perf_counter() - start
  except Exception as error:  # pylint: disable=broad-exception-caught
    row["status"] = f"skipped: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return row
  seconds = median_seconds(lambda: compiled(params, state, inputs, key), warmup=warmup,
                           repeats=repeats)
  row.update(status="ok", params=int(sum(x.size for x in jax.tree.leaves(params))),
             step_ms=1e3 * seconds, examples_per_s=inputs.shape[0] / seconds)
  return row


def _describe(device) -> str:
  kind = device.device_kind
  return device.platform if kind == device.platform else f"{device.platform} ({kind})"


def to_markdown(report: dict[str, Any]) -> str:
  lines = [
      f"# Encoder throughput ({report['device']})",
      "",
      f"Command: `{report['command']}`  ",
      f"JAX {report['jax_version']}, device {report['device']}, {report['date']}.  ",
      f"One jitted train step (forward + backward) per call; median of {report['repeats']} "
      f"timed steps after {report['warmup']} warm-up steps. Images "
      f"{report['image_shape']}, tokens {report['token_shape']}. "
      f"{report['cpu_count']} CPUs; 1-minute load average at the end: "
      f"{report['load_average_1min']} (above ~1 means other jobs shared the machine).",
      "",
      "| kind | encoder | config | params | ms / step | examples / s | compile s | status |",
      "|---|---|---|---:|---:|---:|---:|---|",
  ]
  for row in report["results"]:
    config = ", ".join(f"{k}={v}" for k, v in row["config"].items()) or "defaults"
    if row["status"] == "ok":
      numbers = (f"{row['params']:,} | {row['step_ms']:.1f} | {row['examples_per_s']:.1f} | "
                 f"{row['compile_s']:.1f}")
    else:
      numbers = " | ".join(["–"] * 4)
    status = row["status"].replace("|", "\\|")  # A pipe would end the cell.
    lines.append(f"| {row['kind']} | {row['name']} | {config} | {numbers} | {status} |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  quick = _QUICK.value
  batch = _BATCH.value or (8 if quick else 64)
  repeats = _REPEATS.value or (1 if quick else 10)
  warmup = _WARMUP.value if _WARMUP.value is not None else (0 if quick else 2)
  device = jax.devices(_DEVICE.value)[0]
  rng = np.random.default_rng(0)
  images = rng.normal(size=(batch, _IMAGE_SIZE.value, _IMAGE_SIZE.value, _CHANNELS.value))
  tokens = rng.integers(1, _VOCAB.value, size=(batch, _TEXT_LENGTH.value))
  tokens[:, _TEXT_LENGTH.value * 3 // 4:] = 0  # Trailing padding, as real captions have.
  jobs = [("image", name, IMAGE_KWARGS.get(name, {})) for name in IMAGE_ENCODERS.names()]
  jobs += [("text", name, {"vocab_size": _VOCAB.value}) for name in TEXT_ENCODERS.names()]
  if _ONLY.value:
    jobs = [job for job in jobs if job[1] in _ONLY.value]
  results = []
  with jax.default_device(device):
    inputs = {"image": jnp.asarray(images, jnp.float32), "text": jnp.asarray(tokens, jnp.int32)}
    for kind, name, kwargs in jobs:
      row = benchmark(kind, name, kwargs, inputs[kind], warmup=warmup, repeats=repeats)
      results.append(row)
      speed = (f"{row['examples_per_s']:.1f} examples/s" if row["status"] == "ok"
               else row["status"])
      print(f"{kind:5s} {name:14s} {speed}", flush=True)
  report = dict(
      command=" ".join(["python -m benchmarks.models"] + [shlex.quote(a) for a in sys.argv[1:]]),
      jax_version=jax.__version__, device=_describe(device),
      date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      batch_size=batch, repeats=repeats, warmup=warmup, image_shape=list(images.shape),
      token_shape=list(tokens.shape), results=results,
      cpu_count=os.cpu_count(), load_average_1min=round(os.getloadavg()[0], 2))
  write_report(_OUT_DIR.value, f"models_{device.platform}", report, to_markdown(report))


if __name__ == "__main__":
  app.run(main)
