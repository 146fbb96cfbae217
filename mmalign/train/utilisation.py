"""Model FLOPs utilisation: the compiled train step's FLOPs against the devices' peak.

FLOPs per step come from XLA's cost analysis of the step the loop runs (per device, so
times the devices); the peak from `train.peak_flops` (per device), else a table of dense
bf16 peaks by device kind, else on CPU the host's measured float32 matmul rate. Why the
measured rate on CPU: there is no datasheet figure for a shared, simulated-device host.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

# Dense bf16 FLOP/s per chip, by a substring of `device.device_kind` (first match wins).
PEAK_FLOPS = (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12),
              ("TPU v6", 918e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12),
              ("TPU v5", 459e12), ("TPU v4", 275e12))
SGEMM_SIZE = 1024


def step_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled step on all devices, or None where XLA has no count."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older jax: one dict per program.
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return float(flops) * jax.device_count() if flops and flops > 0 else None


def peak_flops(per_device: float | None = None) -> tuple[float | None, str]:
  """(peak FLOP/s of all devices together, where the figure comes from)."""
  devices = jax.devices()
  if per_device:
    return per_device * len(devices), "train.peak_flops"
  if devices[0].platform == "cpu":
    return measured_sgemm(), f"measured {SGEMM_SIZE}² float32 matmul on the host"
  kind = devices[0].device_kind
  for key, flops in PEAK_FLOPS:
    if key in kind:
      return flops * len(devices), f"{kind} dense bf16 peak"
  return None, f"no known peak for {kind!r}: set train.peak_flops"


def measured_sgemm(size: int = SGEMM_SIZE, min_seconds: float = 0.25) -> float:
  """FLOP/s of the fastest of the jitted float32 matmuls of size² run for `min_seconds`
  (at least 5): a shared host's first calls are slow, and a few would halve the peak."""
  matmul = jax.jit(jnp.matmul)
  a = jnp.ones((size, size), jnp.float32)
  matmul(a, a).block_until_ready()  # Compiled outside the timing.
  best, runs, started = float("inf"), 0, time.perf_counter()
  while runs < 5 or time.perf_counter() - started < min_seconds:
    begun = time.perf_counter()
    matmul(a, a).block_until_ready()
    best, runs = min(best, time.perf_counter() - begun), runs + 1
  return 2.0 * size ** 3 / best
