"""Checkpoints with orbax: atomic saves, automatic resume, shape checks on restore.

A crash during a save leaves the previous checkpoint as the latest good one (orbax
renames a step's directory when complete). A checkpoint that goes bad later is moved
aside by `restore_latest_good` to `<step>.corrupt` (never deleted), with a warning; a
restore that fails for another reason (placement, memory) raises and moves nothing.

Every saved array is finite and has a SHA-256 checksum in the meta, which `restore`
checks: orbax's files carry none, so a flipped byte would otherwise restore silently.
Batches and dropout keys are pure functions of (seed, step), so the saved step is the
whole iterator state.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from mmalign.errors import UsageError

CHECKPOINT_DIR = "checkpoints"


def has_checkpoints(workdir: str) -> bool:
  """Whether the workdir holds a finished step, looked up without creating anything."""
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


class CheckpointMismatchError(UsageError):
  """The workdir holds a checkpoint of a different model or experiment."""


class NonFiniteStateError(FloatingPointError):
  """A state about to be saved holds NaN or infinite values; nothing was written."""


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written (a full disk, a failing filesystem); the earlier
  complete checkpoints are untouched."""


class CorruptCheckpointError(RuntimeError):
  """A checkpoint's arrays do not match the checksums saved with them."""


class CheckpointRestoreError(RuntimeError):
  """A checkpoint could not be restored for a reason that does not mean its files are
  damaged (placement, memory, a bug); it was left where it is."""


# What orbax and TensorStore say when a file's bytes are damaged or missing.
_DAMAGE_MARKERS = ("DATA_LOSS", "Error reading", "Error opening", "error while reading")


def _is_damage(error: Exception) -> bool:
  """Whether `error` says the checkpoint's files are damaged, as opposed to a fault of this
  run, which must not move a good checkpoint aside."""
  if isinstance(error, (CorruptCheckpointError, OSError, UnicodeDecodeError,
                        json.JSONDecodeError)):
    return True
  return any(marker in str(error) for marker in _DAMAGE_MARKERS)


def checksums(state) -> dict[str, str]:
  """{leaf path: sha256 of its dtype, shape and bytes} for every array of `state`."""
  sums = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:  # From every process.
      leaf = multihost_utils.process_allgather(leaf, tiled=True)
    array = np.ascontiguousarray(jax.device_get(leaf))
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.reshape(-1).view(np.uint8))
    sums[jax.tree_util.keystr(path)] = digest.hexdigest()
  return sums


def nonfinite_leaves(state) -> list[str]:
  """Paths of the floating-point arrays of `state` holding a NaN or an infinity."""
  return [jax.tree_util.keystr(path)
          for path, leaf in jax.tree_util.tree_leaves_with_path(state)
          if jax.numpy.issubdtype(leaf.dtype, jax.numpy.inexact)
          and not bool(jax.device_get(jax.numpy.isfinite(leaf).all()))]


def _first_difference(where: str, saved, current) -> tuple[str, str, str]:
  """(dotted path, saved value, current value) of the first place two JSON trees differ."""
  if isinstance(saved, dict) and isinstance(current, dict):
    for key in sorted(set(saved) | set(current)):
      if saved.get(key) != current.get(key):
        return _first_difference(f"{where}.{key}", saved.get(key), current.get(key))
  return where, json.dumps(saved), json.dumps(current)


