"""Small jobs with one home: atomic file writes, console messages and wall-clock timing.

Shared by the library, experiments and benchmarks, so every timing loop waits for the
device the same way.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any


def write_atomic(path: str, data: bytes | str) -> None:
  """Writes `path` whole or not at all: a temporary file, fsync, then a rename."""
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(data.encode("utf-8") if isinstance(data, str) else data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path: str, data: Any) -> None:
  """`write_atomic` of `data` as indented JSON."""
  write_atomic(path, json.dumps(data, indent=2))


def say(message: str) -> None:
  """Prints on process 0 only, flushed so progress shows in pipes and logs."""
  jax = sys.modules.get("jax")  # Scripts that never load JAX are one process.
  if jax is None or jax.process_index() == 0:
    print(message, flush=True)


def time_calls(fn: Callable[[], Any], *, repeats: int, warmup: int = 1) -> tuple[Any, list[float]]:
  """Calls `fn()` warmup + repeats times; returns the last output and each timed call's
  seconds. JAX outputs are waited for (`block_until_ready`), so dispatch is not timed alone."""
  out = None
  for _ in range(warmup):
    out = _ready(fn())
  times = []
  for _ in range(repeats):
    started = time.perf_counter()
    out = _ready(fn())
    times.append(time.perf_counter() - started)
  return out, times


def _ready(x):
  jax = sys.modules.get("jax")
  return jax.block_until_ready(x) if jax is not None else x


def read_lines(path: str, config_key: str) -> list[str]:
  """The non-empty lines of a text file (class names, prompt templates), stripped;
  UsageError naming `config_key` when it is missing or empty."""
  from mmalign.errors import UsageError  # pylint: disable=import-outside-toplevel
  try:
    with open(path, encoding="utf-8") as f:
      lines = [line.strip() for line in f if line.strip()]
  except OSError as e:
    raise UsageError(f"{config_key}={path!r} cannot be read: {e.strerror}") from None
  if not lines:
    raise UsageError(f"{config_key}={path!r} holds no lines")
  return lines
