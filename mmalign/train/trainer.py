"""The one training loop: any registered model and loss, chosen by the config.

Resumes on its own from the latest good checkpoint in the workdir; batches are a pure
function of (seed, step), so on CPU a resumed run ends bitwise identical to an
uninterrupted one. SIGTERM checkpoints the step just finished and raises `Preempted`; a
non-finite step raises `NonFiniteLossError` before anything of it is saved, or with
`train.on_nonfinite="skip"` is skipped with a warning. Nothing is read back from the
devices between the steps that log, save, evaluate or stop, and batches are placed on the
devices two steps ahead.
"""

from __future__ import annotations

import collections
import contextlib
import os
import time

import jax

from mmalign import experiment as experiment_lib
from mmalign.train import state as train_state
from mmalign import settings, utils
from mmalign import workdir as workdir_lib
from mmalign.data import pipeline, sources
from mmalign.data import sampling as sampling_lib
from mmalign.errors import UsageError
from mmalign.losses.objective import build_objective
from mmalign.plots import plot_training_curves
from mmalign import mesh as mesh_lib
from mmalign.train import step as step_lib
from mmalign.train import utilisation
from mmalign.train import checkpoint as checkpoint_lib
from mmalign.train.health import Health, NonFiniteLossError  # noqa: F401  (callers catch it here)
from mmalign.train.metrics_log import MetricsLog
from mmalign.train.preemption import Preempted, SigtermWatch


class RunEndedError(RuntimeError):
  """The run could not go on (e.g. its metrics could not be written); its state is saved."""


STEP_MEMORY = "step_memory.json"


def _check_image_batches(train_config, text_rows: int, mesh) -> None:
  """Refuses micro-batching that would break `data.sampling="images"` batches: only the
  gradient cache scores each image against the whole batch's text rows (`image_to_text`)."""
  micro_batches = int(settings.value(train_config, "micro_batches", section="train"))
  if micro_batches > 1 and not settings.value(train_config, "gradient_cache", section="train"):
    raise UsageError(f"data.sampling='images' with train.micro_batches={micro_batches} "
                     "needs train.gradient_cache=True (plain micro-batches would score "
                     "images against another slice's texts)")
  shards = mesh_lib.batch_devices(mesh) * micro_batches
  if text_rows % shards:
    raise UsageError(f"data.sampling='images': the {text_rows} text rows of a batch "
                     f"(min(train.batch_size, training captions)) do not divide into "
                     f"train.micro_batches={micro_batches} × {mesh_lib.batch_devices(mesh)} "
                     "batch shards")


def _on_devices(batches, mesh, ahead: int = 2):
  """Each host batch placed on the mesh `ahead` steps before the step that takes it."""
  queue = collections.deque()
  for batch in batches:
    queue.append(mesh_lib.global_batch(batch, mesh))
    if len(queue) > ahead:
      yield queue.popleft()
  yield from queue


def _log(metrics_log, step: int, metrics: dict, schedule, checkpointer, state, meta,
         saved: bool, workdir: str) -> None:
  """Logs `step`'s metrics; if they cannot be written, saves the state and ends the run."""
  try:
    values = jax.device_get({k: v for k, v in metrics.items() if k != "state_finite"})
    metrics_log.log(step, {**values, "learning_rate": schedule(step - 1)})
  except OSError as e:
    if not saved:
      checkpointer.save(step, state, meta, force=True)
    raise RunEndedError(
        f"could not write the metrics of step {step} into {workdir!r} "
        f"({e.strerror or e}); the state of step {step} is saved in "
        f"{checkpointer.directory}: fix the cause and rerun to resume") from None


def _record_step_costs(train_step, state, batch, workdir: str) -> float | None:
  """Writes XLA's memory account of the compiled step (per device; CPU reports no device
  memory) to STEP_MEMORY and returns the step's FLOPs (all devices), for the log's `mfu`.
  Lowered with the loop's own arguments, so jit reuses this compilation."""
  memory, flops = step_lib.compiled_costs(train_step, state, batch)
  if memory is not None and jax.process_index() == 0:
    record = {**{f"{name}_bytes": size for name, size in memory.items()},
              "images": int(batch["images"].shape[0]),
              "text_rows": int(batch["tokens"].shape[0]), "flops": flops}
    utils.write_json(os.path.join(workdir, STEP_MEMORY), record)
  return flops


def train(exp: experiment_lib.Experiment, *, stop_after: int | None = None,
          evaluators=None) -> dict:
  """Trains the run `exp` until `config.train.steps`, holding the workdir's lock; returns
  the final state. `stop_after` ends this run early at that step with a checkpoint, as a
  preemption would; a later run resumes the same trajectory. `evaluators` with
  `every_steps` run on the live state at those steps, into the metrics log.
  """
  with workdir_lib.locked(exp.workdir, process_index=jax.process_index()):
    return _train(exp, stop_after, evaluators)


