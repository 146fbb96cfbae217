"""InfoNCE forward+backward on CPU: the full-logits reference against the tiled XLA kernel.

  python -m benchmarks.kernels                 # N = M in 1024, 4096, 16384, 65536; slow
  python -m benchmarks.kernels --quick         # smoke test: N in 256, 1024, 1 timed step
  python -m benchmarks.kernels --sizes=2048 --block_size=256

Each (implementation, N) case runs in its own subprocess, so its peak resident
memory (`ru_maxrss` of that process alone) is not mixed with the others'. The
child builds text and image `[N, dim]` float32 inputs, compiles one jitted
value-and-gradient step (w.r.t. text, image and scale; positives on the
diagonal), warms it up and times `--repeats` steps, then the forward alone. Cases run
in `--rounds` rounds, the implementations alternating within each round, so a noisy
moment of a shared machine hits both; the table gives the min and median over every
timed step. The reference is skipped where its `[N, N]` logits and their gradient
temporaries (≈ 4 · N² · 4 bytes) would exceed `--reference_limit_gb`.

Ceiling: a step is credited 8·N·M·d matmul FLOPs (forward logits, their recomputation,
dT, dI); at the host's float32 matmul rate (a 1024² sgemm, measured in each case's
process) that takes 8·N·M·d / rate seconds, and `% of ceiling` is that time over the
step's min. The forward alone (2·N·M·d of it) shows how the gap splits between passes.

Memory columns: `XLA temp` is the compiled step's scratch memory as XLA
reports it (`memory_analysis().temp_size_in_bytes`): the kernel's own working
set, inputs and outputs excluded. `baseline` is the child's peak RSS once its inputs exist (JAX
runtime + inputs), `peak` its peak RSS at the end (includes compilation); the
difference approximates the step's working memory.

Writes `<out_dir>/kernels.json` and `.md`, naming the command, JAX version
and date, as every results table must.
"""

from __future__ import annotations

import datetime
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from typing import Any

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # For `python benchmarks/kernels.py` as well as `-m`.
  sys.path.insert(0, ROOT)

from benchmarks.report import write_report  # noqa: E402  pylint: disable=wrong-import-position
from mmalign import utils  # noqa: E402  pylint: disable=wrong-import-position
from mmalign.train import utilisation  # noqa: E402  pylint: disable=wrong-import-position

_SIZES = flags.DEFINE_list("sizes", None, "N = M values (default 1024,4096,16384,65536; "
                           "256,1024 if --quick).")
_DIM = flags.DEFINE_integer("dim", 256, "Embedding width d.")
_BLOCK = flags.DEFINE_integer("block_size", 128, "xla_chunked column block.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Timed steps per case and round.")
_ROUNDS = flags.DEFINE_integer("rounds", None, "Interleaved rounds (default 3; 1 if --quick).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps after compiling.")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke test: small N, one timed step.")
_IMPLS = flags.DEFINE_list("impls", ["reference", "xla_chunked", "matmuls_only"],
                           "Implementations to run (matmuls_only: xla_chunked's tile "
                           "matmuls alone, its floor).")
_REFERENCE_LIMIT = flags.DEFINE_float("reference_limit_gb", 8.0, "Skip the reference when "
                                      "4 · N² · 4 bytes exceeds this.")
_TIMEOUT = flags.DEFINE_integer("timeout_s", 3600, "Per-case limit; a case past it is "
                                "reported as a timeout.")
_OUT_DIR = flags.DEFINE_string("out_dir", os.path.join(ROOT, "benchmarks", "results"),
                               "Where kernels.json and .md go.")
_CASE = flags.DEFINE_string("case", None, "Internal: 'impl,N' runs one case in this process "
                            "and prints its result as one JSON line.")


