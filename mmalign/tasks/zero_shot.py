"""Zero-shot classification: class names, through prompts, embedded by the text encoder.

Each class is the normalised mean of its L2-normalised prompt embeddings (CLIP's prompt
ensembling) and an image takes the nearest class in cosine. Normalising before averaging
gives every prompt an equal vote and cancels the words that are not the class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

EmbedTexts = Callable[[list[str]], np.ndarray]  # list of n strings → [n, d]
_EPS = 1e-12  # Norms at or below this cannot be normalised.


def l2_normalize(x: np.ndarray, name: str) -> np.ndarray:
  """Rows of x [n, d] scaled to unit norm; a zero row is an error, not NaN."""
  x = np.asarray(x, np.float64)
  norms = np.linalg.norm(x, axis=-1, keepdims=True)
  if np.any(norms <= _EPS):
    raise ValueError(f"{name} has a zero row (index {int(np.argmax(norms.ravel() <= _EPS))})"
                     "; it has no direction to compare")
  return x / norms


def prompt_ensemble(embed_texts: EmbedTexts,
                    prompts_per_class: Sequence[Sequence[str]]) -> np.ndarray:
  """One unit vector per class from its prompts: [c, d] float32.

  prompts_per_class: c non-empty lists of prompts (lengths may differ); all are embedded
  in one `embed_texts` call.
  """
  if not prompts_per_class:
    raise ValueError("prompts_per_class is empty")
  for k, prompts in enumerate(prompts_per_class):
    if isinstance(prompts, str) or not prompts:
      raise ValueError(f"prompts_per_class[{k}] must be a non-empty list of strings, got "
                       f"{prompts!r}")
  flat = [p for prompts in prompts_per_class for p in prompts]
  emb = np.asarray(embed_texts(flat))
  if emb.ndim != 2 or emb.shape[0] != len(flat):
    raise ValueError(f"embed_texts returned shape {emb.shape} for {len(flat)} prompts; "
                     "expected [prompts, dim]")
  emb = l2_normalize(emb, "prompt embeddings")  # [p, d]
  bounds = np.cumsum([len(prompts) for prompts in prompts_per_class])[:-1]
  means = np.stack([chunk.mean(axis=0) for chunk in np.split(emb, bounds)])  # [c, d]
  return l2_normalize(means, "mean prompt embeddings").astype(np.float32)


def class_prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
  """Every template with its "{}" replaced by each class name: c lists of len(templates)."""
  if not templates:
    raise ValueError("templates is empty")
  for template in templates:
    if "{}" not in template:
      raise ValueError(f"template {template!r} has no '{{}}' for the class name")
  return [[t.replace("{}", name) for t in templates] for name in class_names]


def class_embeddings(embed_texts: EmbedTexts, class_names: Sequence[str],
                     templates: Sequence[str]) -> np.ndarray:
  """[c, d]: each class's template prompts, normalised, averaged and re-normalised."""
  if not class_names:
    raise ValueError("class_names is empty")
  return prompt_ensemble(embed_texts, class_prompts(class_names, templates))


def zero_shot_logits(image_emb, class_emb, *, scale: float = 1.0) -> np.ndarray:
  """Cosine similarity of every image with every class, times `scale`: [n, c] float32.

  image_emb: [n, d]; class_emb: [c, d], raw or unit-norm (both are normalised here).
  `scale` (e.g. the trained logit scale) changes softmax probabilities, never the ranking.
  """
  image_emb, class_emb = np.asarray(image_emb), np.asarray(class_emb)
  if image_emb.ndim != 2 or class_emb.ndim != 2:
    raise ValueError(f"image_emb [n, d] and class_emb [c, d] must be 2-D, got "
                     f"{image_emb.shape} and {class_emb.shape}")
  if image_emb.shape[1] != class_emb.shape[1]:
    raise ValueError(f"image_emb has dim {image_emb.shape[1]}, class_emb "
                     f"{class_emb.shape[1]}")
  scores = l2_normalize(image_emb, "image_emb") @ l2_normalize(class_emb, "class_emb").T
  return (scale * scores).astype(np.float32)


def zero_shot_predict(image_emb, class_emb) -> np.ndarray:
  """[n] int64: the nearest class of each image."""
  return np.argmax(zero_shot_logits(image_emb, class_emb), axis=1).astype(np.int64)
