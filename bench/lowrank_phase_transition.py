"""The phase transition of Wang et al.: training samples needed vs intrinsic dimension.

Data: the paper's mixture of low-rank Gaussians (MoLRG), ``K`` equally likely components
``x = U_k a``, ``a ~ N(0, I_d)``, ``U_k`` a random ``D x d`` orthonormal basis
(:class:`jaxdiff.testing.LowRankGaussianMixture` with zero means and unit variances), ``N``
training samples per component. Model: the paper's low-rank denoiser
(:func:`jaxdiff.testing.low_rank_denoiser`). Training, in the two steps the paper's
equivalence suggests: (1) subspace clustering of the training set, the problem the paper
proves training the low-rank denoiser to be (K-subspaces: assign each point to the basis
that keeps most of its energy, refit each basis by PCA of its points; the best objective
of 50 starts, one of them a RANSAC consensus of the spans of 4000 random groups of ``d``
points, which finds the exact clustering of noiseless data whenever it is the unique
best one; random starts alone miss it at d = 8); (2) Adam on the denoising loss
``E_t E_eps ||D(alpha_t x + sigma_t eps, t) - x||^2`` from that solution (``vp_cosine``,
``t ~ U(0.02, 0.3)``, 400 steps, bases ``U_k = qr(A_k)_Q``). Adam from random bases does
not find it in this budget (subspace error 0.75-0.84 at D = 16, d = 2), and with ``t`` up
to 0.98 the Monte-Carlo gradient drifts off it (error 0.02-0.4), which is why the
refinement uses the low-noise range.

Generalisation: the learned subspaces equal the true ones, measured by the subspace
error ``max_k ||P_k - P*_k||_F / sqrt(2 d)`` after the best matching of components (0: the
same subspaces, 1: orthogonal); a run generalises when the error is below 0.1. The excess
denoising error of the learned model over the exact one on fresh data (noise levels
``t ~ U(0.02, 0.98)``) is reported too. The paper's claim: the number of samples needed
grows linearly with ``d``, not with ``D``.

    python bench/lowrank_phase_transition.py            # the small setting, a few minutes
    python bench/lowrank_phase_transition.py --quick    # smoke run (writes to /tmp)

Writes bench/results/lowrank_phase_transition.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _timing import output_path

from jaxdiff import schedules
from jaxdiff.testing import LowRankGaussianMixture, low_rank_denoiser

SCHED = schedules.vp_cosine()
THRESHOLD = 0.1


def subspace_error(u_hat: np.ndarray, u_true: np.ndarray) -> float:
  """``max_k ||P_k - P*_pi(k)||_F / sqrt(2 d)`` minimised over matchings ``pi``."""
  p_hat = np.einsum("kdr,ker->kde", u_hat, u_hat)
  p_true = np.einsum("kdr,ker->kde", u_true, u_true)
  d = u_true.shape[-1]
  k = u_true.shape[0]
  best = np.inf
  for perm in itertools.permutations(range(k)):
    err = max(np.linalg.norm(p_hat[perm[i]] - p_true[i]) for i in range(k)) / np.sqrt(2 * d)
    best = min(best, err)
  return float(best)


def orthonormal(a):
  return jnp.linalg.qr(a)[0]


def make_trainer(
  dim: int, k: int, d: int, steps: int, noise_draws: int, learning_rate: float, t_max: float = 0.98
):
  """A jitted ``train(key, data) -> (bases, final loss)`` for one (D, K, d) shape."""

  def loss_fn(a, x, key):
    den = low_rank_denoiser(jax.vmap(orthonormal)(a), SCHED)
    kt, ke = jax.random.split(key)
    n = x.shape[0]
    xs = jnp.tile(x, (noise_draws, 1))
    t = jax.random.uniform(kt, (n * noise_draws,), minval=0.02, maxval=t_max)
    eps = jax.random.normal(ke, xs.shape)
    x_t = SCHED.alpha(t)[:, None] * xs + SCHED.sigma(t)[:, None] * eps
    return jnp.mean(jnp.sum((den(x_t, t) - xs) ** 2, axis=1))

  opt = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))

  @jax.jit
  def train(key, x, a):
    state = opt.init(a)

    def step(carry, sub):
      a, state = carry
      loss, g = jax.value_and_grad(loss_fn)(a, x, sub)
      upd, state = opt.update(g, state, a)
      return (optax.apply_updates(a, upd), state), loss

    (a, _), losses = jax.lax.scan(step, (a, state), jax.random.split(key, steps))
    return jax.vmap(orthonormal)(a), jnp.mean(losses[-50:])

  return train


def _span(points: np.ndarray, d: int, rng) -> np.ndarray:
  """A ``(D, d)`` orthonormal basis: the top-``d`` PCA directions (through 0) of the columns
  of ``points``, completed with random orthogonal directions when they span fewer."""
  dim = points.shape[0]
  basis = (
    np.linalg.svd(points, full_matrices=False)[0][:, :d] if points.size else np.zeros((dim, 0))
  )
  if basis.shape[1] < d:
    fill = rng.normal(size=(dim, d - basis.shape[1]))
    fill -= basis @ (basis.T @ fill)
    basis = np.concatenate([basis, np.linalg.qr(fill)[0]], 1)
  return basis


def _consensus(x: np.ndarray, k: int, d: int, rng, draws: int = 4000) -> np.ndarray:
  """RANSAC for noiseless subspaces: among ``draws`` random groups of ``d`` points, the span
  holding the most points (to 1e-6) is a basis; remove its points and repeat ``k`` times.
  A group drawn from one component spans it and holds all its points, which an impure
  group cannot (generically), so enough draws find the true clustering whenever it is the
  unique best one."""
  n, dim = x.shape
  remaining = np.arange(n)
  bases = []
  for _ in range(k):
    if len(remaining) < d:
      bases.append(_span(x[remaining].T, d, rng))
      continue
    idx = np.stack([rng.choice(remaining, size=d, replace=False) for _ in range(draws)])
    q = np.linalg.qr(np.transpose(x[idx], (0, 2, 1)))[0]  # (draws, D, d)
    pts = x[remaining]
    resid = pts[None] - np.einsum("mdr,mnr->mnd", q, np.einsum("mdr,nd->mnr", q, pts))
    inliers = np.linalg.norm(resid, axis=2) <= 1e-6 * np.linalg.norm(pts, axis=1)[None]
    best = int(np.argmax(inliers.sum(1)))
    bases.append(q[best])
    remaining = remaining[~inliers[best]]
  return np.stack(bases)


def k_subspaces(x: np.ndarray, k: int, d: int, rng, restarts: int, iterations: int = 30):
  """Subspace clustering, the problem training the low-rank denoiser is equivalent to:
  ``max sum_k sum_{i in C_k} ||U_k^T x_i||^2`` by alternating assignment and per-cluster PCA,
  best of ``restarts`` starts. Returns the bases ``(K, D, d)``."""
  n, dim = x.shape
  best, best_obj = None, -np.inf
  for start in range(restarts):
    # start 0: the consensus start (_consensus); the others: the spans of random groups of
    # d training points, random directions where there are too few points
    if start == 0:
      u = _consensus(x, k, d, rng)
    else:
      u = np.stack(
        [_span(x[rng.choice(n, size=min(d, n), replace=False)].T, d, rng) for _ in range(k)]
      )
    for _ in range(iterations):
      energy = (
        np.einsum("kdr,nd->nk", u, x) ** 2
        if d == 1
        else np.sum(np.einsum("kdr,nd->nkr", u, x) ** 2, -1)
      )
      labels = np.argmax(energy.reshape(n, k), axis=1)
      for j in range(k):
        u[j] = _span(x[labels == j].T, d, rng)
    obj = float(np.sum(np.max(np.sum(np.einsum("kdr,nd->nkr", u, x) ** 2, -1), 1)))
    if obj > best_obj:
      best, best_obj = u.copy(), obj
  return best


def held_out_excess(u_hat, mix, key, n: int = 512) -> float:
  """Mean ``||D_hat - D*||^2 / ||D*||^2`` on fresh noised samples, over t ~ U(0.02, 0.98)."""
  kx, kt, ke = jax.random.split(key, 3)
  x0 = mix.sample(kx, n)
  t = jax.random.uniform(kt, (n,), minval=0.02, maxval=0.98)
  x_t = SCHED.alpha(t)[:, None] * x0 + SCHED.sigma(t)[:, None] * jax.random.normal(ke, x0.shape)
  exact = mix.denoiser(SCHED)(x_t, t)
  learned = low_rank_denoiser(jnp.asarray(u_hat), SCHED)(x_t, t)
  return float(jnp.sum((learned - exact) ** 2) / jnp.sum(exact**2))


def run_cell(dim, k, d, n_per, seeds, restarts, trainer):
  errs, excess, fit_errs = [], [], []
  for seed in seeds:
    rng = np.random.default_rng(1000 * d + seed)
    u_true = np.stack([np.linalg.qr(rng.normal(size=(dim, d)))[0] for _ in range(k)])
    mix = LowRankGaussianMixture(np.zeros((k, dim)), u_true)
    comps = np.repeat(np.arange(k), n_per)
    a = rng.normal(size=(k * n_per, d))
    data = jnp.asarray(np.einsum("ndr,nr->nd", u_true[comps], a), jnp.float32)
    init = k_subspaces(np.asarray(data, np.float64), k, d, rng, restarts)
    fit_errs.append(subspace_error(init, u_true))
    u_hat, _ = trainer(jax.random.key(seed), data, jnp.asarray(init, jnp.float32))
    best = (np.asarray(u_hat, np.float64),)
    errs.append(subspace_error(best[0], u_true))
    excess.append(held_out_excess(best[0], mix, jax.random.key(seed + 77)))
  errs = np.asarray(errs)
  return {
    "d": d,
    "n_per_component": n_per,
    "success_rate": float(np.mean(errs < THRESHOLD)),
    "subspace_error_median": float(np.median(errs)),
    "clustering_error_median": float(np.median(fit_errs)),
    "excess_denoising_error_median": float(np.median(excess)),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="smoke run (tiny grid, /tmp)")
  args = parser.parse_args()
  t0 = time.perf_counter()
  if args.quick:
    dim, k, dims, seeds, steps, restarts = 16, 2, (2, 3), (0,), 100, 5
  else:
    dim, k, dims, seeds, steps, restarts = 32, 2, (2, 4, 6, 8), (0, 1, 2, 3), 400, 50
  cells = []
  for d in dims:
    trainer = make_trainer(dim, k, d, steps, noise_draws=32, learning_rate=3e-3, t_max=0.3)
    for n_per in sorted({max(1, d // 2), d, d + 1, d + 2, 2 * d}):
      cell = run_cell(dim, k, d, n_per, seeds, restarts, trainer)
      cells.append(cell)
      print(
        f"d={d:2d} N/comp={n_per:3d}  success {cell['success_rate']:.2f}  "
        f"subspace err {cell['subspace_error_median']:.3f} "
        f"(clustering alone {cell['clustering_error_median']:.3f})  "
        f"excess denoising err {cell['excess_denoising_error_median']:.2e}",
        flush=True,
      )
  transition = {}
  for d in dims:
    ok = [c["n_per_component"] for c in cells if c["d"] == d and c["success_rate"] >= 0.5]
    transition[d] = min(ok) if ok else None
  print("smallest N per component with success >= 0.5:", transition)
  found = [(d, n) for d, n in transition.items() if n is not None]
  slope = float(np.polyfit(*zip(*found), 1)[0]) if len(found) >= 2 else None
  print(f"fitted slope dN*/dd = {slope}")
  out = {
    "setting": {
      "ambient_dim": dim,
      "components": k,
      "intrinsic_dims": list(dims),
      "n_per_component": "d/2, d, d+1, d+2, 2d",
      "seeds": list(seeds),
      "adam_steps": steps,
      "adam_t_range": [0.02, 0.3],
      "clustering_restarts": restarts,
      "threshold": THRESHOLD,
    },
    "cells": cells,
    "transition": {str(d): n for d, n in transition.items()},
    "slope": slope,
    "seconds": time.perf_counter() - t0,
  }
  path = output_path("lowrank_phase_transition.json", args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1))
  print(f"wrote {path} in {out['seconds']:.0f} s")


if __name__ == "__main__":
  main()
