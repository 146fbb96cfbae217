"""Wall time and recalls of README command 1's run at two commits, interleaved.

  python -m benchmarks.quickstart_wall_time --baseline=85fbec8 --repeats=3

Checks out `--baseline` and `--candidate` as detached git worktrees, builds the
quickstart dataset once into a shared data_dir, then runs
`launch.py --config=experiments/configs/quickstart.py` from each worktree into a fresh
workdir, alternating the order in each round (A B, B A, ...) so that a busy machine slows
both alike. Installing the venv is left out: it does not depend on the commit. Each run's
exact-search recalls and ScaNN recall are parsed from its output; exact-search recalls must
match between commits when training is deterministic (CPU).

Writes `<out_dir>/quickstart_wall_time.json` and `.md`.
"""

from __future__ import annotations

import datetime
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # For `python benchmarks/quickstart_wall_time.py` as well as `-m`.
  sys.path.insert(0, ROOT)

from benchmarks.report import write_report  # pylint: disable=wrong-import-position

_BASELINE = flags.DEFINE_string("baseline", "85fbec8", "Commit to compare against.")
_CANDIDATE = flags.DEFINE_string("candidate", "HEAD", "Commit under test.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Interleaved rounds (≥3).")
_OUT_DIR = flags.DEFINE_string("out_dir", os.path.join(ROOT, "benchmarks", "results"),
                               "Where the report goes.")
_OVERRIDES = flags.DEFINE_multi_string("override", [], "Extra --config.* flags for both runs "
                                       "(e.g. --override=--config.train.steps=50 to smoke-test).")

_BUILD_DATASET = """import sys
from experiments.configs import quickstart
from mmalign.data import sources
data = quickstart.get_config().data
sources.ensure_built(sources.get_builder(data.name, data.config, sys.argv[1]))
"""
_RECALL_ROW = re.compile(r"^\| (text to image|image to text) \| ([\d.]+)% .*?\| ([\d.]+)% .*?"
                         r"\| ([\d.]+)% .*?\|")
_SCANN = re.compile(r"ScaNN: recall@10 vs exact search = ([\d.]+)")


def _git(*args: str) -> str:
  return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                        text=True).stdout.strip()


def _parse(stdout: str) -> dict:
  recalls = {m.group(1): [float(m.group(i)) for i in (2, 3, 4)]
             for m in map(_RECALL_ROW.match, stdout.splitlines()) if m}
  scann = _SCANN.search(stdout)
  return {"recall_at_1_5_10": recalls, "scann_recall_at_10": float(scann.group(1))
          if scann else None}


def _run(tree: str, data_dir: str, workdir: str) -> dict:
  command = [sys.executable, "launch.py", "--config=experiments/configs/quickstart.py",
             f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *_OVERRIDES.value]
  env = {**os.environ, "PYTHONPATH": tree}  # This tree's mmalign, not the installed one.
  started = time.monotonic()
  result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True,
                          check=False)
  seconds = time.monotonic() - started
  if result.returncode:
    raise SystemExit(f"{shlex.join(command)} in {tree} failed:\n{result.stderr[-3000:]}")
  return {"seconds": seconds, **_parse(result.stdout)}


def main(argv):
  del argv
  if _REPEATS.value < 1:
    raise app.UsageError("--repeats must be >= 1")
  commits = {"baseline": _git("rev-parse", _BASELINE.value),
             "candidate": _git("rev-parse", _CANDIDATE.value)}
  runs = {name: [] for name in commits}
  with tempfile.TemporaryDirectory(prefix="quickstart_wall_time_") as scratch:
    trees = {}
    for name, commit in commits.items():
      trees[name] = os.path.join(scratch, name)
      _git("worktree", "add", "--detach", trees[name], commit)
    try:
      data_dir = os.path.join(scratch, "tfds")
      subprocess.run([sys.executable, "-c", _BUILD_DATASET, data_dir], cwd=trees["candidate"],
                     check=True)
      for round_index in range(_REPEATS.value):
        order = list(commits) if round_index % 2 == 0 else list(commits)[::-1]
        for name in order:
          workdir = os.path.join(scratch, f"{name}_{round_index}")
          runs[name].append(_run(trees[name], data_dir, workdir))
          print(f"round {round_index + 1}/{_REPEATS.value} {name} {commits[name][:7]}: "
                f"{runs[name][-1]}", flush=True)
    finally:
      for tree in trees.values():
        _git("worktree", "remove", "--force", tree)
  report = {
      "command": "python -m benchmarks.quickstart_wall_time " + shlex.join(sys.argv[1:]),
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "cpus": os.cpu_count(), "load_average_1min_at_end": os.getloadavg()[0],
      "commits": commits, "overrides": _OVERRIDES.value, "runs": runs,
  }
  rows = []
  for name, commit in commits.items():
    seconds = [run["seconds"] for run in runs[name]]
    report[name] = {"min_s": min(seconds), "median_s": statistics.median(seconds)}
    recalls = {tuple(map(tuple, run["recall_at_1_5_10"].values())) for run in runs[name]}
    scann = ", ".join(f"{run['scann_recall_at_10']}" for run in runs[name])
    first = runs[name][0]["recall_at_1_5_10"]
    rows.append(f"| {name} `{commit[:7]}` | {min(seconds):.0f} | {statistics.median(seconds):.0f}"
                f" | {' / '.join(map(str, first.get('text to image', [])))} | "
                f"{' / '.join(map(str, first.get('image to text', [])))} | "
                f"{'yes' if len(recalls) == 1 else 'no'} | {scann} |")
  same = len({tuple(map(tuple, run["recall_at_1_5_10"].values()))
              for name in commits for run in runs[name]}) == 1
  report["exact_recalls_identical_across_commits"] = same
  markdown = (
      "# README command 1: wall time and recalls, two commits interleaved\n\n"
      f"Command: `{report['command']}`  \n{report['date']}, {report['cpus']} CPUs, 1-minute "
      f"load average at the end {report['load_average_1min_at_end']:.2f}. Dataset built once "
      f"beforehand; venv install not timed. {_REPEATS.value} rounds, order alternating.\n\n"
      "| commit | min s | median s | t→i R@1/5/10 % | i→t R@1/5/10 % | recalls equal in every "
      "round | ScaNN recall@10 vs exact, per round |\n|---|---:|---:|---|---|---|---|\n"
      + "\n".join(rows) + f"\n\nExact-search recalls identical across the two commits: "
      f"{'yes' if same else 'no'}.\n")
  write_report(_OUT_DIR.value, "quickstart_wall_time", report, markdown)


if __name__ == "__main__":
  app.run(main)
