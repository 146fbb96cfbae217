"""InfoNCE forward+backward on one NVIDIA GPU: the Pallas (Triton) kernels against the jnp reference.

  python -m benchmarks.kernels_gpu                     # N = M = 32768, d = 768, bfloat16
  python -m benchmarks.kernels_gpu --dry_run           # N = M = 256, d = 128 on any backend
  python -m benchmarks.kernels_gpu --impls=pallas --block_n=64 --block_m=128
  bash benchmarks/device_check.sh                      # kernel tests + this, on a GPU machine

Each implementation runs in its own subprocess, so `peak_bytes_in_use` of its
device (`device.memory_stats()`, which has no reset) is that implementation's
alone. The child builds text and image `[N, d]` inputs (rows ~ N(0, 1/d),
positives on the diagonal, scale 10), compiles one jitted value-and-gradient
step w.r.t. text, image and scale, warms it up, times `--repeats` steps and
reports the median. The reference materialises float32 `[N, N]` logits and
their gradient temporaries, so at large N it may not fit: an out-of-memory
error is caught and recorded as "OOM: <first line of the error>".

Targets (on an H200; reported as met / missed / n/a in the markdown):
  speed       Pallas median step time below the reference's;
  throughput  ≥ 50 % of the dense bf16 peak, counting 8·N·M·d FLOPs per step;
  memory      Pallas peak_bytes_in_use ≤ 2 % of the reference's.
The peak is an assumption, not a reading: 989 TFLOP/s dense bf16 (no
sparsity), the H200 SXM datasheet figure (the same tensor cores as the H100
SXM); `--peak_tflops` changes it. `--calibrate` (on by default) also times a
plain bf16 `jnp.dot` on the same device as a measured ceiling.

FLOP convention: 8·N·M·d per step, as flash-attention benchmarks count, the same
for both implementations; what the kernels execute (10·N·M·d) is in the README
("Kernel benchmark").

`--dry_run` runs a tiny size (N = 256, d = 128 unless --n/--d are given) on
whatever backend exists, with `interpret=True` off the GPU, to check the
script end to end; its figures mean nothing. It writes
`<out_dir>/kernels_gpu_quick.{json,md}` (git-ignored), the full run
`<out_dir>/kernels_gpu.{json,md}`. Without --dry_run a backend other than
"gpu" is refused (the full size would take hours interpreted).
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
import time
from typing import Any

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # For `python benchmarks/kernels_gpu.py` as well as `-m`.
  sys.path.insert(0, ROOT)

from benchmarks.report import write_report  # noqa: E402  pylint: disable=wrong-import-position

IMPLS = ("pallas", "reference")
_MATMUL = "matmul"  # The calibration case's name.

_N = flags.DEFINE_integer("n", 32768, "N = M, texts and images per step (256 with --dry_run).")
_D = flags.DEFINE_integer("d", 768, "Embedding width d (128 with --dry_run).")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"],
                           "Dtype of the text and image inputs.")
_BLOCK_N = flags.DEFINE_integer("block_n", 128, "Pallas row tile over texts (power of two ≥ 16).")
_BLOCK_M = flags.DEFINE_integer("block_m", 128, "Pallas row tile over images (power of two ≥ 16).")
_REPEATS = flags.DEFINE_integer("repeats", None, "Timed steps (default 10; 2 with --dry_run).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling.")
_IMPLS = flags.DEFINE_list("impls", list(IMPLS), "Implementations to run, in this order.")
_CALIBRATE = flags.DEFINE_bool("calibrate", True, "Also time a plain bf16 jnp.dot "
                               "(--calibrate_size cubed) as a measured ceiling.")
_CALIBRATE_SIZE = flags.DEFINE_integer("calibrate_size", 8192, "Side of the calibration "
                                       "matmul (256 with --dry_run).")
_PEAK = flags.DEFINE_float("peak_tflops", 989.0, "Assumed dense bf16 peak, TFLOP/s "
                           "(H200 SXM datasheet, no sparsity).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Tiny sizes on any backend (interpret=True "
                             "off the GPU), to check the script; writes kernels_gpu_quick.*")
_TIMEOUT = flags.DEFINE_integer("timeout_s", 300, "Per-case limit; a case past it is "
                                "reported as a timeout.")
_OUT_DIR = flags.DEFINE_string("out_dir", os.path.join(ROOT, "benchmarks", "results"),
                               "Where kernels_gpu.json and .md go.")
_CASE = flags.DEFINE_string("case", None, "Internal: run one case (an impl or 'matmul') in "
                            "this process and print its result as one JSON line.")

# Target thresholds, as fractions.
THROUGHPUT_TARGET = 0.5  # Of --peak_tflops.
MEMORY_TARGET = 0.02  # Of the reference's peak_bytes_in_use.


# --------------------------------------------------------------------------
# Child: one case in this process.
# --------------------------------------------------------------------------

def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return (lines[0] if lines else type(error).__name__)[:300]


def _is_oom(text: str) -> bool:
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def _memory_stats(device) -> dict[str, int] | None:
  """bytes_in_use / peak_bytes_in_use / bytes_limit of the device allocator; None on CPU."""
  stats = device.memory_stats()
  if not stats:
    return None
  return {k: int(stats[k]) for k in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
          if k in stats}


def _compiled_memory(compiled) -> dict[str, int] | None:
  """XLA's own account of the step's buffers (argument, output, temp bytes), if it gives one."""
  try:
    analysis = compiled.memory_analysis()
    return {k: int(getattr(analysis, f"{k}_size_in_bytes"))
            for k in ("argument", "output", "temp", "alias")}
  except Exception:  # pylint: disable=broad-except  # Optional; absent on some backends.
    return None


def _timed(fn, args, warmup: int, repeats: int) -> tuple[Any, list[float]]:
  """Runs fn(*args) warmup + repeats times; returns the last output and the timed seconds."""
  from mmalign import utils  # pylint: disable=import-outside-toplevel
  return utils.time_calls(lambda: fn(*args), repeats=repeats, warmup=warmup)


def run_case(case: str, *, n: int, d: int, dtype: str, block_n: int, block_m: int,
             warmup: int, repeats: int, calibrate_size: int, dry_run: bool) -> dict[str, Any]:
  """Times one case on jax.devices()[0]; returns the child's row (never raises)."""
  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp
  # pylint: enable=import-outside-toplevel
  device = jax.devices()[0]
  backend = jax.default_backend()
  row: dict[str, Any] = dict(backend=backend, device_kind=device.device_kind)
  try:
    row["platform_version"] = device.client.platform_version
  except Exception:  # pylint: disable=broad-except
    pass
  if backend != "gpu" and not dry_run:
    row["status"] = f"skipped: backend is {backend!r}; this size needs a GPU (or use --dry_run)"
    return row
  interpret = backend != "gpu"
  row["interpret"] = interpret if case == "pallas" else None
  try:
    if case == _MATMUL:
      k1, k2 = jax.random.split(jax.random.PRNGKey(1))
      a = jax.random.normal(k1, (calibrate_size,) * 2, jnp.bfloat16)
      b = jax.random.normal(k2, (calibrate_size,) * 2, jnp.bfloat16)
      start = time.perf_counter()
      step = jax.jit(jnp.dot).lower(a, b).compile()
      row["compile_s"] = time.perf_counter() - start
      _, times = _timed(step, (a, b), warmup, repeats)
      row.update(status="ok", median_s=statistics.median(times), times_s=times,
                 flops=2 * calibrate_size ** 3)
      return row

    from kernels import pallas_gpu, reference  # pylint: disable=import-outside-toplevel
    if case == "reference":
      loss = reference.infonce_loss
    else:
      loss = lambda t, i, s: pallas_gpu.infonce_loss(t, i, s, block_n=block_n,
                                                     block_m=block_m, interpret=interpret)
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    text = (jax.random.normal(k1, (n, d), jnp.float32) / d ** 0.5).astype(dtype)  # [N, d]
    image = (jax.random.normal(k2, (n, d), jnp.float32) / d ** 0.5).astype(dtype)  # [N, d]
    scale = jnp.float32(10.0)
    jax.block_until_ready((text, image))
    row["memory_baseline"] = _memory_stats(device)  # Runtime + inputs.
    start = time.perf_counter()
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(text, image, scale).compile()
    row["compile_s"] = time.perf_counter() - start
    row["compiled_memory"] = _compiled_memory(step)
    (value, grads), times = _timed(step, (text, image, scale), warmup, repeats)
    # Peak over the whole child, compilation included; read before the norms allocate.
    row["memory"] = _memory_stats(device)
    row.update(status="ok", median_s=statistics.median(times), times_s=times,
               loss=float(value),
               grad_norms=[float(jnp.linalg.norm(g.astype(jnp.float32))) for g in grads[:2]],
               d_scale=float(grads[2]))
  except Exception as e:  # pylint: disable=broad-except  # Reported, never raised.
    line = _first_line(e)
    row["status"] = f"OOM: {line}" if _is_oom(str(e)) else f"failed: {type(e).__name__}: {line}"
    row.setdefault("memory", _memory_stats(device))  # How far it got.
  return row


