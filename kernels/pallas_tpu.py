"""Pallas (Mosaic TPU) kernels for the contrastive losses that never build the [N, M] logits.

Same sweeps as `pallas_gpu.py` (read its docstring for the maths and for what
runs outside the kernels), laid out the TPU way: a 2-D grid (row block i,
column block j) whose j axis is a reduction ("arbitrary") and i axis
"parallel" (split across TensorCores). Pallas pipelines the [block, d] tiles
of A and B into VMEM; running state (max, sum, positive logit, gradient
accumulators) lives in VMEM scratch, initialised at j = 0 and written out at
the last j.

Layout choices, after jax's own TPU flash attention:
  * blocks are multiples of 128 on both sides (each side is the lane axis of
    the logit tile in one of the two sweeps), and d is padded to a multiple
    of 128;
  * per-row vectors travel as [rows, 128] with the value repeated across the
    lanes, per-column vectors as [8, cols] repeated across the sublanes, so
    every block is a whole (8, 128) tile; outputs take lane 0;
  * the scalars s, b and the gradient coefficient sit in SMEM.

The loss assembly and custom VJP are shared with `pallas_gpu.py`; only the
sweeps below are TPU-specific. `correspondence_loss` and `top_k` delegate to
the jnp reference (see `pallas_gpu.py`).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from . import pallas_gpu
from .pallas_gpu import _MASK, _NT, sigmoid_tile_value

_LANES, _SUBLANES = 128, 8


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def _lanes(x, width: int):
  """[rows, 128] lane-replicated vector → [rows, width] (width a multiple of 128)."""
  return x if width == _LANES else jnp.tile(x, (1, width // _LANES))


def _dot(x, y, dims):
  """float32-accumulated matmul; full fp32 passes for fp32 operands."""
  precision = lax.Precision.HIGHEST if x.dtype == jnp.float32 else None
  return lax.dot_general(x, y, dims, precision=precision,
                         preferred_element_type=jnp.float32)


def _valid(block_a: int, block_b: int, n_a: int | None, n_b: int):
  """[block_a, block_b] bool: this tile's real columns (and real rows unless n_a is None)."""
  shape = (block_a, block_b)
  ok = pl.program_id(1) * block_b + lax.broadcasted_iota(jnp.int32, shape, 1) < n_b
  if n_a is not None:
    ok &= pl.program_id(0) * block_a + lax.broadcasted_iota(jnp.int32, shape, 0) < n_a
  return ok


def _lse_kernel(params_ref, a_ref, b_ref, key_a_ref, key_b_ref, lse_ref, pos_ref, col_ref,
                m_scr, l_scr, pos_scr, *, n_a: int, n_b: int):
  """Both directions' logsumexp statistics of s·A_blk·B_jᵀ from one sweep.

  Over column blocks j: the row logsumexp (online max/sum) and the raw positive logit per
  row; per tile (i, j): the column logsumexp over block i's valid rows into col_ref, which
  the caller reduces over row blocks, so the columns cost no second sweep.
  """
  j = pl.program_id(1)
  block_a, block_b = a_ref.shape[0], b_ref.shape[0]

  @pl.when(j == 0)
  def _init():
    m_scr[...] = jnp.full(m_scr.shape, _MASK, jnp.float32)
    l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
    pos_scr[...] = jnp.zeros(pos_scr.shape, jnp.float32)

  raw = _dot(a_ref[...], b_ref[...], _NT)  # [ba, bb]
  # Padded rows give finite row values that the caller slices off; rows are masked for
  # the column statistics, and every row block holds a valid row.
  logits = jnp.where(_valid(block_a, block_b, n_a, n_b), params_ref[0] * raw, _MASK)
  m_prev = m_scr[...]  # [ba, 128]
  m_new = jnp.maximum(m_prev, jnp.max(logits, axis=1, keepdims=True))  # [ba, 128]
  p = jnp.exp(logits - _lanes(m_new, block_b))
  l_scr[...] = jnp.exp(m_prev - m_new) * l_scr[...] + jnp.sum(p, axis=1, keepdims=True)
  m_scr[...] = m_new
  hit = _lanes(key_a_ref[...], block_b) == key_b_ref[0:1, :]  # [ba, bb]
  pos_scr[...] += jnp.sum(jnp.where(hit, raw, 0.0), axis=1, keepdims=True)
  col_max = jnp.max(logits, axis=0, keepdims=True)  # [1, bb]
  col_lse = col_max + jnp.log(jnp.sum(jnp.exp(logits - col_max), axis=0, keepdims=True))
  col_ref[...] = jnp.broadcast_to(col_lse, col_ref.shape)  # [8, bb], sublane-replicated.

  @pl.when(j == pl.num_programs(1) - 1)
  def _write():
    lse_ref[...] = m_scr[...] + jnp.log(l_scr[...])
    pos_ref[...] = pos_scr[...]


