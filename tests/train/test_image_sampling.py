"""data.sampling="images" in the training step: the gradient cache against one full batch,
the refused micro-batching, and a tiny training run that records the step's memory."""

import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments.configs import tiny
from experiments.tables import cells
from mmalign import experiment as experiment_lib
from mmalign import mesh as mesh_lib
from mmalign.errors import UsageError
from mmalign.losses.objective import build_objective
from mmalign.train import accumulation, trainer
from mmalign.train import step as step_lib
from tests import processes
from tests.train import tiny_model
from tests.train.test_accumulation import _assert_gradients_close

IMAGES, TEXTS, MICRO = 16, 8, 4
TINY_CAPTIONS = 142  # unicode_glyphs/tiny's training captions (and 284 images).


def _tiny_batch(micro_batches: int = 1) -> int:
  """256 tiny train images against all 142 captions where 142 text rows split over the
  devices × micro-batches (one device); else 128 images against 128 captions."""
  return 256 if TINY_CAPTIONS % (jax.device_count() * micro_batches) == 0 else 128


def _image_batch() -> dict:
  """16 images against 8 texts; every text has two images, in shuffled rows."""
  image_to_text = np.random.default_rng(0).permutation(np.arange(IMAGES) % TEXTS)
  return {"tokens": tiny_model.random_batch(TEXTS)["tokens"],
          "images": tiny_model.random_batch(IMAGES)["images"],
          "groups": jnp.asarray(image_to_text), "image_to_text": jnp.asarray(image_to_text,
                                                                           jnp.int32)}


@functools.cache
def _gradients(how: str):
  model, _, params, model_state = tiny_model.setup("infonce")
  objective = build_objective(tiny_model.config("infonce").loss, model_fuses=False,
                              image_rows=True)
  fn = {"full": accumulation.full_batch,
        "cache": functools.partial(accumulation.gradient_cache, micro_batches=MICRO)}[how]
  forward = step_lib.train_forward(model)
  return jax.jit(lambda p: fn(forward, objective, p, model_state, _image_batch(),
                              jax.random.key(1)))(params)


def test_gradient_cache_equals_the_full_batch_with_image_rows():
  full, cached = _gradients("full"), _gradients("cache")
  assert np.isfinite(float(full[0]))
  np.testing.assert_allclose(cached[0], full[0], rtol=1e-5)
  _assert_gradients_close(cached[2], full[2])


def _train_config(**train):
  return ml_collections.ConfigDict({"micro_batches": 1, "gradient_cache": False, **train})


def test_plain_micro_batches_are_refused():
  check = trainer._check_image_batches  # pylint: disable=protected-access
  mesh = mesh_lib.make_mesh()
  rows = 2 * mesh_lib.batch_devices(mesh)  # Text rows that split into 2 micro-batches.
  check(_train_config(micro_batches=2, gradient_cache=True), rows, mesh)
  with pytest.raises(UsageError, match="train.gradient_cache=True"):
    check(_train_config(micro_batches=2), rows, mesh)


def test_text_rows_must_split_into_the_micro_batches():
  with pytest.raises(UsageError, match="7 text rows"):
    trainer._check_image_batches(  # pylint: disable=protected-access
        _train_config(micro_batches=2, gradient_cache=True), 7, mesh_lib.make_mesh())


@pytest.mark.slow
@pytest.mark.parametrize("micro_batches", [1, 2])
def test_image_batches_train_and_record_the_step_memory(micro_batches, tiny_data_dir,
                                                        tmp_path):
  config = tiny.get_config()
  config.data.data_dir = tiny_data_dir
  config.data.sampling = "images"
  config.loss.kernel.impl = "xla_chunked"
  batch = _tiny_batch(micro_batches)
  config.train.update(batch_size=batch, steps=3, warmup_steps=1, log_every=1,
                      micro_batches=micro_batches, gradient_cache=micro_batches > 1)
  state = trainer.train(experiment_lib.for_training(config, str(tmp_path)))
  assert int(state["step"]) == 3
  with open(tmp_path / "metrics.jsonl") as f:
    losses = [json.loads(line)["loss"] for line in f]
  assert len(losses) == 3 and np.isfinite(losses).all()
  with open(tmp_path / trainer.STEP_MEMORY) as f:
    memory = json.load(f)
  assert memory["images"] == batch and memory["temp_bytes"] > 0
  assert memory["text_rows"] == min(batch, TINY_CAPTIONS)
  assert cells.step_memory(str(tmp_path)) == {"step_temp_bytes": float(memory["temp_bytes"])}
  assert cells.step_memory(os.path.join(str(tmp_path), "absent")) == {}


_WORKER = """
import sys
sys.path.insert(0, {root!r})
from mmalign.train import distributed
distributed.initialize({address!r}, 2, {process_id})
from experiments.configs import tiny
from mmalign import experiment as experiment_lib
from mmalign.train import trainer
config = tiny.get_config()
config.data.data_dir = {data_dir!r}
config.data.sampling = "images"
config.train.update(batch_size={batch}, steps=2, warmup_steps=1, log_every=1)
trainer.train(experiment_lib.for_training(config, {workdir!r}))
"""


@pytest.mark.slow
def test_two_processes_compute_the_one_process_loss(tiny_data_dir, tmp_path):
  # Each process holds half the images and half the text rows, while image_to_text
  # indexes the global text rows: a local index would change the loss at once.
  address = processes.coordinator_address()
  batch = _tiny_batch()  # Of this process's devices; the two workers have one each.
  processes.run_together([
      [sys.executable, "-c", _WORKER.format(root=processes.ROOT, address=address, process_id=i,
                                            data_dir=tiny_data_dir, batch=batch,
                                            workdir=str(tmp_path / "two"))] for i in range(2)])
  config = tiny.get_config()
  config.data.data_dir = tiny_data_dir
  config.data.sampling = "images"
  config.train.update(batch_size=batch, steps=2, warmup_steps=1, log_every=1)
  trainer.train(experiment_lib.for_training(config, str(tmp_path / "one")))
  losses = {}
  for run in ("one", "two"):
    with open(tmp_path / run / "metrics.jsonl") as f:
      losses[run] = [json.loads(line)["loss"] for line in f]
  np.testing.assert_allclose(losses["two"], losses["one"], rtol=1e-4)
  with open(tmp_path / "two" / trainer.STEP_MEMORY) as f:
    # Global shapes, from process 0.
    assert json.load(f)["text_rows"] == min(batch, TINY_CAPTIONS)
