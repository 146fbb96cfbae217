"""Pallas (Triton) kernels for the contrastive losses that never build the [N, M] logits.

The InfoNCE and sigmoid losses only ever need row statistics of l = s·T·Iᵀ
(a logsumexp, a sum of log-sigmoids), and their gradients are sums over j of a
per-tile weight times image j. So every kernel here is one *sweep*: a program
owns a block of rows of A, walks over all column blocks of B, computes each
[block_a, block_b] logit tile once from the embeddings, and keeps only
O(block_a·d) running state (online max/sum, or a gradient accumulator). Peak
memory is O((N + M)·d + N·M / block_n), never O(N·M); the price is recomputing
the tiles in the backward pass, as flash attention does. A training step
executes 10·N·M·d matmul FLOPs on the padded sizes: one forward sweep, then one
sweep per side of the gradient, each computing its tiles once.

The forward sweep yields the column statistics too, as one partial logsumexp
per row block. The gradient sweep runs a second time on swapped inputs
(A = images, B = texts) for dI: l is symmetric under that swap, so one kernel
serves both, and no program has to add into another's output (Triton offers
no portable atomics for that).

What runs where:
  inside the kernels   logsumexp over rows (and over each row block's part of
                       a column), the positive logit of each row (a key match
                       inside the tile), Σ log σ, and the softmax/sigmoid parts
                       of dT, dI, ds, db;
  outside (jnp)        the reduction of the [N / block_n, M] column partials,
                       the multi-positive column term lse_{i: pos(i)=j} l_ij,
                       which only involves the N positive logits (segment
                       max/sum over `positives`), and the δ (positive-pair)
                       terms of the InfoNCE gradient, which are a gather of
                       image[pos(i)] and a segment-sum of text rows.

Triton wants power-of-two tiles, so N and M are padded to their block sizes,
d to a multiple of the contraction chunk (16, 32 or 64), and padded rows and
columns are masked by index. The contraction over d runs in chunks so that no
[block, d] operand must live in registers for d = 768; the backward pass keeps
its [block, d] accumulator in registers and shrinks its row block to fit.

`correspondence_loss` and `top_k` delegate to the jnp reference: the first
consumes a dense [N, M] target anyway, and the second has no Pallas kernel yet.

The loss assembly (padding, the positives bookkeeping, the custom VJP) is
backend-independent and shared with `pallas_tpu.py`, which supplies its own
sweeps through the same small interface ("Loss assembly" below).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from . import xla_chunked

# A finite "−∞": exp(_MASK − m) underflows to 0 without the inf − inf = NaN
# that a true −inf gives when a whole tile is masked.
_MASK = -0.7 * float(jnp.finfo(jnp.float32).max)
_NT = (((1,), (1,)), ((), ()))  # dot_general dims for A·Bᵀ.
# Keys that never match anything: padded rows of A / columns of B.
_PAD_KEY_A, _PAD_KEY_B = -1, -2


# --------------------------------------------------------------------------
# Tile math shared by both backends (plain jnp on tiles; lowers to Triton and
# Mosaic alike). `rows` broadcast as [block_a, 1 or block_b], `cols` as
# [1, block_b].
# --------------------------------------------------------------------------

def _log_sigmoid(x):
  """log σ(x) = min(x, 0) − log1p(e^−|x|); exact for large |x| (no logistic op in Triton)."""
  return jnp.minimum(x, 0.0) - jnp.log1p(jnp.exp(-jnp.abs(x)))


def _sigmoid(x):
  """σ(x) from one exp of −|x|, so it never overflows."""
  e = jnp.exp(-jnp.abs(x))
  return jnp.where(x >= 0, 1.0, e) / (1.0 + e)


def softmax_tile_grad(params, raw, rows, cols):
  """InfoNCE tile weight K_ij = u_i·P^a_ij + v_j·P^b_ij (the non-δ part of dL/dl_ij).

  params: (s, bias, coef); raw: [ba, bb] float32 t·i; rows = (lse_a, u);
  cols = (lse_b, v). Softmax probabilities are rebuilt from the forward lse.
  """
  s = params[0]
  lse_a, u = rows
  lse_b, v = cols
  logits = s * raw
  return u * jnp.exp(logits - lse_a) + v * jnp.exp(logits - lse_b)


def sigmoid_tile_grad(params, raw, rows, cols):
  """SigLIP tile weight dL/dl_ij = coef·z_ij·σ(−z_ij·x_ij), x = s·raw + b, coef = −g/N.

  rows = (key_a,), cols = (key_b,); z = +1 where the keys match.
  """
  s, bias, coef = params[0], params[1], params[2]
  (key_a,), (key_b,) = rows, cols
  z = jnp.where(key_a == key_b, 1.0, -1.0)
  return coef * z * _sigmoid(-z * (s * raw + bias))


def sigmoid_tile_value(params, raw, key_a, key_b):
  """log σ(z_ij (s·raw_ij + b)) for one tile (before masking)."""
  s, bias = params[0], params[1]
  z = jnp.where(key_a == key_b, 1.0, -1.0)
  return _log_sigmoid(z * (s * raw + bias))


# --------------------------------------------------------------------------
# Triton sweeps.
# --------------------------------------------------------------------------

def _next_pow2(x: int) -> int:
  return 1 << max(0, (x - 1).bit_length())


def _pow2_divisor(x: int, cap: int) -> int:
  """Largest power of two ≤ cap dividing x."""
  b = cap
  while x % b:
    b //= 2
  return b


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def _full(shape):
  """BlockSpec for an operand every program reads whole (walked with pl.ds inside)."""
  return pl.BlockSpec(shape, lambda *_: (0,) * len(shape))


def _compiler_params(block_a: int, block_b: int):
  return plgpu.CompilerParams(num_warps=4 if block_a * block_b <= 64 * 64 else 8,
                              num_stages=2)


def _raw_tile(a_ref, b_ref, col_start, block_b: int, block_k: int):
  """raw = A_blk · B[col_start : col_start + block_b]ᵀ, float32: [block_a, block_b].

  Contracts d in chunks of block_k (≥ 16, a Triton dot minimum) so that only
  [block, block_k] operands are live, whatever d is.
  """
  block_a, dp = a_ref.shape

  def step(k, acc):
    ks = pl.ds(pl.multiple_of(k * block_k, block_k), block_k)
    a = a_ref[:, ks]  # [block_a, block_k]
    b = b_ref[pl.ds(col_start, block_b), ks]  # [block_b, block_k]
    return acc + lax.dot_general(a, b, _NT, preferred_element_type=jnp.float32)

  return lax.fori_loop(0, dp // block_k, step,
                       jnp.zeros((block_a, block_b), jnp.float32))


def _lse_kernel(params_ref, a_ref, b_ref, key_a_ref, key_b_ref, lse_ref, pos_ref,
                col_ref, *, n_a: int, n_b: int, block_b: int, block_k: int):
  """Both directions' logsumexp statistics of s·A_blk·Bᵀ from one pass over its tiles.

  lse_ref: row logsumexp over valid columns (an online max/sum over column
  blocks); pos_ref: Σ_j [key_a_i = key_b_j]·raw_ij, the raw positive logit of
  each row, read off the same tiles so that lse − positive is consistent;
  col_ref: for every column, the logsumexp over this block's valid rows, which
  the caller reduces over row blocks, so the column statistics cost no second
  sweep over the tiles.
  """
  s = params_ref[0]
  block_a = a_ref.shape[0]
  key_a = key_a_ref[...]  # [block_a] int32
  row_ok = pl.program_id(0) * block_a + jnp.arange(block_a) < n_a

  def step(j, carry):
    m_prev, l_prev, pos = carry
    start = pl.multiple_of(j * block_b, block_b)
    raw = _raw_tile(a_ref, b_ref, start, block_b, block_k)  # [ba, bb]
    col_ok = (start + jnp.arange(block_b)) < n_b
    logits = jnp.where(row_ok[:, None] & col_ok[None, :], s * raw, _MASK)
    m_new = jnp.maximum(m_prev, jnp.max(logits, axis=1))
    l_new = (l_prev * jnp.exp(m_prev - m_new)
             + jnp.sum(jnp.exp(logits - m_new[:, None]), axis=1))
    # Every row block holds a valid row, so the column max is a real logit.
    col_max = jnp.max(logits, axis=0)  # [bb]
    col_ref[pl.ds(start, block_b)] = col_max + jnp.log(
        jnp.sum(jnp.exp(logits - col_max[None, :]), axis=0))
    hit = key_a[:, None] == key_b_ref[pl.ds(start, block_b)][None, :]
    pos = pos + jnp.sum(jnp.where(hit, raw, 0.0), axis=1)
    return m_new, l_new, pos

  init = (jnp.full((block_a,), _MASK, jnp.float32), jnp.zeros((block_a,), jnp.float32),
          jnp.zeros((block_a,), jnp.float32))
  m, l, pos = lax.fori_loop(0, b_ref.shape[0] // block_b, step, init)
  lse_ref[...] = m + jnp.log(l)
  pos_ref[...] = pos


def _log_sigmoid_kernel(params_ref, a_ref, b_ref, key_a_ref, key_b_ref, out_ref, *,
                        n_a: int, n_b: int, block_b: int, block_k: int):
  """Σ_j log σ(z_ij(s·raw_ij + b)) over valid columns, per row of the block."""
  block_a = a_ref.shape[0]
  params = (params_ref[0], params_ref[1])
  key_a = key_a_ref[...]
  row_ok = pl.program_id(0) * block_a + jnp.arange(block_a) < n_a

  def step(j, acc):
    start = pl.multiple_of(j * block_b, block_b)
    raw = _raw_tile(a_ref, b_ref, start, block_b, block_k)
    key_b = key_b_ref[pl.ds(start, block_b)]
    value = sigmoid_tile_value(params, raw, key_a[:, None], key_b[None, :])
    ok = row_ok[:, None] & ((start + jnp.arange(block_b)) < n_b)[None, :]
    return acc + jnp.sum(jnp.where(ok, value, 0.0), axis=1)

  out_ref[...] = lax.fori_loop(0, b_ref.shape[0] // block_b, step,
                               jnp.zeros((block_a,), jnp.float32))


def _grad_kernel(params_ref, a_ref, b_ref, *refs, tile_grad: Callable, n_rows: int,
                 n_cols: int, n_a: int, n_b: int, block_b: int, block_k: int,
                 block_d: int, with_ds: bool, with_db: bool):
  """dA_blk = s·Σ_j G_ij·B_j over the whole of d, with G = tile_grad(...) per tile.

  Grid: row blocks. Each logit tile is computed once and G meets every d chunk
  of B_j before the sweep moves on, so no tile is recomputed per output chunk.
  Also Σ_j G_ij·raw_ij (for ds) and Σ_j G_ij (for db).
  """
  row_refs, refs = refs[:n_rows], refs[n_rows:]
  col_refs, refs = refs[:n_cols], refs[n_cols:]
  da_ref, refs = refs[0], refs[1:]
  ds_ref = refs[0] if with_ds else None
  db_ref = refs[-1] if with_db else None
  params = (params_ref[0], params_ref[1], params_ref[2])
  block_a, dp = a_ref.shape
  row_ok = pl.program_id(0) * block_a + jnp.arange(block_a) < n_a
  rows = tuple(r[...][:, None] for r in row_refs)  # each [block_a, 1]
  # Triton arrays have power-of-two shapes, so the [block_a, dp] accumulator
  # is carried as dp // block_d chunks of [block_a, block_d].
  chunks = [pl.ds(c * block_d, block_d) for c in range(dp // block_d)]

  def step(j, carry):
    acc, ds, db = carry
    start = pl.multiple_of(j * block_b, block_b)
    raw = _raw_tile(a_ref, b_ref, start, block_b, block_k)  # [ba, bb]
    cols = tuple(c[pl.ds(start, block_b)][None, :] for c in col_refs)
    ok = row_ok[:, None] & ((start + jnp.arange(block_b)) < n_b)[None, :]
    g = jnp.where(ok, tile_grad(params, raw, rows, cols), 0.0)  # [ba, bb]
    # Mixed precision as in flash attention: G meets B in B's dtype, f32 accumulate.
    g_in = g.astype(b_ref.dtype)
    acc = tuple(
        chunk + jnp.dot(g_in, b_ref[pl.ds(start, block_b), ks],
                        preferred_element_type=jnp.float32)  # [ba, block_d]
        for chunk, ks in zip(acc, chunks))
    if with_ds:
      ds = ds + jnp.sum(g * raw, axis=1)
    if with_db:
      db = db + jnp.sum(g, axis=1)
    return acc, ds, db

  zeros = jnp.zeros((block_a,), jnp.float32)
  acc0 = tuple(jnp.zeros((block_a, block_d), jnp.float32) for _ in chunks)
  acc, ds, db = lax.fori_loop(0, b_ref.shape[0] // block_b, step, (acc0, zeros, zeros))
  for chunk, ks in zip(acc, chunks):
    da_ref[:, ks] = chunk * params[0]
  if with_ds:
    ds_ref[...] = ds
  if with_db:
    db_ref[...] = db


def _contract_block(dp: int) -> int:
  return _pow2_divisor(dp, 64)


# Register budget of the backward sweep (H100/H200: 64 Ki 32-bit registers per
# SM, at most 255 per thread). Its [block_a, dp] float32 dA accumulator stays in
# registers for the whole sweep, block_a·dp / (32·num_warps) per thread. At 8
# warps, 32768 elements is 128 registers per thread, leaving the rest for the
# [block_a, block_b] logit tile and G (16 each at 32 × 128) and the dot
# fragments. The dot operands go through shared memory: a [block_a, 64] and a
# [block_b, 64] slice per contraction step and a [block_b, block_d] slab of B
# per output chunk, 32 KiB in bfloat16 (64 KiB in float32) at 128 × 128, well
# inside the 227 KiB per block. So block_a is 128 up to d = 256, 64 up to
# d = 512 and 32 up to d = 1024; past d = 2048 the accumulator spills to local
# memory, which stays correct but slower.
_GRAD_ACC_ELEMENTS = 32768
_GRAD_WARPS = 8
_GRAD_BLOCK_D = 128  # Width of one accumulator chunk (and of one B slab).


def _grad_block_a(block_a: int, dp: int) -> int:
  """Rows per backward program: block_a shrunk until its [rows, dp] accumulator fits the budget."""
  fit = 1 << (max(1, _GRAD_ACC_ELEMENTS // dp).bit_length() - 1)  # Largest power of two ≤.
  return min(block_a, max(16, fit))


class _TritonBackend:
  """The sweeps on the Pallas Triton backend (contract: "Loss assembly" below)."""

  name = "triton"

  @staticmethod
  def pad_dims(n: int, m: int, d: int, block_n: int, block_m: int):
    """Effective blocks and padded sizes: (block_n, block_m, n_pad, m_pad, d_pad).

    Blocks must be powers of two ≥ 16 (Triton dot tiles); they shrink to the
    next power of two of a small N or M so tiny batches are not padded to 128.
    """
    for name, b in (("block_n", block_n), ("block_m", block_m)):
      if b < 16 or b & (b - 1):
        raise ValueError(f"{name} must be a power of two >= 16 for Triton; got {b}")
    block_n = min(block_n, max(16, _next_pow2(n)))
    block_m = min(block_m, max(16, _next_pow2(m)))
    block_k = min(64, max(16, _next_pow2(d)))
    return block_n, block_m, _round_up(n, block_n), _round_up(m, block_m), _round_up(d, block_k)

  @staticmethod
  def lse_rows_cols(params, a, b, key_a, key_b, *, n_a, n_b, block_a, block_b, interpret):
    """(row lse [Na_pad], raw positive [Na_pad], column lse [Nb_pad]) of s·A·Bᵀ, f32.

    Each over the valid entries; padded positions hold finite garbage. The
    column lse is reduced here from one [Nb_pad] partial per row block, an
    [Na_pad / block_a, Nb_pad] float32 array.
    """
    na_p, dp = a.shape
    nb_p = b.shape[0]
    n_blocks = na_p // block_a
    row = pl.BlockSpec((block_a,), lambda i: (i,))
    vec = jax.ShapeDtypeStruct((na_p,), jnp.float32)
    lse_row, pos, col_parts = pl.pallas_call(
        functools.partial(_lse_kernel, n_a=n_a, n_b=n_b, block_b=block_b,
                          block_k=_contract_block(dp)),
        grid=(n_blocks,),
        in_specs=[_full(params.shape), pl.BlockSpec((block_a, dp), lambda i: (i, 0)),
                  _full(b.shape), row, _full(key_b.shape)],
        out_specs=[row, row, pl.BlockSpec((None, nb_p), lambda i: (i, 0))],
        out_shape=[vec, vec, jax.ShapeDtypeStruct((n_blocks, nb_p), jnp.float32)],
        compiler_params=_compiler_params(block_a, block_b),
        interpret=interpret, name="contrastive_lse",
    )(params, a, b, key_a, key_b)
    return lse_row, pos, jax.nn.logsumexp(col_parts, axis=0)

  @staticmethod
  def log_sigmoid_rows(params, a, b, key_a, key_b, *, n_a, n_b, block_a, block_b,
                       interpret):
    """Per-row Σ_j log σ(z_ij·x_ij) over valid entries: [Na_pad] f32 (0 on padded rows)."""
    na_p, dp = a.shape
    row = pl.BlockSpec((block_a,), lambda i: (i,))
    return pl.pallas_call(
        functools.partial(_log_sigmoid_kernel, n_a=n_a, n_b=n_b, block_b=block_b,
                          block_k=_contract_block(dp)),
        grid=(na_p // block_a,),
        in_specs=[_full(params.shape), pl.BlockSpec((block_a, dp), lambda i: (i, 0)),
                  _full(b.shape), row, _full(key_b.shape)],
        out_specs=row,
        out_shape=jax.ShapeDtypeStruct((na_p,), jnp.float32),
        compiler_params=_compiler_params(block_a, block_b),
        interpret=interpret, name="sigmoid_rows",
    )(params, a, b, key_a, key_b)

  @staticmethod
  def grad(tile_grad, params, a, b, row_vecs, col_vecs, *, n_a, n_b, block_a, block_b,
           with_ds, with_db, interpret):
    """(dA [Na_pad, d_pad] f32 = s·G·B, Σ_j G·raw [Na_pad] or None, Σ_j G [Na_pad] or None)."""
    na_p, dp = a.shape
    block_a = _grad_block_a(block_a, dp)  # A power of two ≤ block_a: still divides na_p.
    row = pl.BlockSpec((block_a,), lambda i: (i,))
    vec = jax.ShapeDtypeStruct((na_p,), jnp.float32)
    n_vec = with_ds + with_db
    outs = pl.pallas_call(
        functools.partial(_grad_kernel, tile_grad=tile_grad, n_rows=len(row_vecs),
                          n_cols=len(col_vecs), n_a=n_a, n_b=n_b, block_b=block_b,
                          block_k=_contract_block(dp),
                          block_d=_pow2_divisor(dp, _GRAD_BLOCK_D), with_ds=with_ds,
                          with_db=with_db),
        grid=(na_p // block_a,),
        in_specs=[_full(params.shape), pl.BlockSpec((block_a, dp), lambda i: (i, 0)),
                  _full(b.shape), *[row] * len(row_vecs),
                  *[_full(c.shape) for c in col_vecs]],
        out_specs=[pl.BlockSpec((block_a, dp), lambda i: (i, 0))] + [row] * n_vec,
        out_shape=[jax.ShapeDtypeStruct((na_p, dp), jnp.float32)] + [vec] * n_vec,
        compiler_params=plgpu.CompilerParams(num_warps=_GRAD_WARPS, num_stages=2),
        interpret=interpret, name="contrastive_grad",
    )(params, a, b, *row_vecs, *col_vecs)
    outs = list(outs)
    da = outs.pop(0)
    ds = outs.pop(0) if with_ds else None
    db = outs.pop(0) if with_db else None
    return da, ds, db


# --------------------------------------------------------------------------
# Loss assembly, backend-independent (also used by pallas_tpu.py).
#
# A backend provides:
#   pad_dims(n, m, d, block_n, block_m) -> (block_n, block_m, n_pad, m_pad, d_pad)
#   lse_rows_cols(params, a, b, key_a, key_b, *, n_a, n_b, block_a, block_b, interpret)
#   log_sigmoid_rows(params, a, b, key_a, key_b, *, n_a, n_b, block_a, block_b, interpret)
#   grad(tile_grad, params, a, b, row_vecs, col_vecs, *, n_a, n_b, block_a, block_b,
#        with_ds, with_db, interpret)
# on padded operands: a [Na_pad, d_pad], b [Nb_pad, d_pad], 1-D vectors of the
# padded lengths, params = [s, bias, coef, 0] float32.
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Config:
  backend: type
  block_n: int
  block_m: int
  interpret: bool


def _pad_rows(x, rows: int, value=0):
  return jnp.pad(x, [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1),
                 constant_values=value)


class _Padded(NamedTuple):
  """Operands as the kernels see them, rebuilt identically in forward and backward."""
  n: int
  m: int
  d: int
  bn: int  # Effective block over texts.
  bm: int  # Effective block over images.
  t: jnp.ndarray  # [Np, dp] text, zero-padded.
  im: jnp.ndarray  # [Mp, dp] image, zero-padded.
  text_keys: jnp.ndarray  # [Np] int32: the image of each text; _PAD_KEY_A on padding.
  image_keys: jnp.ndarray  # [Mp] int32: arange(M); _PAD_KEY_B on padding.


def _prepare(cfg: _Config, text, image, positives) -> _Padded:
  (n, d), m = text.shape, image.shape[0]
  bn, bm, n_p, m_p, d_p = cfg.backend.pad_dims(n, m, d, cfg.block_n, cfg.block_m)
  dtype = jnp.promote_types(text.dtype, image.dtype)  # One dtype per kernel matmul.
  t = jnp.pad(text.astype(dtype), ((0, n_p - n), (0, d_p - d)))  # [Np, dp]
  im = jnp.pad(image.astype(dtype), ((0, m_p - m), (0, d_p - d)))  # [Mp, dp]
  text_keys = _pad_rows(positives, n_p, _PAD_KEY_A)
  image_keys = _pad_rows(jnp.arange(m, dtype=jnp.int32), m_p, _PAD_KEY_B)
  return _Padded(n, m, d, bn, bm, t, im, text_keys, image_keys)


def _params(scale, bias=0.0, coef=0.0):
  return jnp.stack([jnp.asarray(x, jnp.float32) for x in (scale, bias, coef, 0.0)])


def _infonce_fwd(cfg: _Config, text, image, scale, positives):
  p = _prepare(cfg, text, image, positives)
  n, m, be = p.n, p.m, cfg.backend
  params = _params(scale)
  lse_row, raw_pos, lse_col = be.lse_rows_cols(
      params, p.t, p.im, p.text_keys, p.image_keys, n_a=n, n_b=m, block_a=p.bn,
      block_b=p.bm, interpret=cfg.interpret)
  pos_logit = scale * raw_pos[:n]  # [N]
  pos_lse = xla_chunked.positive_lse(pos_logit, positives, m)  # [M]
  has_positive = jnp.zeros((m,), bool).at[positives].set(True)  # [M]
  row_mean = jnp.mean(lse_row[:n] - pos_logit)
  n_columns = jnp.maximum(jnp.sum(has_positive), 1).astype(jnp.float32)
  column_mean = jnp.sum(jnp.where(has_positive, lse_col[:m] - pos_lse, 0.0)) / n_columns
  loss = 0.5 * (row_mean + column_mean)
  residuals = (text, image, scale, positives, lse_row, lse_col, raw_pos[:n], pos_lse,
               has_positive, n_columns)
  return loss, residuals


def _infonce_bwd(cfg: _Config, residuals, g):
  """dL/dl_ij = ½[(P^row_ij − δ_ij)/N + ne_j (P^col_ij − δ_ij w_i)/Mc], times g.

  P^row/P^col are the row/column softmaxes, δ_ij = [pos(i) = j], ne_j marks
  columns with a positive, Mc counts them, and w_i = exp(l_{i,pos(i)} −
  lse_{k: pos(k)=pos(i)} l_{k,pos(i)}) (1 on the diagonal). The softmax part
  (u_i P^row + v_j P^col, u = g/2N, v_j = g·ne_j/2Mc) is swept in the kernels;
  the δ part c_i δ_ij, c_i = −u − v_{pos(i)} w_i, touches only N pairs and is
  added here by a gather and a segment sum.
  """
  (text, image, scale, positives, lse_row, lse_col, raw_pos, pos_lse, has_positive,
   n_columns) = residuals
  p = _prepare(cfg, text, image, positives)
  n, m, d, be = p.n, p.m, p.d, cfg.backend
  params = _params(scale)
  u = g / (2.0 * n)
  v = jnp.where(has_positive, g / (2.0 * n_columns), 0.0)  # [M]
  u_rows = _pad_rows(jnp.full((n,), u, jnp.float32), p.t.shape[0])  # [Np]
  v_cols = _pad_rows(v, p.im.shape[0])  # [Mp]
  d_text, ds, _ = be.grad(softmax_tile_grad, params, p.t, p.im, (lse_row, u_rows),
                          (lse_col, v_cols), n_a=n, n_b=m, block_a=p.bn,
                          block_b=p.bm, with_ds=True, with_db=False,
                          interpret=cfg.interpret)
  d_image, _, _ = be.grad(softmax_tile_grad, params, p.im, p.t, (lse_col, v_cols),
                          (lse_row, u_rows), n_a=m, n_b=n, block_a=p.bm,
                          block_b=p.bn, with_ds=False, with_db=False,
                          interpret=cfg.interpret)
  w = jnp.exp(scale * raw_pos - pos_lse[positives])  # [N]
  c = -u - v[positives] * w  # [N]
  d_text = d_text[:n, :d] + scale * c[:, None] * image[positives].astype(jnp.float32)
  d_image = d_image[:m, :d] + scale * jax.ops.segment_sum(
      c[:, None] * text.astype(jnp.float32), positives, m)
  d_scale = jnp.sum(ds[:n]) + jnp.sum(c * raw_pos)
  return d_text.astype(text.dtype), d_image.astype(image.dtype), d_scale, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _infonce_vjp(cfg, text, image, scale, positives):
  return _infonce_fwd(cfg, text, image, scale, positives)[0]


_infonce_vjp.defvjp(_infonce_fwd, _infonce_bwd)


def _sigmoid_fwd(cfg: _Config, text, image, scale, bias, positives):
  p = _prepare(cfg, text, image, positives)
  n, m = p.n, p.m
  rows = cfg.backend.log_sigmoid_rows(
      _params(scale, bias), p.t, p.im, p.text_keys, p.image_keys, n_a=n,
      n_b=m, block_a=p.bn, block_b=p.bm, interpret=cfg.interpret)
  return -jnp.sum(rows) / n, (text, image, scale, bias, positives)


def _sigmoid_bwd(cfg: _Config, residuals, g):
  """G_ij = −(g/N)·z_ij·σ(−z_ij x_ij); every term lives in the tiles, no δ part."""
  text, image, scale, bias, positives = residuals
  p = _prepare(cfg, text, image, positives)
  n, m, d, be = p.n, p.m, p.d, cfg.backend
  params = _params(scale, bias, -g / n)
  d_text, ds, db = be.grad(sigmoid_tile_grad, params, p.t, p.im, (p.text_keys,),
                           (p.image_keys,), n_a=n, n_b=m, block_a=p.bn,
                           block_b=p.bm, with_ds=True, with_db=True,
                           interpret=cfg.interpret)
  d_image, _, _ = be.grad(sigmoid_tile_grad, params, p.im, p.t, (p.image_keys,),
                          (p.text_keys,), n_a=m, n_b=n, block_a=p.bm,
                          block_b=p.bn, with_ds=False, with_db=False,
                          interpret=cfg.interpret)
  return (d_text[:n, :d].astype(text.dtype), d_image[:m, :d].astype(image.dtype),
          jnp.sum(ds), jnp.sum(db), None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _sigmoid_vjp(cfg, text, image, scale, bias, positives):
  return _sigmoid_fwd(cfg, text, image, scale, bias, positives)[0]


_sigmoid_vjp.defvjp(_sigmoid_fwd, _sigmoid_bwd)


def _positives_or_diagonal(positives, n: int, m: int):
  """positives as int32 [N]; None means the diagonal (N == M), as in the reference."""
  if positives is None:
    if n != m:
      raise ValueError(
          f"positives=None means the diagonal, which needs N == M; got N={n}, M={m}")
    return jnp.arange(n, dtype=jnp.int32)
  positives = jnp.asarray(positives)
  if positives.shape != (n,):
    raise ValueError(f"positives must have shape [N]=({n},); got {positives.shape}")
  return positives.astype(jnp.int32)


def _check_inputs(text, image):
  if text.ndim != 2 or image.ndim != 2 or text.shape[1] != image.shape[1]:
    raise ValueError(f"expected text [N, d] and image [M, d]; got {text.shape}, "
                     f"{image.shape}")


def tiled_infonce_loss(backend, text, image, scale, positives, *, block_n, block_m,
                       interpret):
  """InfoNCE through `backend`'s sweeps (shared by the GPU and TPU modules)."""
  _check_inputs(text, image)
  positives = _positives_or_diagonal(positives, text.shape[0], image.shape[0])
  cfg = _Config(backend, block_n, block_m, bool(interpret))
  return _infonce_vjp(cfg, text, image, jnp.asarray(scale, jnp.float32), positives)