def _log_sigmoid_kernel(params_ref, a_ref, b_ref, key_a_ref, key_b_ref, out_ref, acc_scr,
                        *, n_a: int, n_b: int):
  """Σ_j log σ(z_ij x_ij) over valid entries, accumulated over column blocks."""
  j = pl.program_id(1)
  block_a, block_b = a_ref.shape[0], b_ref.shape[0]

  @pl.when(j == 0)
  def _init():
    acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

  raw = _dot(a_ref[...], b_ref[...], _NT)  # [ba, bb]
  value = sigmoid_tile_value((params_ref[0], params_ref[1]), raw,
                             _lanes(key_a_ref[...], block_b), key_b_ref[0:1, :])
  value = jnp.where(_valid(block_a, block_b, n_a, n_b), value, 0.0)
  acc_scr[...] += jnp.sum(value, axis=1, keepdims=True)

  @pl.when(j == pl.num_programs(1) - 1)
  def _write():
    out_ref[...] = acc_scr[...]


def _grad_kernel(params_ref, a_ref, b_ref, *refs, tile_grad: Callable, n_rows: int,
                 n_cols: int, n_a: int, n_b: int, with_ds: bool, with_db: bool):
  """dA_blk = s·Σ_j G_j·B_j with G recomputed per tile; also Σ_j G·raw and Σ_j G."""
  row_refs, refs = refs[:n_rows], refs[n_rows:]
  col_refs, refs = refs[:n_cols], refs[n_cols:]
  n_out = 1 + with_ds + with_db
  outs, (acc_scr, ds_scr, db_scr) = refs[:n_out], refs[n_out:]
  j = pl.program_id(1)
  block_a, block_b = a_ref.shape[0], b_ref.shape[0]

  @pl.when(j == 0)
  def _init():
    acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)
    ds_scr[...] = jnp.zeros(ds_scr.shape, jnp.float32)
    db_scr[...] = jnp.zeros(db_scr.shape, jnp.float32)

  params = (params_ref[0], params_ref[1], params_ref[2])
  b = b_ref[...]  # [bb, dp]
  raw = _dot(a_ref[...], b, _NT)  # [ba, bb]
  rows = tuple(_lanes(r[...], block_b) for r in row_refs)  # each [ba, bb]
  cols = tuple(c[0:1, :] for c in col_refs)  # each [1, bb]
  g = jnp.where(_valid(block_a, block_b, n_a, n_b), tile_grad(params, raw, rows, cols),
                0.0)
  # Mixed precision as in flash attention: G meets B in B's dtype, f32 accumulate.
  acc_scr[...] += _dot(g.astype(b.dtype), b, (((1,), (0,)), ((), ())))  # [ba, dp]
  if with_ds:
    ds_scr[...] += jnp.sum(g * raw, axis=1, keepdims=True)
  if with_db:
    db_scr[...] += jnp.sum(g, axis=1, keepdims=True)

  @pl.when(j == pl.num_programs(1) - 1)
  def _write():
    outs[0][...] = acc_scr[...] * params[0]
    rest = list(outs[1:])
    if with_ds:
      rest.pop(0)[...] = ds_scr[...]
    if with_db:
      rest.pop(0)[...] = db_scr[...]


def _row_vec(x):
  """[n] → [n, 128], the value repeated across lanes."""
  return jnp.broadcast_to(x[:, None], (x.shape[0], _LANES))


