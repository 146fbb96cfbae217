"""Several local CPU processes started together, as the multi-process tests need them."""

import os
import socket
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def coordinator_address() -> str:
  """localhost with a free port, for jax.distributed's coordinator."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return f"localhost:{s.getsockname()[1]}"


def run_together(commands: list[list[str]], timeout: float = 300) -> list[str]:
  """Runs the commands at once (CPU only, no simulated devices) and returns their stdout;
  fails with a command's stderr tail when it exits non-zero."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  workers = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for command in commands]
  outputs = []
  for worker in workers:
    stdout, stderr = worker.communicate(timeout=timeout)
    assert worker.returncode == 0, stderr[-3000:]
    outputs.append(stdout)
  return outputs
