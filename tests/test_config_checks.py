"""Every config value is checked before any work: one line naming the key, exit 2,
nothing written (mmalign/settings.py and the launcher's own flags)."""

import os
import subprocess
import sys

import pytest

from experiments.configs import quickstart, shapes, tiny
from mmalign import settings
from mmalign.errors import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("module", [quickstart, tiny, shapes])
def test_shipped_configs_pass(module):
  settings.check(module.get_config())


def _set(config, key: str, value):
  *sections, last = key.split(".")
  node = config
  for part in sections:
    node = node[part]
  with node.ignore_type():
    node[last] = value


@pytest.mark.parametrize("key, value, named", [
    ("train.learning_rate", float("nan"), "finite number"),
    ("train.learning_rate", -1.0, ">= 0"),
    ("train.batch_size", -4, ">= 1"),
    ("train.batch_size", 0, ">= 1"),
    ("train.batch_size", 2.5, "integer"),
    ("train.steps", True, "integer"),
    ("train.checkpoint_every", 0, ">= 1"),
    ("train.log_every", 0, ">= 1"),
    ("train.keep_checkpoints", 0, ">= 1"),
    ("train.keep_checkpoints", -1, ">= 1"),
    ("train.seed", -1, ">= 0"),
    ("train.on_nonfinite", "ignore", "'stop', 'skip'"),
    ("train.compute_dtype", "float16", "'float32', 'bfloat16'"),
    ("train.optimizer_moments_dtype", "fp8", "'float32', 'bfloat16'"),
    ("train.gradient_cache_loop", "loop", "'scan', 'host'"),
    ("train.micro_batches", 0, ">= 1"),
    ("train.warmup_steps", -1, ">= 0"),
    ("eval.batch_size", 0, ">= 1"),
    ("eval.ks", (), "non-empty tuple"),
    ("eval.ks", (1, 0), "integers >= 1"),
    ("eval.split", "", "non-empty string"),
    ("retrieval.searcher", "bogus", "'exact', 'scann'"),
    ("retrieval.k", 0, ">= 1"),
    ("retrieval.num_leaves", 0, ">= 1"),
    ("model.text_encoder", "bogus", "'bag_of_words'"),
    ("model.image_encoder", "bogus", "'cnn'"),
    ("model.fusion", "bogus", "'concat'"),
    ("loss.name", "bogus", "'infonce'"),
    ("loss.kernel.impl", "bogus", "'auto'"),
    ("loss.distributed", "bogus", "'all_gather', 'ring'"),
    ("data.name", "", "non-empty string"),
    ("data.random_crop_min_area", 0.0, ">= 0.01"),
    ("data.random_crop_min_area", 1.5, "<= 1"),
    ("data.random_flip", "yes", "True or False"),
    ("data.features", "captions", "mapping of names"),
    ("data.splits", {"train": ""}, "mapping of names"),
    ("data.sampling", "bogus", "'captions'"),
    ("data.noisy_pair_fraction", 1.0, "< 1"),
    ("data.image_size", 0, ">= 1"),
    ("train.learning_rate_multipliers", (("image_tower(", 0.1),), "(regex, number) pairs"),
    ("train.learning_rate_multipliers", (("image_tower", -1.0),), ">= 0"),
    ("train.learning_rate_multipliers", ("image_tower",), "(regex, number) pairs"),
    ("init.tokenizer", "/no/such/tokenizer.json", "does not exist"),
    ("init.checkpoint", "/no/such/weights.safetensors", "does not exist"),
    ("text.vocab_size", 0, ">= 8"),
    ("text.model_type", "bogus", "'bpe'"),
])
def test_bad_value_is_named_with_what_is_allowed(key, value, named):
  config = tiny.get_config()
  _set(config, key, value)
  with pytest.raises(UsageError) as e:
    settings.check(config)
  message = str(e.value)
  assert message.startswith(f"{key}=") and named in message and "\n" not in message


