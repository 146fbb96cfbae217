"""The training objective: an alignment loss, plus image–text matching when the model fuses.

The design survey's multi-task option: `total = alignment + matching_weight ·
matching`, where matching is binary cross-entropy on the fused pairs the model
scores (see `DualEncoder`). Returns the metrics to log beside the total.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax.numpy as jnp
import optax

from kernels import api as kernels_api
from kernels import distributed as kernels_distributed
from mmalign.errors import UsageError
from mmalign.losses.contrastive import LOSSES

Objective = Callable[[dict], tuple[jnp.ndarray, dict[str, jnp.ndarray]]]


def _kernel_kwargs(loss_config) -> dict:
  """impl and that impl's block sizes from `loss.kernel` ("auto" resolved for the backend)."""
  kernel = loss_config.get("kernel")
  if kernel is None:
    return {}
  impl = kernel.get("impl", "auto")
  if impl not in kernels_api.IMPLS:
    raise UsageError(f"unknown loss.kernel.impl {impl!r}; allowed: {', '.join(kernels_api.IMPLS)}")
  resolved = kernels_api.resolve_impl(impl)
  blocks = kernel.get(resolved)
  return {"impl": impl, "block_kwargs": dict(blocks) if blocks is not None else {}}


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

  def alignment(text_emb, image_emb, scale, *, bias=None):
    extra = (bias,) if loss_config.name == "sigmoid" else ()
    return loss(text_emb, image_emb, scale, *extra, mesh=mesh, axis=axis,
                strategy=strategy)
  return alignment


def build_objective(loss_config, *, model_fuses: bool, mesh=None,
                    data_axis: str = "data") -> Objective:
  """`mesh` (batch on `data_axis`) is needed when `loss.distributed` shards the loss."""
  if loss_config.get("distributed"):
    alignment = _distributed_alignment(loss_config, mesh, data_axis)
  else:
    alignment = functools.partial(LOSSES.get(loss_config.name, config_key="loss.name"),
                                  **dict(loss_config.get("kwargs") or {}),
                                  **_kernel_kwargs(loss_config))
  matching_weight = float(loss_config.get("matching_weight", 0.0))
  if model_fuses != (matching_weight > 0):
    raise UsageError(
        f"loss.matching_weight={matching_weight} and model.fusion "
        f"{'is set' if model_fuses else 'is None'}: the fusion module is trained by the "
        "matching loss, so set both (e.g. --config.model.fusion=concat "
        "--config.loss.matching_weight=1.0) or neither")

  def objective(outputs: dict) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    loss = alignment(outputs["text_emb"], outputs["image_emb"], outputs["scale"],
                     bias=outputs.get("bias"))
    metrics = {}
    if model_fuses:  # Log the parts only when there is more than one.
      metrics["alignment_loss"] = loss
      logits, labels = outputs["match_logits"], outputs["match_labels"]  # [2b]
      matching = optax.sigmoid_binary_cross_entropy(logits, labels).mean()
      metrics["matching_loss"] = matching
      metrics["matching_accuracy"] = ((logits > 0) == (labels > 0.5)).mean()
      loss = loss + matching_weight * matching
    return loss, metrics

  return objective
