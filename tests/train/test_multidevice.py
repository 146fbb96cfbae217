"""10 training steps of the tiny config on 8 simulated CPU devices match one device.

Runs (same initial state, same 10 batches of unicode_glyphs/tiny, batch 16):
  one            a 1-device mesh: the reference
  data8          {"data": 8}: batch split 8 ways, parameters replicated
  data2_fsdp4    {"data": 2, "fsdp": 4}, fsdp_min_size=1024: batch split 8 ways,
                 every parameter of >= 1024 elements split 4 ways (with its moments)
  cache_ring     {"data": 8}, 2 micro-batches with the gradient cache and the ring
                 loss: the contrastive batch is still the whole 16
  fsdp_gather    {"data": 2, "fsdp": 4}, loss.distributed="all_gather"

Simulated devices need XLA_FLAGS before JAX starts, so (as in
tests/kernels/test_distributed.py) all runs happen in one subprocess, this file
run as a script, unless the pytest process already has 8 devices; the
reference is a 1-device mesh in that same process.

Tolerance: every step's loss within LOSS_RTOL = 1e-5 relative of the reference
(seen: <= 1.4e-7), and every final parameter within PARAM_ATOL = 1e-5 absolute
(seen: <= 3.4e-7; Adam at learning rate 2e-3 moves each by up to ~2e-2 in 10
steps). Sharding only changes the order in which float32 sums are taken.
Excepted from the parameter check: those whose gradient is float32 noise
(`_noise_only_parameters`, e.g. a conv bias that GroupNorm subtracts again),
which Adam moves by ±learning rate in a direction any rounding change flips.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_DEVICES, STEPS = 8, 10
LOSS_RTOL, PARAM_ATOL = 1e-5, 1e-5
# name -> (number of devices, train overrides, loss overrides)
RUNS = {
    "one": (1, {"mesh": {"data": 1, "fsdp": 1}}, {}),
    "data8": (8, {"mesh": {"data": -1, "fsdp": 1}}, {}),
    "data2_fsdp4": (8, {"mesh": {"data": 2, "fsdp": 4}, "fsdp_min_size": 1024}, {}),
    "cache_ring": (8, {"mesh": {"data": -1, "fsdp": 1}, "micro_batches": 2,
                       "gradient_cache": True}, {"distributed": "ring"}),
    "fsdp_gather": (8, {"mesh": {"data": 2, "fsdp": 4}, "fsdp_min_size": 1024},
                    {"distributed": "all_gather"}),
    "host_cache_fsdp": (8, {"mesh": {"data": 2, "fsdp": 4}, "fsdp_min_size": 1024,
                            "micro_batches": 2, "gradient_cache": True,
                            "gradient_cache_loop": "host"}, {}),
}


# ----------------------------------------------------------- worker (subprocess)


def _noise_only_parameters(exp, config, state, batch) -> list[str]:
  """Parameters whose first gradient is float32 noise (< 1e-6 of the largest entry).

  E.g. the bias of a convolution followed by GroupNorm, which subtracts it
  again: Adam divides that noise by its own size and moves the parameter by
  ±learning rate, in a direction that any change of rounding flips.
  """
  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp

  from mmalign.losses.objective import build_objective
  from mmalign.train import accumulation, step as step_lib
  from mmalign.train.optimizer import param_path
  objective = build_objective(config.loss, model_fuses=False)
  grads = jax.jit(lambda p, b: accumulation.full_batch(
      step_lib.train_forward(exp.model), objective, p, {}, b, jax.random.key(0))[2])(
          state["params"], jax.tree.map(jnp.asarray, batch))
  largest = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads))
  return sorted(param_path(path) for path, g in jax.tree_util.tree_leaves_with_path(grads)
                if float(jnp.abs(g).max()) < 1e-6 * largest)


def _run_all(data_dir: str, workdir: str) -> dict:
  """Trains every run from the same state on the same batches; returns the JSON report."""
  # pylint: disable=import-outside-toplevel
  import jax
  import numpy as np

  from experiments.configs import tiny
  from mmalign import experiment as experiment_lib
  from mmalign.train import state as train_state
  from mmalign.data import pipeline, sources
  from mmalign.losses.objective import build_objective
  from mmalign import mesh as mesh_lib
  from mmalign.train import sharding, step as step_lib
  from mmalign.train.optimizer import param_path
  from tests import trees

  config = tiny.get_config()
  config.data.data_dir = data_dir
  config.train.steps = STEPS
  exp = experiment_lib.for_training(config, workdir)
  batches = pipeline.TrainBatches(
      sources.open_split(exp.builder, "train"),
      pipeline.index_split(sources.open_split(exp.builder, "train", decode_images=False)),
      exp.tokenizer, global_batch=config.train.batch_size, seed=config.train.seed,
      normalization=exp.normalization)
  host_batches = [batches(step) for step in range(STEPS)]
  initial = jax.device_get(train_state.init_train_state(exp))
  optimizer, _ = train_state.optimizer(exp.config)

  report = {"device_count": jax.device_count(), "runs": {},
             "noise_only": _noise_only_parameters(exp, config, initial, host_batches[0])}
  reference_params = None
  for name, (num_devices, train_overrides, loss_overrides) in RUNS.items():
    train_config = config.train.copy_and_resolve_references()
    loss_config = config.loss.copy_and_resolve_references()
    train_config.update(train_overrides)
    loss_config.update(loss_overrides)
    mesh = mesh_lib.make_mesh(train_config.mesh, jax.devices()[:num_devices])
    objective = build_objective(loss_config, model_fuses=False, mesh=mesh_lib.loss_mesh(mesh),
                                data_axis=mesh_lib.LOSS_AXIS)
    step, state = step_lib.build_train_step(train_config, exp.model, objective, optimizer, mesh,
                                            initial)
    losses = []
    for batch in host_batches:
      state, metrics = step(state, mesh_lib.global_batch(batch, mesh))
      losses.append(float(metrics["loss"]))
    params = jax.device_get(state["params"])
    if reference_params is None:
      reference_params = params
    param_errors = {param_path(path): float(np.abs(a - b).max()) for (path, a), b in
                    zip(jax.tree_util.tree_leaves_with_path(params),
                        jax.tree.leaves(reference_params))}
    # Where the arrays of the final state really live, leaf by leaf.
    specs = trees.sharded_leaves(jax.tree.map(lambda x: x.sharding, state))
    largest = max(jax.tree_util.tree_leaves_with_path(state["params"]), key=lambda kv: kv[1].size)
    report["runs"][name] = {
        "losses": losses, "param_errors": param_errors,
        "sharded": {path: str(spec) for path, spec in specs.items()},
        "largest_param": "params/" + "/".join(k.key for k in largest[0]),
        "largest_shard_shape": list(largest[1].addressable_shards[0].data.shape),
        "largest_shape": list(largest[1].shape),
    }
  return report


# ------------------------------------------------------------------ the tests


@pytest.fixture(scope="module")
def report(tiny_data_dir, tmp_path_factory) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path_factory.mktemp("multidevice"))
  if jax.device_count() >= NUM_DEVICES:
    return _run_all(tiny_data_dir, workdir)
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={NUM_DEVICES}",
         "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
  result = subprocess.run([sys.executable, os.path.abspath(__file__), tiny_data_dir, workdir],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
  assert result.returncode == 0, f"worker failed:\n{result.stdout}\n{result.stderr}"
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_worker_saw_eight_devices(report):
  assert report["device_count"] >= NUM_DEVICES


@pytest.mark.parametrize("run", [name for name in RUNS if name != "one"])
def test_loss_trajectory_matches_one_device(report, run):
  import numpy as np  # pylint: disable=import-outside-toplevel
  reference, got = report["runs"]["one"], report["runs"][run]
  assert len(got["losses"]) == STEPS
  np.testing.assert_allclose(got["losses"], reference["losses"], rtol=LOSS_RTOL)
  errors = {path: error for path, error in got["param_errors"].items()
            if path not in report["noise_only"]}
  assert len(errors) > len(report["noise_only"])
  assert max(errors.values()) <= PARAM_ATOL, errors
  assert reference["losses"][-1] < reference["losses"][0]  # It did train.


@pytest.mark.parametrize("run", ["data2_fsdp4", "fsdp_gather", "host_cache_fsdp"])
def test_fsdp_splits_large_parameters_and_their_moments(report, run):
  got = report["runs"][run]
  largest = got["largest_param"]
  assert "fsdp" in got["sharded"][largest]
  assert got["largest_shard_shape"] != got["largest_shape"]  # Each device holds a quarter.
  moments = [path for path in got["sharded"] if path.startswith("opt_state/")
             and path.endswith(largest.removeprefix("params/"))]
  assert moments and all(got["sharded"][m] == got["sharded"][largest] for m in moments)


def test_data_parallel_runs_replicate_parameters(report):
  assert report["runs"]["data8"]["sharded"] == {} and report["runs"]["one"]["sharded"] == {}


if __name__ == "__main__":
  # The subprocess worker: XLA_FLAGS is already in the environment, before JAX starts.
  sys.path.insert(0, ROOT)
  print(json.dumps(_run_all(sys.argv[1], sys.argv[2])))