class Checkpointer:
  """Saves and restores the train state `{params, opt_state, step}` of one workdir."""

  def __init__(self, workdir: str, *, keep: int = 3, save_every: int = 1000,
               async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=save_every,
            enable_async_checkpointing=async_save),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def due(self, step: int, *, force: bool = False) -> bool:
    """Whether `save(step, force=force)` would save."""
    return force or self._manager.should_save(step)

  def save(self, step: int, state, meta: dict, *, force: bool = False) -> bool:
    """Saves at `save_every` steps (or when forced); returns whether it saved. Raises
    NonFiniteStateError, writing nothing, when any array is not finite."""
    if not self.due(step, force=force):
      return False
    bad = nonfinite_leaves(state)
    if bad:
      raise NonFiniteStateError(
          f"the state of step {step} holds NaN or infinite values ({', '.join(bad[:3])}"
          f"{', ...' if len(bad) > 3 else ''}); it was not saved, so the latest checkpoint "
          "is the last good state")
    meta = {**meta, "checksums": checksums(state)}
    with self._write_errors():
      return self._manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        meta=ocp.args.JsonSave(meta)), force=True)

  @contextlib.contextmanager
  def _write_errors(self):
    """Turns an orbax write failure (raised here or by an earlier asynchronous save) into
    one CheckpointWriteError naming the latest complete checkpoint."""
    try:
      yield
    except (OSError, ValueError, RuntimeError) as e:
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      cause = ("no space left on device" if "No space left" in str(e) or
               "RESOURCE_EXHAUSTED" in str(e) else first[:200])
      self._manager.reload()
      latest = self._manager.latest_step()
      raise CheckpointWriteError(
          f"could not write a checkpoint in {self.directory} ({cause}); the latest "
          "complete checkpoint is "
          f"{'none' if latest is None else f'step {latest}'}: fix the cause and rerun to "
          "resume") from None

  def restore(self, abstract_state, meta: dict, step: int | None = None):
    """Restores into the structure of `abstract_state` after checking it fits: a difference
    in `meta` (model config, tokenizer, dataset) or in a parameter's shape raises
    CheckpointMismatchError naming the key."""
    step = self.latest_step() if step is None else step
    saved_meta = self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]
    for key in ("model_config", "tokenizer_sha256", "tokenizer_settings", "dataset",
                "dataset_version"):
      if key in saved_meta and saved_meta.get(key) != meta.get(key):
        where, saved, current = _first_difference(key, saved_meta.get(key), meta.get(key))
        raise CheckpointMismatchError(
            f"checkpoint {self.directory}/{step} was written with {where}={saved}, this run "
            f"has {where}={current}; use a new --workdir for a different model, tokenizer or "
            "dataset")
    self._check_shapes(step, abstract_state)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))["state"]
    self._verify(step, restored, saved_meta.get("checksums"))
    return restored, saved_meta

  def _verify(self, step: int, state, saved: dict | None) -> None:
    """Raises CorruptCheckpointError unless every array matches its saved checksum."""
    if saved is None:
      warnings.warn(f"checkpoint {self.directory}/{step} has no checksums (written by an "
                    "older mmalign); restored without verifying its arrays")
      return
    current = checksums(state)
    if set(saved) != set(current):
      raise CorruptCheckpointError(f"the checksums list {len(saved)} arrays, the state has "
                                   f"{len(current)}")
    changed = [key for key in current if current[key] != saved[key]]
    if changed:
      raise CorruptCheckpointError(
          f"{len(changed)} array(s) differ from their saved checksums: "
          f"{', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}")

  def restore_latest_good(self, abstract_state, meta: dict):
    """`restore` of the newest readable step, moving damaged ones aside; (state, meta), or
    (None, None) when no step could be read. A mismatch (another model) is raised at once,
    and so is a failure that does not say the files are damaged (CheckpointRestoreError)."""
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        return self.restore(abstract_state, meta, step)
      except CheckpointMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except  # Sorted just below.
        bad = os.path.join(self.directory, str(step))
        if not _is_damage(e):
          first = (str(e).strip().splitlines() or [""])[0][:200]
          raise CheckpointRestoreError(
              f"could not restore checkpoint {bad} ({type(e).__name__}: {first}); its files "
              "do not look damaged, so it was left in place") from e
        aside = f"{bad}.corrupt"
        warnings.warn(f"checkpoint {bad} is unreadable ({type(e).__name__}: "
                      f"{str(e)[:200]}); moved it to {aside} and trying the previous one")
        if jax.process_index() == 0:
          os.replace(bad, aside)
        if jax.process_count() > 1:  # Everyone sees the move before re-listing steps.
          multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
        self._manager.reload()
    return None, None

  def _check_shapes(self, step: int, abstract_state) -> None:
    """Compares parameter shapes (the optimizer state follows from them)."""
    saved = self._manager.item_metadata(step)["state"]["params"]
    saved_shapes = {jax.tree_util.keystr(k): tuple(v.shape)
                    for k, v in jax.tree_util.tree_leaves_with_path(saved)}
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_state["params"]):
      key = jax.tree_util.keystr(path)
      if key not in saved_shapes:
        raise CheckpointMismatchError(
            f"checkpoint {self.directory}/{step} has no parameter {key}; it was written by "
            "a different model")
      if saved_shapes[key] != tuple(np.shape(leaf)):
        raise CheckpointMismatchError(
            f"checkpoint {self.directory}/{step}: {key} has shape {saved_shapes[key]}, the "
            f"model expects {tuple(np.shape(leaf))}")

  def wait(self) -> None:
    with self._write_errors():
      self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
