"""The train state of a run: its optimizer, its initial value and its restore.

A train state is `{params, opt_state, step[, model_state]}`, what a checkpoint holds;
`model_state` holds non-trained collections (BatchNorm statistics), absent when none.
Eval and search get only the variables (`restore_variables`), so nothing below the
train layer knows about optimizers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from mmalign import experiment as experiment_lib
from mmalign import mesh as mesh_lib
from mmalign import settings, utils
from mmalign.checkpoints import importers
from mmalign.errors import UsageError
from mmalign.train.checkpoint import Checkpointer
from mmalign.train.optimizer import adamw, learning_rate_schedule


def optimizer(config):
  """(optimizer, learning-rate schedule) from config.train."""
  tc = config.train
  schedule = learning_rate_schedule(peak=tc.learning_rate, warmup_steps=tc.warmup_steps,
                                    total_steps=tc.steps)
  multipliers = settings.value(config, "train.learning_rate_multipliers")
  return adamw(schedule, weight_decay=tc.weight_decay, grad_clip_norm=tc.grad_clip_norm,
               frozen=tuple(tc.get("frozen", ())),
               moments_dtype=settings.value(config, "train.optimizer_moments_dtype"),
               learning_rate_multipliers=tuple(tuple(pair) for pair in multipliers)), schedule


def init_train_state(exp: experiment_lib.Experiment) -> dict:
  """The state before step 1, from `train.seed`."""
  variables = exp.init_variables(exp.config.train.seed)
  params = variables.pop("params")
  state = {"params": params, "opt_state": optimizer(exp.config)[0].init(params),
           "step": jnp.zeros((), jnp.int32)}
  if variables:
    state["model_state"] = variables
  return state


def with_pretrained(exp: experiment_lib.Experiment, state: dict) -> dict:
  """`state` with `init.checkpoint`'s weights in its variables (unchanged when unset); prints
  what was loaded. The optimizer state needs no change: Adam's moments start at zero."""
  if not settings.value(exp.config, "init.checkpoint"):
    return state
  variables, lines = importers.initialise(variables_of(state), exp.config.init, exp.tokenizer)
  for line in lines:
    utils.say(line)
  params = variables.pop("params")
  return {**state, "params": params, **({"model_state": variables} if variables else {})}


def abstract_train_state(exp: experiment_lib.Experiment):
  """Shapes and dtypes of `init_train_state(exp)`, computed without running it."""
  return jax.eval_shape(lambda: init_train_state(exp))


def restorable(abstract_state):
  """`abstract_state` (or a state's shapes and dtypes) replicated over every device of every
  process: what a checkpoint is restored into, so each process holds all of it."""
  replicated = NamedSharding(jax.make_mesh((jax.device_count(),), ("devices",)), PartitionSpec())
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                      abstract_state)


def variables_of(state: dict) -> dict:
  """The model variables ({"params", ...state collections}) of a train state."""
  return {"params": state["params"], **state.get("model_state", {})}


def restore_variables(exp: experiment_lib.Experiment, step: int | None = None):
  """(variables, step) of the latest good (or the given) checkpoint in the workdir (a
  corrupt latest one is moved aside, as in training); in a workdir without one,
  `init.checkpoint`'s weights at step 0, so a published model needs no training step."""
  checkpointer = Checkpointer(exp.workdir, keep=exp.config.train.keep_checkpoints, async_save=False)
  try:
    if checkpointer.latest_step() is None:
      if step is None and settings.value(exp.config, "init.checkpoint"):
        exp.save_tokenizer()  # Later runs in this workdir read captions the same way.
        return jax.device_get(variables_of(with_pretrained(exp, init_train_state(exp)))), 0
      raise UsageError(f"--workdir {exp.workdir!r} has no checkpoint: run --mode=train first")
    abstract = restorable(abstract_train_state(exp))
    if step is None:
      state, _ = checkpointer.restore_latest_good(abstract, exp.meta())
      if state is None:
        raise UsageError(f"--workdir {exp.workdir!r}: no checkpoint could be read (the "
                         "unreadable ones were moved aside); run --mode=train again")
    else:
      state, _ = checkpointer.restore(abstract, exp.meta(), step)
  finally:
    checkpointer.close()
  # Each process's own copy, on the devices it evaluates with (`exp.eval_mesh`).
  local = jax.tree.map(lambda x: x.addressable_data(0), variables_of(state))
  return jax.device_put(local, mesh_lib.replicated(exp.eval_mesh())), int(state["step"])
