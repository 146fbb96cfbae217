"""Pictures beside the numbers: training curves, recall-at-k curves, bar charts (PNG, Agg)."""

from __future__ import annotations

import json
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_training_curves(metrics_jsonl: str, path: str) -> None:
  """Loss, scale and learning rate against step, from the trainer's metrics.jsonl (its
  training records; periodic evaluations' records, which have no loss, are skipped)."""
  with open(metrics_jsonl) as f:
    records = [json.loads(line) for line in f if line.strip()]
  records = [r for r in records if "loss" in r]
  if not records:
    raise ValueError(f"{metrics_jsonl} holds no records")
  keys = [k for k in ("loss", "scale", "learning_rate") if k in records[0]]
  figure = Figure(figsize=(4 * len(keys), 3.2), layout="constrained")
  steps = [r["step"] for r in records]
  for i, key in enumerate(keys):
    axes = figure.add_subplot(1, len(keys), i + 1)
    axes.plot(steps, [r.get(key, np.nan) for r in records])
    axes.set(xlabel="step", title=key)
    axes.grid(alpha=0.3)
  save_figure(figure, path)


def plot_recall_curves(curves: dict[str, dict[str, list[float]]], path: str,
                       title: str) -> None:
  """Recall@k per direction (solid) and its chance level (dotted), for k = 1, 2, ...

  curves: direction → {"recall": [max_k], "chance": [max_k]} (an evaluator's
  "recall_curves").
  """
  figure = Figure(figsize=(5.5, 3.8), layout="constrained")
  axes = figure.add_subplot()
  for name, curve in curves.items():
    ks = np.arange(1, len(curve["recall"]) + 1)
    line, = axes.plot(ks, curve["recall"], label=name.replace("_", " "))
    axes.plot(ks, curve["chance"], linestyle=":", color=line.get_color())
  axes.set(xscale="log", xlabel="k", ylabel="recall@k", ylim=(0, 1), title=title)
  axes.grid(alpha=0.3, which="both")
  axes.legend(title="dotted: chance")
  save_figure(figure, path)


def plot_bars(values: dict[str, float], path: str, title: str, *, ylabel: str,
              reference: float | None = None, reference_label: str = "chance") -> None:
  """One bar per named value (e.g. accuracy per input), with an optional dashed reference."""
  figure = Figure(figsize=(1.2 + 1.1 * len(values), 3.6), layout="constrained")
  axes = figure.add_subplot()
  names = list(values)
  bars = axes.bar(range(len(names)), [values[n] for n in names], color="tab:blue")
  axes.bar_label(bars, fmt="%.3f", fontsize=8)
  if reference is not None:
    axes.axhline(reference, linestyle="--", color="gray", label=reference_label)
    axes.legend(loc="lower right")
  axes.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], fontsize=8)
  axes.set(ylabel=ylabel, ylim=(0, 1.05))
  axes.set_title(title, fontsize=9)
  save_figure(figure, path)


def save_figure(figure: Figure, path: str) -> None:
  """Renders with Agg and writes the PNG atomically (a temporary file, then a rename)."""
  FigureCanvasAgg(figure)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}.png"
  figure.savefig(tmp, dpi=110)
  os.replace(tmp, path)
