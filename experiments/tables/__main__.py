"""Runs one table: `python -m experiments.tables <table> [--quick] [--seeds=N] [--parallel=N]`.

  python -m experiments.tables robustness --sections=noisy_pairs --dry_run   # cached?

Writes results.md, results.json and <table>.png to --out_dir (default
experiments/results/[quick/]<table>/). A rerun, in a fresh clone too, computes only the cells
that neither the cache (--workdir_root) nor the out_dir's committed results.json hold under
an unchanged key. A failed cell is reported, the others are kept, and the exit status is 1.
"""

from __future__ import annotations

import os
import sys

from experiments.cli import run_script, write_results
from experiments.tables import plots, report, runner, spec
from mmalign.errors import UsageError


def run_table(table: spec.Table, settings: runner.Settings, *, command: str,
              out_dir: str) -> tuple[dict | None, dict[str, str]]:
  """(report or None for a dry run, errors by cell key): runs what is missing, writes it."""
  plan = runner.plan(table, settings)
  records, errors = runner.run_missing(plan, settings)
  if settings.dry_run:
    return None, errors
  summary = runner.summarize(plan, records, command=command, failed=errors)
  png = f"{table.name}.png"
  markdown = report.format_markdown(summary, png)
  write_results(out_dir, summary, markdown, plots.plot_report, png)
  print(markdown)
  print(f"written to {out_dir}/results.md, results.json, {png}")
  return summary, errors


def _define_flags():
  """Defined on demand, so importing this module (tests) adds no global absl flags."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_boolean("quick", False, "The same grid on tiny data: a few steps, 1 seed.")
  flags.DEFINE_integer("seeds", None, "Seeds to run per row (default: the table's, 3; 1 "
                       "with --quick); seeds up to the default that the cache or the "
                       "committed results hold are reported too.")
  flags.DEFINE_integer("parallel", 1, "Cells run at once, each in its own process.")
  flags.DEFINE_string("workdir_root", "workdirs/tables", "Cell cache and workdirs.")
  flags.DEFINE_string("out_dir", None, "Results folder (default "
                      "experiments/results/[quick/]<table>).")
  flags.DEFINE_string("data_dir", None, "TFDS data_dir of every cell (not part of the cell key).")
  flags.DEFINE_list("sections", [], "Run only these sections; the others are read from the "
                    "cache (to split a table across sessions).")
  flags.DEFINE_boolean("dry_run", False, "List the cells to run; run and write nothing.")
  flags.DEFINE_boolean("reuse_results", True, "Read cells the cache lacks from the "
                       "out_dir's results.json when their key is unchanged (a fresh clone "
                       "has no cache); --noreuse_results recomputes them.")


def main(argv):
  from absl import flags  # pylint: disable=import-outside-toplevel

  from experiments.tables import TABLES  # pylint: disable=import-outside-toplevel
  f = flags.FLAGS

  def body(command: str) -> None:
    if len(argv) < 2:
      raise UsageError("name a table: python -m experiments.tables <table>; tables: "
                       f"{', '.join(TABLES.names())}")
    table = TABLES.get(argv[1])
    out_dir = f.out_dir or os.path.join(spec.ROOT, "experiments", "results",
                                        *(["quick"] if f.quick else []), table.name)
    previous = os.path.join(out_dir, "results.json") if f.reuse_results else None
    settings = runner.Settings(workdir_root=f.workdir_root, quick=f.quick, seeds=f.seeds,
                               parallel=f.parallel, data_dir=f.data_dir,
                               sections=tuple(f.sections), dry_run=f.dry_run,
                               previous_results=previous)
    if table.full_run_estimate and not settings.quick:
      print(f"{table.name}: a full run from scratch takes {table.full_run_estimate} on 2 "
            "CPU cores")
    summary, errors = run_table(table, settings, command=command, out_dir=out_dir)
    if errors:
      print(f"error: {len(errors)} cell(s) failed: {'; '.join(summary['failed'])}",
            file=sys.stderr)
      sys.exit(1)

  run_script("experiments.tables", argv[:1] + argv[2:], body)


if __name__ == "__main__":
  from absl import app  # pylint: disable=import-outside-toplevel
  _define_flags()
  app.run(main)
