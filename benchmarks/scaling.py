"""Scaling on this machine: training over simulated devices, retrieval over processes.

  python -m benchmarks.scaling                      # both parts at full size
  python -m benchmarks.scaling --part=train         # devices 1,2,4,8; quickstart model
  python -m benchmarks.scaling --part=retrieval     # 1M x 128 gallery; 1, 2, 4 processes
  python -m benchmarks.scaling --quick              # smoke test of both (tiny sizes)

Training: each device count runs the real trainer (`trainer.train`) in its own process
(`XLA_FLAGS=--xla_force_host_platform_device_count` is read once, at JAX start-up) on
the quickstart config for 2 × `--repeats` steps, logging every `--repeats` steps. Every
figure comes from the run's own logs: the second window of `metrics.jsonl` (the first
holds the compilation) gives examples/s, step and input-wait time and MFU (the compiled
step's FLOPs ÷ the host's measured float32 matmul rate, as every CPU run logs it), and
`step_memory.json` the per-device memory of the step. Simulated devices share the CPU
cores, so this measures the overhead of the sharded step, not a speed-up.

Retrieval: a seeded gallery of `--gallery` unit vectors (the skewed mixture of
benchmarks/retrieval.py) is split over P processes of one `jax.distributed` job (rows
p, p + P, ...); each builds its ScaNN shard (`sharded.build_sharded`), and every search
fans the queries out to all processes and merges their top-k with the multi-process
all-gather (`ShardedIndex.search`). The searches of different process counts are
interleaved over `--rounds` rounds (each a fresh job that loads the saved shards), and
queries/s are reported as min and median; recall@10 is against exact search
(`ExactIndex`) over the whole gallery. All processes share this machine's cores.

Writes `<out_dir>/scaling.{json,md}` (`scaling_quick` with --quick); a part run alone
keeps the other part's section of an existing report, each section naming its command.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# pylint: disable=wrong-import-position
from benchmarks.report import write_report  # noqa: E402
# pylint: enable=wrong-import-position

_PART = flags.DEFINE_enum("part", "all", ["all", "train", "retrieval"], "What to measure.")
_QUICK = flags.DEFINE_bool("quick", False, "Smoke test: tiny config, small gallery.")
_DEVICES = flags.DEFINE_list("devices", None, "Device counts (default 1,2,4,8; 1,2 if --quick).")
_REPEATS = flags.DEFINE_integer("repeats", None, "Steps per logged window (default 5; 2 quick).")
_FSDP = flags.DEFINE_integer("fsdp", 1, "Size of the fsdp mesh axis (the rest is data).")
_PROCESSES = flags.DEFINE_list("processes", None, "Process counts (default 1,2,4; 1,2 quick).")
_GALLERY = flags.DEFINE_integer("gallery", None, "Gallery size (default 1M; 20k quick).")
_DIM = flags.DEFINE_integer("dim", 128, "Embedding width of the retrieval gallery.")
_QUERIES = flags.DEFINE_integer("queries", None, "Queries per search (default 10k; 500 quick).")
_ROUNDS = flags.DEFINE_integer("rounds", None, "Interleaved search rounds (default 3).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where the training dataset is built "
                                "(default: a temporary directory).")
_OUT_DIR = flags.DEFINE_string("out_dir", os.path.join(ROOT, "benchmarks", "results"),
                               "Where scaling.json and .md go.")
# Internal: one training case, or one process of a retrieval job, in this process.
_TRAIN_CASE = flags.DEFINE_integer("train_case", None, "Internal: devices of one case.")
_RETRIEVAL_JOB = flags.DEFINE_string("retrieval_job", None, "Internal: JSON of one process.")
_K = 10
_MIXTURE = dict(clusters=2000, spread=0.6, seed=0)


# ------------------------------------------------------------------------------ training


def run_train_case(num_devices: int, repeats: int, fsdp: int, quick: bool,
                   data_dir: str) -> dict[str, Any]:
  """Trains 2·repeats steps on this process's devices; returns the last logged window."""
  # pylint: disable=import-outside-toplevel
  import jax

  from experiments.configs import quickstart, tiny
  from mmalign import experiment as experiment_lib
  from mmalign.train import trainer
  # pylint: enable=import-outside-toplevel
  assert jax.device_count() == num_devices, (jax.device_count(), num_devices)
  config = (tiny if quick else quickstart).get_config()
  config.data.data_dir = data_dir
  config.train.update(steps=2 * repeats, warmup_steps=1, log_every=repeats,
                      checkpoint_every=2 * repeats,
                      mesh={"data": -1, "fsdp": fsdp})
  with tempfile.TemporaryDirectory() as workdir:
    trainer.train(experiment_lib.for_training(config, workdir))
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
      windows = [json.loads(line) for line in f if '"examples_per_s"' in line]
    with open(os.path.join(workdir, trainer.STEP_MEMORY), encoding="utf-8") as f:
      memory = json.load(f)
  last = windows[-1]
  step_bytes = sum(memory[f"{name}_bytes"] for name in ("argument", "output", "temp"))
  return {"devices": num_devices, "mesh": {"data": num_devices // fsdp, "fsdp": fsdp},
          "batch_size": config.train.batch_size, "logged_step": last["step"],
          **{key: last[key] for key in ("examples_per_s", "step_time_s", "input_wait_s",
                                        "mfu", "loss")},
          "flops_per_step": memory["flops"],
          "step_memory_per_device_mib": step_bytes / 2**20}


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "benchmarks.scaling", *args], cwd=ROOT,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(worker: subprocess.Popen) -> dict[str, Any]:
  """The worker's last JSON line with status "ok", or a status naming why it failed."""
  stdout, stderr = worker.communicate()
  lines = [line for line in stdout.splitlines() if line.startswith("{")]
  if worker.returncode or not lines:
    tail = (stderr.strip().splitlines() or ["no output"])[-1][:300]
    return {"status": f"failed (exit {worker.returncode}): {tail}"}
  return {**json.loads(lines[-1]), "status": "ok"}


