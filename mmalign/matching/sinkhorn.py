"""Entropic optimal transport (Sinkhorn) in log space, with an optional dustbin.

Log space, so scores far larger than epsilon neither overflow nor underflow.

The plan is a joint distribution (total mass 1): marginals 1/n over rows and 1/m over
columns. A dustbin (SuperGlue-style) adds a row and column of `dustbin_score`, with marginals
[1, ..., 1, m] / (n + m) over rows and [1, ..., 1, n] / (n + m) over columns, so each dustbin
can absorb every point of the other side. `log_marginals` gives them exactly.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from mmalign.matching.neighbours import UNMATCHED, check_scores


def log_marginals(n: int, m: int, dustbin: bool) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Log row [n(+1)] and column [m(+1)] marginals that `sinkhorn` targets."""
  if not dustbin:
    return jnp.full((n,), -jnp.log(n)), jnp.full((m,), -jnp.log(m))
  norm = jnp.log(n + m)
  log_rows = jnp.concatenate([jnp.zeros((n,)), jnp.log(jnp.array([m], jnp.float32))]) - norm
  log_cols = jnp.concatenate([jnp.zeros((m,)), jnp.log(jnp.array([n], jnp.float32))]) - norm
  return log_rows, log_cols


def _augment(scores: jnp.ndarray, dustbin_score) -> jnp.ndarray:
  """[n, m] -> [n + 1, m + 1], the extra row and column (and corner) = dustbin_score."""
  n, m = scores.shape
  fill = jnp.asarray(dustbin_score, scores.dtype)
  col = jnp.broadcast_to(fill, (n, 1))
  row = jnp.broadcast_to(fill, (1, m + 1))
  return jnp.concatenate([jnp.concatenate([scores, col], axis=1), row], axis=0)


@functools.partial(jax.jit, static_argnames=("num_iters", "dustbin"))
def sinkhorn(scores: jnp.ndarray, *, epsilon: float = 0.1, num_iters: int = 100,
             dustbin: bool = False, dustbin_score: float = 0.0) -> jnp.ndarray:
  """Log transport plan [n(+1), m(+1)] maximising <plan, scores> + epsilon * entropy.

  Smaller epsilon: sharper plan, more iterations. Column marginals are exact after every
  iteration; row marginals converge with num_iters.
  """
  check_scores(scores)
  scores = jnp.asarray(scores, jnp.float32)
  n, m = scores.shape
  if dustbin:
    scores = _augment(scores, dustbin_score)
  log_kernel = scores / epsilon  # [n(+1), m(+1)]
  log_mu, log_nu = log_marginals(n, m, dustbin)

  def step(_, potentials):
    _, v = potentials
    u = log_mu - logsumexp(log_kernel + v[None, :], axis=1)
    v = log_nu - logsumexp(log_kernel + u[:, None], axis=0)
    return u, v

  u0 = jnp.zeros_like(log_mu)
  v0 = jnp.zeros_like(log_nu)
  u, v = jax.lax.fori_loop(0, num_iters, step, (u0, v0))
  return log_kernel + u[:, None] + v[None, :]


def sinkhorn_matching(scores: jnp.ndarray, *, epsilon: float = 0.1, num_iters: int = 100,
                      dustbin: bool = False, dustbin_score: float = 0.0) -> jnp.ndarray:
  """[n] matches from the Sinkhorn plan: mutual argmax, dustbin or no agreement -> -1.

  Both argmaxes include the dustbin entries, so a point whose mass mostly flows to the
  dustbin stays unmatched.
  """
  scores = jnp.asarray(scores)
  n, m = scores.shape if scores.ndim == 2 else (0, 0)
  log_plan = sinkhorn(scores, epsilon=epsilon, num_iters=num_iters, dustbin=dustbin,
                      dustbin_score=dustbin_score)  # [n(+1), m(+1)]
  best_col = jnp.argmax(log_plan[:n], axis=1)  # [n], may be the dustbin column m
  best_row = jnp.argmax(log_plan[:, :m], axis=0)  # [m], may be the dustbin row n
  safe_col = jnp.minimum(best_col, m - 1)
  mutual = (best_col < m) & (best_row[safe_col] == jnp.arange(n))
  return jnp.where(mutual, best_col, UNMATCHED).astype(jnp.int32)
