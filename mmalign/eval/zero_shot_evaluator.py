"""Zero-shot classification: a split's images against its class names, through prompts.

  config.evals = {"shape": {"type": "zero_shot", "label": "shape1",
                            "templates": ("a photo of a {}.", "a drawing of a {}.")}}

Class names and templates may also come from files (`class_names_file`, `templates_file`).

Each class embeds as CLIP's prompt ensemble (`tasks.zero_shot.class_embeddings`: every
template filled with the class name, embedded, normalised and averaged) and each image takes
the class of highest cosine. Reported: top-1 and top-5 accuracy, each class's accuracy and
their mean (balanced accuracy: a rare class counts as much as a common one), with chance.
Why in the evaluator list: it measures what a published CLIP is for, with no training.
"""

from __future__ import annotations

import os

import numpy as np

from mmalign import experiment as experiment_lib
from mmalign import utils
from mmalign.data import pipeline, sources
from mmalign.plots import plot_bars
from mmalign.tasks import zero_shot
from mmalign.utils import say

RESULTS_FILE = "eval_{split}_zero_shot_{label}.json"
DEFAULT_TEMPLATES = ("a photo of a {}.",)
TOP_K = 5


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Share of rows whose label is among their k highest logits (ties broken by index)."""
  top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
  return float((top == labels[:, None]).any(axis=1).mean())


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray,
                       num_classes: int) -> dict[int, float]:
  """{class: accuracy over its examples} for every class with at least one example."""
  return {c: float((predictions[labels == c] == c).mean())
          for c in range(num_classes) if np.any(labels == c)}


class ZeroShotEvaluator:
  """Zero-shot accuracy of one class-label feature (`label`) on one split (settings checked
  the label and the templates before any work)."""

  def __init__(self, exp: experiment_lib.Experiment, *, split: str, label: str,
               templates: tuple[str, ...] = DEFAULT_TEMPLATES, batch_size: int | None = None,
               templates_file: str | None = None, class_names_file: str | None = None):
    """`class_names_file`: readable names, one per line in label order, for datasets whose
    labels are codes (imagenet2012's are WordNet ids); `templates_file`: one per line."""
    self.exp, self.split, self.label = exp, split, label
    self.batch_size = exp.config.eval.batch_size if batch_size is None else batch_size
    self.class_names = (utils.read_lines(class_names_file, "class_names_file")
                        if class_names_file else sources.class_names(exp.builder, label))
    self.templates = tuple(utils.read_lines(templates_file, "templates_file")
                           if templates_file else templates)
    self.prompts = zero_shot.class_prompts(self.class_names, self.templates)

  def evaluate(self, variables, step: int | None) -> dict:
    exp = self.exp
    labels = pipeline.read_labels(sources.open_split(exp.builder, self.split,
                                                     decode_images=False), self.label)
    image_emb = experiment_lib.embed_images(exp, variables,
                                            sources.open_split(exp.builder, self.split),
                                            self.batch_size)  # [examples, d]
    class_emb = zero_shot.prompt_ensemble(
        lambda texts: experiment_lib.embed_texts(exp, variables, texts), self.prompts)
    logits = zero_shot.zero_shot_logits(image_emb, class_emb)  # [examples, classes]
    predictions = logits.argmax(axis=1)
    classes = len(self.class_names)
    per_class = per_class_accuracy(predictions, labels, classes)
    return {"dataset": f"{exp.config.data.name}/{exp.config.data.config}",
            "split": self.split, "step": step, "label": self.label,
            "templates": list(self.templates), "classes": list(self.class_names),
            "num_examples": int(len(labels)),
            "top1": top_k_accuracy(logits, labels, 1),
            f"top{TOP_K}": top_k_accuracy(logits, labels, min(TOP_K, classes)),
            "mean_per_class_accuracy": float(np.mean(list(per_class.values()))),
            "per_class_accuracy": {self.class_names[c]: a for c, a in per_class.items()},
            "chance_top1": 1.0 / classes}

  def report(self, results: dict) -> None:
    """Writes `<workdir>/eval_<split>_zero_shot_<label>.json` and a per-class bar PNG."""
    stem = RESULTS_FILE.format(split=self.split, label=self.label)
    path = os.path.join(self.exp.workdir, stem)
    utils.write_json(path, results)
    plot_bars(results["per_class_accuracy"],
              os.path.join(self.exp.workdir, stem.replace(".json", ".png")),
              f"{results['dataset']} {self.split}: zero-shot {self.label} "
              f"(step {results['step']})", ylabel="accuracy",
              reference=results["chance_top1"])
    say(f"zero-shot {self.label} on {results['dataset']} {self.split} "
        f"({results['num_examples']} images, {len(results['classes'])} classes, "
        f"{len(self.templates)} templates): top-1 {100 * results['top1']:.1f}%, "
        f"top-{TOP_K} {100 * results[f'top{TOP_K}']:.1f}%, mean per class "
        f"{100 * results['mean_per_class_accuracy']:.1f}% (chance "
        f"{100 * results['chance_top1']:.1f}%)")
    say(f"written to {path}")

  def scalars(self, results: dict) -> dict[str, float]:
    return {key: float(results[key])
            for key in ("top1", f"top{TOP_K}", "mean_per_class_accuracy")}
