"""The reference functions tiled over column blocks in plain XLA: O(N·block) memory.

Why: the full `[N, M]` logits (and, under autodiff, several copies of them)
dominate memory once the batch reaches tens of thousands. Here a `lax.scan`
walks the image (or key) axis `block_size` columns at a time and keeps only
per-row running statistics, so no N×M array ever exists; this works on any
backend and is the default on CPU (see `api.py`).

- InfoNCE and sigmoid have a `jax.custom_vjp`: the forward pass saves only its
  inputs plus, for InfoNCE, the row and column logsumexps ([N] and [M]); the
  backward pass recomputes each tile and forms dT, dI, dscale (and dbias)
  block by block. Plain autodiff of the scan would instead save every tile.
  (A custom_vjp supports reverse mode only: no jax.jvp or Hessians of these.)
- When N or M is not a multiple of the block, the image axis is zero-padded
  and the padded columns are masked out exactly (−inf in logsumexps, zero
  gradient), so results match `reference.py` for any shape.
- The correspondence loss needs no tiling at all (see its docstring).

Conventions (shapes, dtypes, `positives`) are those of `reference.py`: inputs
may be bfloat16; everything is computed in float32.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

DEFAULT_BLOCK_SIZE = 512  # Columns per tile: a [N, 512] float32 tile is 2 KiB per row.
DEFAULT_TOP_K_BLOCK_SIZE = 4096  # Keys per tile for `top_k` (best of 1k-32k on a 2-core CPU).
DEFAULT_TOP_K_GROUP_SIZE = 32  # Keys per group whose maximum pass 1 of `top_k` keeps.


def _positive_index(positives: jnp.ndarray | None, n: int, m: int) -> jnp.ndarray:
  """[N] int32: the positive column of each row (arange for the diagonal)."""
  if positives is None:
    if n != m:
      raise ValueError(f"positives=None means the diagonal, which needs N == M; got N={n}, M={m}")
    return jnp.arange(n, dtype=jnp.int32)
  positives = jnp.asarray(positives)
  if positives.shape != (n,):
    raise ValueError(f"positives must have shape [N]=({n},); got {positives.shape}")
  return positives.astype(jnp.int32)


def _blocks(x: jnp.ndarray, block_size: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Zero-pads rows of x: [M, d] to a block multiple; returns ([nb, block, d], offsets [nb])."""
  if block_size < 1:
    raise ValueError(f"block_size must be positive; got {block_size}")
  m, d = x.shape
  num_blocks = -(-m // block_size)
  x = jnp.pad(x, ((0, num_blocks * block_size - m), (0, 0)))
  offsets = jnp.arange(num_blocks, dtype=jnp.int32) * block_size
  return x.reshape(num_blocks, block_size, d), offsets


def _unblock(x: jnp.ndarray, m: int) -> jnp.ndarray:
  """[nb, block, ...] -> [m, ...], dropping the padding."""
  return x.reshape(-1, *x.shape[2:])[:m]


# ----------------------------------------------------------------------------- InfoNCE


def infonce_loss(text: jnp.ndarray, image: jnp.ndarray, scale: jnp.ndarray,
                 positives: jnp.ndarray | None = None, *,
                 block_size: int = DEFAULT_BLOCK_SIZE) -> jnp.ndarray:
  """Symmetric InfoNCE, equal to `reference.infonce_loss`, tiled over image blocks.

  Rows: CE_i = logsumexp_j l_ij − l_{i,pos(i)}; columns (multi-positive):
  CE_j = logsumexp_i l_ij − logsumexp_{i: pos(i)=j} l_ij, columns with no
  positive left out of the column mean; loss = ½ (row mean + column mean).

  text: [N, d]; image: [M, d]; scale: scalar s; positives: [N] int or None.
  block_size: image columns per tile (default 512); peak memory is a few
    [N, block_size] float32 tiles, in both the forward and backward pass.
  Returns a float32 scalar.
  """
  n, m = text.shape[0], image.shape[0]
  pos = _positive_index(positives, n, m)
  return _infonce(text.astype(jnp.float32), image.astype(jnp.float32),
                  jnp.asarray(scale, jnp.float32), pos, block_size)


def _infonce_column_stats(m: int, pos: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Which of the M columns have a positive ([M] bool), and how many do (scalar float32)."""
  has_positive = jnp.zeros((m,), bool).at[pos].set(True)
  return has_positive, jnp.maximum(has_positive.sum(), 1).astype(jnp.float32)


def positive_lse(positive_logits: jnp.ndarray, pos: jnp.ndarray, m: int) -> jnp.ndarray:
  """[M]: logsumexp_{i: pos(i)=j} l_ij from the N positive logits (0 where j has none),
  in O(N + M); the Pallas kernels use it too.

  Why from the N logits: a masked logsumexp over every tile would exponentiate all N·M
  logits once more to find N of them.
  """
  count = jax.ops.segment_sum(jnp.ones_like(positive_logits), pos, m)
  peak = jnp.where(count > 0, jax.ops.segment_max(positive_logits, pos, m), 0.0)
  total = jax.ops.segment_sum(jnp.exp(positive_logits - peak[pos]), pos, m)
  return peak + jnp.log(jnp.where(count > 0, total, 1.0))


def _infonce_forward(text, image, scale, pos, block_size):
  """Loss plus the residuals the backward pass needs:
  (loss, (row_lse, col_lse, pos_lse, positive logit of each row))."""
  n, m = text.shape[0], image.shape[0]
  image_blocks, offsets = _blocks(image, block_size)  # [nb, B, d], [nb]
  has_positive, num_columns = _infonce_column_stats(m, pos)

  def step(carry, block):
    row_max, row_sum, row_positive = carry  # [N] each
    image_block, offset = block  # [B, d], scalar
    columns = offset + jnp.arange(block_size, dtype=jnp.int32)  # [B]
    logits = scale * (text @ image_block.T)  # [N, B]
    mask = pos[:, None] == columns[None, :]  # [N, B]
    # Online row logsumexp over valid columns. Every block has ≥ 1 valid column,
    # so the block max (and hence new_max) is finite.
    valid_logits = jnp.where(columns[None, :] < m, logits, -jnp.inf)
    new_max = jnp.maximum(row_max, valid_logits.max(axis=1))
    row_sum = (row_sum * jnp.exp(row_max - new_max)
               + jnp.exp(valid_logits - new_max[:, None]).sum(axis=1))
    # Read off the same tile, so lse − positive is consistent.
    row_positive = row_positive + jnp.where(mask, logits, 0.0).sum(axis=1)
    # Each tile holds whole columns, so their logsumexps are exact here.
    return (new_max, row_sum, row_positive), jax.nn.logsumexp(logits, axis=0)  # [B]

  init = (jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), jnp.float32),
          jnp.zeros((n,), jnp.float32))
  (row_max, row_sum, row_positive), col_lse = jax.lax.scan(
      step, init, (image_blocks, offsets))
  row_lse = row_max + jnp.log(row_sum)  # [N]
  col_lse = _unblock(col_lse, m)  # [M]
  pos_lse = positive_lse(row_positive, pos, m)  # [M]
  row_mean = jnp.mean(row_lse - row_positive)
  col_mean = jnp.where(has_positive, col_lse - pos_lse, 0.0).sum() / num_columns
  return 0.5 * (row_mean + col_mean), (row_lse, col_lse, pos_lse, row_positive)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _infonce(text, image, scale, pos, block_size):
  return _infonce_forward(text, image, scale, pos, block_size)[0]


def _infonce_fwd(text, image, scale, pos, block_size):
  loss, stats = _infonce_forward(text, image, scale, pos, block_size)
  return loss, (text, image, scale, pos, stats)


def _infonce_bwd(block_size, residuals, g):
  """dL/dl_ij = ½ [(softmax_row − δ_ij) / N + has_j (softmax_col − δ_ij w_i) / C].

  δ_ij = [pos(i) = j] and w_i = exp(l_{i,pos(i)} − pos_lse_{pos(i)}), the positive
  column softmax, which touches N entries: it is computed once here, not per tile.
  """
  text, image, scale, pos, (row_lse, col_lse, pos_lse, row_positive) = residuals
  n, m = text.shape[0], image.shape[0]
  image_blocks, offsets = _blocks(image, block_size)
  col_lse_blocks, _ = _blocks(col_lse[:, None], block_size)  # [nb, B, 1]
  has_positive, num_columns = _infonce_column_stats(m, pos)
  has_blocks, _ = _blocks(has_positive[:, None], block_size)  # Padding is False.
  # The δ_ij coefficient of each row; pos(i) always has a positive.
  positive_coef = 1.0 / n + jnp.exp(row_positive - pos_lse[pos]) / num_columns  # [N]

  def step(carry, block):
    d_text, d_scale = carry  # [N, d], scalar
    image_block, offset, block_col_lse, block_has = block
    columns = offset + jnp.arange(block_size, dtype=jnp.int32)  # [B]
    similarity = text @ image_block.T  # [N, B]
    logits = scale * similarity
    mask = pos[:, None] == columns[None, :]  # [N, B]
    valid = columns[None, :] < m
    row_softmax = jnp.where(valid, jnp.exp(logits - row_lse[:, None]), 0.0)
    col_softmax = jnp.where(block_has[:, 0][None, :],
                            jnp.exp(logits - block_col_lse[:, 0][None, :]), 0.0)
    grad = (0.5 * g) * (row_softmax / n + col_softmax / num_columns
                        - jnp.where(mask, positive_coef[:, None], 0.0))  # [N, B], dL/dlogits
    d_text = d_text + grad @ image_block
    d_scale = d_scale + jnp.sum(grad * similarity)
    d_image_block = grad.T @ text  # [B, d]
    return (d_text, d_scale), d_image_block

  init = (jnp.zeros_like(text), jnp.zeros((), jnp.float32))
  (d_text, d_scale), d_image = jax.lax.scan(
      step, init, (image_blocks, offsets, col_lse_blocks, has_blocks))
  d_image = _unblock(d_image, m) * scale
  return d_text * scale, d_image, d_scale.reshape(scale.shape), None


_infonce.defvjp(_infonce_fwd, _infonce_bwd)


# ----------------------------------------------------------------------------- sigmoid


def sigmoid_loss(text: jnp.ndarray, image: jnp.ndarray, scale: jnp.ndarray,
                 bias: jnp.ndarray, positives: jnp.ndarray | None = None, *,
                 block_size: int = DEFAULT_BLOCK_SIZE) -> jnp.ndarray:
  """SigLIP loss, equal to `reference.sigmoid_loss`, tiled over image blocks.

  −Σ_ij log σ(z_ij (s t_i·i_j + b)) / N with z = +1 on matched pairs.
  block_size: image columns per tile (default 512). The backward pass needs
    no saved statistics: each tile's gradient depends on that tile alone.
  Returns a float32 scalar.
  """
  n, m = text.shape[0], image.shape[0]
  pos = _positive_index(positives, n, m)
  return _sigmoid(text.astype(jnp.float32), image.astype(jnp.float32),
                  jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32), pos,
                  block_size)


def _sigmoid_tiles(text, image, scale, bias, pos, block_size, tile_fn, init):
  """Scans tile_fn(carry, similarity [N, B], signs [N, B], valid [1, B], image_block)."""
  m = image.shape[0]
  image_blocks, offsets = _blocks(image, block_size)

  def step(carry, block):
    image_block, offset = block
    columns = offset + jnp.arange(block_size, dtype=jnp.int32)
    similarity = text @ image_block.T  # [N, B]
    signs = jnp.where(pos[:, None] == columns[None, :], 1.0, -1.0)
    return tile_fn(carry, similarity, signs, columns[None, :] < m, image_block)

  return jax.lax.scan(step, init, (image_blocks, offsets))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _sigmoid(text, image, scale, bias, pos, block_size):
  def tile(total, similarity, signs, valid, unused_image_block):
    terms = jax.nn.log_sigmoid(signs * (scale * similarity + bias))
    return total + jnp.where(valid, terms, 0.0).sum(), None

  total, _ = _sigmoid_tiles(text, image, scale, bias, pos, block_size, tile,
                            jnp.zeros((), jnp.float32))
  return -total / text.shape[0]


def _sigmoid_fwd(text, image, scale, bias, pos, block_size):
  return _sigmoid(text, image, scale, bias, pos, block_size), (text, image, scale, bias, pos)


def _sigmoid_bwd(block_size, residuals, g):
  """d/dx [−log σ(z x)] = −z σ(−z x), with x = s t·i + b."""
  text, image, scale, bias, pos = residuals
  n, m = text.shape[0], image.shape[0]

  def tile(carry, similarity, signs, valid, image_block):
    d_text, d_scale, d_bias = carry
    logits = scale * similarity + bias
    grad = jnp.where(valid, -signs * jax.nn.sigmoid(-signs * logits), 0.0) * (g / n)  # [N, B]
    d_text = d_text + grad @ image_block
    return (d_text, d_scale + jnp.sum(grad * similarity), d_bias + grad.sum()), grad.T @ text

  init = (jnp.zeros_like(text), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
  (d_text, d_scale, d_bias), d_image = _sigmoid_tiles(
      text, image, scale, bias, pos, block_size, tile, init)
  return (d_text * scale, _unblock(d_image, m) * scale, d_scale.reshape(scale.shape),
          d_bias.reshape(bias.shape), None)


_sigmoid.defvjp(_sigmoid_fwd, _sigmoid_bwd)


# ----------------------------------------------------------------------------- correspondence


def correspondence_loss(text: jnp.ndarray, image: jnp.ndarray,
                        target: jnp.ndarray) -> jnp.ndarray:
  """Σ_ij (A_ij − t_i·i_j)², equal to `reference.correspondence_loss`, without T·Iᵀ.

  Expanding the square gives
    Σ A² − 2 Σ_i t_i·(A I)_i + trace((TᵀT)(IᵀI)),
  which needs only A·I: [N, d] and two [d, d] Gram matrices. The caller already
  holds A: [N, M], so A·I is the one product that touches N×M data and no new
  N×M array is formed; there is nothing to tile, hence no block kwargs, and
  plain autodiff of the expansion is already memory-light.

  Caveat: the three terms cancel when T·Iᵀ ≈ A, so in float32 the absolute
  error is about 1e-7 × (Σ A² + ‖TᵀT‖·‖IᵀI‖), not relative to the (small) loss.
  Returns a float32 scalar.
  """
  text = text.astype(jnp.float32)  # [N, d]
  image = image.astype(jnp.float32)  # [M, d]
  target = target.astype(jnp.float32)  # [N, M]
  if target.shape != (text.shape[0], image.shape[0]):
    raise ValueError(f"target must be [N, M]=({text.shape[0]}, {image.shape[0]}); "
                     f"got {target.shape}")
  cross = jnp.sum(text * (target @ image))
  gram = jnp.sum((text.T @ text) * (image.T @ image))  # Both [d, d] and symmetric.
  return jnp.sum(jnp.square(target)) - 2.0 * cross + gram


# ----------------------------------------------------------------------------- top-k


def top_k(queries: jnp.ndarray, keys: jnp.ndarray, k: int, *,
          block_size: int = DEFAULT_TOP_K_BLOCK_SIZE,
          group_size: int = DEFAULT_TOP_K_GROUP_SIZE) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Inner-product top-k, equal to `reference.top_k`, scanning `block_size` keys at a time.

  Why two passes: merging every [q, block] score tile with `lax.top_k` costs more than
  the matmul itself on a CPU. So pass 1 keeps only the maximum of each group of
  `group_size` consecutive keys and merges those ([q, block / group] per tile, a
  `group_size`-fold smaller top-k) into the k best groups per query. The k best items
  always lie in the k best groups: a group outside them is beaten by k groups, each
  holding an item that beats all of its members (equal maxima go to the lower group,
  whose items also have lower indices). Pass 2 rescores the k · group candidate keys
  per query and takes the top k; candidates are in index order, so ties still go to
  the lower index. k may exceed block_size and the number of groups.
  queries: [q, d]; keys: [g, d]; requires k <= g.
  Returns (values [q, k] float32, indices [q, k] int32), best first.
  """
  num_keys = keys.shape[0]
  if not 0 < k <= num_keys:
    raise ValueError(f"k must be in [1, {num_keys}] (the number of keys); got {k}")
  group = math.gcd(group_size, block_size)  # Groups never straddle two tiles.
  queries = queries.astype(jnp.float32)
  key_blocks, offsets = _blocks(keys.astype(jnp.float32), block_size)  # [nb, B, d], [nb]
  q, groups_per_block = queries.shape[0], block_size // group
  num_groups = key_blocks.shape[0] * groups_per_block

  def best_groups(carry, block):
    best_maxima, best_groups = carry  # [q, k] each
    key_block, offset = block
    columns = offset + jnp.arange(block_size, dtype=jnp.int32)  # [B]
    scores = jnp.where(columns[None, :] < num_keys, queries @ key_block.T, -jnp.inf)  # [q, B]
    maxima = scores.reshape(q, groups_per_block, group).max(axis=2)  # [q, B / group]
    ids = offset // group + jnp.arange(groups_per_block, dtype=jnp.int32)
    maxima = jnp.concatenate([best_maxima, maxima], axis=1)
    ids = jnp.concatenate([best_groups, jnp.broadcast_to(ids, (q, groups_per_block))], axis=1)
    best_maxima, chosen = jax.lax.top_k(maxima, k)
    return (best_maxima, jnp.take_along_axis(ids, chosen, axis=1)), None

  # Placeholder groups lie past the last real one: their columns are masked below.
  init = (jnp.full((q, k), -jnp.inf, jnp.float32),
          jnp.broadcast_to(num_groups + jnp.arange(k, dtype=jnp.int32), (q, k)))
  (_, groups), _ = jax.lax.scan(best_groups, init, (key_blocks, offsets))
  groups = jnp.sort(groups, axis=1)  # [q, k], index order for the tie rule.
  flat_keys = key_blocks.reshape(-1, keys.shape[1])  # [nb * B, d]

  def rescore(query_and_groups):
    query, query_groups = query_and_groups  # [d], [k]
    columns = (query_groups[:, None] * group + jnp.arange(group, dtype=jnp.int32)).reshape(-1)
    candidates = jnp.take(flat_keys, columns, axis=0, mode="fill", fill_value=0.0)  # [k·G, d]
    scores = jnp.where(columns < num_keys, candidates @ query, -jnp.inf)  # [k * group]
    values, chosen = jax.lax.top_k(scores, k)
    return values, columns[chosen]

  # Queries are rescored in slices so the gathered candidates stay near 32 MiB.
  slice_size = max(1, min(q, (8 << 20) // (k * group * keys.shape[1])))
  return jax.lax.map(rescore, (queries, groups), batch_size=slice_size)
