"""Statistics studies (Noise2Score), small settings on exact testbeds.

Noise2Score (Kim & Ye 2021): a score network is fitted on noisy samples only with the
AR-DAE loss (:func:`jaxdiff.noise2score.ardae_loss`, ``sigma_a`` annealed linearly as the
official code does), and the denoised estimate is Tweedie's formula for the noise model
(:func:`~jaxdiff.noise2score.tweedie_gaussian`, ``tweedie_poisson``, ``tweedie_gamma``).
The paper's claim: the estimate approaches the supervised/Bayes-optimal denoiser without
clean images. Here the Bayes-optimal estimate is known in closed form, so the study reports,
on fresh test data, the MSE to the clean signal of (a) the noisy observation, (b)
Noise2Score, (c) the oracle: Tweedie's formula with the exact score (for Gaussian noise the
exact posterior mean of :class:`jaxdiff.testing.GaussianMixture`; for Poisson and Gamma
noise the paper's formulas with the exact conjugate score), and (d) the exact posterior
mean (MMSE); plus the fraction of the gap from noisy to MMSE that Noise2Score closes.

Settings (not the paper's images): Gaussian noise sigma = 0.5 on a 2-D three-component
mixture; Poisson noise zeta = 0.01 (the paper's level) on x ~ Gamma(4, rate 8) (mean 0.5:
~50 counts); Gamma noise k = 100 (the paper's level) on x ~ inverse-Gamma(5, 2) (mean 0.5).
A 2 x 64 SiLU MLP on standardized input, 20k noisy training samples, 3000 Adam steps
(batch 512), three seeds.

    python bench/repro_wave3_statistics.py            # about 2 minutes on 2 CPU cores
    python bench/repro_wave3_statistics.py --quick    # smoke run (writes to /tmp)

Writes bench/results/repro_wave3_statistics.json.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _timing import output_path

from jaxdiff import noise2score
from jaxdiff.testing import GaussianMixture

jax.config.update("jax_enable_x64", True)


def _mlp_init(key, dim, width=64):
  k1, k2, k3 = jax.random.split(key, 3)
  he = lambda k, i, o: jax.random.normal(k, (i, o)) * np.sqrt(2.0 / i)
  return {
    "w1": he(k1, dim, width),
    "b1": jnp.zeros(width),
    "w2": he(k2, width, width),
    "b2": jnp.zeros(width),
    "w3": he(k3, width, dim) * 0.1,
    "b3": jnp.zeros(dim),
  }


def _mlp(params, y, shift, scale):
  h = (y - shift) / scale
  h = jax.nn.silu(h @ params["w1"] + params["b1"])
  h = jax.nn.silu(h @ params["w2"] + params["b2"])
  return (h @ params["w3"] + params["b3"]) / scale  # a score has units 1 / y


def fit_score(y_train, *, key, steps, batch=512, sigma_frac=(0.3, 0.03)):
  """AR-DAE on noisy data only; ``sigma_a`` annealed linearly from ``sigma_frac[0]`` to
  ``sigma_frac[1]`` times the noisy data's std over the first two thirds of the steps."""
  shift, scale = y_train.mean(0), y_train.std(0)
  params = _train(y_train, key, steps, batch, sigma_frac)
  return jax.jit(lambda v: _mlp(params, v, shift, scale))


