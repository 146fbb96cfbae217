"""Joining a multi-process job: `jax.distributed.initialize` from flags or the launcher's env.

Every process must call it before touching a device, with the same coordinator: from the
flags `--coordinator_address`, `--num_processes`, `--process_id` if given, else from an
environment JAX detects (Cloud TPU pods, SLURM, Open MPI), else there is a single process.
On CPU the cross-process collectives go through gloo.
"""

from __future__ import annotations

import os

import jax

from mmalign.errors import UsageError

# Variables whose presence means a launcher started several processes that JAX can
# wire up without arguments (its cluster auto-detection).
_AUTO_DETECTED = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Joins the job if there is one; returns whether this is a multi-process run."""
  explicit = (coordinator_address, num_processes, process_id)
  if any(value is not None for value in explicit):
    if None in explicit:
      raise UsageError("--coordinator_address, --num_processes and --process_id go together; "
                       f"got {coordinator_address!r}, {num_processes!r}, {process_id!r}")
    if not 0 <= process_id < num_processes:
      raise UsageError(f"--process_id={process_id} must be in [0, --num_processes="
                       f"{num_processes})")
    _cpu_collectives()
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return num_processes > 1
  if _launched_by_cluster():
    _cpu_collectives()
    jax.distributed.initialize()
    return jax.process_count() > 1
  return False


def _launched_by_cluster() -> bool:
  return any(os.environ.get(name) not in (None, "", "1") for name in _AUTO_DETECTED)


def _cpu_collectives() -> None:
  """CPU processes exchange arrays through gloo (harmless on GPU/TPU)."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
