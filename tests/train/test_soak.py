"""Soak: 20 SIGKILLs at random moments (during start-up, right after a step, during
asynchronous saves), then a run to the end, bitwise identical to an uninterrupted run.

The kill schedule comes from a seed printed with the summary; rerun one with
MMALIGN_SOAK_SEED=<seed>. The seed fixes the schedule (which kind of kill, after
how many steps, which delay), not the exact instant a kill lands on a loaded machine.

Every process, the uninterrupted one included, shares a persistent JAX compilation
cache, which cuts a restart from ~15 s (mostly compiling) to ~5 s.
"""

import json
import os
import secrets
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments.configs import tiny
from mmalign import experiment as experiment_lib
from mmalign.train import state as train_state
from mmalign.train.checkpoint import CHECKPOINT_DIR, Checkpointer
from tests.trees import assert_trees_bitwise_equal

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 60
CHECKPOINT_EVERY = 2  # Saves every other step, so many kills land during one.
CYCLES = 20
SEED_VARIABLE = "MMALIGN_SOAK_SEED"
# How a cycle ends: a random moment of start-up (imports, compiling, restoring), right
# after a step is logged (its asynchronous save has just begun), or a little later.
KILL_MODES = ("startup", "after_step", "after_step_delay")
KILL_MODE_ODDS = (0.2, 0.4, 0.4)
TIMEOUT_S = 240


def _config(data_dir):
  config = tiny.get_config()
  config.data.data_dir = data_dir
  config.train.update(steps=STEPS, checkpoint_every=CHECKPOINT_EVERY, log_every=1,
                      keep_checkpoints=3)
  return config


