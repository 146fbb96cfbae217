"""Writes a benchmark report as `<stem>.json` (every figure) and `<stem>.md` (the table)."""

from __future__ import annotations

import json
import os
from typing import Any


def write_report(out_dir: str, name: str, report: dict[str, Any], markdown: str) -> str:
  """Writes `<out_dir>/<name>.json` and `.md`; returns the path without extension."""
  os.makedirs(out_dir, exist_ok=True)
  stem = os.path.join(out_dir, name)
  with open(stem + ".json", "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  with open(stem + ".md", "w", encoding="utf-8") as f:
    f.write(markdown)
  print(f"wrote {stem}.json and {stem}.md")
  return stem