# --------------------------------------------------------------------------
# Parent: one subprocess per case, then the report.
# --------------------------------------------------------------------------

def _sizes() -> dict[str, int]:
  """n, d, repeats and calibrate_size with the --dry_run defaults applied."""
  dry = _DRY_RUN.value

  def pick(holder, dry_value):
    return holder.value if holder.present or not dry else dry_value

  return dict(n=pick(_N, 256), d=pick(_D, 128),
              repeats=_REPEATS.value or (2 if dry else 10),
              calibrate_size=pick(_CALIBRATE_SIZE, 256))


def spawn_case(case: str, sizes: dict[str, int]) -> dict[str, Any]:
  """Runs one case in a fresh subprocess (its own device allocator) and parses its JSON line."""
  row: dict[str, Any] = dict(impl=case)
  command = [sys.executable, "-m", "benchmarks.kernels_gpu", f"--case={case}",
             f"--n={sizes['n']}", f"--d={sizes['d']}", f"--dtype={_DTYPE.value}",
             f"--block_n={_BLOCK_N.value}", f"--block_m={_BLOCK_M.value}",
             f"--warmup={_WARMUP.value}", f"--repeats={sizes['repeats']}",
             f"--calibrate_size={sizes['calibrate_size']}",
             f"--dry_run={_DRY_RUN.value}"]
  try:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          timeout=_TIMEOUT.value, check=False)
  except subprocess.TimeoutExpired:
    row["status"] = f"timeout after {_TIMEOUT.value} s"
    return row
  lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
  if done.returncode != 0 or not lines:
    # A crash outside Python's reach (e.g. an allocator abort) still leaves stderr.
    stderr = done.stderr.strip().splitlines() or ["no output"]
    oom = [line for line in stderr if _is_oom(line)]
    row["status"] = (f"OOM: {oom[0].strip()[:300]}" if oom else
                     f"failed (exit {done.returncode}): {stderr[-1][:300]}")
    return row
  row.update(json.loads(lines[-1]))
  return row


