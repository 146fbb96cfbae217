"""A table report as markdown: mean ± std over seeds, the best mean of a column in bold.

Every row names its overrides and every section the command that reruns one of
its cells by hand, so a reader can reproduce any number without this package.
"""

from __future__ import annotations

from collections.abc import Callable

MISSING = "—"  # A cell not computed yet (another session's share) or failed.


def _decimal(digits: int) -> Callable[[float, float, int], str]:
  def fmt(mean: float, std: float, n: int) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"
  return fmt


FORMATS: dict[str, Callable[[float, float, int], str]] = {
    # Fractions in [0, 1], shown as percent.
    "percent": lambda mean, std, n: _decimal(1)(100 * mean, 100 * std, n) + "%",
    "float3": _decimal(3),  # Scores such as macro-F1 and ROC-AUC.
    "float1": _decimal(1),  # Ranks (a mean over seeds is fractional).
    "int": _decimal(0),  # Throughput.
}


def best_rows(section: dict) -> dict[str, set[int]]:
  """Column key → indices of rows whose mean is the best (ties: all of them)."""
  best = {}
  for column in section["columns"]:
    if column["best"] not in ("max", "min"):
      continue
    means = [row["stats"][column["key"]]["mean"] for row in section["rows"]]
    present = [m for m in means if m is not None]
    if len(present) < 2:
      continue
    target = max(present) if column["best"] == "max" else min(present)
    best[column["key"]] = {i for i, m in enumerate(means) if m is not None and
                           abs(m - target) <= 1e-12 * max(1.0, abs(target))}
  return best


def format_cell(column: dict, stats: dict, bold: bool) -> str:
  if stats["mean"] is None:
    return MISSING
  text = FORMATS[column["fmt"]](stats["mean"], stats["std"], stats["n"])
  return f"**{text}**" if bold else text


def format_section(section: dict) -> list[str]:
  columns = section["columns"]
  best = best_rows(section)
  base = f"`{section['base']['config']}`"
  if section["base"]["overrides"]:
    base += f" with `{section['base']['overrides']}`"
  lines = [f"## {section['title']}", ""]
  if section["notes"]:
    lines += [section["notes"], ""]
  lines += [f"Base config: {base}.", "",
            "| row | " + " | ".join(c["label"] for c in columns) + " | seeds | config overrides |",
            "|---|" + "---:|" * (len(columns) + 1) + "---|"]
  for i, row in enumerate(section["rows"]):
    cells = [format_cell(c, row["stats"][c["key"]], i in best.get(c["key"], set()))
             for c in columns]
    overrides = f"`{row['overrides']}`" if row["overrides"] else "(base)"
    lines.append(f"| {row['name']} | {' | '.join(cells)} | {len(row['per_seed'])} | "
                 f"{overrides} |")
  lines += ["", "One cell by hand (add the row's overrides and `--config.train.seed=S`):"]
  for kind, entry in section["commands"].items():
    text = entry["command"].format(config=section["base"]["config"],
                                   overrides=section["base"]["overrides"],
                                   workdir=f"workdirs/{section['name']}_ROW").rstrip()
    lines.append(f"- {kind}: `{text}`" + (f" ({entry['note']})" if entry["note"] else ""))
  return lines + [""]


def _reused_note(reused: dict | None) -> str:
  """Says which cells came from an earlier run's results.json rather than this run."""
  if not reused or not reused["cells"]:
    return ""
  note = (f" {reused['cells']} cells were read from the results.json of an earlier run "
          f"(same cell keys; run on {', '.join(reused['dates'])})")
  if reused["unrecorded_seconds"]:
    note += f"; the compute of {reused['unrecorded_seconds']} of them was not recorded"
  return note + "."


def format_markdown(report: dict, png_name: str) -> str:
  seeds, seconds = report["seeds"], report["cell_seconds"]
  duration = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"
  lines = [f"# {report['title']}" + (" (quick: tiny data, a few steps)" if report["quick"]
                                      else ""), "",
           f"Command: `{report['command']}`  ",
           f"{report['date']}, JAX {report['jax_version']}; seeds "
           f"{', '.join(map(str, seeds))} (`config.train.seed`); mean ± sample std over "
           f"seeds, best mean of a column in bold; {MISSING}: not computed. "
           f"Compute: {duration} over the cells."
           + _reused_note(report.get("reused")), ""]
  if report["failed"]:
    lines += ["**Failed cells:** " + "; ".join(report["failed"]), ""]
  for section in report["sections"]:
    lines += format_section(section)
  lines += [f"![{report['table']}]({png_name})", ""]
  return "\n".join(lines)
