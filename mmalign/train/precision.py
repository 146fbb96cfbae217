"""Mixed precision: the compute dtype of the training forward pass.

`train.compute_dtype="bfloat16"` runs the towers, projection heads and fusion
module in bfloat16 while parameters stay float32 (`param_dtype` is untouched),
so gradients and the optimizer's master weights are float32. What stays
float32 regardless: the heads' outputs (`models/heads.py` casts embeddings and
logits back), hence the normalisation, the losses and their reductions.

The dtype is set on a clone of the model used by the train step only; the
checkpointed architecture (and eval, search) keep the float32 model, and the
parameter tree is the same for both.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _with_dtype(kwargs: dict[str, Any] | None, dtype) -> dict[str, Any]:
  return {**dict(kwargs or {}), "dtype": dtype}


def with_compute_dtype(model, dtype):
  """`model` (a DualEncoder) computing in `dtype`; the same object for float32.

  Every registered encoder, `Projection` and fusion module has a `dtype`
  field, which their kwargs blocks reach; the match and task classifiers are
  one small Dense each and stay float32.
  """
  if jnp.dtype(dtype) == jnp.float32:
    return model
  changes = {"text_kwargs": _with_dtype(model.text_kwargs, dtype),
             "image_kwargs": _with_dtype(model.image_kwargs, dtype),
             "projection_kwargs": _with_dtype(model.projection_kwargs, dtype)}
  if model.fusion is not None:
    changes["fusion_kwargs"] = _with_dtype(model.fusion_kwargs, dtype)
  return model.clone(**changes)