def _start(workdir, data_dir, cache_dir):
  command = [sys.executable, os.path.join(ROOT, "launch.py"),
             f"--config={os.path.join(ROOT, 'experiments', 'configs', 'tiny.py')}",
             f"--workdir={workdir}", "--mode=train", f"--config.data.data_dir={data_dir}",
             f"--config.train.steps={STEPS}",
             f"--config.train.checkpoint_every={CHECKPOINT_EVERY}",
             "--config.train.log_every=1", "--config.train.keep_checkpoints=3"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # One CPU device, always.
  env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  log = open(os.path.join(workdir, "..", f"{os.path.basename(workdir)}.log"), "a")
  with log:  # The child keeps its own descriptor; a pipe could fill and block it.
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _logged(workdir) -> list[int]:
  """The steps in metrics.jsonl, in order (a resumed run logs some steps again)."""
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    return []
  return [json.loads(line)["step"] for line in lines if line.endswith("}")]


def _near_the_end(workdir, before: int) -> bool:
  """Whether the process that started after `before` logged lines nears the last step: it
  is then killed at once, as the run must never finish, whatever the schedule."""
  return any(step >= STEPS - 6 for step in _logged(workdir)[before:])


def _checkpoint_entries(workdir) -> set[str]:
  try:
    return set(os.listdir(os.path.join(workdir, CHECKPOINT_DIR)))
  except FileNotFoundError:
    return set()


def _wait(process, done, what):
  deadline = time.monotonic() + TIMEOUT_S
  while not done() and process.poll() is None:
    if time.monotonic() > deadline:
      process.kill()
      raise AssertionError(f"timed out waiting for {what}")
    time.sleep(0.005)


def _wait_for_steps(process, workdir, before: int, steps: int, *, until=float("inf"), what):
  """Until the workdir logs `steps` more steps than `before`, the clock passes `until`, the
  run nears its end or the process ends."""
  _wait(process, lambda: (len(_logged(workdir)) - before >= steps or time.monotonic() > until
                          or _near_the_end(workdir, before)), what)


def _final_state(workdir, data_dir):
  config = _config(data_dir)
  exp = experiment_lib.prepare(config, str(workdir), allow_new_tokenizer=False)
  checkpointer = Checkpointer(str(workdir), async_save=False)
  try:
    state, _ = checkpointer.restore(train_state.abstract_train_state(exp), exp.meta())
  finally:
    checkpointer.close()
  assert int(state["step"]) == STEPS
  return state


@pytest.mark.slow
def test_twenty_kills_at_random_moments_then_bitwise_identical(tiny_data_dir, tmp_path):
  seed = int(os.environ.get(SEED_VARIABLE) or secrets.randbelow(2**31))
  rng = np.random.default_rng(seed)
  rerun = f"(rerun with {SEED_VARIABLE}={seed})"
  cache_dir = tmp_path / "jax_cache"
  started = time.monotonic()

  reference = str(tmp_path / "uninterrupted")
  os.makedirs(reference)
  spawned = time.monotonic()
  process = _start(reference, tiny_data_dir, cache_dir)
  _wait_for_steps(process, reference, 0, 1, what="the first step")
  first_step_s = time.monotonic() - spawned  # Compiling included; restarts are faster.
  assert process.wait(timeout=TIMEOUT_S) == 0, f"the uninterrupted run failed {rerun}"
  expected = _final_state(reference, tiny_data_dir)

  workdir = str(tmp_path / "killed")
  os.makedirs(workdir)
  kills = []  # One dict per cycle.
  restart_s = []  # From spawning a resumed process to its first logged step.
  for cycle in range(CYCLES):
    mode = str(rng.choice(KILL_MODES, p=KILL_MODE_ODDS))
    new_steps = int(rng.integers(1, 8))
    fraction = float(rng.uniform())  # Of the start-up time, or of 0.15 s after a step.
    before_logged, before_entries = len(_logged(workdir)), _checkpoint_entries(workdir)
    spawned = time.monotonic()
    process = _start(workdir, tiny_data_dir, cache_dir)
    try:
      if mode == "startup":
        until = spawned + fraction * (np.median(restart_s) if restart_s else first_step_s)
        _wait_for_steps(process, workdir, before_logged, 1, until=until,
                        what=f"start-up in cycle {cycle} {rerun}")
      else:
        _wait_for_steps(process, workdir, before_logged, 1,
                        what=f"the first step of cycle {cycle} {rerun}")
        restart_s.append(time.monotonic() - spawned)
        _wait_for_steps(process, workdir, before_logged, new_steps,
                        what=f"{new_steps} steps in cycle {cycle} {rerun}")
        if mode == "after_step_delay" and not _near_the_end(workdir, before_logged):
          time.sleep(fraction * 0.15)
      assert process.poll() is None, (
          f"cycle {cycle}: the process ended (exit code {process.returncode}) before it was "
          f"killed {rerun}")
      process.send_signal(signal.SIGKILL)
      process.wait(timeout=TIMEOUT_S)
    finally:
      if process.poll() is None:
        process.kill()
        process.wait()
    left = _checkpoint_entries(workdir) - before_entries
    logged = _logged(workdir)
    kills.append(dict(mode=mode, steps_logged=len(logged) - before_logged,
                      last_step=logged[-1] if logged else 0,
                      during_save=any("tmp" in name for name in left)))

  process = _start(workdir, tiny_data_dir, cache_dir)
  assert process.wait(timeout=TIMEOUT_S) == 0, f"the final run failed {rerun}"
  entries = _checkpoint_entries(workdir)
  corrupt = sorted(name for name in entries if name.endswith(".corrupt"))
  during_save = sum(k["during_save"] for k in kills)
  print(f"\nsoak seed {seed} {rerun}: {CYCLES} SIGKILLs in {time.monotonic() - started:.0f} s "
        f"(first step after {first_step_s:.1f} s cold, "
        f"{np.median(restart_s) if restart_s else float('nan'):.1f} s on a restart); "
        + ", ".join(f"{sum(k['mode'] == m for k in kills)} {m}" for m in KILL_MODES)
        + f"; {during_save} landed during a save (an unfinished orbax tmp dir left behind); "
        f"killed at logged steps {[k['last_step'] for k in kills]}; "
        f".corrupt steps: {corrupt or 'none'}")
  assert during_save, f"no kill landed during a save {rerun}"
  assert_trees_bitwise_equal(_final_state(workdir, tiny_data_dir), expected)
