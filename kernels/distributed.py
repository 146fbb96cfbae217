"""The global-batch losses with the batch sharded over one mesh axis (`jax.shard_map`).

Why: with data parallelism each device holds only its own `local` pairs, but
the contrastive losses compare every caption with every image of the global
batch. Two strategies get the other devices' embeddings, chosen by one string
(`STRATEGIES`), and both give the same loss and gradients as
`kernels.reference` on the unsharded batch:

  "all_gather"  each device gathers the other modality (`lax.all_gather`,
                tiled) and scores its local rows against all N columns. Simple;
                holds [N, d] embeddings and [local, N] logits per device.
  "ring"        image shards travel around the ring (`lax.ppermute`), one per
                step, as in the SigLIP paper's chunked implementation. A device
                only ever holds its own shard plus one visiting shard and a
                [local, local] block of logits, and communication overlaps with
                compute. Positives are all on the first step (the device's own
                shard); later steps see only negatives.

What the caller must know:
  - text, image: [N, d] with N = (size of `axis`) × local, laid out (or to be
    resharded by shard_map) as `P(axis, None)`: rows `k·local : (k+1)·local`
    live on the k-th device of `axis`. Other mesh axes, if any, see replicated
    copies. scale and bias are replicated scalars.
  - Positives are the diagonal of the global batch (caption i ↔ image i), so
    the loss does not depend on the number of devices. Arbitrary `positives`
    (see `reference.py`) are not supported here.
  - Inputs may be bfloat16; everything is computed in float32. Losses return
    replicated float32 scalars; the functions can be called inside or outside
    `jax.jit`, and gradients flow through the collectives (the transpose of
    all_gather is a reduce-scatter, that of ppermute the reverse permutation).
  - Under autodiff, the ring's `lax.scan` saves every step's [local, local]
    logits, i.e. [local, N] per device in total, as all_gather does; a
    custom_vjp that recomputes them on a second ring pass would remove that.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

STRATEGIES = ("all_gather", "ring")


def _check_args(text: jnp.ndarray, image: jnp.ndarray, mesh: Mesh, axis: str,
                strategy: str) -> None:
  """Fails early, with the allowed values, on what shard_map would reject obscurely."""
  if strategy not in STRATEGIES:
    raise ValueError(f"Unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
  if axis not in mesh.shape:
    raise ValueError(f"Mesh has no axis {axis!r}; its axes are {tuple(mesh.shape)}")
  if text.ndim != 2 or text.shape != image.shape:
    raise ValueError(f"text and image must both be [N, d] with diagonal positives; "
                     f"got {text.shape} and {image.shape}")
  if text.shape[0] % mesh.shape[axis]:
    raise ValueError(f"N={text.shape[0]} is not divisible by the {mesh.shape[axis]} devices "
                     f"of mesh axis {axis!r}")


def _sharded(body, mesh: Mesh, axis: str, num_scalars: int):
  """shard_map of body(text, image, *scalars) -> scalar: batch on `axis`, scalars replicated."""
  return jax.shard_map(body, mesh=mesh,
                       in_specs=(P(axis, None), P(axis, None)) + (P(),) * num_scalars,
                       out_specs=P())


def _local_logits(scale: jnp.ndarray, rows: jnp.ndarray, columns: jnp.ndarray) -> jnp.ndarray:
  """s · rows · columnsᵀ in float32: [r, c]."""
  return scale * (rows @ columns.T)


def _ring_shift(x, axis: str, num_devices: int):
  """Sends every leaf of x from device k to device k+1 (mod n) along `axis`."""
  perm = [(k, (k + 1) % num_devices) for k in range(num_devices)]
  return jax.tree.map(lambda leaf: lax.ppermute(leaf, axis, perm), x)


# ------------------------------------------------------------------ InfoNCE


def _infonce_all_gather(text, image, scale, *, axis, num_devices):
  """Per-device body. text, image: [local, d] float32; scale: scalar."""
  local = text.shape[0]
  n = local * num_devices
  all_text = lax.all_gather(text, axis, tiled=True)  # [N, d]
  all_image = lax.all_gather(image, axis, tiled=True)  # [N, d]
  row_logits = _local_logits(scale, text, all_image)  # [local, N]
  # Column j's logits are s·t_i·i_j over all i: the same matrix seen from the image side.
  column_logits = _local_logits(scale, image, all_text)  # [local, N]
  # The global diagonal l_gg = s·t_g·i_g pairs rows and columns of the same device.
  positive = scale * jnp.sum(text * image, axis=1)  # [local]
  row_ce = jax.nn.logsumexp(row_logits, axis=1) - positive  # [local]
  column_ce = jax.nn.logsumexp(column_logits, axis=1) - positive  # [local]
  return 0.5 * lax.psum(jnp.sum(row_ce) + jnp.sum(column_ce), axis) / n


def _infonce_ring(text, image, scale, *, axis, num_devices):
  """Per-device body. text, image: [local, d] float32; scale: scalar.

  Step 0 scores the device's own image shard; each later step first passes the
  visiting shard on to the next device, together with the running column
  logsumexps of its images, so those statistics follow the images around the
  ring. After n − 1 steps this device's rows have seen all N images and the
  shard it holds (from device k+1) has met all N captions; which device ends
  up with which columns' totals does not matter, since only their sum is used.
  """
  local = text.shape[0]
  n = local * num_devices
  logits = _local_logits(scale, text, image)  # [local, local], own shard
  positive = jnp.diagonal(logits)  # [local]
  row_lse = jax.nn.logsumexp(logits, axis=1)  # [local], over columns seen so far
  column_lse = jax.nn.logsumexp(logits, axis=0)  # [local], of the visiting images

  def step(carry, _):
    visiting, column_lse, row_lse = carry
    visiting, column_lse = _ring_shift((visiting, column_lse), axis, num_devices)
    logits = _local_logits(scale, text, visiting)  # [local, local], negatives only
    row_lse = jnp.logaddexp(row_lse, jax.nn.logsumexp(logits, axis=1))
    column_lse = jnp.logaddexp(column_lse, jax.nn.logsumexp(logits, axis=0))
    return (visiting, column_lse, row_lse), None

  (_, column_lse, row_lse), _ = lax.scan(step, (image, column_lse, row_lse), None,
                                         length=num_devices - 1)
  total = jnp.sum(row_lse) + jnp.sum(column_lse) - 2.0 * jnp.sum(positive)
  return 0.5 * lax.psum(total, axis) / n


def infonce_loss(text: jnp.ndarray, image: jnp.ndarray, scale: jnp.ndarray, *, mesh: Mesh,
                 axis: str = "data", strategy: str = "all_gather") -> jnp.ndarray:
  """Symmetric InfoNCE over the global batch; equals `reference.infonce_loss(text, image, scale)`.

  text, image: [N, d], sharded (or to be sharded) as P(axis, None) over `mesh`;
  scale: scalar s (not log s); strategy: one of STRATEGIES.
  Returns a replicated float32 scalar.
  """
  _check_args(text, image, mesh, axis, strategy)
  body = {"all_gather": _infonce_all_gather, "ring": _infonce_ring}[strategy]
  body = functools.partial(body, axis=axis, num_devices=mesh.shape[axis])
  return _sharded(body, mesh, axis, 1)(text.astype(jnp.float32), image.astype(jnp.float32),
                                       jnp.asarray(scale, jnp.float32))


# ------------------------------------------------------------------ Sigmoid


def _sigmoid_terms(logits: jnp.ndarray, positives_on_diagonal: bool) -> jnp.ndarray:
  """Σ log σ(z·logits) over a block: z = +1 on its diagonal if it holds positives, else −1."""
  if positives_on_diagonal:
    signs = jnp.where(jnp.eye(*logits.shape, dtype=bool), 1.0, -1.0)
  else:
    signs = -1.0
  return jnp.sum(jax.nn.log_sigmoid(signs * logits))


def _sigmoid_all_gather(text, image, scale, bias, *, axis, num_devices):
  """Per-device body. text, image: [local, d] float32; scale, bias: scalars."""
  local = text.shape[0]
  n = local * num_devices
  all_image = lax.all_gather(image, axis, tiled=True)  # [N, d]
  logits = _local_logits(scale, text, all_image) + bias  # [local, N]
  # Row r of this device is global caption axis_index·local + r; its positive is that column.
  columns = jnp.arange(n)[None, :]  # [1, N]
  rows = lax.axis_index(axis) * local + jnp.arange(local)[:, None]  # [local, 1]
  signs = jnp.where(rows == columns, 1.0, -1.0)  # [local, N]
  return -lax.psum(jnp.sum(jax.nn.log_sigmoid(signs * logits)), axis) / n


def _sigmoid_ring(text, image, scale, bias, *, axis, num_devices):
  """Per-device body, "my positives stay local, negatives come from others".

  text, image: [local, d] float32; scale, bias: scalars. Step 0 scores the own
  image shard (positives on its diagonal); each later step passes the visiting
  shard on and adds its all-negative block.
  """
  local = text.shape[0]
  n = local * num_devices
  own = _sigmoid_terms(_local_logits(scale, text, image) + bias, positives_on_diagonal=True)

  def step(carry, _):
    visiting, total = carry
    visiting = _ring_shift(visiting, axis, num_devices)
    logits = _local_logits(scale, text, visiting) + bias  # [local, local]
    return (visiting, total + _sigmoid_terms(logits, positives_on_diagonal=False)), None

  (_, total), _ = lax.scan(step, (image, own), None, length=num_devices - 1)
  return -lax.psum(total, axis) / n


def sigmoid_loss(text: jnp.ndarray, image: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray,
                 *, mesh: Mesh, axis: str = "data", strategy: str = "all_gather") -> jnp.ndarray:
  """SigLIP over the global batch; equals `reference.sigmoid_loss(text, image, scale, bias)`.

  text, image: [N, d], sharded (or to be sharded) as P(axis, None) over `mesh`;
  scale, bias: scalars; strategy: one of STRATEGIES. The sum is divided by the
  global N, as in the reference. Returns a replicated float32 scalar.
  """
  _check_args(text, image, mesh, axis, strategy)
  body = {"all_gather": _sigmoid_all_gather, "ring": _sigmoid_ring}[strategy]
  body = functools.partial(body, axis=axis, num_devices=mesh.shape[axis])
  return _sharded(body, mesh, axis, 2)(text.astype(jnp.float32), image.astype(jnp.float32),
                                       jnp.asarray(scale, jnp.float32),
                                       jnp.asarray(bias, jnp.float32))
