"""One entry point per kernel, choosing the implementation by name.

Callers (losses, retrieval) should use these rather than a module directly, so
one config string (`impl`) switches between the oracle, the tiled XLA version
and the Pallas kernels without code changes:

  "reference"    kernels.reference: full [N, M] logits; small batches and tests.
  "xla_chunked"  kernels.xla_chunked: lax.scan over column blocks, any backend.
  "pallas"       kernels.pallas_gpu on GPU, kernels.pallas_tpu on TPU; on CPU the
                 GPU kernels in interpret mode (slow; for testing the path).
  "auto"         "pallas" when jax.default_backend() is "gpu" or "tpu", else
                 "xla_chunked".

`**block_kwargs` go to the chosen implementation unchanged; their names and
defaults are documented there (xla_chunked: `block_size`, default 512 for the
losses and 4096 for top_k; reference takes none; Pallas modules also take
`interpret`). A kwarg the implementation does not accept raises TypeError, so
no setting is silently ignored.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp

IMPLS = ("auto", "reference", "xla_chunked", "pallas")


def resolve_impl(impl: str) -> str:
  """The concrete implementation `impl` stands for on this backend ("auto" resolved)."""
  if impl not in IMPLS:
    raise ValueError(f"Unknown kernel impl {impl!r}; allowed: {', '.join(IMPLS)}")
  if impl == "auto":
    return "pallas" if jax.default_backend() in ("gpu", "tpu") else "xla_chunked"
  return impl


def _pallas_module() -> tuple[ModuleType, dict[str, Any]]:
  """The Pallas module for this backend, plus kwargs it needs here (interpret on CPU)."""
  backend = jax.default_backend()
  name = "kernels.pallas_tpu" if backend == "tpu" else "kernels.pallas_gpu"
  try:
    module = importlib.import_module(name)  # Lazy: Pallas imports are heavy and optional.
  except ImportError as e:
    raise ImportError(f"impl='pallas' on backend {backend!r} needs {name}, which could not be "
                      f"imported ({e}); use impl='xla_chunked' instead") from e
  return module, ({"interpret": True} if backend not in ("gpu", "tpu") else {})


def _dispatch(function: str, impl: str, block_kwargs: dict[str, Any]):
  """Looks up `function` in the module `impl` names and binds its extra kwargs."""
  impl = resolve_impl(impl)
  extra: dict[str, Any] = {}
  if impl == "pallas":
    module, extra = _pallas_module()
  else:
    module = importlib.import_module(f"kernels.{impl}")
  kwargs = {**extra, **block_kwargs}  # An explicit interpret= wins.
  fn = getattr(module, function)
  return lambda *args: fn(*args, **kwargs)


def infonce(text: jnp.ndarray, image: jnp.ndarray, scale: jnp.ndarray,
            positives: jnp.ndarray | None = None, *, impl: str = "auto",
            **block_kwargs: Any) -> jnp.ndarray:
  """Symmetric InfoNCE; see `kernels.reference.infonce_loss` for the exact definition.

  text: [N, d]; image: [M, d]; scale: scalar s (not log s); positives: [N] int or
  None (diagonal). Returns a float32 scalar.
  """
  return _dispatch("infonce_loss", impl, block_kwargs)(text, image, scale, positives)


def sigmoid(text: jnp.ndarray, image: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray,
            positives: jnp.ndarray | None = None, *, impl: str = "auto",
            **block_kwargs: Any) -> jnp.ndarray:
  """SigLIP loss; see `kernels.reference.sigmoid_loss`. Returns a float32 scalar."""
  return _dispatch("sigmoid_loss", impl, block_kwargs)(text, image, scale, bias, positives)


def correspondence(text: jnp.ndarray, image: jnp.ndarray, target: jnp.ndarray, *,
                   impl: str = "auto", **block_kwargs: Any) -> jnp.ndarray:
  """Σ_ij (A_ij − t_i·i_j)², target A: [N, M]; see `kernels.reference.correspondence_loss`."""
  return _dispatch("correspondence_loss", impl, block_kwargs)(text, image, target)


def top_k(queries: jnp.ndarray, keys: jnp.ndarray, k: int, *, impl: str = "auto",
          **block_kwargs: Any) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Inner-product top-k: (values [q, k] float32, indices [q, k] int32), best first."""
  return _dispatch("top_k", impl, block_kwargs)(queries, keys, k)