def _peak_bytes(row: dict[str, Any] | None) -> int | None:
  return ((row or {}).get("memory") or {}).get("peak_bytes_in_use")


def _targets(rows: dict[str, dict[str, Any]], flops: float, peak_tflops: float
             ) -> dict[str, dict[str, str]]:
  """{target: {"verdict": met | missed | n/a, "detail": why}} for speed, throughput, memory."""
  pallas, ref = rows.get("pallas"), rows.get("reference")
  if not pallas or pallas["status"] != "ok":
    why = f"Pallas {pallas['status']}" if pallas else "Pallas not run"
    return {k: dict(verdict="n/a", detail=why) for k in ("speed", "throughput", "memory")}
  out = {}
  if ref and ref["status"] == "ok":
    ratio = ref["median_s"] / pallas["median_s"]
    out["speed"] = dict(verdict="met" if ratio > 1 else "missed",
                        detail=f"Pallas {1e3 * pallas['median_s']:.2f} ms vs reference "
                               f"{1e3 * ref['median_s']:.2f} ms per step ({ratio:.2f}×)")
  else:
    out["speed"] = dict(verdict="n/a", detail=f"reference {ref['status'] if ref else 'not run'}")
  fraction = flops / pallas["median_s"] / 1e12 / peak_tflops
  out["throughput"] = dict(
      verdict="met" if fraction >= THROUGHPUT_TARGET else "missed",
      detail=f"{fraction * peak_tflops:.1f} TFLOP/s = {100 * fraction:.1f} % of "
             f"{peak_tflops:g} (target ≥ {100 * THROUGHPUT_TARGET:.0f} %)")
  p_peak, r_peak = _peak_bytes(pallas), _peak_bytes(ref)
  if p_peak is None:
    out["memory"] = dict(verdict="n/a", detail=f"no memory_stats on backend "
                                               f"{pallas['backend']!r}")
  elif r_peak is None:
    out["memory"] = dict(verdict="n/a", detail="no reference peak: reference "
                                               f"{ref['status'] if ref else 'not run'}")
  else:
    ratio = p_peak / r_peak
    out["memory"] = dict(
        verdict="met" if ratio <= MEMORY_TARGET else "missed",
        detail=f"Pallas peak {p_peak / 2**20:,.0f} MiB = {100 * ratio:.2f} % of the "
               f"reference's {r_peak / 2**20:,.0f} MiB (target ≤ {100 * MEMORY_TARGET:.0f} %)")
  return out


