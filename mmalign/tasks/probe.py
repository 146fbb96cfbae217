"""Classifiers on frozen embeddings: linear probes and small MLPs ("SVM or DNN").

The encoders stay fixed; only a head is trained. Every input (text, image or both) is laid
out as one fused vector `[t, i, t * i]`, an absent modality's block and the product
zeroed, so one classifier trained on pairs can be evaluated with a modality missing
(`modality_dropout` teaches it to fall back). The product block lets even a linear probe
compute the caption-image cosine (its sum).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmalign.eval import metrics
from mmalign.models.dual_encoder import sample_present
from mmalign.registry import Registry

_MIN_STD = 1e-6  # Columns flatter than this (e.g. an always-absent block) are not scaled.


def _as_matrix(x, name: str) -> np.ndarray:
  x = np.asarray(x, np.float32)
  if x.ndim != 2:
    raise ValueError(f"{name} must be 2-D [n, dim], got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} contains NaN or inf")
  return x


def fused_features(text_emb, image_emb, present=None) -> np.ndarray:
  """`[t, i, t * i]` per example: [n, 3 * d] float32.

  text_emb, image_emb: [n, d] or None (absent for every example). present: [n, 2] bool
  (has text, has image), as in `models.fusion.FusionInputs`; a False entry zeroes that
  modality's block and the product, which is what "absent" means to every probe here.
  """
  if text_emb is None and image_emb is None:
    raise ValueError("fused_features needs text_emb or image_emb; both are None")
  text = None if text_emb is None else _as_matrix(text_emb, "text_emb")
  image = None if image_emb is None else _as_matrix(image_emb, "image_emb")
  if text is not None and image is not None and text.shape != image.shape:
    raise ValueError(f"text_emb {text.shape} and image_emb {image.shape} must have one shape")
  shape = (text if text is not None else image).shape
  keep = np.ones((shape[0], 2), bool)  # [n, 2]
  if present is not None:
    present = np.asarray(present)
    if present.shape != (shape[0], 2):
      raise ValueError(f"present must have shape {(shape[0], 2)} (has text, has image), "
                       f"got {present.shape}")
    keep &= present.astype(bool)
  text = np.zeros(shape, np.float32) if text is None else text * keep[:, :1]  # [n, d]
  image = np.zeros(shape, np.float32) if image is None else image * keep[:, 1:]  # [n, d]
  return np.concatenate([text, image, text * image], axis=1)  # [n, 3d]


PROBE_INPUTS: Registry[Callable[[np.ndarray, np.ndarray], np.ndarray]] = Registry("probe input")
PROBE_INPUTS.register("text")(lambda text_emb, image_emb: fused_features(text_emb, None))
PROBE_INPUTS.register("image")(lambda text_emb, image_emb: fused_features(None, image_emb))
PROBE_INPUTS.register("fused")(fused_features)


def probe_features(name: str, text_emb, image_emb) -> np.ndarray:
  """Features of the probe input `name` ("text", "image", "fused"): [n, 3d], fused layout."""
  return PROBE_INPUTS.get(name)(text_emb, image_emb)


def _init_layers(key: jax.Array, sizes: Sequence[int]) -> list[dict]:
  """LeCun-normal weights, zero biases: [{"w": [in, out], "b": [out]}, ...]."""
  return [{"w": jax.random.normal(layer_key, (fan_in, fan_out)) / np.sqrt(fan_in),
           "b": jnp.zeros((fan_out,))}
          for layer_key, (fan_in, fan_out) in zip(jax.random.split(key, len(sizes) - 1),
                                                  itertools.pairwise(sizes))]


@jax.jit
def _logits(layers: list[dict], mean, std, features: jnp.ndarray) -> jnp.ndarray:
  """features: [n, f] raw → logits [n, out]: standardised, then ReLU between layers."""
  x = (features - mean) / std
  for layer in layers[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  return x @ layers[-1]["w"] + layers[-1]["b"]


@dataclasses.dataclass(frozen=True)
class Head:
  """A trained head: weights plus the standardisation it was trained with."""
  layers: list[dict]  # [{"w": [in, out], "b": [out]}, ...]
  mean: np.ndarray  # [f] training-feature mean
  std: np.ndarray  # [f] training-feature std (1 where a column is constant)
  train_loss: float  # Loss of the last training step, for logs.

  def logits(self, features) -> np.ndarray:
    """features: [n, f] → [n, out] float32."""
    features = _as_matrix(features, "features")
    if features.shape[1] != self.mean.shape[0]:
      raise ValueError(f"features have {features.shape[1]} columns; this head was trained "
                       f"on {self.mean.shape[0]}")
    return np.asarray(_logits(self.layers, self.mean, self.std, features))


class Probe(Head):
  """Single-label classifier: softmax over `num_classes` logits."""

  def predict_proba(self, features) -> np.ndarray:
    """[n, f] → [n, c] class probabilities."""
    return np.asarray(jax.nn.softmax(self.logits(features), axis=-1))

  def predict(self, features) -> np.ndarray:
    """[n, f] → [n] int64 class ids."""
    return np.argmax(self.logits(features), axis=-1).astype(np.int64)


LOSSES = {  # (logits, targets) → mean loss.
    "softmax": lambda logits, y: optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
    "sigmoid": lambda logits, y: optax.sigmoid_binary_cross_entropy(logits, y).mean(),
}


@functools.partial(jax.jit, static_argnames=("loss", "steps", "batch_size", "embed_dim"))
def _train(layers, features, targets, mean, std, key, learning_rate, weight_decay,
           dropout, *, loss: str, steps: int, batch_size: int | None,
           embed_dim: int | None):
  """AdamW on the head; returns (layers, loss of the last step).

  features: [n, f] raw; targets: [n] int or [n, t] float. With embed_dim set, each example
  loses text or image with probability `dropout` before standardisation, as at evaluation.
  """
  optimizer = optax.adamw(learning_rate, weight_decay=weight_decay,
                          mask=lambda ls: [{"w": True, "b": False} for _ in ls])
  loss_fn = LOSSES[loss]
  num = features.shape[0]

  def objective(layers, x, y, step_key):
    if embed_dim is not None:
      present = sample_present(step_key, x.shape[0], dropout).astype(x.dtype)  # [b, 2]
      blocks = jnp.concatenate([present, present[:, :1] * present[:, 1:]], axis=1)  # [b, 3]
      x = x * jnp.repeat(blocks, embed_dim, axis=1)  # [b, 3d]: zeroes the absent blocks
    return loss_fn(_logits(layers, mean, std, x), y)

  def body(step, carry):
    layers, opt_state, _ = carry
    step_key = jax.random.fold_in(key, step)
    if batch_size is None:
      x, y = features, targets
    else:
      rows = jax.random.randint(jax.random.fold_in(step_key, 1), (batch_size,), 0, num)
      x, y = features[rows], targets[rows]
    value, grads = jax.value_and_grad(objective)(layers, x, y, step_key)
    updates, opt_state = optimizer.update(grads, opt_state, layers)
    return optax.apply_updates(layers, updates), opt_state, value

  carry = (layers, optimizer.init(layers), jnp.zeros((), jnp.float32))
  layers, _, last_loss = jax.lax.fori_loop(0, steps, body, carry)
  return layers, last_loss


def fit_head(features, targets, out_dim: int, *, loss: str, hidden: Sequence[int] = (),
             steps: int = 500, learning_rate: float = 1e-2, weight_decay: float = 1e-4,
             seed: int = 0, batch_size: int | None = None,
             modality_dropout: float = 0.0, head_class: type[Head] = Head) -> Head:
  """Trains an MLP head (linear when `hidden` is empty) on fixed features.

  features: [n, f]; targets: [n] int for loss="softmax", [n, out_dim] in {0, 1} for
  loss="sigmoid". `modality_dropout` in [0, 1); > 0 needs the `fused_features` layout
  [n, 3d]. batch_size=None: full batch; else mini-batches drawn with replacement. Weight
  decay skips biases (decaying them would pull the prior towards uniform).
  """
  features = _as_matrix(features, "features")
  num, width = features.shape
  if num == 0:
    raise ValueError("features has no rows")
  if loss not in LOSSES:
    raise ValueError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")
  hidden = tuple(int(h) for h in hidden)
  if any(h <= 0 for h in hidden):
    raise ValueError(f"hidden sizes must be positive, got {hidden}")
  if steps <= 0:
    raise ValueError(f"steps must be positive, got {steps}")
  if batch_size is not None and not 0 < batch_size:
    raise ValueError(f"batch_size must be positive or None (full batch), got {batch_size}")
  if batch_size is not None and batch_size >= num:
    batch_size = None  # A batch of everything is the full batch, without resampling.
  if not 0.0 <= modality_dropout < 1.0:
    raise ValueError(f"modality_dropout must lie in [0, 1), got {modality_dropout}")
  if modality_dropout > 0 and width % 3:
    raise ValueError(f"modality_dropout needs fused_features [n, 3 * d]; features have "
                     f"{width} columns, not a multiple of 3")
  embed_dim = width // 3 if modality_dropout > 0 else None
  mean = features.mean(axis=0)  # [f]
  std = features.std(axis=0)  # [f]
  std = np.where(std < _MIN_STD, 1.0, std).astype(np.float32)
  layers = _init_layers(jax.random.key(seed), (width, *hidden, out_dim))
  layers, last_loss = _train(layers, features, targets, mean, std,
                             jax.random.fold_in(jax.random.key(seed), 1),
                             jnp.float32(learning_rate), jnp.float32(weight_decay),
                             jnp.float32(modality_dropout), loss=loss, steps=int(steps),
                             batch_size=batch_size, embed_dim=embed_dim)
  return head_class(jax.tree.map(np.asarray, layers), mean, std, float(last_loss))


def train_probe(features, labels, num_classes: int, **fit_kwargs) -> Probe:
  """Softmax classifier on features [n, f] with labels [n] int in [0, num_classes).

  `fit_kwargs` are `fit_head`'s (hidden, steps, learning_rate, ...): hidden=() is the linear
  probe, hidden=(h, ...) a ReLU MLP.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be 1-D integers, got shape {labels.shape} dtype "
                     f"{labels.dtype}")
  if labels.shape[0] != np.shape(features)[0]:
    raise ValueError(f"labels has {labels.shape[0]} entries, features "
                     f"{np.shape(features)[0]} rows")
  if num_classes < 2:
    raise ValueError(f"num_classes must be at least 2, got {num_classes}")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}), got range "
                     f"[{labels.min()}, {labels.max()}]")
  return fit_head(features, labels.astype(np.int32), num_classes, loss="softmax",
                  head_class=Probe, **fit_kwargs)


def classification_report(labels, probabilities) -> dict[str, float | None]:
  """Accuracy, macro F1 and ROC-AUC of class probabilities [n, c] against labels [n].

  ROC-AUC is binary (column 1) for two classes, macro one-vs-rest otherwise, and None
  when labels hold a single class.
  """
  labels = np.asarray(labels)
  probabilities = np.asarray(probabilities)
  predictions = np.argmax(probabilities, axis=1)
  report = {"accuracy": metrics.accuracy(labels, predictions),
            "macro_f1": metrics.f1(labels, predictions, average="macro")}
  if np.unique(labels).size < 2:
    report["roc_auc"] = None
  elif probabilities.shape[1] == 2:
    report["roc_auc"] = metrics.roc_auc(labels, probabilities[:, 1])
  else:
    report["roc_auc"] = metrics.roc_auc_ovr(labels, probabilities)
  return report