def _train(exp: experiment_lib.Experiment, stop_after: int | None, evaluators) -> dict:
  """`train` under the workdir lock: everything is built before anything is written."""
  config, workdir = exp.config, exp.workdir
  tc = config.train
  captions = sources.open_split(exp.builder, "train", decode_images=False)
  train_index = pipeline.index_split(captions)
  label = experiment_lib.task_label(config)
  labels = pipeline.read_labels(captions, label) if label else None
  sampling = settings.value(config, "data.sampling")
  batches = sampling_lib.train_batches(
      sampling, sources.open_split(exp.builder, "train"), train_index, exp.tokenizer,
      global_batch=tc.batch_size, seed=tc.seed, normalization=exp.normalization,
      max_shift=config.data.max_shift, labels=labels,
      noisy_pair_fraction=float(settings.value(config, "data.noisy_pair_fraction")),
      augmentation=pipeline.Augmentation(settings.value(config, "data.random_crop_min_area"),
                                         settings.value(config, "data.random_flip")))
  optimizer, schedule = train_state.optimizer(exp.config)
  mesh = mesh_lib.make_mesh(tc.get("mesh"))
  objective = build_objective(config.loss, model_fuses=exp.model.fusion is not None,
                              has_task=bool(exp.model.num_classes),
                              mesh=mesh_lib.loss_mesh(mesh), data_axis=mesh_lib.LOSS_AXIS,
                              image_rows=batches.image_rows)
  if batches.image_rows:
    _check_image_batches(tc, batches.text_rows, mesh)

  state = train_state.init_train_state(exp)
  resuming = checkpoint_lib.has_checkpoints(workdir)
  if not resuming:  # Pretrained weights are read before anything is written, too.
    state = train_state.with_pretrained(exp, state)
  exp.save_tokenizer()  # The first write into the workdir: every builder above succeeded.
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=tc.keep_checkpoints,
                              save_every=tc.checkpoint_every)
  meta = exp.meta()
  if resuming:
    restored, _ = checkpointer.restore_latest_good(train_state.restorable(state), meta)
    if restored is not None:
      state = restored
      utils.say(f"resumed from {checkpointer.directory} at step {int(state['step'])}")
    else:  # Every checkpoint was unreadable and moved aside: a fresh start.
      state = train_state.with_pretrained(exp, state)
  train_step, state = step_lib.build_train_step(tc, exp.model, objective, optimizer, mesh, state)
  start = int(state["step"])
  num_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  utils.say(f"model: {config.model.text_encoder} + {config.model.image_encoder}, "
      f"{num_params / 1e6:.2f}M parameters; {train_index.num_groups} train captions, "
      f"{len(train_index.groups)} images, {batches.steps_per_epoch} steps per epoch; "
      f"training steps {start + 1}..{tc.steps}")

  metrics_log = MetricsLog(workdir, tc.steps, start, batch_size=tc.batch_size,
                          peak_flops=utilisation.peak_flops(
                              settings.value(config, "train.peak_flops")))
  last = tc.steps if stop_after is None else min(stop_after, tc.steps)
  device_batches = _on_devices(pipeline.train_iterator(
      batches, start_step=start, num_steps=last,
      num_threads=settings.value(config, "data.input_threads")), mesh)
  health = Health(skip=settings.value(config, "train.on_nonfinite") == "skip")
  profiled = settings.value(config, "train.profile_steps") or (0, -1)
  try:
    with SigtermWatch() as sigterm:
      for step in range(start + 1, last + 1):
        waited = time.perf_counter()
        batch = next(device_batches)
        metrics_log.waited(time.perf_counter() - waited)
        if step == start + 1:
          metrics_log.set_step_flops(_record_step_costs(train_step, state, batch, workdir))
        if step == profiled[0]:
          jax.profiler.start_trace(os.path.join(workdir, "tensorboard"))
        state, metrics = train_step(state, batch)
        health.update(step, metrics)  # Dispatched, not waited for.
        if step == profiled[1]:
          jax.block_until_ready(metrics)  # The traced steps' device work, finished.
          jax.profiler.stop_trace()
          utils.say(f"profiled steps {profiled[0]}..{step} into {workdir}/tensorboard")
        logs = step % tc.log_every == 0 or step == last
        evaluates = evaluators is not None and step < last and evaluators.periodic(step)
        preempted = step < last and sigterm.requested()
        saves = checkpointer.due(step, force=step == last)
        if not (logs or evaluates or preempted or saves):
          continue  # Nothing read back: the next step is dispatched at once.
        with jax.transfer_guard_device_to_host("allow"):  # The loop's only reads.
          health.check()  # Before anything of a bad step is logged or saved.
          saved = saves and checkpointer.save(step, state, meta, force=True)
          if logs:
            _log(metrics_log, step, metrics, schedule, checkpointer, state, meta, saved, workdir)
          if evaluates:
            metrics_log.record(step, evaluators.scalars(train_state.variables_of(state), step))
          if preempted:
            if not saved:
              checkpointer.save(step, state, meta, force=True)
            raise Preempted(step, checkpointer.directory)
    checkpointer.wait()  # CheckpointWriteError if the last save failed.
  finally:  # Pending asynchronous saves of good states complete even on an error.
    with contextlib.suppress(checkpoint_lib.CheckpointWriteError):  # Already raised.
      checkpointer.wait()
    checkpointer.close()
    metrics_log.close()
  if jax.process_index() == 0 and os.path.exists(metrics_log.path):
    plot_training_curves(metrics_log.path, os.path.join(workdir, "training_curves.png"))
  return state