def tiled_sigmoid_loss(backend, text, image, scale, bias, positives, *, block_n, block_m,
                       interpret):
  """Sigmoid loss through `backend`'s sweeps (shared by the GPU and TPU modules)."""
  _check_inputs(text, image)
  positives = _positives_or_diagonal(positives, text.shape[0], image.shape[0])
  cfg = _Config(backend, block_n, block_m, bool(interpret))
  return _sigmoid_vjp(cfg, text, image, jnp.asarray(scale, jnp.float32),
                  jnp.asarray(bias, jnp.float32), positives)


# --------------------------------------------------------------------------
# Public API: the reference's names and signatures, plus block sizes.
# --------------------------------------------------------------------------

def infonce_loss(text: jnp.ndarray, image: jnp.ndarray, scale: jnp.ndarray,
                 positives: jnp.ndarray | None = None, *, block_n: int = 128,
                 block_m: int = 128, interpret: bool = False) -> jnp.ndarray:
  """Symmetric InfoNCE as `reference.infonce_loss`, in O((N + M)·d) memory.

  text: [N, d], image: [M, d] (float32 or bfloat16; matmuls accumulate in
  float32); scale: scalar s; positives: [N] int in [0, M), or None (diagonal,
  N == M). block_n / block_m: row tiles over texts / images (powers of two ≥ 16; they
  shrink for small batches). interpret: run the kernels in the Pallas
  interpreter (CPU tests). Differentiable in text, image and scale.
  Returns a float32 scalar.
  """
  return tiled_infonce_loss(_TritonBackend, text, image, scale, positives,
                            block_n=block_n, block_m=block_m, interpret=interpret)