def _col_vec(x):
  """[n] → [8, n], the value repeated across sublanes."""
  return jnp.broadcast_to(x[None, :], (_SUBLANES, x.shape[0]))


def _interpret(interpret: bool):
  """True → the TPU-faithful interpreter (VMEM/SMEM, grid order, NaN-filled scratch)."""
  return pltpu.InterpretParams() if interpret else False


def _call(kernel, params, a, b, row_vecs, col_vecs, *, block_a, block_b, out_specs,
          out_shape, scratch, name, interpret):
  """pallas_call with the common in_specs: SMEM params, A by row block, B by column block."""
  dp = a.shape[1]
  row = pl.BlockSpec((block_a, _LANES), lambda i, j: (i, 0))
  col = pl.BlockSpec((_SUBLANES, block_b), lambda i, j: (0, j))
  return pl.pallas_call(
      kernel,
      grid=(a.shape[0] // block_a, b.shape[0] // block_b),
      in_specs=[pl.BlockSpec(memory_space=pltpu.SMEM),
                pl.BlockSpec((block_a, dp), lambda i, j: (i, 0)),
                pl.BlockSpec((block_b, dp), lambda i, j: (j, 0)),
                *[row] * len(row_vecs), *[col] * len(col_vecs)],
      out_specs=out_specs, out_shape=out_shape, scratch_shapes=scratch,
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
      interpret=_interpret(interpret), name=name,
  )(params, a, b, *map(_row_vec, row_vecs), *map(_col_vec, col_vecs))


class _MosaicBackend:
  """The four sweeps on Mosaic TPU (contract: see `pallas_gpu`, "Loss assembly")."""

  name = "mosaic_tpu"

  @staticmethod
  def pad_dims(n: int, m: int, d: int, block_n: int, block_m: int):
    """Effective blocks and padded sizes: (block_n, block_m, n_pad, m_pad, d_pad).

    Blocks must be multiples of 128; they shrink to a small N or M rounded up
    to 128, so tiny batches are not padded further than one tile.
    """
    for name, b in (("block_n", block_n), ("block_m", block_m)):
      if b <= 0 or b % _LANES:
        raise ValueError(f"{name} must be a positive multiple of {_LANES} on TPU; got {b}")
    block_n = min(block_n, _round_up(n, _LANES))
    block_m = min(block_m, _round_up(m, _LANES))
    return (block_n, block_m, _round_up(n, block_n), _round_up(m, block_m),
            _round_up(d, _LANES))

  @staticmethod
  def lse_rows_cols(params, a, b, key_a, key_b, *, n_a, n_b, block_a, block_b, interpret):
    """(row lse [Na_pad], raw positive [Na_pad], column lse [Nb_pad]) of s·A·Bᵀ, f32.

    The column lse is reduced here from one partial per row block.
    """
    na_p, nb_p = a.shape[0], b.shape[0]
    n_blocks = na_p // block_a
    row_out = pl.BlockSpec((block_a, _LANES), lambda i, j: (i, 0))
    vec = jax.ShapeDtypeStruct((na_p, _LANES), jnp.float32)
    acc = pltpu.VMEM((block_a, _LANES), jnp.float32)
    lse_row, pos, col_parts = _call(
        functools.partial(_lse_kernel, n_a=n_a, n_b=n_b), params, a, b, (key_a,),
        (key_b,), block_a=block_a, block_b=block_b,
        out_specs=[row_out, row_out, pl.BlockSpec((_SUBLANES, block_b), lambda i, j: (i, j))],
        out_shape=[vec, vec, jax.ShapeDtypeStruct((n_blocks * _SUBLANES, nb_p), jnp.float32)],
        scratch=[acc] * 3, name="contrastive_lse", interpret=interpret)
    col_parts = col_parts.reshape(n_blocks, _SUBLANES, nb_p)[:, 0]
    return lse_row[:, 0], pos[:, 0], jax.nn.logsumexp(col_parts, axis=0)

  @staticmethod
  def log_sigmoid_rows(params, a, b, key_a, key_b, *, n_a, n_b, block_a, block_b,
                       interpret):
    out = _call(functools.partial(_log_sigmoid_kernel, n_a=n_a, n_b=n_b), params, a, b,
                (key_a,), (key_b,), block_a=block_a, block_b=block_b,
                out_specs=pl.BlockSpec((block_a, _LANES), lambda i, j: (i, 0)),
                out_shape=jax.ShapeDtypeStruct((a.shape[0], _LANES), jnp.float32),
                scratch=[pltpu.VMEM((block_a, _LANES), jnp.float32)], name="sigmoid_rows",
                interpret=interpret)
    return out[:, 0]

  @staticmethod
  def grad(tile_grad, params, a, b, row_vecs, col_vecs, *, n_a, n_b, block_a, block_b,
           with_ds, with_db, interpret):
    na_p, dp = a.shape
    row_out = pl.BlockSpec((block_a, _LANES), lambda i, j: (i, 0))
    vec = jax.ShapeDtypeStruct((na_p, _LANES), jnp.float32)
    n_vec = with_ds + with_db
    outs = _call(
        functools.partial(_grad_kernel, tile_grad=tile_grad, n_rows=len(row_vecs),
                          n_cols=len(col_vecs), n_a=n_a, n_b=n_b, with_ds=with_ds,
                          with_db=with_db),
        params, a, b, row_vecs, col_vecs, block_a=block_a, block_b=block_b,
        out_specs=[pl.BlockSpec((block_a, dp), lambda i, j: (i, 0))] + [row_out] * n_vec,
        out_shape=[jax.ShapeDtypeStruct((na_p, dp), jnp.float32)] + [vec] * n_vec,
        scratch=[pltpu.VMEM((block_a, dp), jnp.float32),
                 pltpu.VMEM((block_a, _LANES), jnp.float32),
                 pltpu.VMEM((block_a, _LANES), jnp.float32)],
        name="contrastive_grad", interpret=interpret)
    outs = list(outs)
    da = outs.pop(0)
    ds = outs.pop(0)[:, 0] if with_ds else None
    db = outs.pop(0)[:, 0] if with_db else None
    return da, ds, db


def infonce_loss(text: jnp.ndarray, image: jnp.ndarray, scale: jnp.ndarray,
                 positives: jnp.ndarray | None = None, *, block_n: int = 128,
                 block_m: int = 128, interpret: bool = False) -> jnp.ndarray:
  """Symmetric InfoNCE as `reference.infonce_loss`, in O((N + M)·d) memory.

  text: [N, d], image: [M, d] (float32 or bfloat16; float32 accumulation);
  scale: scalar s; positives: [N] int in [0, M), or None (diagonal, N == M).
  block_n / block_m: tiles over texts / images, multiples of 128 (they shrink
  for small batches). interpret: run in the TPU interpreter (CPU tests).
  Differentiable in text, image and scale. Returns a float32 scalar.
  """
  return pallas_gpu.tiled_infonce_loss(_MosaicBackend, text, image, scale, positives,
                                       block_n=block_n, block_m=block_m,
                                       interpret=interpret)


def sigmoid_loss(text: jnp.ndarray, image: jnp.ndarray, scale: jnp.ndarray,
                 bias: jnp.ndarray, positives: jnp.ndarray | None = None, *,
                 block_n: int = 128, block_m: int = 128,
                 interpret: bool = False) -> jnp.ndarray:
  """SigLIP loss as `reference.sigmoid_loss`, in O((N + M)·d) memory.

  Same arguments as `infonce_loss`, plus the scalar bias b. Differentiable in
  text, image, scale and bias. Returns a float32 scalar.
  """
  return pallas_gpu.tiled_sigmoid_loss(_MosaicBackend, text, image, scale, bias,
                                       positives, block_n=block_n, block_m=block_m,
                                       interpret=interpret)


# No N×M product to fuse (correspondence) and a matmul-plus-merge per tile (top-k):
# both are the same XLA code on every backend; see pallas_gpu for why.
correspondence_loss = pallas_gpu.correspondence_loss
top_k = pallas_gpu.top_k
