"""Evaluation batches (mmalign/experiment.py): any number of rows, down to one query, is
padded to one batch shape that splits over the mesh's batch shards, and the padding is
dropped. The 8-device check runs in a subprocess, so it runs under one device too."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mmalign import experiment as experiment_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _recording(shapes: list):
  """A stand-in for a jitted method: row sums, recording each batch's shapes."""
  def fn(variables, batch):
    arrays = batch if isinstance(batch, tuple) else (batch,)
    shapes.append(tuple(a.shape for a in arrays))
    return variables + sum(a.reshape(len(a), -1).sum(axis=1) for a in arrays)
  return fn


@pytest.mark.parametrize("total,batch_size,multiple,rows", [
    (1, 512, 8, 8), (18, 512, 8, 24), (42, 16, 8, 16), (42, 20, 8, 24), (5, 4, 1, 4),
    (3, 1, 8, 8)])
def test_every_batch_has_one_shape_that_splits_over_the_shards(total, batch_size, multiple,
                                                                rows):
  shapes = []
  x = np.arange(total * 3, dtype=np.float32).reshape(total, 3)
  out = experiment_lib._batched(_recording(shapes), 100.0, x, batch_size, multiple)  # pylint: disable=protected-access
  np.testing.assert_array_equal(out, 100.0 + x.sum(axis=1))
  assert experiment_lib.batch_rows(total, batch_size, multiple) == rows
  assert set(shapes) == {((rows, 3),)}  # One shape: one compilation.
  assert len(shapes) == -(-total // rows)


def test_tuples_and_prepare_are_padded_after_preparing():
  shapes, prepared = [], []
  tokens = np.ones((10, 2), np.int32)

  def prepare(batch):  # (tokens, indices) → (tokens, "images"), as classify's inputs.
    batch_tokens, indices = batch
    prepared.append(len(indices))
    return batch_tokens, np.repeat(indices[:, None], 4, axis=1).astype(np.float32)

  out = experiment_lib._batched(_recording(shapes), 0.0, (tokens, np.arange(10)), 4, 8,  # pylint: disable=protected-access
                                prepare=prepare)
  np.testing.assert_array_equal(out, 2 + 4 * np.arange(10))
  assert prepared == [8, 2]  # Only real rows are prepared (decoded); padding comes after.
  assert set(shapes) == {((8, 2), (8, 4))}


def test_inputs_of_other_lengths_or_none_are_refused():
  fn = _recording([])
  with pytest.raises(ValueError, match="differ in length"):
    experiment_lib._batched(fn, 0.0, (np.zeros(3), np.zeros(4)), 8)  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="empty"):
    experiment_lib._batched(fn, 0.0, np.zeros((0, 2)), 8)  # pylint: disable=protected-access


_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
import jax, numpy as np
from experiments.configs import tiny
from mmalign import experiment as experiment_lib
from mmalign.data import pipeline
from mmalign.models.build import build_dual_encoder
from mmalign.models.dual_encoder import DualEncoder
config = tiny.get_config()
model = build_dual_encoder(config.model, vocab_size=64, max_length=8)
exp = experiment_lib.Experiment(config=config, workdir="", builder=None, tokenizer=None,
                                model=model, normalization=pipeline.ImageNormalization())
rng = np.random.default_rng(0)
pixels = rng.integers(0, 256, (42, 16, 16, 1), dtype=np.uint8)
tokens = rng.integers(1, 64, (42, 8)).astype(np.int32)
variables = dict(model.init(jax.random.key(0), tokens[:1], exp.normalization(pixels[:1])))
errors = {{}}
for n in (1, 18, 42):
  images = exp.normalization(pixels[:n])
  plain_images = np.asarray(model.apply(variables, images, method=DualEncoder.embed_image))
  plain_texts = np.asarray(model.apply(variables, tokens[:n], method=DualEncoder.embed_text))
  source = [{{"image": p}} for p in pixels[:n]]  # What decode_images reads.
  got = {{"image_array": experiment_lib.embed_image_array(exp, variables, images, 16),
         "split": experiment_lib.embed_images(exp, variables, source, 16),
         "text": experiment_lib.apply_in_batches(exp, "embed_text", variables, tokens[:n], 16)}}
  for name, emb in got.items():
    expected = plain_texts if name == "text" else plain_images
    assert emb.shape == expected.shape, (name, n, emb.shape)
    errors[f"{{name}}_{{n}}"] = float(np.abs(emb - expected).max())
print(json.dumps({{"devices": jax.device_count(), "batch_multiple": exp.batch_multiple,
                  "errors": errors}}))
"""


def test_one_to_42_rows_embed_on_eight_devices_as_on_one(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  done = subprocess.run([sys.executable, "-c", _SCRIPT.format(root=ROOT)], cwd=str(tmp_path),
                        env=env, capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(done.stdout.strip().splitlines()[-1])
  assert report["devices"] == 8 and report["batch_multiple"] == 8
  assert len(report["errors"]) == 9
  assert max(report["errors"].values()) < 1e-5, report["errors"]