@pytest.mark.parametrize("overrides, named", [
    ({"train.warmup_steps": 10, "train.steps": 5}, "train.warmup_steps=10"),
    ({"train.micro_batches": 3}, "train.micro_batches=3"),
    ({"retrieval.num_leaves": 4, "retrieval.num_leaves_to_search": 8},
     "retrieval.num_leaves_to_search=8"),
    ({"loss.task_weight": 1.0}, "task.label"),
    ({"train.profile_steps": (3, 2)}, "first <= last <= train.steps=6"),
    ({"train.profile_steps": (1, 99)}, "last <= train.steps"),
])
def test_combinations_that_cannot_work_are_refused(overrides, named):
  config = tiny.get_config()
  for key, value in overrides.items():
    _set(config, key, value)
  with pytest.raises(UsageError, match=named.replace(".", r"\.")):
    settings.check(config)


def test_missing_key_is_named():
  config = tiny.get_config()
  del config.eval["batch_size"]
  with pytest.raises(UsageError, match="config key eval.batch_size is missing"):
    settings.check(config)


def test_optional_keys_fall_back_to_their_one_default():
  config = tiny.get_config()
  del config.train["micro_batches"]
  settings.check(config)
  assert settings.value(config, "train.micro_batches") == 1
  assert settings.value(config, "train.batch_size") == config.train.batch_size


def test_unknown_split_is_named_with_the_available_ones(tiny_data_dir):
  config = tiny.get_config()
  config.data.data_dir = tiny_data_dir
  config.eval.split = "bogus"
  with pytest.raises(UsageError, match="eval.split='bogus'.*available: train, validation, test"):
    settings.check_with_dataset(config)


def _launch(workdir, *args):
  command = [sys.executable, os.path.join(ROOT, "launch.py"), f"--workdir={workdir}", *args]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.run(command, cwd=ROOT, env={**env, "JAX_PLATFORMS": "cpu"},
                        capture_output=True, text=True, timeout=300, check=False)


TINY = f"--config={os.path.join(ROOT, 'experiments', 'configs', 'tiny.py')}"


@pytest.mark.slow
@pytest.mark.parametrize("args, culprit", [
    ([TINY, "--config.train.steps=abc"], "--config.train.steps=abc"),
    ([TINY, "--mode=bogus"], "--mode=bogus"),
    ([TINY, "--k=abc"], "--k=abc"),
    ([TINY, "--k=-3"], "--k=-3"),
    ([TINY, "--k=0"], "--k=0"),
    ([], "--config"),
    ([TINY, "--config.train.keep_checkpoints=0"], "train.keep_checkpoints=0"),
    ([TINY, "--config.train.learning_rate=nan"], "train.learning_rate=nan"),
    ([TINY, "--config.eval.split=bogus"], "eval.split='bogus'"),
    ([TINY, "--config.retrieval.searcher=bogus"], "retrieval.searcher='bogus'"),
    ([TINY, "--config.model.text_encoder=bogus"], "model.text_encoder='bogus'"),
    ([TINY, "--config.loss.name=bogus"], "loss.name='bogus'"),
    ([TINY, "--mode=search", "--query=\udcff"], "--query"),
    ([TINY, "--mode=export"], "--mode=export needs --export_dir"),
    ([TINY, "--mode=export", "--export_dir=x", "--export_layout=onnx"], "--export_layout"),
])
def test_launcher_refuses_at_once_with_one_line_and_writes_nothing(args, culprit, tiny_data_dir,
                                                                   tmp_path):
  workdir = tmp_path / "existing_empty_workdir"
  workdir.mkdir()
  result = _launch(workdir, *args, f"--config.data.data_dir={tiny_data_dir}"
                   if args else "--mode=train")
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and culprit in lines[0], lines
  assert not os.listdir(workdir)


@pytest.mark.slow
def test_a_combination_only_the_builders_see_leaves_no_tokenizer(tiny_data_dir, tmp_path):
  """The gradient cache refuses a fusion model only when the step is built: still before
  anything (the tokenizer included) is written into the workdir."""
  result = _launch(tmp_path, TINY, f"--config.data.data_dir={tiny_data_dir}",
                   "--config.model.fusion=concat", "--config.train.gradient_cache=True",
                   "--config.train.micro_batches=2")
  assert result.returncode == 2, result.stderr[-2000:]
  assert len(result.stderr.strip().splitlines()) == 1
  assert sorted(os.listdir(tmp_path)) == [".lock"]
