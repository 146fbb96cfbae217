"""The Pallas kernels lower for CUDA (Triton) and TPU (Mosaic) from this CPU-only machine.

`jax.export` runs the whole jax-side lowering for the target platform: the
Pallas → Triton IR and Pallas → Mosaic translations, with the TPU block-shape
rules (multiples of (8, 128)) checked on the way. It does not run the device
compilers (Triton → PTX inside XLA:GPU, Mosaic → TPU code in libtpu), so a
pass here means "the kernels are well-formed for the backend", not "they were
compiled"; that needs a GPU/TPU run of test_pallas.py in compiled mode.

Triton custom calls carry no serialisation-compatibility guarantee, so
`jax.export` refuses them unless that check is disabled explicitly for their
target; the Mosaic `tpu_custom_call` is on the stable list and needs nothing.
"""

import re

import jax
import jax.numpy as jnp
import pytest

from kernels import pallas_gpu, pallas_tpu

_TRITON_TARGET = "__gpu$xla.gpu.triton"
PLATFORMS = {
    # platform: (module, custom-call target, pattern naming each kernel, export kwargs)
    "cuda": (pallas_gpu, _TRITON_TARGET, r'\bname = "(\w+)"',
             dict(disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(_TRITON_TARGET)])),
    "tpu": (pallas_tpu, "tpu_custom_call", r'\bkernel_name = "(\w+)"', {}),
}
# Kernels each loss launches: forward only, and forward + backward. The Triton
# InfoNCE forward gets row and column statistics from one sweep, Mosaic from two.
KERNELS = {
    ("cuda", "infonce"): (["contrastive_lse"], ["contrastive_lse"] + ["contrastive_grad"] * 2),
    ("tpu", "infonce"): (["contrastive_lse"], ["contrastive_lse"] + ["contrastive_grad"] * 2),
    ("cuda", "sigmoid"): (["sigmoid_rows"], ["sigmoid_rows"] + ["contrastive_grad"] * 2),
    ("tpu", "sigmoid"): (["sigmoid_rows"], ["sigmoid_rows"] + ["contrastive_grad"] * 2),
}
LOSSES = ("infonce", "sigmoid")
N = 256


def _loss(module, loss):
  """(fn, differentiable argnums) taking (text, image, scale[, bias], positives)."""
  if loss == "infonce":
    return (lambda t, i, s, b, p: module.infonce_loss(t, i, s, p)), (0, 1, 2)
  return (lambda t, i, s, b, p: module.sigmoid_loss(t, i, s, b, p)), (0, 1, 2, 3)


def _export(platform, fn, n, m, d, dtype, positives):
  _, _, _, kwargs = PLATFORMS[platform]
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  pos = jax.ShapeDtypeStruct((n,), jnp.int32) if positives else None
  exported = jax.export.export(jax.jit(fn), platforms=[platform], **kwargs)(
      jax.ShapeDtypeStruct((n, d), dtype), jax.ShapeDtypeStruct((m, d), dtype), scalar,
      scalar, pos)
  return exported.mlir_module()


def _kernels(platform, module_text):
  """Names of the Pallas kernels in an exported module, in order."""
  _, target, pattern, _ = PLATFORMS[platform]
  names = re.findall(pattern, module_text)
  assert module_text.count(f"@{target}(") == len(names), "a custom call without a kernel name"
  return names


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("d", [128, 256, 768])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_forward_and_backward_lower(platform, loss, d, dtype):
  fn, argnums = _loss(PLATFORMS[platform][0], loss)
  forward, both = KERNELS[platform, loss]
  assert _kernels(platform, _export(platform, fn, N, N, d, dtype, False)) == forward
  grad_fn = jax.value_and_grad(fn, argnums=argnums)
  assert sorted(_kernels(platform, _export(platform, grad_fn, N, N, d, dtype, False))) == \
      sorted(both)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_explicit_positives_and_ragged_shapes_lower(platform, loss):
  """N ≠ M, neither a block multiple, d not a multiple of 128, explicit positives.

  Also checks the point of the kernels: no [N, M] array (padded or not) exists
  outside them, in the forward or the backward pass.
  """
  fn, argnums = _loss(PLATFORMS[platform][0], loss)
  module_text = _export(platform, jax.value_and_grad(fn, argnums=argnums), 300, 200, 100,
                        jnp.bfloat16, True)
  assert sorted(_kernels(platform, module_text)) == sorted(KERNELS[platform, loss][1])
  square = re.findall(r"tensor<(?:300|384|512)x(?:200|256)x|tensor<(?:200|256)x(?:300|384|512)x",
                      module_text)
  assert not square, f"an N×M array was materialised: {square[:3]}"
