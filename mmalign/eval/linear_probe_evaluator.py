"""Linear probe: a softmax classifier on frozen image embeddings (or, with `inputs`, the
example's caption embedding, or both fused as [t, i, t·i]), its L2 weight chosen on a
validation split, as the CLIP paper's protocol does.

  config.evals = {"probe": {"type": "linear_probe", "label": "shape1",
                            "weight_decays": (1e-6, 1e-4, 1e-2, 1.0)}}

The probe (`tasks.probe.train_probe`, no hidden layer) is trained on `train_split` once per
weight decay, each scored on `validation_split`; the best (the first of equals) is scored on
the evaluator's split. Reported: every validation accuracy, the choice, and on the split top-1
and mean per-class accuracy. Why select on validation: choosing on the split scored would
report an optimistic figure.
"""

from __future__ import annotations

import os

import numpy as np

from mmalign import experiment as experiment_lib
from mmalign import utils
from mmalign.data import pipeline, sources
from mmalign.eval.zero_shot_evaluator import per_class_accuracy
from mmalign.tasks import probe
from mmalign.utils import say

RESULTS_FILE = "eval_{split}_linear_probe_{label}.json"
DEFAULT_WEIGHT_DECAYS = (1e-6, 1e-4, 1e-2, 1.0)


class LinearProbeEvaluator:
  """Linear-probe accuracy of one class-label feature (`label`) on one split."""

  def __init__(self, exp: experiment_lib.Experiment, *, split: str, label: str,
               weight_decays: tuple[float, ...] = DEFAULT_WEIGHT_DECAYS,
               train_split: str = "train", validation_split: str = "validation",
               steps: int = 500, batch_size: int | None = None, inputs: str = "image"):
    self.exp, self.split, self.label, self.inputs = exp, split, label, inputs
    self.weight_decays, self.steps = tuple(float(w) for w in weight_decays), int(steps)
    self.splits = {"train": train_split, "validation": validation_split, "eval": split}
    self.batch_size = exp.config.eval.batch_size if batch_size is None else batch_size
    self.class_names = sources.class_names(exp.builder, label)

  def features(self, variables, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(features [examples, d] (image) or [examples, 3d] (text, fused), labels [examples])."""
    exp = self.exp
    captions = sources.open_split(exp.builder, split, decode_images=False)
    labels = pipeline.read_labels(captions, self.label)
    image_emb = experiment_lib.embed_images(exp, variables, sources.open_split(exp.builder,
                                                                               split),
                                            self.batch_size)
    if self.inputs == "image":
      return image_emb, labels
    text_emb = experiment_lib.embed_texts(exp, variables, pipeline.index_split(captions).captions)
    return probe.probe_features(self.inputs, text_emb, image_emb), labels

  def evaluate(self, variables, step: int | None) -> dict:
    data = {role: self.features(variables, split) for role, split in self.splits.items()}
    classes = len(self.class_names)

    def fit(weight_decay: float):
      return probe.train_probe(*data["train"], classes, steps=self.steps,
                               weight_decay=weight_decay)
    validation = {}
    for weight_decay in self.weight_decays:
      features, labels = data["validation"]
      validation[weight_decay] = float((fit(weight_decay).predict(features) == labels).mean())
    chosen = max(self.weight_decays, key=lambda w: validation[w])  # First of equals.
    features, labels = data["eval"]
    predictions = fit(chosen).predict(features)
    per_class = per_class_accuracy(predictions, labels, classes)
    exp = self.exp
    return {"dataset": f"{exp.config.data.name}/{exp.config.data.config}",
            "split": self.split, "step": step, "label": self.label,
            "splits": dict(self.splits), "classes": list(self.class_names),
            "validation_accuracy": {f"{w:g}": a for w, a in validation.items()},
            "weight_decay": chosen, "num_examples": int(len(labels)),
            "top1": float((predictions == labels).mean()),
            "mean_per_class_accuracy": float(np.mean(list(per_class.values()))),
            "chance_top1": 1.0 / classes}

  def report(self, results: dict) -> None:
    """Writes `<workdir>/eval_<split>_linear_probe_<label>.json`; prints a line."""
    path = os.path.join(self.exp.workdir,
                        RESULTS_FILE.format(split=self.split, label=self.label))
    utils.write_json(path, results)
    say(f"linear probe {self.label} on {results['dataset']} {self.split} "
        f"({results['num_examples']} images, weight decay {results['weight_decay']:g} chosen on "
        f"{results['splits']['validation']}): top-1 {100 * results['top1']:.1f}%, mean per "
        f"class {100 * results['mean_per_class_accuracy']:.1f}% (chance "
        f"{100 * results['chance_top1']:.1f}%)")
    say(f"written to {path}")

  def scalars(self, results: dict) -> dict[str, float]:
    return {key: float(results[key]) for key in ("top1", "mean_per_class_accuracy")}
