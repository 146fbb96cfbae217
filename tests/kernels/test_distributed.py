"""Every distributed strategy against the single-device reference, on 8 simulated CPU devices.

Simulated devices need XLA_FLAGS before JAX starts, and this pytest process has
usually started JAX already with one CPU device. So, unless 8 devices are
already there, all checks run once in a subprocess (this file run as a script,
one JAX start-up) that prints JSON; the tests below only read that report.

Tolerance: float32 throughout; each loss and gradient leaf must agree with the
reference within RTOL = 1e-5 relative to the leaf's largest entry. The largest
residual seen (~6e-6, sigmoid d_scale: a small sum with much cancellation) is
the float32 reference's own rounding; both strategies were within 1e-6 of a
float64 evaluation there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_DEVICES = 8
RTOL = 1e-5
LOCAL, DIM = 4, 16  # Pairs per device and embedding width: N = devices × LOCAL.
STRATEGIES = ("all_gather", "ring")
LOSSES = ("infonce", "sigmoid")
# name -> (mesh shape, mesh axis names, axis the batch is sharded on).
MESHES = {
    "8": ((8,), ("data",), "data"),
    "4_of_8": ((4,), ("data",), "data"),  # A sub-mesh: the first 4 devices only.
    "2x4": ((2, 4), ("model", "data"), "data"),  # Replicated over "model".
    "4x2_batch_on_rows": ((4, 2), ("batch", "other"), "batch"),  # A non-default axis name.
}
CASES = [f"{mesh}/{loss}/{strategy}" for mesh in MESHES for loss in LOSSES
         for strategy in STRATEGIES]


# ----------------------------------------------------------- worker (subprocess)


def _max_relative_errors(got, expected) -> dict[str, float]:
  """{leaf name: max |got − expected| / max |expected|}, NaN if anything is not finite."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  errors = {}
  for name in expected:
    g, e = np.asarray(got[name], np.float64), np.asarray(expected[name], np.float64)
    if g.shape != e.shape or not np.all(np.isfinite(g)):
      errors[name] = float("nan")
      continue
    errors[name] = float(np.abs(g - e).max() / max(np.abs(e).max(), 1e-12))
  return errors


def _run_all_checks() -> dict:
  """Runs every case on this process's devices; returns the JSON-able report."""
  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  from kernels import distributed, reference

  devices = jax.devices()
  report = {"device_count": len(devices), "cases": {}, "errors": {}}
  for mesh_name, (shape, names, axis) in MESHES.items():
    mesh = Mesh(np.array(devices[:int(np.prod(shape))]).reshape(shape), names)
    n = mesh.shape[axis] * LOCAL
    k_text, k_image = jax.random.split(jax.random.PRNGKey(len(report["cases"])))
    # Unit-norm embeddings with the usual initial scales: logits span roughly ±10.
    text = jax.random.normal(k_text, (n, DIM))
    image = jax.random.normal(k_image, (n, DIM))
    text = text / jnp.linalg.norm(text, axis=1, keepdims=True)
    image = image / jnp.linalg.norm(image, axis=1, keepdims=True)
    scalars = {"infonce": (jnp.float32(10.0),), "sigmoid": (jnp.float32(10.0), jnp.float32(-10.0))}
    sharded = NamedSharding(mesh, P(axis, None))
    text_sharded, image_sharded = jax.device_put(text, sharded), jax.device_put(image, sharded)
    for loss in LOSSES:
      reference_fn = {"infonce": reference.infonce_loss, "sigmoid": reference.sigmoid_loss}[loss]
      argnums = tuple(range(2 + len(scalars[loss])))
      value, grads = jax.value_and_grad(reference_fn, argnums)(text, image, *scalars[loss])
      expected = {"loss": value, **dict(zip(("d_text", "d_image", "d_scale", "d_bias"), grads))}
      for strategy in STRATEGIES:
        fn = {"infonce": distributed.infonce_loss, "sigmoid": distributed.sigmoid_loss}[loss]

        def distributed_fn(*args, fn=fn, strategy=strategy):
          return fn(*args, mesh=mesh, axis=axis, strategy=strategy)

        value, grads = jax.jit(jax.value_and_grad(distributed_fn, argnums))(
            text_sharded, image_sharded, *scalars[loss])
        got = {"loss": value, **dict(zip(("d_text", "d_image", "d_scale", "d_bias"), grads))}
        report["cases"][f"{mesh_name}/{loss}/{strategy}"] = {
            "errors": _max_relative_errors(got, expected),
            # The gradient should stay sharded like its input, not be gathered onto one device.
            "d_text_sharding_ok": grads[0].sharding.is_equivalent_to(sharded, 2),
        }

  # Argument errors, reported as messages (raised before any device work).
  mesh = Mesh(np.array(devices), ("data",))
  x = jnp.zeros((NUM_DEVICES * LOCAL + 1, DIM))
  for name, call in {
      "indivisible": lambda: distributed.infonce_loss(x, x, 1.0, mesh=mesh),
      "unknown_axis": lambda: distributed.sigmoid_loss(x, x, 1.0, 0.0, mesh=mesh, axis="model"),
  }.items():
    try:
      call()
      report["errors"][name] = None
    except ValueError as e:
      report["errors"][name] = str(e)
  return report


