"""Dispatch by `impl`: auto resolution, errors, and agreement between implementations."""

import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels import api, reference


def _inputs(n=12, m=12, d=8):
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  return jax.random.normal(k1, (n, d)), jax.random.normal(k2, (m, d))


_CPU_ONLY = pytest.mark.skipif(jax.default_backend() != "cpu",
                               reason="checks the CPU dispatch; accelerators pick pallas")


@_CPU_ONLY
def test_auto_is_xla_chunked_on_cpu():
  assert jax.default_backend() == "cpu"
  assert api.resolve_impl("auto") == "xla_chunked"


def test_unknown_impl_lists_allowed():
  text, image = _inputs()
  with pytest.raises(ValueError, match="auto, reference, xla_chunked, pallas"):
    api.infonce(text, image, 1.0, impl="cuda")


def test_block_kwargs_reach_the_implementation():
  text, image = _inputs()
  with pytest.raises(TypeError):  # The reference has no blocks; nothing is silently dropped.
    api.infonce(text, image, 1.0, impl="reference", block_size=4)


@pytest.mark.parametrize("impl", ["auto", "xla_chunked"])
def test_impls_agree_with_reference(impl):
  text, image = _inputs(12, 10)
  positives = jnp.array([0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9])
  target = jnp.eye(12, 10)
  blocks = {"block_size": 4}
  np.testing.assert_allclose(api.infonce(text, image, 3.0, positives, impl=impl, **blocks),
                             api.infonce(text, image, 3.0, positives, impl="reference"),
                             rtol=1e-5)
  np.testing.assert_allclose(api.sigmoid(text, image, 3.0, -2.0, positives, impl=impl, **blocks),
                             api.sigmoid(text, image, 3.0, -2.0, positives, impl="reference"),
                             rtol=1e-5)
  np.testing.assert_allclose(api.correspondence(text, image, target, impl=impl),
                             api.correspondence(text, image, target, impl="reference"),
                             rtol=1e-4)
  got, expected = (api.top_k(text, image, 5, impl=impl, **blocks),
                   api.top_k(text, image, 5, impl="reference"))
  np.testing.assert_array_equal(got[1], expected[1])
  np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-6)


@_CPU_ONLY
def test_pallas_on_cpu_uses_gpu_kernels_in_interpret_mode(monkeypatch):
  calls = []
  fake = types.ModuleType("kernels.pallas_gpu")
  fake.infonce_loss = lambda *args, **kwargs: calls.append(kwargs) or reference.infonce_loss(*args)
  monkeypatch.setitem(sys.modules, "kernels.pallas_gpu", fake)
  text, image = _inputs()
  api.infonce(text, image, 2.0, impl="pallas", block_n=8)
  assert calls == [{"interpret": True, "block_n": 8}]


def test_pallas_missing_module_is_a_clear_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "kernels.pallas_gpu", None)  # Makes the import fail.
  text, image = _inputs()
  with pytest.raises(ImportError, match="impl='xla_chunked'"):
    api.infonce(text, image, 2.0, impl="pallas")


def test_real_pallas_kernels_agree_in_interpret_mode():
  pytest.importorskip("kernels.pallas_gpu")
  text, image = _inputs(16, 16)
  np.testing.assert_allclose(api.infonce(text, image, 3.0, impl="pallas"),
                             reference.infonce_loss(text, image, 3.0), rtol=1e-4)
  np.testing.assert_allclose(api.sigmoid(text, image, 3.0, -2.0, impl="pallas"),
                             reference.sigmoid_loss(text, image, 3.0, -2.0), rtol=1e-4)


@pytest.mark.parametrize("module_name", ["kernels.pallas_gpu", "kernels.pallas_tpu"])
def test_pallas_top_k_and_correspondence_are_tiled_and_exact(module_name):
  """Both delegate to the tiled XLA code; they must accept the API's interpret= flag."""
  module = pytest.importorskip(module_name)
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  queries = jax.random.normal(keys[0], (7, 16))
  corpus = jax.random.normal(keys[1], (45, 16))
  values, indices = module.top_k(queries, corpus, 5, block_size=8, interpret=True)
  want_values, want_indices = reference.top_k(queries, corpus, 5)
  np.testing.assert_allclose(values, want_values, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(indices, want_indices)
  target = jax.random.normal(keys[2], (7, 45))
  np.testing.assert_allclose(module.correspondence_loss(queries, corpus, target, interpret=True),
                             reference.correspondence_loss(queries, corpus, target), rtol=1e-4)
