"""A fault-injection test flips bytes at many offsets in every file of a checkpoint and
shows that no flipped checkpoint is ever restored silently.

Each flip (4 bytes xor 0xFF, in a fresh copy of the checkpoints) must end one of two ways:
  detected: step 6 is moved to `6.corrupt` with a warning naming it, and step 3 is
            restored, bitwise identical to the pristine step 3;
  unused:   the reader never touches those bytes (a superseded OCDBT node, a commit
            marker), so step 6 is restored bitwise identical to the pristine step 6.
Anything else (a wrong step 6, an exception, a silent fallback) fails the test.
"""

import collections
import os
import shutil
import time
import warnings

import jax
import numpy as np
import pytest

from experiments.configs import tiny
from mmalign import experiment as experiment_lib
from mmalign.train import state as train_state
from mmalign.train import trainer
from mmalign.train.checkpoint import CHECKPOINT_DIR, Checkpointer
from tests.trees import assert_trees_bitwise_equal

FLIP_BYTES = 4
OFFSETS_PER_FILE = 12  # Start, middle, last bytes and random ones between.
DATA_FILE_BYTES = 64 * 1024  # Larger files hold the arrays' data (one or two files here)
BYTES_PER_OFFSET = 8 * 1024  # and get one flip per 8 KiB, up to
MAX_OFFSETS = 64

# Orbax drops the futures of the reads that failed on purpose here; pytest reports them.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _config(data_dir):
  config = tiny.get_config()
  config.data.data_dir = data_dir
  config.train.update(steps=6, checkpoint_every=3, log_every=1)
  return config


class Pristine:
  """A trained workdir with checkpoints 3 and 6 and what each restores to."""

  def __init__(self, workdir, config):
    self.workdir, self.config = workdir, config
    self.exp = experiment_lib.prepare(config, workdir, allow_new_tokenizer=False)
    self.abstract = train_state.abstract_train_state(self.exp)
    self.meta = self.exp.meta()
    checkpointer = Checkpointer(workdir, async_save=False)
    self.states = {step: checkpointer.restore(self.abstract, self.meta, step)[0]
                   for step in (3, 6)}
    checkpointer.close()
    self.checkpoints = os.path.join(workdir, CHECKPOINT_DIR)
    step_dir = os.path.join(self.checkpoints, "6")
    self.steps = set(os.listdir(self.checkpoints))
    self.after_fallback = self.steps - {"6"} | {"6.corrupt"}
    self.files = sorted(os.path.relpath(os.path.join(root, name), step_dir)
                        for root, _, names in os.walk(step_dir) for name in names)

  def size(self, relpath: str) -> int:
    return os.path.getsize(os.path.join(self.checkpoints, "6", relpath))

  def largest_file(self) -> str:
    return max(self.files, key=self.size)


@pytest.fixture(scope="module")
def pristine(tiny_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("pristine"))
  config = _config(tiny_data_dir)
  trainer.train(experiment_lib.for_training(config, workdir))
  made = Pristine(workdir, config)
  assert {"3", "6"} <= made.steps
  return made


def _flip(path: str, offset: int) -> None:
  with open(path, "r+b") as f:
    f.seek(offset)
    data = f.read(FLIP_BYTES)
    f.seek(offset)
    f.write(bytes(b ^ 0xFF for b in data))


