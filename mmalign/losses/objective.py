"""The training objective: an alignment loss, plus the fused heads' losses.

  total = alignment + matching_weight · matching + task_weight · task

matching: binary cross-entropy on the fused pairs the model scores (`DualEncoder`);
task: the classifier's cross-entropy on each fused pair against `task.label`.
`loss.modality_weights` ({"text", "image"}: >= 0, default 1) scales the gradient the
alignment sends into each tower, not the loss value: a dominating modality can be
slowed, or a weak one sped up, without changing what the loss measures.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from kernels import api as kernels_api
from kernels import distributed as kernels_distributed
from mmalign import settings
from mmalign.errors import UsageError
from mmalign.losses.contrastive import LOSSES, image_rows_infonce

Objective = Callable[[dict, dict], tuple[jnp.ndarray, dict[str, jnp.ndarray]]]


def _kernel_kwargs(loss_config, loss: Callable) -> dict:
  """The kernel keywords `loss` takes: `impl` ("auto" resolved for this backend) and, if it
  tiles, `loss.kernel.<impl>` block sizes; by signature, so no loss is handed what it drops."""
  parameters = inspect.signature(loss).parameters
  kwargs = {}
  if "impl" in parameters:
    impl = kernels_api.resolve_impl(settings.value(loss_config, "kernel.impl", section="loss"))
    kwargs["impl"] = impl
    if "block_kwargs" in parameters:
      blocks = loss_config.kernel.get(impl) if "kernel" in loss_config else None
      kwargs["block_kwargs"] = dict(blocks) if blocks is not None else {}
  return kwargs


# Losses with a sharded implementation in kernels/distributed.py (strategy by name).
_DISTRIBUTED = {"infonce": kernels_distributed.infonce_loss,
                "sigmoid": kernels_distributed.sigmoid_loss}


def _distributed_alignment(loss_config, mesh, axis: str):
  """The sharded loss for `loss.distributed` ("all_gather" | "ring") over the data axis."""
  strategy = loss_config.distributed
  if strategy not in kernels_distributed.STRATEGIES:
    raise UsageError(f"unknown loss.distributed {strategy!r}; allowed: None, "
                     f"{', '.join(kernels_distributed.STRATEGIES)}")
  if loss_config.name not in _DISTRIBUTED:
    raise UsageError(f"loss.name={loss_config.name!r} has no distributed version; "
                     f"loss.distributed works with {', '.join(sorted(_DISTRIBUTED))}")
  if mesh is None:
    raise ValueError("loss.distributed needs the device mesh")
  loss = _DISTRIBUTED[loss_config.name]

  def alignment(text_emb, image_emb, scale, *, bias=None, labels=None):
    del labels  # The sharded losses have diagonal positives only.
    extra = (bias,) if loss_config.name == "sigmoid" else ()
    return loss(text_emb, image_emb, scale, *extra, mesh=mesh, axis=axis, strategy=strategy)
  return alignment


def scale_gradient(x: jnp.ndarray, weight: float) -> jnp.ndarray:
  """x in the forward pass; the gradient flowing back through it is multiplied by weight."""
  if weight == 1.0:
    return x
  return weight * x + (1.0 - weight) * jax.lax.stop_gradient(x)


def _modality_weights(loss_config) -> tuple[float, float]:
  """(text, image) gradient weights from `loss.modality_weights`; both 1 when unset."""
  weights = dict(loss_config.get("modality_weights") or {})
  unknown = sorted(set(weights) - {"text", "image"})
  if unknown:
    raise UsageError(f"unknown loss.modality_weights key(s) {unknown}; allowed: text, image")
  text, image = float(weights.get("text", 1.0)), float(weights.get("image", 1.0))
  if text < 0 or image < 0:
    raise UsageError(f"loss.modality_weights must be >= 0; got text={text}, image={image}")
  return text, image


def _head_weight(loss_config, weight_key: str, switch_key: str, switched_on: bool, why: str,
                 example: str) -> float:
  """`loss.<weight_key>`, which must be > 0 exactly when `switch_key` adds the head it trains."""
  weight = float(loss_config.get(weight_key, 0.0))
  if switched_on != (weight > 0):
    raise UsageError(
        f"loss.{weight_key}={weight} and {switch_key} {'is set' if switched_on else 'is None'}: "
        f"{why}, so set both (e.g. {example} --config.loss.{weight_key}=1.0) or neither")
  return weight


def _image_rows_alignment(loss_config, *, model_fuses: bool, has_task: bool):
  """The alignment loss of `data.sampling="images"` batches; refuses what it cannot do."""
  distributed = loss_config.get("distributed")
  for refused, what in (
      (loss_config.name != "infonce", f"loss.name={loss_config.name!r} (only infonce has the "
       "multi-positive columns that captions shared by several images need)"),
      (distributed, f"loss.distributed={distributed!r} (the sharded losses have diagonal "
       "positives only; use None)"),
      (model_fuses or has_task, "model.fusion / task.label (their heads pair row i's caption "
       "with row i's image, and text rows are not image rows here)")):
    if refused:
      raise UsageError(f"data.sampling='images' does not support {what}; use "
                       "data.sampling='captions' for it")
  return functools.partial(image_rows_infonce, **dict(loss_config.get("kwargs") or {}),
                           **_kernel_kwargs(loss_config, image_rows_infonce))


def build_objective(loss_config, *, model_fuses: bool, has_task: bool = False, mesh=None,
                    data_axis: str = "data", image_rows: bool = False) -> Objective:
  """`objective(outputs, batch) -> (total loss, metrics to log)`.

  mesh: batch on `data_axis`; needed when `loss.distributed` shards the loss. has_task: a
  task classifier (`loss.task_weight` must be > 0), trained on batches' "labels" [b].
  image_rows: batches hold B images, T texts and "image_to_text" [B] (the batcher's
  `image_rows`); the alignment is `image_rows_infonce`.
  """
  image_rows_alignment = (_image_rows_alignment(loss_config, model_fuses=model_fuses,
                                                 has_task=has_task) if image_rows else None)
  if loss_config.get("distributed"):
    alignment = _distributed_alignment(loss_config, mesh, data_axis)
  else:
    loss = LOSSES.get(loss_config.name, config_key="loss.name")
    alignment = functools.partial(loss, **dict(loss_config.get("kwargs") or {}),
                                  **_kernel_kwargs(loss_config, loss))
  matching_weight = _head_weight(loss_config, "matching_weight", "model.fusion", model_fuses,
                                 "the fusion module is trained by the matching loss",
                                 "--config.model.fusion=concat")
  task_weight = _head_weight(loss_config, "task_weight", "task.label", has_task,
                             "the task classifier is trained by the task loss",
                             "--config.task.label=color1")
  text_weight, image_weight = _modality_weights(loss_config)

  def objective(outputs: dict, batch: dict) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """outputs: the model's dict; batch: the input batch ("groups", "labels" if any)."""
    text_emb = scale_gradient(outputs["text_emb"], text_weight)  # [T or b, d]
    image_emb = scale_gradient(outputs["image_emb"], image_weight)  # [B or b, d]
    if image_rows_alignment is not None:
      loss = image_rows_alignment(text_emb, image_emb, outputs["scale"], batch["image_to_text"])
    else:
      loss = alignment(text_emb, image_emb, outputs["scale"], bias=outputs.get("bias"),
                       labels=batch.get("groups"))
    metrics = {}
    if model_fuses:  # Log the parts only when there is more than one.
      logits, labels = outputs["match_logits"], outputs["match_labels"]  # [2b]
      matching = optax.sigmoid_binary_cross_entropy(logits, labels).mean()
      metrics.update(alignment_loss=loss, matching_loss=matching,
                     matching_accuracy=((logits > 0) == (labels > 0.5)).mean())
      loss = loss + matching_weight * matching
    if has_task:
      logits, labels = outputs["class_logits"], batch["labels"]  # [b, classes], [b]
      task = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      metrics.update(task_loss=task, task_accuracy=(logits.argmax(-1) == labels).mean())
      loss = loss + task_weight * task
    return loss, metrics

  return objective
