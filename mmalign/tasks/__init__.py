"""Downstream tasks on frozen embeddings: probes, zero-shot classification, tagging.

Pure functions of embeddings and labels (numpy/JAX/optax); files and logging stay in
the scripts that call them (experiments/tasks_shapes.py).
"""

from mmalign.tasks.annotation import (MultilabelHead, annotation_report, best_threshold,
                                      multilabel_f1, train_multilabel_head, zero_shot_tag_scores)
from mmalign.tasks.probe import (PROBE_INPUTS, Head, Probe, classification_report, fit_head,
                                 fused_features, probe_features, train_probe)
from mmalign.tasks.zero_shot import (class_embeddings, class_prompts, prompt_ensemble,
                                     zero_shot_logits, zero_shot_predict)

__all__ = [
    "PROBE_INPUTS", "Head", "MultilabelHead", "Probe", "annotation_report", "best_threshold",
    "class_embeddings", "class_prompts", "classification_report", "fit_head", "fused_features",
    "multilabel_f1", "probe_features", "prompt_ensemble", "train_multilabel_head",
    "train_probe", "zero_shot_logits", "zero_shot_predict", "zero_shot_tag_scores",
]