def sigmoid_loss(text: jnp.ndarray, image: jnp.ndarray, scale: jnp.ndarray,
                 bias: jnp.ndarray, positives: jnp.ndarray | None = None, *,
                 block_n: int = 128, block_m: int = 128,
                 interpret: bool = False) -> jnp.ndarray:
  """SigLIP loss as `reference.sigmoid_loss`, in O((N + M)·d) memory.

  Same arguments as `infonce_loss`, plus the scalar bias b. Differentiable in
  text, image, scale and bias. Returns a float32 scalar.
  """
  return tiled_sigmoid_loss(_TritonBackend, text, image, scale, bias, positives,
                            block_n=block_n, block_m=block_m, interpret=interpret)


def correspondence_loss(text: jnp.ndarray, image: jnp.ndarray, target: jnp.ndarray, *,
                        interpret: bool = False) -> jnp.ndarray:
  """The XLA expansion of `xla_chunked.correspondence_loss`: there is no N×M product to fuse.

  The dense target A: [N, M] is an input, and the expanded square needs only
  A·I and two [d, d] Gram matrices, which XLA's own matmuls already do at peak;
  `interpret` is accepted (and has nothing to interpret) so the API's one
  `impl="pallas"` switch covers every kernel.
  """
  del interpret
  return xla_chunked.correspondence_loss(text, image, target)


def top_k(queries: jnp.ndarray, keys: jnp.ndarray, k: int, *,
          block_size: int = xla_chunked.DEFAULT_TOP_K_BLOCK_SIZE,
          interpret: bool = False) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Tiled exact top-k via `xla_chunked.top_k`: a [q, block] matmul per tile, then a merge.

  The per-tile work is one matmul (which XLA runs on the tensor cores), a max over
  groups of keys and a small `lax.top_k`, so a hand-written kernel would gain
  little; never forms the [q, g] score matrix. `interpret` as above.
  """
  del interpret
  return xla_chunked.top_k(queries, keys, k, block_size=block_size)
