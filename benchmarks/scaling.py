"""Training throughput of the quickstart step on 1, 2, 4, 8 simulated CPU devices.

  python -m benchmarks.scaling                      # devices 1,2,4,8; quickstart model
  python -m benchmarks.scaling --quick              # devices 1,2; 2 timed steps (smoke test)

Simulated devices share the same CPU cores, so this measures the overhead of
the sharded step (collectives, partitioning), not a speed-up. Each device
count runs in its own process (`XLA_FLAGS=--xla_force_host_platform_device_count`
is read once, at JAX start-up). A case builds the quickstart dual encoder and
objective, places the state with `step.build_train_step` (data mesh over all
devices, or data × fsdp with --fsdp), feeds a synthetic batch of the real
shapes (content does not change the cost) and times `--repeats` steps.

Reported per device count: examples/s, per-device memory of the step
(XLA's argument + output + scratch sizes of the compiled step, divided over
the devices), and model FLOPs utilisation: the 1-device step's FLOPs (XLA cost
analysis) × steps/s ÷ the float32 matmul (sgemm) rate measured in the same
process. Writes `<out_dir>/scaling.{json,md}`.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Any

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks.report import write_report  # noqa: E402  pylint: disable=wrong-import-position

_DEVICES = flags.DEFINE_list("devices", None, "Device counts (default 1,2,4,8; 1,2 if --quick).")
_REPEATS = flags.DEFINE_integer("repeats", None, "Timed steps (default 5; 2 if --quick).")
_FSDP = flags.DEFINE_integer("fsdp", 1, "Size of the fsdp mesh axis (the rest is data).")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke test: 1 and 2 devices, tiny config.")
_OUT_DIR = flags.DEFINE_string("out_dir", os.path.join(ROOT, "benchmarks", "results"),
                               "Where scaling.json and .md go.")
_CASE = flags.DEFINE_integer("case", None, "Internal: run one device count in this process.")
_SGEMM_SIZE = 1024


def _sgemm_flops_per_s(jax, jnp) -> float:
  """float32 matmul rate on one device: 2·n³ FLOPs per [n, n] × [n, n] product."""
  a = jnp.ones((_SGEMM_SIZE, _SGEMM_SIZE), jnp.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(matmul(a, a))
  start, count = time.perf_counter(), 0
  while time.perf_counter() - start < 1.0:
    jax.block_until_ready(matmul(a, a))
    count += 1
  return 2 * _SGEMM_SIZE ** 3 * count / (time.perf_counter() - start)


def run_case(num_devices: int, repeats: int, fsdp: int, quick: bool) -> dict[str, Any]:
  """One device count, in this process (XLA_FLAGS already set by the parent)."""
  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp
  import numpy as np

  from experiments.configs import quickstart, tiny
  from mmalign.data import sources
  from mmalign.losses.objective import build_objective
  from mmalign.models.build import build_dual_encoder
  from mmalign import mesh as mesh_lib
  from mmalign.train import step as step_lib
  from mmalign.train.optimizer import adamw, learning_rate_schedule
  # pylint: enable=import-outside-toplevel
  assert jax.device_count() == num_devices, (jax.device_count(), num_devices)
  config = (tiny if quick else quickstart).get_config()
  tc = config.train
  tc.mesh = {"data": -1, "fsdp": fsdp}
  shape = tuple(sources.get_builder(config.data.name, config.data.config)
                .info.features["image"].shape)
  model = build_dual_encoder(config.model, config.text.vocab_size, config.text.max_length)
  rng = np.random.default_rng(0)
  batch = {"tokens": rng.integers(1, config.text.vocab_size,
                                  (tc.batch_size, config.text.max_length)).astype(np.int32),
           "images": rng.normal(size=(tc.batch_size, *shape)).astype(np.float32),
           "groups": np.arange(tc.batch_size, dtype=np.int64)}
  variables = model.init(jax.random.key(0), batch["tokens"][:1], batch["images"][:1])
  params = variables.pop("params")
  optimizer = adamw(learning_rate_schedule(peak=tc.learning_rate, warmup_steps=tc.warmup_steps,
                                           total_steps=tc.steps),
                    weight_decay=tc.weight_decay, grad_clip_norm=tc.grad_clip_norm)
  state = {"params": params, "opt_state": optimizer.init(params),
           "step": jnp.zeros((), jnp.int32)}
  if variables:
    state["model_state"] = variables
  mesh = mesh_lib.make_mesh(tc.mesh)
  objective = build_objective(config.loss, model_fuses=False, mesh=mesh_lib.loss_mesh(mesh),
                              data_axis=mesh_lib.LOSS_AXIS)
  step, state = step_lib.build_train_step(tc, model, objective, optimizer, mesh, state)
  global_batch = mesh_lib.global_batch(batch, mesh)
  started = time.perf_counter()
  compiled = step.lower(state, global_batch).compile()
  compile_s = time.perf_counter() - started
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  memory = compiled.memory_analysis()
  step_bytes = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                + memory.temp_size_in_bytes)
  state, _ = step(state, global_batch)  # Warm-up.
  jax.block_until_ready(state)
  times = []
  for _ in range(repeats):
    started = time.perf_counter()
    state, metrics = step(state, global_batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - started)
  step_s = float(np.median(times))
  return {"devices": num_devices, "mesh": dict(mesh.shape), "batch_size": tc.batch_size,
          "step_s": step_s, "examples_per_s": tc.batch_size / step_s, "compile_s": compile_s,
          "flops_per_step": float(cost.get("flops", 0.0)),
          "step_memory_per_device_mib": step_bytes / 2**20,
          "sgemm_flops_per_s": _sgemm_flops_per_s(jax, jnp),
          "loss": float(metrics["loss"])}


def spawn_case(num_devices: int, repeats: int, fsdp: int, quick: bool) -> dict[str, Any]:
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={num_devices}"}
  command = [sys.executable, "-m", "benchmarks.scaling", f"--case={num_devices}",
             f"--repeats={repeats}", f"--fsdp={fsdp}", f"--quick={quick}"]
  done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                        check=False)
  lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
  if done.returncode or not lines:
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
    return {"devices": num_devices, "status": f"failed (exit {done.returncode}): {tail}"}
  return {**json.loads(lines[-1]), "status": "ok"}


def _with_utilisation(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """MFU from the 1-device FLOPs (the model's work; partitioned programs add collectives)."""
  ok = [r for r in rows if r["status"] == "ok"]
  single = next((r for r in ok if r["devices"] == 1), None)
  for row in ok:
    flops = single["flops_per_step"] if single else row["flops_per_step"]
    row["model_flops_per_s"] = flops / row["step_s"]
    row["mfu"] = row["model_flops_per_s"] / row["sgemm_flops_per_s"]
  return rows


def to_markdown(report: dict[str, Any]) -> str:
  lines = [
      "# Training throughput vs simulated devices (CPU)", "",
      f"Command: `{report['command']}`  ",
      f"JAX {report['jax_version']}, {report['date']}, {report['cpu_count']} CPUs; "
      f"{report['config']} train step (batch {report['batch_size']}), median of "
      f"{report['repeats']} steps after one warm-up. Simulated devices share the CPU cores, "
      "so this shows the overhead of the sharded step, not a speed-up. MFU = the 1-device "
      "step's XLA FLOPs × steps/s ÷ the float32 1024² matmul rate measured in the same "
      "process.", "",
      "| devices | mesh | ms / step | examples/s | step memory / device MiB | model GFLOP/s | "
      "sgemm GFLOP/s | MFU | status |",
      "|---:|---|---:|---:|---:|---:|---:|---:|---|"]
  for r in report["results"]:
    if r["status"] != "ok":
      lines.append(f"| {r['devices']} | – | – | – | – | – | – | – | {r['status']} |")
      continue
    mesh = " × ".join(f"{k} {v}" for k, v in r["mesh"].items())
    lines.append(f"| {r['devices']} | {mesh} | {1e3 * r['step_s']:.0f} | "
                 f"{r['examples_per_s']:.0f} | {r['step_memory_per_device_mib']:.0f} | "
                 f"{r['model_flops_per_s'] / 1e9:.1f} | {r['sgemm_flops_per_s'] / 1e9:.1f} | "
                 f"{100 * r['mfu']:.1f}% | ok |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  quick = _QUICK.value
  repeats = _REPEATS.value or (2 if quick else 5)
  if _CASE.value is not None:
    print(json.dumps(run_case(_CASE.value, repeats, _FSDP.value, quick)))
    return
  devices = [int(d) for d in (_DEVICES.value or (["1", "2"] if quick else ["1", "2", "4", "8"]))]
  rows = []
  for n in devices:
    row = spawn_case(n, repeats, _FSDP.value, quick)
    rows.append(row)
    shown = (f"{row['examples_per_s']:.0f} examples/s" if row["status"] == "ok"
             else row["status"])
    print(f"{n} device(s): {shown}", flush=True)
  import jax  # pylint: disable=import-outside-toplevel
  first_ok = next((r for r in rows if r["status"] == "ok"), {})
  report = {
      "command": " ".join(["python -m benchmarks.scaling"]
                          + [shlex.quote(a) for a in sys.argv[1:]]),
      "jax_version": jax.__version__,
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "cpu_count": os.cpu_count(), "config": "tiny" if quick else "quickstart",
      "batch_size": first_ok.get("batch_size"), "repeats": repeats,
      "results": _with_utilisation(rows)}
  write_report(_OUT_DIR.value, "scaling_quick" if quick else "scaling", report,
               to_markdown(report))


if __name__ == "__main__":
  app.run(main)