def measure_training(devices: list[int], repeats: int, quick: bool) -> dict[str, Any]:
  # pylint: disable=import-outside-toplevel
  from experiments.configs import quickstart, tiny
  from mmalign.data import sources
  # pylint: enable=import-outside-toplevel
  config = (tiny if quick else quickstart).get_config()
  with tempfile.TemporaryDirectory() as scratch:
    data_dir = _DATA_DIR.value or scratch
    sources.ensure_built(sources.get_builder(config.data.name, config.data.config, data_dir))
    rows = []
    for n in devices:
      worker = _spawn([f"--train_case={n}", f"--repeats={repeats}", f"--fsdp={_FSDP.value}",
                       f"--quick={quick}", f"--data_dir={data_dir}"],
                      {"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"})
      row = {"devices": n, **_result(worker)}
      rows.append(row)
      print(f"train, {n} device(s): " + (f"{row['examples_per_s']:.0f} examples/s, MFU "
                                         f"{100 * row['mfu']:.1f}%" if row["status"] == "ok"
                                         else row["status"]), flush=True)
  return {"config": "tiny" if quick else "quickstart", "repeats": repeats, "results": rows}


# ----------------------------------------------------------------------------- retrieval


def run_retrieval_process(job: dict[str, Any]) -> dict[str, Any]:
  """One process of a P-process job: builds its shard, or loads the shards and searches."""
  # pylint: disable=import-outside-toplevel
  import numpy as np
  from mmalign.retrieval import sharded
  from mmalign.train import distributed
  # pylint: enable=import-outside-toplevel
  distributed.initialize(job["coordinator"], job["processes"], job["process_id"])
  pid, count = job["process_id"], job["processes"]
  if job["action"] == "build":
    gallery = np.load(job["gallery"], mmap_mode="r")
    rows = np.arange(pid, len(gallery), count)
    started = time.perf_counter()
    sharded.build_sharded(job["index"], "scann", np.ascontiguousarray(gallery[rows]), rows)
    return {"build_s": time.perf_counter() - started}
  queries = np.load(job["queries"])
  started = time.perf_counter()
  index = sharded.ShardedIndex.load(job["index"])
  load_s = time.perf_counter() - started
  index.search(queries, _K)  # Warm-up: first-call costs, the collective's compilation.
  started = time.perf_counter()
  _, ids = index.search(queries, _K)
  search_s = time.perf_counter() - started
  if pid == 0:
    np.save(job["ids_out"], ids)
  return {"load_s": load_s, "search_s": search_s}