def _mib(x: int | None) -> str:
  return "–" if x is None else f"{x / 2**20:,.0f}"


def to_markdown(report: dict[str, Any]) -> str:
  s = report["sizes"]
  title = "# InfoNCE kernels on GPU: Pallas (Triton) vs jnp reference"
  lines = [title + (" — DRY RUN" if report["dry_run"] else ""), ""]
  if report["dry_run"]:
    lines += [f"**Dry run on backend `{report['backend']}`: a check that the script works "
              "end to end. The figures below are not measurements of the kernels and say "
              "nothing about the targets.**", ""]
  lines += [
      f"Command: `{report['command']}`  ",
      f"JAX {report['jax_version']} (jaxlib {report['jaxlib_version']}), Python "
      f"{report['python_version']}, device {report['device_kind']} (backend "
      f"`{report['backend']}`{', ' + report['platform_version'] if report.get('platform_version') else ''}), "
      f"{report['date']}.  ",
      f"One jitted forward+backward step (gradients w.r.t. text, image and scale), "
      f"N = M = {s['n']}, d = {s['d']}, {report['dtype']} inputs, positives on the diagonal; "
      f"Pallas blocks {report['block_n']}×{report['block_m']}; median of {s['repeats']} timed "
      f"steps after {report['warmup']} warm-up step(s). Each implementation ran in its own "
      "process; memory is that process's device `peak_bytes_in_use` (compilation included), "
      "baseline its `bytes_in_use` once the inputs existed.",
      "",
      "## Targets",
      "",
      "| target | verdict | detail |",
      "|---|---|---|",
  ]
  names = {"speed": "faster than the reference",
           "throughput": f"≥ {100 * THROUGHPUT_TARGET:.0f} % of dense bf16 peak",
           "memory": f"≤ {100 * MEMORY_TARGET:.0f} % of the reference's peak memory"}
  for key, name in names.items():
    t = report["targets"][key]
    lines.append(f"| {name} | {t['verdict']} | {t['detail']} |")
  lines += [
      "",
      f"Peak assumed, not measured: {report['peak_tflops']:g} TFLOP/s dense bf16 (H200 SXM "
      "datasheet, no sparsity). FLOPs counted: 8·N·M·d per step = "
      f"{report['flops'] / 1e12:.3f} TFLOP (forward logits, their backward recomputation, dT "
      "and dI). The reference executes 6·N·M·d in float32; the Pallas kernels 10·N·M·d "
      "(one forward sweep, two backward sweeps computing each logit tile once: "
      "tests/kernels/test_flop_count.py).",
      "",
      "## Results",
      "",
      "| impl | ms / step | TFLOP/s (8NMd) | % of peak | compile s | baseline MiB | "
      "peak MiB | peak − baseline MiB | XLA temp MiB | loss | status |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
  ]
  for row in report["results"]:
    if row["impl"] == _MATMUL:
      continue
    base = (row.get("memory_baseline") or {}).get("bytes_in_use")
    peak = _peak_bytes(row)
    temp = (row.get("compiled_memory") or {}).get("temp")
    work = _mib(peak - base) if peak is not None and base is not None else "–"
    if row["status"] == "ok":
      tflops = report["flops"] / row["median_s"] / 1e12
      timing = (f"{1e3 * row['median_s']:.2f} | {tflops:.1f} | "
                f"{100 * tflops / report['peak_tflops']:.1f} | {row['compile_s']:.1f}")
      loss = f"{row['loss']:.5f}"
    else:
      timing, loss = " | ".join(["–"] * 4), "–"
    status = row["status"].replace("|", "\\|")
    lines.append(f"| {row['impl']} | {timing} | {_mib(base)} | {_mib(peak)} | {work} | "
                 f"{_mib(temp)} | {loss} | {status} |")
  calibration = next((r for r in report["results"] if r["impl"] == _MATMUL), None)
  if calibration:
    lines.append("")
    if calibration["status"] == "ok":
      measured = calibration["flops"] / calibration["median_s"] / 1e12
      lines.append(f"Calibration: a plain bf16 `jnp.dot` of two {report['sizes']['calibrate_size']}"
                   f"² matrices ran at {measured:.1f} TFLOP/s on this device "
                   f"({100 * measured / report['peak_tflops']:.1f} % of the assumed peak).")
    else:
      lines.append(f"Calibration matmul: {calibration['status']}.")
  agreement = report.get("agreement")
  if agreement:
    lines += ["", "## Agreement (Pallas vs reference, same inputs)", "",
              "| quantity | Pallas | reference | relative difference |", "|---|---:|---:|---:|"]
    for name, (p, r, rel) in agreement.items():
      lines.append(f"| {name} | {p:.6g} | {r:.6g} | {rel:.2e} |")
  return "\n".join(lines) + "\n"


