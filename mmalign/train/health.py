"""The non-finite guard without a host round trip per step.

Each step's flags fold into a few device scalars (`Health`) by one small jitted function,
dispatched asynchronously like the step itself; the host reads them only where it must
(`check`: before logging, saving, evaluating, stopping). Why: reading the loss back every
step serialises dispatch on an accelerator; a check at each such point still names the first
bad step and still runs before anything of it is logged or saved.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

# What went wrong first: the loss or gradient, or (both finite) the updated state.
_LOSS, _STATE = 1, 2


class NonFiniteLossError(FloatingPointError):
  """The loss, the gradient norm or the updated state of a step is NaN or infinite."""


@jax.jit
def _fold(health: dict, metrics: dict, step) -> dict:
  loss_ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
  if "skipped" in metrics:  # on_nonfinite="skip": the step judged itself.
    bad = metrics["skipped"] > 0
  else:
    bad = ~loss_ok | (metrics["state_finite"] == 0)
  first = (health["first_step"] == 0) & bad
  pick = lambda new, old: jnp.where(first, new, old)  # noqa: E731
  return {"first_step": pick(step, health["first_step"]),
          "kind": pick(jnp.where(loss_ok, _STATE, _LOSS), health["kind"]),
          "loss": pick(metrics["loss"].astype(jnp.float32), health["loss"]),
          "grad_norm": pick(metrics["grad_norm"].astype(jnp.float32), health["grad_norm"]),
          "count": health["count"] + bad.astype(jnp.int32)}


def _clean() -> dict:
  return {"first_step": jnp.int32(0), "kind": jnp.int32(0), "loss": jnp.float32(0),
          "grad_norm": jnp.float32(0), "count": jnp.int32(0)}


class Health:
  """Non-finite steps since the last `check`, kept on the device.

  `skip`: the step itself kept the old state (train.on_nonfinite="skip") and `check` warns;
  otherwise `check` raises NonFiniteLossError naming the first bad step.
  """

  def __init__(self, skip: bool):
    self._skip = skip
    self._state = _clean()

  def update(self, step: int, metrics: dict) -> None:
    self._state = _fold(self._state, metrics, np.int32(step))

  def check(self) -> None:
    """Reads the flags (one transfer); raises or warns about the first bad step."""
    found = jax.device_get(self._state)
    if not int(found["count"]):
      return
    self._state = _clean()
    step, count = int(found["first_step"]), int(found["count"])
    if self._skip:
      others = f" ({count} updates skipped since the last check)" if count > 1 else ""
      warnings.warn(f"step {step}: non-finite loss, gradient or updated state; the update "
                    f"was skipped (train.on_nonfinite='skip'){others}")
      return
    if int(found["kind"]) == _LOSS:
      what = f"loss {float(found['loss'])} / gradient norm {float(found['grad_norm'])}"
    else:
      what = "parameters or optimizer state after the update (loss and gradient were finite)"
    raise NonFiniteLossError(
        f"non-finite {what} at step {step}; nothing of this step was saved, so the latest "
        "checkpoint is the last good state. Lower train.learning_rate or check the inputs, "
        "then rerun to resume from it.")