def _free_address() -> str:
  """localhost with a free port, for the job's coordinator."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return f"localhost:{s.getsockname()[1]}"


def _run_job(action: str, processes: int, paths: dict[str, str]) -> list[dict[str, Any]]:
  """Runs one P-process job to the end; returns each process's result."""
  job = {"action": action, "processes": processes, "coordinator": _free_address(), **paths}
  workers = [_spawn([f"--retrieval_job={json.dumps({**job, 'process_id': p})}"],
                    {"XLA_FLAGS": ""}) for p in range(processes)]
  return [_result(worker) for worker in workers]


def measure_retrieval(process_counts: list[int], gallery_size: int, dim: int,
                      num_queries: int, rounds: int) -> dict[str, Any]:
  # pylint: disable=import-outside-toplevel
  import numpy as np
  from benchmarks.galleries import mixture
  from mmalign.retrieval import searchers, tuning
  # pylint: enable=import-outside-toplevel
  gallery, queries = mixture(gallery_size, num_queries, dim, **_MIXTURE)
  started = time.perf_counter()
  _, truth = searchers.build_index("exact", gallery).search(queries, _K)
  exact_s = time.perf_counter() - started
  print(f"retrieval: exact top-{_K} of {num_queries} queries over {gallery_size} x {dim} "
        f"in {exact_s:.1f} s", flush=True)
  rows = {p: {"processes": p, "status": "ok", "qps": [], "load_s": []}
          for p in process_counts}
  with tempfile.TemporaryDirectory() as tmp:
    paths = {"gallery": os.path.join(tmp, "gallery.npy"),
             "queries": os.path.join(tmp, "queries.npy")}
    np.save(paths["gallery"], gallery)
    np.save(paths["queries"], queries)
    del gallery
    for p in process_counts:
      index = os.path.join(tmp, f"index-{p}")
      built = _run_job("build", p, {**paths, "index": index})
      failed = [r["status"] for r in built if r["status"] != "ok"]
      if failed:
        rows[p]["status"] = failed[0]
        continue
      rows[p]["build_s"] = max(r["build_s"] for r in built)
      print(f"retrieval, {p} process(es): built in {rows[p]['build_s']:.1f} s", flush=True)
    for round_ in range(rounds):  # Interleaved: every count once per round.
      for p in process_counts:
        if rows[p]["status"] != "ok":
          continue
        ids_out = os.path.join(tmp, f"ids-{p}.npy")
        searched = _run_job("search", p, {**paths, "index": os.path.join(tmp, f"index-{p}"),
                                          "ids_out": ids_out})
        failed = [r["status"] for r in searched if r["status"] != "ok"]
        if failed:
          rows[p]["status"] = failed[0]
          continue
        seconds = max(r["search_s"] for r in searched)  # The job ends with its slowest.
        rows[p]["qps"].append(num_queries / seconds)
        rows[p]["load_s"].append(max(r["load_s"] for r in searched))
        if round_ == 0:
          rows[p]["recall_at_10"] = tuning.recall_at_k(np.load(ids_out), truth)
        print(f"retrieval, round {round_ + 1}, {p} process(es): "
              f"{rows[p]['qps'][-1]:.0f} queries/s", flush=True)
  for row in rows.values():
    if row["qps"]:
      row["qps_min"], row["qps_median"] = min(row["qps"]), statistics.median(row["qps"])
  return {"gallery": gallery_size, "dim": dim, "queries": num_queries, "k": _K,
          "rounds": rounds, "exact_s": exact_s, "searcher": "scann (default config)",
          "results": list(rows.values())}


# -------------------------------------------------------------------------------- report


