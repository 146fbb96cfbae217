"""Mixed precision: the compute dtype of the training forward pass.

`train.compute_dtype="bfloat16"` runs the towers, projection heads and fusion module in
bfloat16 on a clone of the model that only the train step uses; parameters, gradients and
the optimizer's master weights stay float32, and so do the heads' outputs (`models/heads.py`
casts them back), hence the losses. Eval, search and checkpoints keep the float32 model,
whose parameter tree is the same.
"""

from __future__ import annotations

import jax.numpy as jnp


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def with_compute_dtype(model, dtype):
  """`model` (a DualEncoder) computing in `dtype`; the same object for float32.

  Every registered encoder, `Projection` and fusion module has a `dtype` field, which
  their kwargs blocks reach; the match and task classifiers (one Dense each) stay float32.
  """
  if jnp.dtype(dtype) == jnp.float32:
    return model
  fields = ["text_kwargs", "image_kwargs", "projection_kwargs"]
  fields += ["fusion_kwargs"] if model.fusion is not None else []
  return model.clone(**{f: {**dict(getattr(model, f) or {}), "dtype": dtype} for f in fields})