def _offsets(size: int, count: int, rng) -> list[int]:
  """`count` distinct offsets: the first, middle and last flip positions, the rest random."""
  last = max(0, size - FLIP_BYTES)
  chosen = {0, last // 2, last}
  while len(chosen) < min(count, last + 1):
    chosen.add(int(rng.integers(0, last + 1)))
  return sorted(chosen)


def _restore_flipped(pristine, scratch, relpath, offset) -> str:
  """Flips bytes in a copy of the checkpoints; 'detected' or 'unused', else AssertionError."""
  checkpoints = os.path.join(scratch, CHECKPOINT_DIR)
  shutil.copytree(pristine.checkpoints, checkpoints)
  _flip(os.path.join(checkpoints, "6", relpath), offset)
  checkpointer = Checkpointer(scratch, async_save=False)
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      state, _ = checkpointer.restore_latest_good(pristine.abstract, pristine.meta)
  finally:
    checkpointer.close()
  where = f"flip of {relpath} at byte {offset}"
  unreadable = [w for w in caught if issubclass(w.category, UserWarning)
                and f"{CHECKPOINT_DIR}/6 is unreadable" in str(w.message)]
  assert state is not None, f"{where}: nothing restored"
  step = int(state["step"])
  assert step in (3, 6), f"{where}: restored step {step}"
  assert_trees_bitwise_equal(state, pristine.states[step])
  listed = set(os.listdir(checkpoints))
  if step == 6:
    assert not unreadable and listed == pristine.steps, f"{where}: {listed}, {unreadable}"
    return "unused"
  assert unreadable, f"{where}: fell back to step 3 without a warning"
  assert listed == pristine.after_fallback, f"{where}: {listed}"
  return "detected"


def _offset_count(size: int) -> int:
  return min(max(OFFSETS_PER_FILE, size // BYTES_PER_OFFSET), MAX_OFFSETS)


@pytest.mark.slow
def test_no_flipped_checkpoint_is_restored_silently(pristine, tmp_path):
  rng = np.random.default_rng(0)
  outcomes = {}  # relpath -> Counter of outcomes.
  unused_in_data = {}  # relpath of an array data file -> offsets the reader never used.
  started = time.monotonic()
  for i, relpath in enumerate(pristine.files):
    size = pristine.size(relpath)
    outcomes[relpath] = collections.Counter()
    for offset in _offsets(size, _offset_count(size), rng):
      scratch = str(tmp_path / f"{i}_{offset}")
      outcome = _restore_flipped(pristine, scratch, relpath, offset)
      outcomes[relpath][outcome] += 1
      if size >= DATA_FILE_BYTES and outcome == "unused":
        unused_in_data.setdefault(relpath, []).append(offset)
      shutil.rmtree(scratch)
  total = sum(outcomes.values(), collections.Counter())
  print(f"\n{sum(total.values())} flips of {FLIP_BYTES} bytes in {len(pristine.files)} files "
        f"of checkpoint 6 in {time.monotonic() - started:.0f} s: {total['detected']} "
        f"detected (fell back to step 3), {total['unused']} in bytes the reader never uses")
  for relpath, counts in outcomes.items():
    print(f"  {relpath:56s} {pristine.size(relpath):8d} B  detected {counts['detected']:2d}"
          f"  unused {counts['unused']:2d}")
  print(f"  unused offsets in the array data files: {unused_in_data or 'none'}")
  data_files = [f for f in pristine.files if pristine.size(f) >= DATA_FILE_BYTES]
  assert data_files, "no file holds the arrays' data"
  # Most of the arrays' bytes are read, so most flips there are caught. Weighting each
  # file's caught fraction by its size makes this independent of how orbax happened to
  # split the data into files: some files are wholly or partly OCDBT nodes that the merged
  # tree superseded, and which files those are changes from run to run.
  caught_bytes = sum(pristine.size(f) * outcomes[f]["detected"] / sum(outcomes[f].values())
                     for f in data_files)
  data_bytes = sum(pristine.size(f) for f in data_files)
  assert caught_bytes >= 0.5 * data_bytes, {f: outcomes[f] for f in data_files}
  for name in ("meta/metadata", "state/_METADATA", "state/manifest.ocdbt"):  # Every flip
    assert outcomes[name] == {"detected": OFFSETS_PER_FILE}, (name, outcomes[name])  # here.


def test_a_flip_in_the_array_data_is_detected(pristine, tmp_path):
  relpath = pristine.largest_file()
  offset = pristine.size(relpath) // 2
  assert _restore_flipped(pristine, str(tmp_path), relpath, offset) == "detected"


def test_restore_variables_falls_back_past_a_flipped_checkpoint(pristine, tmp_path):
  """The eval and search path (`Experiment.restore_variables`) falls back as training does."""
  workdir = str(tmp_path / "workdir")
  shutil.copytree(pristine.workdir, workdir, ignore=shutil.ignore_patterns(".lock"))
  relpath = pristine.largest_file()
  _flip(os.path.join(workdir, CHECKPOINT_DIR, "6", relpath), pristine.size(relpath) // 2)
  exp = experiment_lib.prepare(pristine.config, workdir, allow_new_tokenizer=False)
  with pytest.warns(UserWarning, match=f"{CHECKPOINT_DIR}/6 is unreadable"):
    variables, step = train_state.restore_variables(exp)
  assert step == 3
  assert_trees_bitwise_equal(variables, train_state.variables_of(pristine.states[3]))
  assert set(os.listdir(os.path.join(workdir, CHECKPOINT_DIR))) == pristine.after_fallback