def to_markdown(report: dict[str, Any]) -> str:
  lines = ["# Scaling on this machine (CPU)", ""]

  def measured(section: dict[str, Any]) -> list[str]:
    return [f"Command: `{section['command']}`  ",
            f"JAX {section['jax_version']}, {section['date']}, {section['cpu_count']} CPUs.  "]

  train = report.get("train")
  if train:
    lines += [
        "## Training over simulated devices", "", *measured(train),
        f"{train['config']} config, the real trainer, {train['repeats']} steps per logged "
        "window; every figure is read from the run's `metrics.jsonl` (the second window) "
        "and `step_memory.json`. MFU as the log states it: the compiled step's FLOPs × "
        "steps/s ÷ the host's measured float32 1024² matmul rate. Simulated devices share "
        "the CPU cores, so this shows the overhead of the sharded step, not a speed-up.", "",
        "| devices | mesh | ms / step | input wait ms / step | examples/s | step memory / "
        "device MiB | GFLOP / step | MFU | status |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in train["results"]:
      if r["status"] != "ok":
        lines.append(f"| {r['devices']} | – | – | – | – | – | – | – | {r['status']} |")
        continue
      mesh = " × ".join(f"{k} {v}" for k, v in r["mesh"].items())
      lines.append(f"| {r['devices']} | {mesh} | {1e3 * r['step_time_s']:.0f} | "
                   f"{1e3 * r['input_wait_s']:.1f} | {r['examples_per_s']:.0f} | "
                   f"{r['step_memory_per_device_mib']:.0f} | {r['flops_per_step'] / 1e9:.3g} | "
                   f"{100 * r['mfu']:.1f}% | ok |")
    lines.append("")
  retrieval = report.get("retrieval")
  if retrieval:
    lines += [
        "## Sharded retrieval over processes", "", *measured(retrieval),
        f"Gallery {retrieval['gallery']:,} × {retrieval['dim']} (seeded skewed mixture), "
        f"{retrieval['queries']:,} queries, top-{retrieval['k']}, {retrieval['searcher']} "
        "per shard; one `jax.distributed` job per process count, shards merged by the "
        f"multi-process all-gather. Queries/s over {retrieval['rounds']} interleaved rounds "
        "(min / median), each round a fresh job that loads the saved shards; recall@10 "
        f"against exact search of the whole gallery ({retrieval['exact_s']:.1f} s). All "
        "processes share this machine's cores.", "",
        "| processes | build s (slowest shard) | load s (median) | queries/s min | "
        "queries/s median | recall@10 | status |", "|---:|---:|---:|---:|---:|---:|---|"]
    for r in retrieval["results"]:
      if r["status"] != "ok":
        lines.append(f"| {r['processes']} | – | – | – | – | – | {r['status']} |")
        continue
      lines.append(f"| {r['processes']} | {r['build_s']:.1f} | "
                   f"{statistics.median(r['load_s']):.1f} | {r['qps_min']:.0f} | "
                   f"{r['qps_median']:.0f} | {r['recall_at_10']:.4f} | ok |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  quick = _QUICK.value
  repeats = _REPEATS.value or (2 if quick else 5)
  if _TRAIN_CASE.value is not None:
    print(json.dumps(run_train_case(_TRAIN_CASE.value, repeats, _FSDP.value, quick,
                                    _DATA_DIR.value)))
    return
  if _RETRIEVAL_JOB.value is not None:
    print(json.dumps(run_retrieval_process(json.loads(_RETRIEVAL_JOB.value))))
    return
  import jax  # pylint: disable=import-outside-toplevel
  name = "scaling_quick" if quick else "scaling"
  report = {}
  previous = os.path.join(_OUT_DIR.value, name + ".json")
  if _PART.value != "all" and os.path.exists(previous):
    with open(previous, encoding="utf-8") as f:
      report = {k: v for k, v in json.load(f).items() if k in ("train", "retrieval")}
  if _PART.value in ("all", "train"):
    devices = [int(d) for d in (_DEVICES.value or (["1", "2"] if quick else ["1", "2", "4", "8"]))]
    report["train"] = measure_training(devices, repeats, quick)
  if _PART.value in ("all", "retrieval"):
    counts = [int(p) for p in (_PROCESSES.value or (["1", "2"] if quick else ["1", "2", "4"]))]
    report["retrieval"] = measure_retrieval(
        counts, _GALLERY.value or (20_000 if quick else 1_000_000), _DIM.value,
        _QUERIES.value or (500 if quick else 10_000), _ROUNDS.value or (1 if quick else 3))
  for part in ("train", "retrieval"):
    if _PART.value in ("all", part):
      report[part].update({
          "command": " ".join(["python -m benchmarks.scaling"]
                              + [shlex.quote(a) for a in sys.argv[1:]]),
          "jax_version": jax.__version__, "cpu_count": os.cpu_count(),
          "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")})
  write_report(_OUT_DIR.value, name, report, to_markdown(report))


if __name__ == "__main__":
  app.run(main)
