"""Pallas kernels (Triton and Mosaic TPU) against the jnp reference: losses and gradients.

On CPU both backends run interpreted: the Triton kernels through the generic
Pallas interpreter (`interpret=True`), the TPU kernels through the TPU
interpreter (`pltpu.InterpretParams`, which also models VMEM/SMEM and fills
uninitialised scratch with NaN, so a missing accumulator reset shows up). On a
GPU or TPU host the matching backend also runs compiled. Interpretation is
slow, so shapes are tiny; the TPU cases still use 2×2 grids of 128-blocks
where it matters (running max/sum across column blocks).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import pallas_gpu, pallas_tpu, reference

# (module, block size for the tests, platform on which it also runs compiled).
BACKENDS = {
    "gpu": (pallas_gpu, 16, "gpu"),
    "tpu": (pallas_tpu, 128, "tpu"),
}


def _modes():
  """(backend, interpret) pairs: interpreted everywhere, compiled on its own platform."""
  modes = [(name, True) for name in BACKENDS]
  modes += [(name, False) for name, (_, _, platform) in BACKENDS.items()
            if jax.default_backend() == platform]
  return [pytest.param(n, i, id=f"{n}-{'interpret' if i else 'compiled'}") for n, i in modes]


def _inputs(n, m, d, *, dtype=jnp.float32, normalise=False, positives="diagonal", seed=0):
  """text [n, d], image [m, d] and positives ([n] int with repeats and empty columns, or None)."""
  k_text, k_image, k_pos = jax.random.split(jax.random.PRNGKey(seed), 3)
  text = jax.random.normal(k_text, (n, d), jnp.float32)
  image = jax.random.normal(k_image, (m, d), jnp.float32)
  if normalise:
    text /= jnp.linalg.norm(text, axis=1, keepdims=True)
    image /= jnp.linalg.norm(image, axis=1, keepdims=True)
  pos = None
  if positives == "random":
    # The last 3 images get no caption: the column term must skip them.
    pos = jax.random.randint(k_pos, (n,), 0, m - 3)
  return text.astype(dtype), image.astype(dtype), pos


def _value_and_grads(loss, args, n_diff):
  return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(n_diff))))(*args)


def _assert_close(got, want, rtol, name):
  """Elementwise, with an absolute floor relative to the largest reference entry."""
  got = np.asarray(jnp.asarray(got, jnp.float32))
  want = np.asarray(jnp.asarray(want, jnp.float32))
  assert np.all(np.isfinite(got)), f"{name}: non-finite values"
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.max(np.abs(want)),
                             err_msg=name)


# Shapes, input options, scale, bias and (value, gradient) rtol; `tpu_shape`
# overrides (n, m) for the TPU backend, whose blocks are 128, and `gpu_block`
# the GPU block size.
CASES = {
    # Nothing a block multiple (d=20 pads to 32), explicit positives with
    # repeated images and empty columns.
    "ragged": dict(n=40, m=24, d=20, positives="random", scale=2.0, bias=-1.0,
                   rtol=(1e-5, 1e-4), tpu_shape=(200, 136)),
    # bfloat16 inputs: the backward feeds G to the matmul in bfloat16.
    "bf16": dict(n=24, m=24, d=20, dtype=jnp.bfloat16, scale=3.0, bias=-2.0,
                 rtol=(1e-4, 2e-2)),
    # Square, diagonal positives, a 2×2 GPU grid; |logits| up to 200, where exp
    # would overflow float32 without the online max.
    "square_large_logits": dict(n=32, m=32, d=16, normalise=True, scale=200.0, bias=-10.0,
                         rtol=(1e-4, 1e-3)),
    # A wide d at the default GPU block: the backward's row block shrinks to
    # fit its [rows, d] accumulator, held as several d chunks (d=600 pads to 640).
    "wide_d": dict(n=64, m=48, d=600, normalise=True, positives="random", scale=10.0,
                   bias=-5.0, rtol=(1e-5, 1e-4), gpu_block=128),
}


def _case(name, backend):
  """One CASES entry: (text, image, positives, scale, bias, (rtol value, grads), block)."""
  case = CASES[name]
  n, m = case.get(f"{backend}_shape", (case["n"], case["m"]))
  text, image, pos = _inputs(n, m, case["d"], dtype=case.get("dtype", jnp.float32),
                             normalise=case.get("normalise", False),
                             positives=case.get("positives", "diagonal"))
  block = case.get(f"{backend}_block", BACKENDS[backend][1])
  return (text, image, pos, jnp.float32(case["scale"]), jnp.float32(case["bias"]),
          case["rtol"], block)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend,interpret", _modes())
def test_infonce_matches_reference(backend, interpret, case):
  module = BACKENDS[backend][0]
  text, image, pos, scale, _, (rtol_value, rtol_grad), block = _case(case, backend)

  def kernel(t, i, s, p):
    return module.infonce_loss(t, i, s, p, block_n=block, block_m=block, interpret=interpret)

  value, grads = _value_and_grads(kernel, (text, image, scale, pos), 3)
  want_value, want_grads = _value_and_grads(reference.infonce_loss, (text, image, scale, pos), 3)
  _assert_close(value, want_value, rtol_value, "loss")
  for got, want, name in zip(grads, want_grads, ("d_text", "d_image", "d_scale")):
    assert got.dtype == want.dtype and got.shape == want.shape, name
    _assert_close(got, want, rtol_grad, name)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend,interpret", _modes())
def test_sigmoid_matches_reference(backend, interpret, case):
  module = BACKENDS[backend][0]
  text, image, pos, scale, bias, (rtol_value, rtol_grad), block = _case(case, backend)

  def kernel(t, i, s, b, p):
    return module.sigmoid_loss(t, i, s, b, p, block_n=block, block_m=block,
                               interpret=interpret)

  args = (text, image, scale, bias, pos)
  value, grads = _value_and_grads(kernel, args, 4)
  want_value, want_grads = _value_and_grads(reference.sigmoid_loss, args, 4)
  _assert_close(value, want_value, rtol_value, "loss")
  for got, want, name in zip(grads, want_grads, ("d_text", "d_image", "d_scale", "d_bias")):
    assert got.dtype == want.dtype and got.shape == want.shape, name
    _assert_close(got, want, rtol_grad, name)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_rejects_bad_arguments(backend):
  module = BACKENDS[backend][0]
  text, image, _ = _inputs(8, 6, 4)
  with pytest.raises(ValueError, match="N == M"):
    module.infonce_loss(text, image, 1.0, interpret=True)
  with pytest.raises(ValueError, match="block_n"):
    module.sigmoid_loss(text, text, 1.0, 0.0, block_n=100, interpret=True)
  with pytest.raises(ValueError, match="positives must have shape"):
    module.infonce_loss(text, image, 1.0, jnp.zeros((5,), jnp.int32), interpret=True)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_delegated_functions_match_reference(backend):
  module = BACKENDS[backend][0]
  text, image, _ = _inputs(6, 5, 4)
  target = jnp.eye(6, 5)
  np.testing.assert_allclose(module.correspondence_loss(text, image, target),
                             reference.correspondence_loss(text, image, target))
  values, indices = module.top_k(text, image, 2)
  want_values, want_indices = reference.top_k(text, image, 2)
  np.testing.assert_allclose(values, want_values)
  np.testing.assert_array_equal(indices, want_indices)