def _agreement(rows: dict[str, dict[str, Any]]) -> dict[str, tuple[float, float, float]] | None:
  """Loss, gradient norms and d_scale of both implementations, with relative differences."""
  p, r = rows.get("pallas"), rows.get("reference")
  if not (p and r and p["status"] == "ok" and r["status"] == "ok"):
    return None
  pairs = {"loss": (p["loss"], r["loss"]), "‖d_text‖": (p["grad_norms"][0], r["grad_norms"][0]),
           "‖d_image‖": (p["grad_norms"][1], r["grad_norms"][1]),
           "d_scale": (p["d_scale"], r["d_scale"])}
  return {k: (a, b, abs(a - b) / max(abs(b), 1e-30)) for k, (a, b) in pairs.items()}


def main(argv):
  del argv
  sizes = _sizes()
  if _CASE.value:  # Child: one case, one JSON line on stdout.
    print(json.dumps(run_case(_CASE.value, n=sizes["n"], d=sizes["d"], dtype=_DTYPE.value,
                              block_n=_BLOCK_N.value, block_m=_BLOCK_M.value,
                              warmup=_WARMUP.value, repeats=sizes["repeats"],
                              calibrate_size=sizes["calibrate_size"],
                              dry_run=_DRY_RUN.value)))
    return
  if sizes["repeats"] < 1 or _WARMUP.value < 0:
    raise app.UsageError("--repeats must be ≥ 1 and --warmup ≥ 0")
  unknown = set(_IMPLS.value) - set(IMPLS)
  if unknown:
    raise app.UsageError(f"--impls: unknown {sorted(unknown)}; allowed: {', '.join(IMPLS)}")
  import jax  # pylint: disable=import-outside-toplevel  # Version only: no backend starts here.
  cases = list(_IMPLS.value) + ([_MATMUL] if _CALIBRATE.value else [])
  results = []
  for case in cases:
    row = spawn_case(case, sizes)
    results.append(row)
    if row["status"] == "ok":
      peak = _peak_bytes(row)
      summary = f"{1e3 * row['median_s']:.2f} ms" + (
          f", peak {peak / 2**20:,.0f} MiB" if peak is not None else "")
    else:
      summary = row["status"]
    print(f"{case:10s} {summary}", flush=True)
  by_impl = {r["impl"]: r for r in results}
  first = next((r for r in results if "backend" in r), {})
  if not _DRY_RUN.value and first.get("backend") != "gpu":
    # Keep the committed results file: a report of skipped cases would only overwrite it.
    sys.exit(f"no GPU backend (saw {first.get('backend', 'none')!r}); nothing written. "
             "Use --dry_run to check the script here.")
  flops = 8 * sizes["n"] * sizes["n"] * sizes["d"]
  try:
    jaxlib_version = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    jaxlib_version = "unknown"
  report = dict(
      command=" ".join(["python -m benchmarks.kernels_gpu"] +
                       [shlex.quote(a) for a in sys.argv[1:]]),
      jax_version=jax.__version__, jaxlib_version=jaxlib_version,
      python_version=platform.python_version(),
      backend=first.get("backend", "unknown"), device_kind=first.get("device_kind", "unknown"),
      platform_version=first.get("platform_version"),
      date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      dry_run=_DRY_RUN.value, sizes=sizes, dtype=_DTYPE.value, block_n=_BLOCK_N.value,
      block_m=_BLOCK_M.value, warmup=_WARMUP.value, peak_tflops=_PEAK.value, flops=flops,
      targets=_targets(by_impl, flops, _PEAK.value), agreement=_agreement(by_impl),
      results=results)
  for key, t in report["targets"].items():
    print(f"target {key:10s} {t['verdict']}: {t['detail']}")
  write_report(_OUT_DIR.value, "kernels_gpu_quick" if _DRY_RUN.value else "kernels_gpu", report,
               to_markdown(report))


if __name__ == "__main__":
  app.run(main)