# ------------------------------------------------------------------ the tests


@pytest.fixture(scope="module")
def report() -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  if jax.device_count() >= NUM_DEVICES:
    return _run_all_checks()
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={NUM_DEVICES}",
         "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
  result = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, f"worker failed:\n{result.stdout}\n{result.stderr}"
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_worker_saw_eight_devices(report):
  assert report["device_count"] >= NUM_DEVICES


@pytest.mark.parametrize("case", CASES)
def test_loss_and_gradients_match_reference(report, case):
  errors = report["cases"][case]["errors"]
  expected_leaves = {"loss", "d_text", "d_image", "d_scale"} | (
      {"d_bias"} if "/sigmoid/" in case else set())
  assert set(errors) == expected_leaves
  bad = {name: err for name, err in errors.items() if not err <= RTOL}  # NaN fails too.
  assert not bad, f"{case}: relative errors above {RTOL}: {bad}"


@pytest.mark.parametrize("case", CASES)
def test_text_gradient_stays_sharded(report, case):
  assert report["cases"][case]["d_text_sharding_ok"]


def test_indivisible_batch_is_rejected(report):
  assert "not divisible" in (report["errors"]["indivisible"] or "")


def test_unknown_mesh_axis_is_rejected(report):
  assert "no axis 'model'" in (report["errors"]["unknown_axis"] or "")


def test_unknown_strategy_lists_allowed_ones():
  # Needs no devices: the strategy is checked before any mesh work.
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh  # pylint: disable=import-outside-toplevel

  from kernels import distributed  # pylint: disable=import-outside-toplevel
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  x = jnp.zeros((4, DIM))
  for call in (lambda: distributed.infonce_loss(x, x, 1.0, mesh=mesh, strategy="tree"),
               lambda: distributed.sigmoid_loss(x, x, 1.0, 0.0, mesh=mesh, strategy="tree")):
    with pytest.raises(ValueError, match="'tree'.*all_gather, ring"):
      call()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_single_device_mesh_matches_reference(strategy):
  # The degenerate ring (no steps after the own shard) and a gather of one shard.
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh  # pylint: disable=import-outside-toplevel

  from kernels import distributed, reference  # pylint: disable=import-outside-toplevel
  mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
  k_text, k_image = jax.random.split(jax.random.PRNGKey(1))
  text, image = jax.random.normal(k_text, (LOCAL, DIM)), jax.random.normal(k_image, (LOCAL, DIM))
  np.testing.assert_allclose(
      distributed.infonce_loss(text, image, 2.0, mesh=mesh, strategy=strategy),
      reference.infonce_loss(text, image, 2.0), rtol=RTOL)
  np.testing.assert_allclose(
      distributed.sigmoid_loss(text, image, 2.0, -1.0, mesh=mesh, strategy=strategy),
      reference.sigmoid_loss(text, image, 2.0, -1.0), rtol=RTOL)


if __name__ == "__main__":
  # The subprocess worker: XLA_FLAGS is already in the environment, before JAX starts.
  print(json.dumps(_run_all_checks()))
