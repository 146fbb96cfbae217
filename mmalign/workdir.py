"""One run at a time per workdir: an exclusive lock held for the run's duration.

Why: two runs on one workdir interleave metrics.jsonl and leave a checkpoint matching
neither. The lock is an `fcntl.flock` on `<workdir>/.lock`, released by the kernel when
the holder exits or crashes, so a stale lock never blocks a rerun; the file, naming the
holder, is never deleted (that races with the next holder). Re-entrant within a process;
in a multi-process job only process 0 takes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time

from mmalign.errors import UsageError

LOCK_FILE = ".lock"

_held: dict[str, tuple[int, int]] = {}  # realpath -> (fd, depth)


def check_writable(workdir: str) -> None:
  """Creates the workdir if needed; fails at once if it cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_probe{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UsageError(f"--workdir {workdir!r} is not writable: {e.strerror}") from None


@contextlib.contextmanager
def locked(workdir: str, *, process_index: int = 0):
  """Holds the workdir's lock inside the block; UsageError naming the holder if taken."""
  if process_index != 0:
    yield
    return
  check_writable(workdir)
  key = os.path.realpath(workdir)
  fd, depth = _held.get(key, (None, 0))
  _held[key] = (_acquire(workdir) if fd is None else fd, depth + 1)
  try:
    yield
  finally:
    fd, depth = _held.pop(key)
    if depth > 1:
      _held[key] = (fd, depth - 1)
    else:
      os.close(fd)  # Closing releases the flock.


def _acquire(workdir: str) -> int:
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
    os.close(fd)
    raise UsageError(f"--workdir {workdir!r} is in use by {holder}; wait for that run to "
                     "end or use another --workdir") from None
  os.ftruncate(fd, 0)
  os.pwrite(fd, (f"PID {os.getpid()} on host {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n").encode(), 0)
  return fd
