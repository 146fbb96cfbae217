"""Never lose a run: finite-only saves, checksummed checkpoints, a locked workdir, resume
compatibility and metrics failures that keep the state (mmalign/train, mmalign/workdir.py)."""

import errno
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import tiny
from mmalign import experiment as experiment_lib
from mmalign.train import state as train_state
from mmalign import workdir as workdir_lib
from mmalign.errors import UsageError
from mmalign.train import checkpoint as checkpoint_lib
from mmalign.train import trainer
from mmalign.train.checkpoint import Checkpointer
from mmalign.train.metrics_log import MetricsLog
from tests.trees import assert_trees_bitwise_equal

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(data_dir, **train):
  config = tiny.get_config()
  config.data.data_dir = data_dir
  config.train.update({"steps": 6, "checkpoint_every": 3, "log_every": 1, **train})
  return config


def _nan_learning_rate(monkeypatch):
  """The loss and gradient stay finite; every updated parameter becomes NaN."""
  monkeypatch.setattr(train_state, "learning_rate_schedule",
                      lambda **_: (lambda step: jnp.float32(jnp.nan)))


def test_a_nan_update_stops_before_anything_is_saved(tiny_data_dir, tmp_path, monkeypatch):
  _nan_learning_rate(monkeypatch)
  with pytest.raises(trainer.NonFiniteLossError,
                     match=r"parameters or optimizer state after the update .* at step 1"):
    trainer.train(experiment_lib.for_training(_config(tiny_data_dir), str(tmp_path)))
  assert Checkpointer(str(tmp_path)).latest_step() is None


def test_a_nan_update_is_skipped_and_only_finite_states_are_saved(tiny_data_dir, tmp_path,
                                                                  monkeypatch):
  _nan_learning_rate(monkeypatch)
  config = _config(tiny_data_dir, on_nonfinite="skip")
  with pytest.warns(UserWarning, match="non-finite"):
    state = trainer.train(experiment_lib.for_training(config, str(tmp_path)))
  exp = experiment_lib.prepare(config, str(tmp_path), allow_new_tokenizer=False)
  initial = train_state.init_train_state(exp)
  assert int(state["step"]) == 6
  assert_trees_bitwise_equal(state["params"], initial["params"])  # Every update skipped.
  variables, step = train_state.restore_variables(exp)
  assert step == 6 and all(np.isfinite(x).all() for x in jax.tree.leaves(variables))


def test_the_checkpointer_refuses_a_non_finite_state(tmp_path):
  checkpointer = Checkpointer(str(tmp_path), async_save=False)
  state = {"params": {"w": jnp.array([1.0, jnp.inf])}, "step": jnp.int32(1)}
  with pytest.raises(checkpoint_lib.NonFiniteStateError, match=r"\['params'\]\['w'\]"):
    checkpointer.save(1, state, {}, force=True)
  checkpointer.close()
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "1"))


def test_checksums_cover_every_array_and_change_with_one_bit():
  state = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.int32(7)}
  sums = checkpoint_lib.checksums(state)
  assert set(sums) == {"['a']", "['b']"}
  flipped = state["a"].copy()
  flipped.view(np.uint32)[1, 2] ^= 1
  assert checkpoint_lib.checksums({**state, "a": flipped})["['a']"] != sums["['a']"]
  reshaped = checkpoint_lib.checksums({**state, "a": state["a"].reshape(3, 2)})
  assert reshaped["['a']"] != sums["['a']"]  # Same bytes, other shape.


def test_changed_array_data_is_detected_and_the_previous_checkpoint_restored(
    tiny_data_dir, tmp_path):
  config = _config(tiny_data_dir)
  trainer.train(experiment_lib.for_training(config, str(tmp_path)))
  exp = experiment_lib.prepare(config, str(tmp_path), allow_new_tokenizer=False)
  abstract = train_state.abstract_train_state(exp)
  checkpointer = Checkpointer(str(tmp_path), async_save=False)
  state, meta = checkpointer.restore(abstract, exp.meta(), 6)
  # A step-6 checkpoint whose data decodes fine but differs from what its checksums
  # describe: what a flipped byte inside an uncompressed chunk gives.
  tampered = jax.tree.map(lambda x: x, state)
  tampered["params"] = jax.tree.map(lambda x: x + 1e-3 if x.ndim else x, state["params"])
  saved_sums = meta["checksums"]
  os.rename(os.path.join(checkpointer.directory, "6"), os.path.join(tmp_path, "6.orig"))
  checkpointer._manager.reload()  # pylint: disable=protected-access
  original = checkpoint_lib.checksums
  try:
    checkpoint_lib.checksums = lambda _: saved_sums
    checkpointer.save(6, tampered, meta={k: v for k, v in meta.items() if k != "checksums"},
                      force=True)
  finally:
    checkpoint_lib.checksums = original
  checkpointer.close()
  with pytest.warns(UserWarning, match=r"checkpoints/6 is unreadable .*CorruptCheckpointError"):
    variables, step = train_state.restore_variables(exp)  # The eval/search path.
  assert step == 3
  assert {"3", "6.corrupt"} <= set(os.listdir(os.path.join(tmp_path, "checkpoints")))


