"""SIGTERM as a request to checkpoint and stop, agreed on by every process.

Why: schedulers send SIGTERM some seconds before killing a job; saving the step just
finished lets the rerun resume there, not at the last periodic checkpoint. Processes
may see the signal at different steps; they stop together once any has it, because a
checkpoint is written collectively.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np


class Preempted(Exception):
  """Training stopped on SIGTERM after checkpointing `step`."""

  def __init__(self, step: int, checkpoint_dir: str):
    super().__init__(f"preempted (SIGTERM): saved a checkpoint at step {step} in "
                     f"{checkpoint_dir}; rerun the same command to resume")
    self.step = step


class SigtermWatch:
  """Context manager: while inside, SIGTERM only raises a flag (`requested()`). Installs
  the handler only on the main thread (Python allows no other); restores it on exit."""

  def __init__(self):
    self._event = threading.Event()
    self._previous = None

  def __enter__(self) -> SigtermWatch:
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self._event.set())
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def requested(self) -> bool:
    """True on every process as soon as any process has received SIGTERM."""
    local = self._event.is_set()
    if jax.process_count() == 1:
      return local
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return bool(np.any(multihost_utils.process_allgather(np.array(local))))
