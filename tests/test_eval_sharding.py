"""Evaluation embeds on every device: with 8 simulated devices the sharded embeddings equal
the plain single-program ones, for batch sizes that do and do not divide by 8, a single
query, the 42-image test split, and the callers that embed through the padding helper
(the Procrustes baseline's frozen towers, the classification evaluator)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
import jax, numpy as np
from experiments import procrustes_baseline
from experiments.configs import tiny
from mmalign import experiment as experiment_lib
from mmalign.data import pipeline, sources
from mmalign.eval import classification_evaluator
from mmalign.models.dual_encoder import DualEncoder
config = tiny.get_config()
config.data.data_dir = {data_dir!r}
exp = experiment_lib.for_training(config, {workdir!r})
variables = exp.init_variables(0)
texts = ["latin small letter a", "digit seven", "greek capital letter omega"] * 7  # 21 rows
tokens = exp.tokenizer.encode(texts)
sharded = experiment_lib.embed_texts(exp, variables, texts, batch_size=8)
plain = np.asarray(exp.model.apply(variables, tokens, method=DualEncoder.embed_text))
test = sources.open_split(exp.builder, "test")  # 42 images
images = experiment_lib.embed_images(exp, variables, test, batch_size=16)
pixels = exp.normalization(pipeline.decode_images(test, np.arange(len(test))))
plain_images = np.asarray(exp.model.apply(variables, pixels, method=DualEncoder.embed_image))
one = experiment_lib.embed_image_array(exp, variables, pixels[:1])  # An image query.
split = procrustes_baseline.load_split(exp, "test")
frozen = procrustes_baseline.frozen_encoder_embeddings(exp, split, split, batch_size=512)  # > 42
# Several inputs per row (classify's tokens, images, presence) go through the same path.
config = tiny.get_config()
config.data.update(name="shapes", config="tiny", data_dir={data_dir!r})
config.model.fusion = "concat"
config.task.label = "color1"
multi = experiment_lib.for_training(config, {workdir!r} + "/shapes")
multi_variables = multi.init_variables(0)
rng = np.random.default_rng(0)
inputs = (multi.tokenizer.encode(["a red circle above a blue square"] * 21),
          rng.normal(size=(21, *multi.image_shape)).astype(np.float32),
          rng.random((21, 2)) < 0.7)
logits = experiment_lib.apply_in_batches(multi, "classify", multi_variables, inputs, 8)
direct = np.asarray(multi.model.apply(multi_variables, *inputs, method=DualEncoder.classify))
split_logits, labels = classification_evaluator.class_logits(multi, multi_variables, "test",
                                                             (True, False), batch_size=16)
print(json.dumps({{"devices": jax.device_count(), "batch_multiple": exp.batch_multiple,
                  "text_error": float(np.abs(sharded - plain).max()),
                  "classify_error": float(np.abs(logits - direct).max()),
                  "image_error": float(np.abs(images - plain_images).max()),
                  "query_error": float(np.abs(one - plain_images[:1]).max()),
                  "frozen_shapes": [list(x.shape) for x in frozen],
                  "split_logits": [len(split_logits), len(labels)],
                  "images": int(images.shape[0]), "finite": bool(np.isfinite(images).all())}}))
"""


@pytest.mark.slow
def test_eval_embeddings_are_sharded_over_eight_devices(tiny_data_dir, tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  done = subprocess.run(
      [sys.executable, "-c", _SCRIPT.format(root=ROOT, data_dir=tiny_data_dir,
                                            workdir=str(tmp_path))],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(done.stdout.strip().splitlines()[-1])
  assert report["devices"] == 8 and report["batch_multiple"] == 8
  assert report["text_error"] < 1e-5
  assert report["classify_error"] < 1e-5
  assert report["image_error"] < 1e-5 and report["query_error"] < 1e-5
  assert report["images"] == 42 and report["finite"]
  assert [shape[0] for shape in report["frozen_shapes"]] == [21, 42, 21, 42]
  assert report["split_logits"][0] == report["split_logits"][1] > 0
