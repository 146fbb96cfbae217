"""Progress and metrics: steps/s and ETA on the console, one JSON line per log in the
workdir (`metrics.jsonl`), and TensorBoard event files (`<workdir>/tensorboard/`).

Only process 0 writes; progress goes to stdout with `say`, as the launcher keeps absl's log
at WARNING. Records also hold throughput, input wait, `mfu` (utilisation.py) and, where the
backend reports it (not CPU), device memory.
"""

from __future__ import annotations

import json
import os
import time

import jax

from mmalign.utils import say


class MetricsLog:
  """Appends to `<workdir>/metrics.jsonl`; only process 0 writes."""

  def __init__(self, workdir: str, total_steps: int, start_step: int, batch_size: int = 0,
               peak_flops: tuple[float | None, str] = (None, "")):
    """`peak_flops`: (FLOP/s of all devices, its source), from `utilisation.peak_flops`."""
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._total = total_steps
    self._batch_size = batch_size
    self._peak_flops, self._peak_source = peak_flops
    self._step_flops: float | None = None
    self._waited = 0.0
    self._last_step, self._last_time = start_step, time.perf_counter()
    self._writer = jax.process_index() == 0
    self._tensorboard = None
    if self._writer:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def set_step_flops(self, flops: float | None) -> None:
    """FLOPs of one step on all devices; with a known peak, logs carry `mfu`."""
    self._step_flops = flops
    if flops and self._peak_flops:
      say(f"utilisation: {flops / 1e9:.3g} GFLOP per step against a peak of "
          f"{self._peak_flops / 1e12:.3g} TFLOP/s ({self._peak_source})")

  def waited(self, seconds: float) -> None:
    """Adds time the loop spent waiting for its next batch."""
    self._waited += seconds

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()

  def record(self, step: int, scalars: dict[str, float]) -> None:
    """Appends scalars of `step` (e.g. a periodic evaluation's) without progress figures."""
    if not self._writer or not scalars:
      return
    for key, value in scalars.items():
      self._tensorboard.add_scalar(key, value, step)
    self._tensorboard.flush()
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()},
                          "time": time.time()}) + "\n")

  def log(self, step: int, metrics: dict[str, float]) -> None:
    now = time.perf_counter()
    steps = max(step - self._last_step, 1)
    steps_per_s = (step - self._last_step) / max(now - self._last_time, 1e-9)
    input_wait_s, self._waited = self._waited / steps, 0.0
    self._last_step, self._last_time = step, now
    eta_s = (self._total - step) / steps_per_s if steps_per_s > 0 else float("inf")
    record = {"step": step, **{k: float(v) for k, v in metrics.items()},
              "steps_per_s": steps_per_s, "examples_per_s": steps_per_s * self._batch_size,
              "step_time_s": 1.0 / steps_per_s if steps_per_s > 0 else float("inf"),
              "input_wait_s": input_wait_s, **device_memory(), "time": time.time()}
    if self._step_flops and self._peak_flops:
      record["mfu"] = self._step_flops * steps_per_s / self._peak_flops
    if not self._writer:
      return
    for key, value in record.items():
      if key not in ("step", "time"):
        self._tensorboard.add_scalar(key, value, step)
    self._tensorboard.flush()
    shown = " ".join(f"{k}={float(v):.4g}" for k, v in metrics.items())
    mfu = f"  MFU {100 * record['mfu']:.3g}%" if "mfu" in record else ""
    say(f"step {step}/{self._total}  {shown}  {steps_per_s:.2f} steps/s{mfu}  "
        f"input wait {1e3 * input_wait_s:.1f} ms/step  ETA {_duration(eta_s)}")
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")


def device_memory() -> dict[str, float]:
  """{"device_memory_gib", "device_peak_memory_gib"} of the first local device, or {}."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "bytes_in_use" not in stats:
    return {}
  return {"device_memory_gib": stats["bytes_in_use"] / 2**30,
          "device_peak_memory_gib": stats.get("peak_bytes_in_use", 0) / 2**30}


def _duration(seconds: float) -> str:
  if seconds == float("inf"):
    return "?"
  minutes, seconds = divmod(int(seconds), 60)
  return f"{minutes}m{seconds:02d}s"
