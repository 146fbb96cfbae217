"""Initialising a model from published weights (`config.init`), one importer per format.

An importer (`IMPORTERS[format](path, params, tokenizer) -> Imported`) reads a local
file into arrays keyed by this model's parameter paths ("text_tower/embed/embedding");
`initialise` checks each one's shape and values and swaps it into the freshly initialised
parameters. A new format is one module here and one line in IMPORTERS. Why keyed by
path: the run can then print exactly what was loaded and what stays newly initialised.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mmalign.checkpoints import Imported, glove
from mmalign.errors import UsageError
from mmalign.registry import Registry


IMPORTERS: Registry = Registry("checkpoint format")
IMPORTERS.register("glove")(glove.load)

SUFFIXES = {".txt": "glove", ".vec": "glove"}  # How `init.format` is detected when unset.


def format_of(init_config) -> str:
  """`init.format`, or the format its `init.checkpoint` suffix names; UsageError if neither."""
  if init_config.get("format"):
    return init_config.format  # settings.RULES checked it against IMPORTERS.
  path = init_config.checkpoint
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in SUFFIXES:
    raise UsageError(f"init.checkpoint={path!r}: cannot tell its format from {suffix or 'no'} "
                     f"suffix; set init.format to one of {', '.join(IMPORTERS.names())}")
  return SUFFIXES[suffix]


def check(init_config) -> None:
  """Before any work: the file exists and its format is known."""
  path = init_config.get("checkpoint")
  if not path:
    return
  if not os.path.exists(path):
    raise UsageError(f"init.checkpoint={path!r} does not exist")
  format_of(init_config)


def initialise(params: dict, init_config, tokenizer) -> tuple[dict, list[str]]:
  """(params with the checkpoint's arrays in place, lines saying what came from where).

  Raises UsageError naming the tensor for a path this model lacks, a shape that differs
  (both shapes named) or a non-finite value; `params` is then left as it was.
  """
  path = init_config.checkpoint
  imported: Imported = IMPORTERS.get(format_of(init_config))(path, params, tokenizer)
  flat = traverse_util.flatten_dict(params, sep="/")
  for name, value in imported.arrays.items():
    if name not in flat:
      raise UsageError(f"init.checkpoint {path!r}: {name} has no place in this model")
    if tuple(value.shape) != tuple(flat[name].shape):
      raise UsageError(f"init.checkpoint {path!r}: {name} has shape {tuple(value.shape)} "
                       f"there and {tuple(flat[name].shape)} in this model")
    if not np.all(np.isfinite(value)):
      raise UsageError(f"init.checkpoint {path!r}: {name} holds non-finite values")
  loaded = {name: jnp.asarray(value, flat[name].dtype) for name, value in imported.arrays.items()}
  fresh = sorted(set(flat) - set(loaded))
  lines = [f"init from {path} ({format_of(init_config)}): loaded {len(loaded)} tensors "
           f"({_count(loaded):,} parameters): {', '.join(sorted(loaded))}",
           f"  newly initialised: {len(fresh)} tensors "
           f"({_count({n: flat[n] for n in fresh}):,} parameters)"]
  if imported.ignored:
    lines.append(f"  ignored from the checkpoint: {len(imported.ignored)} tensors: "
                 f"{', '.join(imported.ignored)}")
  lines += [f"  {note}" for note in imported.notes]
  return traverse_util.unflatten_dict({**flat, **loaded}, sep="/"), lines


def _count(arrays: dict) -> int:
  return sum(int(np.prod(a.shape)) for a in arrays.values())