def test_the_workdir_lock_names_its_holder_and_is_reentrant(tmp_path):
  with workdir_lib.locked(str(tmp_path)):
    with workdir_lib.locked(str(tmp_path)):  # The trainer inside the launcher.
      pass
    script = ("from mmalign import workdir; import sys\n"
              f"with workdir.locked({str(tmp_path)!r}): pass\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert f"is in use by PID {os.getpid()} on host" in result.stderr
  with workdir_lib.locked(str(tmp_path)):  # Released on exit.
    pass


def test_a_killed_holder_releases_the_lock(tmp_path):
  script = ("from mmalign import workdir; import time\n"
            f"with workdir.locked({str(tmp_path)!r}):\n  print('held', flush=True)\n"
            "  time.sleep(60)\n")
  holder = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
  assert holder.stdout.readline().strip() == "held"
  with pytest.raises(UsageError, match=f"in use by PID {holder.pid}"):
    with workdir_lib.locked(str(tmp_path)):
      pass
  holder.send_signal(signal.SIGKILL)
  holder.wait(timeout=30)
  with workdir_lib.locked(str(tmp_path)):
    pass


@pytest.mark.slow
def test_a_second_launcher_on_a_busy_workdir_fails_at_once(tiny_data_dir, tmp_path):
  command = [sys.executable, os.path.join(ROOT, "launch.py"),
             f"--config={os.path.join(ROOT, 'experiments', 'configs', 'tiny.py')}",
             f"--workdir={tmp_path}", "--mode=train", f"--config.data.data_dir={tiny_data_dir}",
             "--config.train.steps=100000", "--config.train.log_every=1"]
  env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu"}
  first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 120
    while not os.path.exists(tmp_path / "metrics.jsonl"):
      assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()[-2000:]
      time.sleep(0.05)
    started = time.monotonic()
    second = subprocess.run([*command, "--config.train.seed=1"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        l for l in second.stderr.strip().splitlines() if f"in use by PID {first.pid}" in l]
    assert time.monotonic() - started < 60  # At once: no training, no waiting.
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)


@pytest.fixture(scope="module")
def trained_workdir(tiny_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("trained"))
  trainer.train(experiment_lib.for_training(_config(tiny_data_dir), workdir))
  return workdir


def test_a_changed_tokenizer_setting_is_refused_by_name(tiny_data_dir, trained_workdir):
  config = _config(tiny_data_dir)
  config.text.vocab_size = 100
  with pytest.raises(UsageError, match=r"text\.vocab_size=100 differs from the tokenizer"):
    trainer.train(experiment_lib.for_training(config, trained_workdir))


def test_another_dataset_config_is_refused_by_name(tiny_data_dir, trained_workdir):
  config = _config(tiny_data_dir, steps=12)
  exp = experiment_lib.prepare(config, trained_workdir, allow_new_tokenizer=False)
  meta = {**exp.meta(), "dataset": "unicode_glyphs/full"}
  checkpointer = Checkpointer(trained_workdir, async_save=False)
  with pytest.raises(checkpoint_lib.CheckpointMismatchError,
                     match=r'dataset="unicode_glyphs/tiny", this run has '
                           r'dataset="unicode_glyphs/full"'):
    checkpointer.restore(train_state.abstract_train_state(exp), meta)
  checkpointer.close()


def test_a_failed_metrics_write_ends_the_run_with_the_state_saved(tiny_data_dir, tmp_path,
                                                                  monkeypatch):
  clean_log = MetricsLog.log

  def full_disk(self, step, metrics):
    if step == 4:
      raise OSError(errno.ENOSPC, "No space left on device")
    return clean_log(self, step, metrics)

  monkeypatch.setattr(MetricsLog, "log", full_disk)
  with pytest.raises(trainer.RunEndedError, match=r"step 4 .*No space left.* is saved"):
    trainer.train(experiment_lib.for_training(_config(tiny_data_dir), str(tmp_path)))
  assert Checkpointer(str(tmp_path)).latest_step() == 4
  monkeypatch.setattr(MetricsLog, "log", clean_log)
  assert int(trainer.train(experiment_lib.for_training(_config(tiny_data_dir), str(tmp_path)))["step"]) == 6


def test_keep_one_never_deletes_the_resumed_checkpoint_before_a_newer_one_is_written(
    tiny_data_dir, tmp_path, monkeypatch):
  trainer.train(experiment_lib.for_training(_config(tiny_data_dir, steps=3, keep_checkpoints=1), str(tmp_path)))

  def failing_save(*args, **kwargs):
    raise OSError(errno.EIO, "disk failed")

  monkeypatch.setattr(Checkpointer, "save", failing_save)
  with pytest.raises(OSError):
    trainer.train(experiment_lib.for_training(_config(tiny_data_dir, steps=6, keep_checkpoints=1), str(tmp_path)))
  assert os.listdir(os.path.join(tmp_path, "checkpoints")) == ["3"]


@pytest.fixture
def small_disk(tmp_path):
  """A 1.2 MB tmpfs: room for the tokenizer and about one tiny checkpoint (needs root)."""
  mount_point = tmp_path / "small_disk"
  mount_point.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs",
                            str(mount_point)], capture_output=True, check=False)
  if mounted.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
  yield mount_point
  subprocess.run(["umount", str(mount_point)], check=False)


@pytest.mark.slow
def test_a_full_disk_ends_the_run_with_one_line_naming_the_last_checkpoint(tiny_data_dir,
                                                                         small_disk):
  command = [sys.executable, os.path.join(ROOT, "launch.py"),
             f"--config={os.path.join(ROOT, 'experiments', 'configs', 'tiny.py')}",
             f"--workdir={small_disk / 'w'}", "--mode=train",
             f"--config.data.data_dir={tiny_data_dir}", "--config.train.steps=30",
             "--config.train.checkpoint_every=3", "--config.train.keep_checkpoints=5"]
  env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu"}
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 1, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-3000:]  # No traceback from orbax's writer threads.
  assert lines[0].startswith("error: could not write a checkpoint"), lines
  assert "no space left" in lines[0]
  latest = Checkpointer(str(small_disk / "w")).latest_step()
  assert latest is not None and f"latest complete checkpoint is step {latest}" in lines[0]