def _max_rss_mib() -> float:
  """This process's peak resident memory so far (ru_maxrss is KiB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tile_matmuls_only(text, image, scale, block_size: int):
  """The tiled step's matmuls and nothing else: a forward sweep of logit tiles, then a
  backward sweep that recomputes each tile and multiplies it into dT and dI (8·N·M·d).

  Why: timed beside xla_chunked, it splits the gap to the sgemm ceiling into what the
  tile shapes cost the matmuls themselves and what the softmax work around them costs.
  A custom VJP whose gradients are these products, so value_and_grad times the same two
  sweeps as the real kernel.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  n, d = image.shape

  def tiles(im):
    return im.reshape(n // block_size, block_size, d)  # [nb, b, d]

  @jax.custom_vjp
  def sweep(t, im, s):
    def body(total, block):  # A sum keeps each tile alive without softmax work.
      return total + jnp.sum(t @ block.T), None
    return s * jax.lax.scan(body, jnp.float32(0), tiles(im))[0]

  def forward(t, im, s):
    return sweep(t, im, s), (t, im, s)

  def backward(residuals, g):
    t, im, s = residuals
    def body(d_text, block):
      tile = (g * s) * (t @ block.T)  # [N, b], recomputed.
      return d_text + tile @ block, tile.T @ t
    d_text, d_image = jax.lax.scan(body, jnp.zeros_like(t), tiles(im))
    return d_text, d_image.reshape(n, d), jnp.zeros_like(s)

  sweep.defvjp(forward, backward)
  return sweep(text, image, scale)


def run_case(impl: str, n: int, dim: int, block_size: int, warmup: int,
             repeats: int) -> dict[str, Any]:
  """Times one InfoNCE value-and-grad step in this process; returns the child's row."""
  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp

  from kernels import reference, xla_chunked
  # pylint: enable=import-outside-toplevel
  if impl == "reference":
    loss = reference.infonce_loss
  elif impl == "matmuls_only":
    loss = lambda t, i, s: tile_matmuls_only(t, i, s, block_size)
  else:
    loss = lambda t, i, s: xla_chunked.infonce_loss(t, i, s, block_size=block_size)
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  text = jax.random.normal(k1, (n, dim), jnp.float32) / dim ** 0.5  # [N, d]
  image = jax.random.normal(k2, (n, dim), jnp.float32) / dim ** 0.5  # [N, d]
  scale = jnp.float32(10.0)
  jax.block_until_ready((text, image))
  baseline = _max_rss_mib()
  start = time.perf_counter()
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(text, image, scale).compile()
  compile_s = time.perf_counter() - start
  # XLA's own account of the step's scratch buffers: independent of allocator
  # caching and of the JAX runtime's resident size, so it isolates the kernel.
  temp_mib = step.memory_analysis().temp_size_in_bytes / 2**20
  (value, _), times = utils.time_calls(lambda: step(text, image, scale), repeats=repeats,
                                       warmup=warmup)
  forward = jax.jit(loss).lower(text, image, scale).compile()
  _, forward_times = utils.time_calls(lambda: forward(text, image, scale), repeats=repeats,
                                      warmup=warmup)
  return dict(status="ok", loss=float(value), times_s=times, forward_times_s=forward_times,
              compile_s=compile_s, xla_temp_mib=temp_mib, baseline_rss_mib=baseline,
              peak_rss_mib=_max_rss_mib(), sgemm_flops_per_s=utilisation.measured_sgemm())


def spawn_case(impl: str, n: int, *, repeats: int, timeout_s: int) -> dict[str, Any]:
  """Runs one case in a fresh CPU-only subprocess and parses its JSON line."""
  row: dict[str, Any] = dict(impl=impl, n=n, block_size=_BLOCK.value if impl != "reference"
                             else None)
  if impl == "reference" and 4 * n * n * 4 > _REFERENCE_LIMIT.value * 1e9:
    row["status"] = (f"skipped: needs ~{4 * n * n * 4 / 1e9:.0f} GB "
                     f"(> --reference_limit_gb={_REFERENCE_LIMIT.value:g})")
    return row
  command = [sys.executable, "-m", "benchmarks.kernels", f"--case={impl},{n}",
             f"--dim={_DIM.value}", f"--block_size={_BLOCK.value}",
             f"--warmup={_WARMUP.value}", f"--repeats={repeats}"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  try:
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
  except subprocess.TimeoutExpired:
    row["status"] = f"timeout after {timeout_s} s"
    return row
  lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
  if done.returncode != 0 or not lines:
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
    row["status"] = f"failed (exit {done.returncode}): {tail}"
    return row
  row.update(json.loads(lines[-1]))
  return row


def merge_rounds(rows: list[dict[str, Any]], dim: int) -> dict[str, Any]:
  """One (impl, N) row from its rounds: every timed step pooled into min and median;
  memory and compile time from the first round; the ceiling from the median sgemm rate."""
  failed = [row for row in rows if row["status"] != "ok"]
  if failed:
    return failed[0]
  merged = dict(rows[0])
  merged["times_s"] = [t for row in rows for t in row["times_s"]]
  merged["forward_times_s"] = [t for row in rows for t in row["forward_times_s"]]
  merged["min_s"], merged["median_s"] = min(merged["times_s"]), statistics.median(
      merged["times_s"])
  merged["forward_min_s"] = min(merged["forward_times_s"])
  merged["sgemm_flops_per_s"] = statistics.median(row["sgemm_flops_per_s"] for row in rows)
  n = merged["n"]
  merged["ceiling_s"] = 8 * n * n * dim / merged["sgemm_flops_per_s"]
  merged["rounds"] = len(rows)
  return merged


def _comparison_lines(results: list[dict[str, Any]]) -> list[str]:
  """One line per N: xla_chunked against the reference (speed-up, memory) and against
  its own tile matmuls (where the gap to the sgemm ceiling goes)."""
  ok = {(row["impl"], row["n"]): row for row in results if row["status"] == "ok"}
  percent = lambda row: 100 * row["ceiling_s"] / row["min_s"]
  working = lambda row: row["peak_rss_mib"] - row["baseline_rss_mib"]
  lines = []
  for n in sorted({n for _, n in ok}):
    tiled, slow, floor = (ok.get((impl, n)) for impl in ("xla_chunked", "reference",
                                                          "matmuls_only"))
    if tiled is None:
      continue
    parts = [f"- N = M = {n}: xla_chunked runs at {percent(tiled):.0f}% of the sgemm ceiling "
             f"(its forward at {100 * tiled['ceiling_s'] / 4 / tiled['forward_min_s']:.0f}%)"]
    if floor:
      extra = max(0.0, tiled["min_s"] - floor["min_s"])  # Within noise when about 0.
      parts.append(f"its tile matmuls alone at {percent(floor):.0f}%, so the softmax work "
                   f"around them costs {1e3 * extra:.0f} ms of {1e3 * tiled['min_s']:.0f} "
                   f"(forward {1e3 * tiled['forward_min_s']:.0f} ms against "
                   f"{1e3 * floor['forward_min_s']:.0f} ms of matmuls)")
    if slow:
      parts.append(
          f"{slow['median_s'] / tiled['median_s']:.1f}× faster than the reference by the "
          f"medians ({slow['min_s'] / tiled['min_s']:.1f}× by the mins), XLA temp memory "
          f"{slow['xla_temp_mib'] / tiled['xla_temp_mib']:.0f}× smaller, working RSS (peak − "
          f"baseline) {working(slow) / max(working(tiled), 1):.0f}× smaller, peak RSS "
          f"{slow['peak_rss_mib'] / tiled['peak_rss_mib']:.1f}× smaller")
    lines.append("; ".join(parts) + ".")
  return lines + [""] if lines else []


def to_markdown(report: dict[str, Any]) -> str:
  lines = [
      "# InfoNCE kernels on CPU: reference vs xla_chunked (and its tile matmuls alone)",
      "",
      f"Command: `{report['command']}`  ",
      f"JAX {report['jax_version']}, {report['date']}, {report['cpu_count']} CPUs; "
      f"1-minute load average at the end: {report['load_average_1min']}.  ",
      f"One jitted forward+backward step (gradients w.r.t. text, image, scale), N = M, "
      f"d = {report['dim']}, float32; {report['rounds']} interleaved round(s), each case "
      f"timing {report['repeats']} step(s) after {report['warmup']} warm-up step(s) in its "
      "own process; min and median over all timed steps. Ceiling: 8·N²·d FLOPs at the "
      "float32 1024² sgemm rate measured in the case's process. Memory is that "
      "process's peak RSS (baseline = after creating inputs); XLA temp is the compiled "
      "step's scratch memory as XLA reports it (inputs and outputs excluded).",
      "",
  ]
  lines += _comparison_lines(report["results"])
  lines += [
      "| impl | N = M | block | ms / step min | ms / step median | forward ms min | "
      "% of sgemm ceiling | compile s | XLA temp MiB | baseline MiB | peak MiB | "
      "peak − baseline MiB | loss | status |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
  ]
  for row in report["results"]:
    block = row["block_size"] or "–"
    if row["status"] == "ok":
      numbers = (f"{1e3 * row['min_s']:.1f} | {1e3 * row['median_s']:.1f} | "
                 f"{1e3 * row['forward_min_s']:.1f} | "
                 f"{100 * row['ceiling_s'] / row['min_s']:.0f}% | {row['compile_s']:.1f} | "
                 f"{row['xla_temp_mib']:.1f} | "
                 f"{row['baseline_rss_mib']:.0f} | {row['peak_rss_mib']:.0f} | "
                 f"{row['peak_rss_mib'] - row['baseline_rss_mib']:.0f} | {row['loss']:.5f}")
    else:
      numbers = " | ".join(["–"] * 10)
    status = row["status"].replace("|", "\\|")
    lines.append(f"| {row['impl']} | {row['n']} | {block} | {numbers} | {status} |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  quick = _QUICK.value
  repeats = _REPEATS.value
  rounds = _ROUNDS.value or (1 if quick else 3)
  if _CASE.value:  # Child: one case, one JSON line on stdout.
    impl, n = _CASE.value.split(",")
    print(json.dumps(run_case(impl, int(n), _DIM.value, _BLOCK.value, _WARMUP.value, repeats)))
    return
  unknown = set(_IMPLS.value) - {"reference", "xla_chunked", "matmuls_only"}
  if unknown:
    raise app.UsageError(f"--impls: unknown {sorted(unknown)}; allowed: reference, "
                         "xla_chunked, matmuls_only")
  sizes = [int(s) for s in (_SIZES.value or (["256", "1024"] if quick else
                                              ["1024", "4096", "16384", "65536"]))]
  import jax  # pylint: disable=import-outside-toplevel
  results = []
  for n in sizes:
    by_impl = {impl: [] for impl in _IMPLS.value}
    for round_ in range(rounds):  # The implementations alternate within every round.
      for impl in _IMPLS.value:
        if by_impl[impl] and by_impl[impl][-1]["status"] != "ok":
          continue  # Skipped or failed: not retried.
        row = spawn_case(impl, n, repeats=repeats, timeout_s=_TIMEOUT.value)
        by_impl[impl].append(row)
        summary = (f"{1e3 * min(row['times_s']):.1f} ms, peak {row['peak_rss_mib']:.0f} MiB"
                   if row["status"] == "ok" else row["status"])
        print(f"round {round_ + 1} {impl:12s} N={n:6d} {summary}", flush=True)
    results += [merge_rounds(rows, _DIM.value) for rows in by_impl.values()]
  report = dict(
      command=" ".join(["python -m benchmarks.kernels"] + [shlex.quote(a) for a in sys.argv[1:]]),
      jax_version=jax.__version__,
      date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      dim=_DIM.value, repeats=repeats, rounds=rounds, warmup=_WARMUP.value, results=results,
      cpu_count=os.cpu_count(), load_average_1min=round(os.getloadavg()[0], 2))
  write_report(_OUT_DIR.value, "kernels", report, to_markdown(report))


if __name__ == "__main__":
  app.run(main)
