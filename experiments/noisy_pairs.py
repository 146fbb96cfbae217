"""How retrieval degrades when a fraction of the training pairs is mismatched.

  python -m experiments.noisy_pairs --config=experiments/configs/quickstart.py \
      --fractions=0,0.2,0.4,0.6 --steps=500

For each fraction f, the config's model trains `--steps` steps with
`data.noisy_pair_fraction=f` (that share of every batch pairs a caption with another row's
image) and is evaluated on the clean held-out split. Writes results.json, results.md and
recall.png to --out_dir; each run's workdir under --workdir_root is kept, so a rerun
resumes or reuses finished runs.
"""

from __future__ import annotations

import datetime
import os

import jax
from matplotlib.figure import Figure

from experiments import cli
from mmalign import experiment as experiment_lib
from mmalign import run as run_lib
from mmalign.plots import save_figure
from mmalign.utils import say

DIRECTIONS = ("text_to_image", "image_to_text")


def run(config, *, fractions: list[float], steps: int, workdir_root: str, out_dir: str,
        command: str = "") -> dict:
  """Trains and evaluates one model per noise fraction; returns the report."""
  rows = []
  for fraction in fractions:
    run_config = config.copy_and_resolve_references()
    run_config.data.noisy_pair_fraction = fraction
    run_config.train.steps = steps
    workdir = os.path.join(workdir_root, f"noise{fraction:g}")
    say(f"noisy pairs {fraction:.0%}: training {steps} steps in {workdir}")
    results = run_lib.train_and_evaluate(
        experiment_lib.for_training(run_config, workdir)).results["retrieval"]
    rows.append({"noisy_pair_fraction": fraction, "step": results["step"],
                 **{d: {k: v for k, v in results[d].items() if not k.startswith("chance")}
                    for d in DIRECTIONS}})
  report = {"command": command, "dataset": f"{config.data.name}/{config.data.config}",
            "split": config.eval.split, "steps": steps, "jax_version": jax.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "ks": list(config.eval.ks), "rows": rows}
  cli.write_results(out_dir, report, format_markdown(report), plot, "recall.png")
  say(format_markdown(report))
  return report


def format_markdown(report: dict) -> str:
  ks = report["ks"]
  head = " | ".join(f"{d[0]}→{d.split('_')[-1][0]} R@{k}" for d in DIRECTIONS for k in ks)
  lines = [f"# Retrieval vs noisy training pairs: {report['dataset']} {report['split']}", "",
           f"Command: `{report['command']}`  ",
           f"JAX {report['jax_version']}, {report['date']}; {report['steps']} training steps "
           "per row, evaluated on the clean held-out split.", "",
           f"| noisy pairs | {head} | t→i median rank |",
           "|---:|" + "---:|" * (len(ks) * len(DIRECTIONS) + 1)]
  for row in report["rows"]:
    cells = " | ".join(f"{100 * row[d][f'recall@{k}']:.1f}%" for d in DIRECTIONS for k in ks)
    lines.append(f"| {100 * row['noisy_pair_fraction']:.0f}% | {cells} | "
                 f"{row['text_to_image']['median_rank']:.0f} |")
  return "\n".join(lines) + "\n"


def plot(report: dict, path: str) -> None:
  """Recall@k against the noisy fraction, one line per direction and k."""
  figure = Figure(figsize=(5.5, 3.8), layout="constrained")
  axes = figure.add_subplot()
  fractions = [100 * row["noisy_pair_fraction"] for row in report["rows"]]
  for direction, style in zip(DIRECTIONS, ("-", "--"), strict=True):
    for k in report["ks"]:
      axes.plot(fractions, [row[direction][f"recall@{k}"] for row in report["rows"]],
                style, marker="o", label=f"{direction.replace('_', ' ')} R@{k}")
  axes.set_xlabel("mismatched training pairs (%)")
  axes.set_ylabel("recall")
  axes.set_ylim(0, 1)
  axes.grid(alpha=0.3)
  axes.legend(fontsize=7)
  axes.set_title(f"{report['dataset']}: retrieval vs noisy pairs", fontsize=9)
  save_figure(figure, path)


def _define_flags():
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config.",
                                  lock_config=True)
  flags.DEFINE_list("fractions", ["0", "0.2", "0.4", "0.6"], "Noisy pair fractions.")
  flags.DEFINE_integer("steps", 500, "Training steps per fraction.")
  flags.DEFINE_string("workdir_root", "workdirs/noisy_pairs", "One workdir per fraction.")
  flags.DEFINE_string("out_dir", "experiments/results/noisy_pairs", "Results folder.")
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  cli.main("experiments.noisy_pairs", _define_flags, lambda f, command: run(
      f.config, fractions=[float(x) for x in f.fractions], steps=f.steps,
      workdir_root=f.workdir_root, out_dir=f.out_dir, command=command))
