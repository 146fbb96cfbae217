"""Matmul FLOPs the Pallas GPU and TPU losses execute per step, counted from their traced
programs.

The count walks the jaxpr of one value-and-gradient step: a dot_general costs
2·(output size)·(contraction size), times the trip count of every loop around
it (a fori_loop with static bounds traces to a scan of that length) and, inside
a kernel, times the number of programs in its pallas_call grid. Nothing is
compiled or run, so this checks both paths from a CPU-only machine. The
budget is 1.25 × the 8·N·M·d FLOPs that benchmarks credit a step with (the
forward logits, their recomputation in the backward, dT and dI).
"""

import math

import jax
from jax.experimental import pallas as pl
from jax.extend import core as jax_core
import jax.numpy as jnp
import pytest

from kernels import pallas_gpu, pallas_tpu


def _sub_jaxprs(params):
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, jax_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax_core.Jaxpr):
        yield item


def _matmul_flops(jaxpr, kernels=None) -> int:
  """Matmul FLOPs that running `jaxpr` executes; appends (name, grid, FLOPs) per kernel.

  A conditional counts its most expensive branch; a while loop (trip count
  unknown when tracing) is refused rather than guessed.
  """
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
    elif name == "pallas_call":
      grid = eqn.params["grid_mapping"].grid
      flops = math.prod(grid) * _matmul_flops(eqn.params["jaxpr"])
      if kernels is not None:
        kernels.append((eqn.params["name"], grid, flops))
      total += flops
    elif name == "scan":
      total += eqn.params["length"] * _matmul_flops(eqn.params["jaxpr"].jaxpr, kernels)
    elif name == "cond":
      total += max(_matmul_flops(b.jaxpr, kernels) for b in eqn.params["branches"])
    elif name == "while":
      raise AssertionError("a while loop: its trip count is unknown when tracing")
    else:
      total += sum(_matmul_flops(sub, kernels) for sub in _sub_jaxprs(eqn.params))
  return total


def test_counter_multiplies_grid_and_loop_trips():
  """An independent check of the walker: 2 programs × 3 trips × one [8,16]·[16,32] dot."""

  def kernel(x_ref, y_ref, o_ref):
    o_ref[...] = jax.lax.fori_loop(
        0, 3, lambda _, acc: acc + jnp.dot(x_ref[...], y_ref[...]),
        jnp.zeros((8, 32), jnp.float32))

  def fn(x, y):
    out = pl.pallas_call(kernel, grid=(2,),
                         in_specs=[pl.BlockSpec((8, 16), lambda i: (i, 0)),
                                   pl.BlockSpec((16, 32), lambda i: (0, 0))],
                         out_specs=pl.BlockSpec((8, 32), lambda i: (i, 0)),
                         out_shape=jax.ShapeDtypeStruct((16, 32), jnp.float32),
                         interpret=True)(x, y)
    return out @ y.T  # Outside the kernel: counted once, [16, 32]·[32, 16].

  jaxpr = jax.make_jaxpr(fn)(jnp.zeros((16, 16)), jnp.zeros((16, 32)))
  kernels = []
  assert _matmul_flops(jaxpr.jaxpr, kernels) == 2 * 3 * (2 * 8 * 16 * 32) + 2 * 16 * 32 * 16
  assert [(grid, flops) for _, grid, flops in kernels] == [((2,), 2 * 3 * 2 * 8 * 16 * 32)]


def _step_flops(backend, loss, n, m, d, dtype, block_n, block_m):
  """(matmul FLOPs of one value-and-gradient step, [(kernel, grid, FLOPs)])."""
  if loss == "infonce":
    def fn(t, i, s, b, p):
      del b
      return backend.infonce_loss(t, i, s, p, block_n=block_n, block_m=block_m)
    argnums = (0, 1, 2)
  else:
    def fn(t, i, s, b, p):
      return backend.sigmoid_loss(t, i, s, b, p, block_n=block_n, block_m=block_m)
    argnums = (0, 1, 2, 3)
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  jaxpr = jax.make_jaxpr(jax.value_and_grad(fn, argnums=argnums))(
      jax.ShapeDtypeStruct((n, d), dtype), jax.ShapeDtypeStruct((m, d), dtype), scalar,
      scalar, jax.ShapeDtypeStruct((n,), jnp.int32))
  kernels = []
  return _matmul_flops(jaxpr.jaxpr, kernels), kernels


# (N, M, d): the benchmark's d and a half-width one with N ≠ M; (block_n, block_m):
# the defaults that kernels.api passes, and a narrower row block on GPU (TPU blocks are
# multiples of 128).
@pytest.mark.parametrize("backend,blocks", [(pallas_gpu, (128, 128)), (pallas_gpu, (64, 128)),
                                            (pallas_tpu, (128, 128))],
                         ids=["gpu-128x128", "gpu-64x128", "tpu-128x128"])
@pytest.mark.parametrize("n,m,d", [(256, 256, 768), (512, 256, 384)])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "f32"])
@pytest.mark.parametrize("loss", ["infonce", "sigmoid"])
def test_step_stays_within_flop_budget(backend, loss, dtype, n, m, d, blocks):
  flops, kernels = _step_flops(backend, loss, n, m, d, dtype, *blocks)
  counted = 8 * n * m * d
  assert {name for name, _, _ in kernels} >= {"contrastive_grad"}, kernels
  assert flops <= 1.25 * counted, (
      f"{flops / counted:.3f} × 8·N·M·d; per kernel (name, grid, FLOPs): {kernels}")