@jax.jit(static_argnums=(2, 3, 4))
def _train(y_train, key, steps, batch, sigma_frac):
  n, dim = y_train.shape
  shift, scale = y_train.mean(0), y_train.std(0)
  std = jnp.mean(scale)
  kinit, kloop = jax.random.split(key)
  params = _mlp_init(kinit, dim)
  opt = optax.adam(optax.cosine_decay_schedule(2e-3, steps))
  state = opt.init(params)
  ramp = max(1, 2 * steps // 3)

  def step(carry, i):
    params, state = carry
    kb, ku = jax.random.split(jax.random.fold_in(kloop, i))
    yb = y_train[jax.random.randint(kb, (batch,), 0, n)]
    frac = jnp.minimum(i / ramp, 1.0)
    sigma_a = std * (sigma_frac[0] * (1 - frac) + sigma_frac[1] * frac)
    loss, g = jax.value_and_grad(
      lambda p: noise2score.ardae_loss(
        lambda v: _mlp(p, v, shift, scale), yb, sigma_a=sigma_a, key=ku
      )
    )(params)
    upd, state = opt.update(g, state, params)
    return (optax.apply_updates(params, upd), state), loss

  (params, _), _ = jax.lax.scan(step, (params, state), jnp.arange(steps))
  return params


def _rel_rmse(a, b):
  return float(jnp.sqrt(jnp.mean((a - b) ** 2) / jnp.mean(b**2)))


def _mse(a, b):
  return float(jnp.mean(jnp.sum((a - b) ** 2, axis=-1)))


def gaussian_case(seed, steps, n_train, n_test):
  sigma = 0.5
  gmm = GaussianMixture(
    jnp.array([[-2.0, 0.0], [1.5, 1.0], [0.0, -2.5]]),
    jnp.array([[0.3, 0.3], [0.5, 0.2], [0.8, 1.2]]),
    weights=jnp.array([0.5, 0.3, 0.2]),
  )
  k = jax.random.split(jax.random.key(seed), 5)
  noisy = lambda kx, kn, n: (lambda x: (x, x + sigma * jax.random.normal(kn, x.shape)))(
    gmm.sample(kx, n)
  )
  _, y_train = noisy(k[0], k[1], n_train)
  x, y = noisy(k[2], k[3], n_test)
  score = fit_score(y_train, key=k[4], steps=steps)
  exact_score = jax.grad(lambda v: gmm.marginal_log_prob(v, 1.0, sigma).sum())(y)
  return {
    "noisy": _mse(y, x),
    "noise2score": _mse(noise2score.tweedie_gaussian(y, score(y), sigma=sigma), x),
    "score_rel_rmse": _rel_rmse(score(y), exact_score),
    "oracle_tweedie": _mse(noise2score.tweedie_gaussian(y, exact_score, sigma=sigma), x),
    "mmse": _mse(gmm.posterior_mean(y, 1.0, sigma), x),
  }


def poisson_case(seed, steps, n_train, n_test):
  zeta, a, rate = 0.01, 4.0, 8.0  # x ~ Gamma(a, rate); lam = x / zeta ~ Gamma(a, rate zeta)
  b = rate * zeta
  k = jax.random.split(jax.random.key(seed), 5)

  def noisy(kx, kn, n):
    x = jax.random.gamma(kx, a, (n, 1)) / rate
    return x, zeta * jax.random.poisson(kn, x / zeta).astype(x.dtype)

  _, y_train = noisy(k[0], k[1], n_train)
  x, y = noisy(k[2], k[3], n_test)
  score = fit_score(y_train, key=k[4], steps=steps)
  z = y / zeta
  exact_score = (
    jax.scipy.special.digamma(z + a) - jax.scipy.special.digamma(z + 1) - jnp.log(b + 1)
  ) / zeta
  tw = jax.jit(lambda y, s: noise2score.tweedie_poisson(y, s, zeta=zeta))
  return {
    "noisy": _mse(y, x),
    "noise2score": _mse(tw(y, score(y)), x),
    "score_rel_rmse": _rel_rmse(score(y), exact_score),
    "oracle_tweedie": _mse(tw(y, exact_score), x),
    "mmse": _mse(zeta * (a + z) / (b + 1), x),
  }


def gamma_case(seed, steps, n_train, n_test):
  kk, a, b = 100.0, 5.0, 2.0  # x ~ InvGamma(a, b); y | x ~ Gamma(k, rate k / x)
  k = jax.random.split(jax.random.key(seed), 5)

  def noisy(kx, kn, n):
    x = b / jax.random.gamma(kx, a, (n, 1))
    return x, x * jax.random.gamma(kn, kk, (n, 1)) / kk

  _, y_train = noisy(k[0], k[1], n_train)
  x, y = noisy(k[2], k[3], n_test)
  score = fit_score(y_train, key=k[4], steps=steps)
  exact_score = (kk - 1) / y - kk * (a + kk) / (b + kk * y)
  tw = jax.jit(lambda y, s: noise2score.tweedie_gamma(y, s, k=kk))
  est = tw(y, score(y))
  poisoned = int(jnp.sum(jnp.isnan(est)))
  return {
    "noisy": _mse(y, x),
    "noise2score": _mse(jnp.where(jnp.isnan(est), y, est), x),  # NaN entries: keep y
    "noise2score_nan_entries": poisoned,
    "score_rel_rmse": _rel_rmse(score(y), exact_score),
    "oracle_tweedie": _mse(tw(y, exact_score), x),
    "mmse": _mse((b + kk * y) / (a + kk - 1), x),
  }


CASES = {"gaussian": gaussian_case, "poisson": poisson_case, "gamma": gamma_case}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="smoke run: 200 steps, one seed")
  parser.add_argument("--seeds", type=int, default=3)
  args = parser.parse_args()
  steps, seeds = (200, 1) if args.quick else (3000, args.seeds)
  n_train, n_test = 20_000, 20_000
  out = {"study": "noise2score", "steps": steps, "n_train": n_train, "n_test": n_test}
  print(f"{'noise':9s} {'seed':>4s} {'noisy':>9s} {'n2s':>9s} {'oracle':>9s} {'mmse':>9s} gap")
  t0 = time.perf_counter()
  for name, case in CASES.items():
    rows = []
    for seed in range(seeds):
      r = case(seed, steps, n_train, n_test)
      r["gap_closed"] = (r["noisy"] - r["noise2score"]) / (r["noisy"] - r["mmse"])
      rows.append(r)
      print(
        f"{name:9s} {seed:4d} {r['noisy']:9.3g} {r['noise2score']:9.3g} "
        f"{r['oracle_tweedie']:9.3g} {r['mmse']:9.3g} {r['gap_closed']:6.3f} "
        f"score_err={r['score_rel_rmse']:.3f}"
        + (f" nan={r['noise2score_nan_entries']}" if "noise2score_nan_entries" in r else "")
      )
    gaps = np.array([r["gap_closed"] for r in rows])
    out[name] = {"runs": rows, "gap_closed_mean": gaps.mean(), "gap_closed_min": gaps.min()}
  out["seconds"] = time.perf_counter() - t0
  print(f"total {out['seconds']:.1f} s")
  path = output_path("repro_wave3_statistics.json", args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1, default=float))
  print("wrote", path)


if __name__ == "__main__":
  main()
