"""Multi-task classifier evaluation: the fused classifier with both modalities, or one.

The task classifier (`task.label`, `DualEncoder.classify`) is scored with caption and image
("both"), the image hidden ("text_only") and the caption hidden ("image_only"), to show
whether a model survives a missing modality (`model.modality_dropout`)."""

from __future__ import annotations

import os

import numpy as np

from mmalign import experiment as experiment_lib
from mmalign import utils
from mmalign.data import pipeline, sources
from mmalign.eval import metrics
from mmalign.plots import plot_bars
from mmalign.utils import say

RESULTS_FILE = "eval_{split}_classification.json"
# Input → (has text, has image).
PRESENCE = {"both": (True, True), "text_only": (True, False), "image_only": (False, True)}


def class_logits(exp: experiment_lib.Experiment, variables, split: str,
                 present: tuple[bool, bool], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(logits [examples, classes], labels [examples]) of the whole split, in order."""
  caption_source = sources.open_split(exp.builder, split, decode_images=False)
  index = pipeline.index_split(caption_source)
  labels = pipeline.read_labels(caption_source, experiment_lib.task_label(exp.config))
  tokens = exp.tokenizer.encode(index.captions)  # [examples, length]: each its own caption
  mask = np.broadcast_to(np.array(present, bool), (len(tokens), 2))  # [examples, 2]
  image_source = sources.open_split(exp.builder, split)

  def with_images(batch):  # (tokens, example indices, mask) → classify's inputs.
    batch_tokens, indices, batch_mask = batch
    return batch_tokens, experiment_lib.split_images(exp, image_source, indices), batch_mask

  logits = experiment_lib.apply_in_batches(
      exp, "classify", variables, (tokens, np.arange(len(tokens)), mask), batch_size,
      prepare=with_images)
  return logits, labels


class ClassificationEvaluator:
  """The task classifier (`task.label`) on one split, for each input of PRESENCE."""

  def __init__(self, exp: experiment_lib.Experiment, *, split: str,
               batch_size: int | None = None):
    self.exp, self.split = exp, split
    self.batch_size = exp.config.eval.batch_size if batch_size is None else batch_size

  def evaluate(self, variables, step: int | None) -> dict:
    exp, split = self.exp, self.split
    results = {"dataset": f"{exp.config.data.name}/{exp.config.data.config}", "split": split,
               "step": step, "label": experiment_lib.task_label(exp.config),
               "classes": list(exp.class_names)}
    for name, present in PRESENCE.items():
      logits, labels = class_logits(exp, variables, split, present, self.batch_size)
      predictions = logits.argmax(axis=1)
      results[name] = {"accuracy": metrics.accuracy(labels, predictions),
                       "macro_f1": metrics.f1(labels, predictions, average="macro"),
                       "roc_auc_ovr": metrics.roc_auc_ovr(labels, logits)}
      results["num_examples"] = int(len(labels))
      results["majority_class_accuracy"] = float(np.bincount(labels).max() / len(labels))
    return results

  def report(self, results: dict) -> None:
    """Writes `<workdir>/eval_<split>_classification.json` and a bar PNG; prints the table."""
    workdir, split = self.exp.workdir, self.split
    path = os.path.join(workdir, RESULTS_FILE.format(split=split))
    utils.write_json(path, results)
    plot_bars({name: results[name]["accuracy"] for name in PRESENCE},
              os.path.join(workdir, f"eval_{split}_classification.png"),
              f"{results['dataset']} {split}: {results['label']} (step {results['step']})",
              ylabel="accuracy", reference=results["majority_class_accuracy"],
              reference_label="majority class")
    say(format_table(results))
    say(f"written to {path}")

  def scalars(self, results: dict) -> dict[str, float]:
    return {f"{name}/{key}": float(value) for name in PRESENCE
            for key, value in results[name].items() if value is not None}


def format_table(results: dict) -> str:
  """Markdown: accuracy, macro F1 and ROC-AUC per input, with the majority-class rate."""
  lines = [f"{results['dataset']} {results['split']}: classify {results['label']!r} "
           f"({len(results['classes'])} classes, {results['num_examples']} examples, "
           f"step {results['step']})", "",
           "| input | accuracy | macro F1 | ROC-AUC (ovr) |", "|---|---|---|---|"]
  for name in PRESENCE:
    r = results[name]
    lines.append(f"| {name.replace('_', ' ')} | {100 * r['accuracy']:.1f}% | "
                 f"{r['macro_f1']:.3f} | {r['roc_auc_ovr']:.3f} |")
  lines.append(f"\nmajority class: {100 * results['majority_class_accuracy']:.1f}%")
  return "\n".join(lines)
