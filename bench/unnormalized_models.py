"""Unnormalized models: MECO (compositional NLL) against NCE, on exact testbeds.

Jiang et al. (ICML 2023, arXiv 2306.07485) claim that optimizing the negative log-likelihood
directly, with the log partition function written as ``log E_q[exp(-E)/q]`` and its inner
expectation tracked by a moving average (MECO, :func:`optim.unnormalized.meco_grads`), beats
noise-contrastive estimation (NCE, :func:`optim.unnormalized.nce_loss`, log Z learned): NCE's
loss landscape is flat when the noise is far from the data, MECO's is not, so MECO converges
faster (their one-dimensional Gaussian mean estimation, the setting of Liu et al. 2021), and it
reaches better likelihoods in density estimation.

Part A, the paper's Gaussian mean estimation (as far as the paper's text could be read here,
its exact R and step sizes were not available): data N(R, 1), noise Q = N(0, 1), model
``exp(-(x - theta)^2 / 2)`` with unknown normalizer, started at the noise (theta = 0, and
c = 0 for NCE). Both methods take the same parameter step (:func:`optim.unnormalized.meco`,
beta = 0.1) on fresh batches of 256 data and 256 noise samples; each method gets its best
learning rate from a grid (chosen on the mean final error over the seeds). Reported: the
population gradient at the start (quadrature), the mean |theta - R| over the last 200 of
2000 steps (``final_error``) and the first step with |theta - R| < 0.1, for R in {1, 3, 5},
five seeds.

Part B, small density estimation (not the paper's setting): a 2-D ring of eight Gaussians,
an MLP energy (2-64-64-1, SiLU), noise the Gaussian fitted to the training data, Adam 1e-3 for
both methods, batches of 256 + 256, 3000 steps, three seeds; the test NLL is exact up to
quadrature (log Z on a 240 x 240 grid over [-4.5, 4.5]^2), recorded every 500 steps. MECO
runs at gamma = 0.1 and, as an ablation, at gamma = 0.02 and 0.5.

    nice -n 10 python bench/unnormalized_models.py           # about 6 minutes on 2 shared CPU cores
    nice -n 10 python bench/unnormalized_models.py --quick   # smoke run (writes to /tmp)

Writes bench/results/unnormalized_models.json.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _seeds import paired, summary
from _timing import output_path

from optim import unnormalized

jax.config.update("jax_enable_x64", True)

# ------------------------------------------------------------------ A: Gaussian mean estimation


def _energy_1d(p, x):
  return 0.5 * (x[:, 0] - p["theta"]) ** 2


def _log_q_1d(x):
  return -0.5 * x[:, 0] ** 2 - 0.5 * np.log(2 * np.pi)


def _population_grads(r: float) -> dict:
  """d/dtheta of each population loss at the start (theta = 0, c = 0), by quadrature."""
  x = jnp.linspace(-12.0, 12.0 + r, 20001)[:, None]
  w = (x[1, 0] - x[0, 0]) * jnp.ones(x.shape[0])
  p_star = jnp.exp(-0.5 * (x[:, 0] - r) ** 2) / jnp.sqrt(2 * jnp.pi)
  q = jnp.exp(_log_q_1d(x))

  def nll(theta):
    # E_p*[E] + log Z(theta); log Z is constant in theta for this model: gradient theta - R.
    return jnp.sum(w * p_star * _energy_1d({"theta": theta}, x)) + 0.5 * jnp.log(2 * jnp.pi)

  def nce(theta, c):
    g = -_energy_1d({"theta": theta}, x) - c - _log_q_1d(x)
    return jnp.sum(w * p_star * jax.nn.softplus(-g)) + jnp.sum(w * q * jax.nn.softplus(g))

  g_nce = jax.grad(nce, argnums=(0, 1))(0.0, 0.0)
  return {"meco_dtheta": float(jax.grad(nll)(0.0)), "nce_dtheta": float(g_nce[0]),
          "nce_dc": float(g_nce[1])}  # fmt: skip


def _thetas_1d(method: str, r, lr, key, steps: int, batch: int = 256):
  """The trajectory of theta for one seed (``r`` and ``lr`` traced: one compilation)."""
  tx = unnormalized.meco(lr, beta=0.1)
  theta0 = {"theta": jnp.asarray(0.0)}
  params = theta0 if method == "meco" else (theta0, jnp.asarray(0.0))

  def body(carry, key):
    params, state, opt = carry
    kx, kz = jax.random.split(key)
    x = r + jax.random.normal(kx, (batch, 1))
    z = jax.random.normal(kz, (batch, 1))
    if method == "meco":
      (_, g), state = unnormalized.meco_grads(_energy_1d, params, state, x, z, _log_q_1d, gamma=0.1)
      theta = params["theta"]
    else:
      g = jax.grad(lambda t: unnormalized.nce_loss(_energy_1d, t[0], t[1], x, z, _log_q_1d))(params)
      theta = params[0]["theta"]
    upd, opt = tx.update(g, opt)
    return (optax.apply_updates(params, upd), state, opt), theta

  carry = (params, unnormalized.meco_init(theta0), tx.init(params))
  return jax.lax.scan(body, carry, jax.random.split(key, steps))[1]


_RUNS = {
  m: jax.jit(
    jax.vmap(lambda r, lr, key, m=m: _thetas_1d(m, r, lr, key, _STEPS[0]), in_axes=(None, None, 0))
  )
  for m in ("meco", "nce")
}
_STEPS = [2000]


def _run_1d(method: str, r: float, lr: float, seeds) -> list:
  keys = jnp.stack([jax.random.key(s) for s in seeds])
  thetas = np.asarray(_RUNS[method](r, lr, keys))
  out = []
  for th in thetas:
    err = np.abs(th - r)
    err = np.where(np.isfinite(err), err, np.inf)
    hit = np.flatnonzero(err < 0.1)
    tail = float(np.mean(err[-len(err) // 10 :]))  # the last 10% of the steps
    out.append((tail, int(hit[0]) + 1 if hit.size else None))
  return out


def gaussian_mean(quick: bool) -> dict:
  steps = _STEPS[0] = 200 if quick else 2000
  seeds = range(2 if quick else 5)
  lrs = (0.1, 1.0) if quick else (0.03, 0.1, 0.3, 1.0, 3.0)
  out = {}
  for r in (1.0, 3.0, 5.0):
    row = {"population_gradient_at_start": _population_grads(r)}
    for method in ("meco", "nce"):
      by_lr = {}
      for lr in lrs:
        runs = _run_1d(method, r, lr, seeds)
        finals = [f for f, _ in runs]
        by_lr[lr] = {"final_error": finals, "first_step_below_0.1": [h for _, h in runs]}
      best = min(by_lr, key=lambda lr: np.mean(np.minimum(by_lr[lr]["final_error"], 1e9)))
      row[method] = {"best_learning_rate": best, **by_lr[best],
                     "mean_final_error_by_lr": {str(k): float(np.mean(np.minimum(
                       v["final_error"], 1e9))) for k, v in by_lr.items()}}  # fmt: skip
    out[f"R={r:g}"] = row
    m, n = row["meco"], row["nce"]
    print(
      f"R={r:g}: grad at start meco {row['population_gradient_at_start']['meco_dtheta']:+.3f} "
      f"nce {row['population_gradient_at_start']['nce_dtheta']:+.2e} | final |theta-R| "
      f"meco {np.mean(m['final_error']):.3g} (lr {m['best_learning_rate']}) nce "
      f"{np.mean(n['final_error']):.3g} (lr {n['best_learning_rate']}) | first step < 0.1: "
      f"meco {m['first_step_below_0.1']} nce {n['first_step_below_0.1']}",
      flush=True,
    )
  return {"steps": steps, "batch": 256, "beta": 0.1, "gamma": 0.1, "seeds": len(seeds),
          "learning_rates": list(lrs), "by_R": out}  # fmt: skip


# ------------------------------------------------------------------ B: 2-D density estimation


def _ring(key, n):
  k1, k2 = jax.random.split(key)
  angle = 2 * jnp.pi * jax.random.randint(k1, (n,), 0, 8) / 8
  centers = 2.0 * jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1)
  return centers + 0.25 * jax.random.normal(k2, (n, 2))


def _ring_log_density(x):
  angle = 2 * jnp.pi * jnp.arange(8) / 8
  centers = 2.0 * jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1)
  d2 = jnp.sum((x[:, None, :] - centers) ** 2, -1)
  return jax.nn.logsumexp(-d2 / (2 * 0.25**2), -1) - jnp.log(8 * 2 * jnp.pi * 0.25**2)


def _mlp_init(key, width=64):
  k1, k2, k3 = jax.random.split(key, 3)
  he = lambda k, i, o: jax.random.normal(k, (i, o)) * np.sqrt(1.0 / i)  # noqa: E731
  return {"w1": he(k1, 2, width), "b1": jnp.zeros(width), "w2": he(k2, width, width),
          "b2": jnp.zeros(width), "w3": he(k3, width, 1), "b3": jnp.zeros(1)}  # fmt: skip


def _energy_mlp(p, x):
  h = jax.nn.silu(x @ p["w1"] + p["b1"])
  h = jax.nn.silu(h @ p["w2"] + p["b2"])
  return (h @ p["w3"] + p["b3"])[:, 0]


_GRID = jnp.stack(jnp.meshgrid(*(2 * [jnp.linspace(-4.5, 4.5, 240)]), indexing="ij"), -1)
_CELL = float((9.0 / 239) ** 2)


def _test_nll(p, x_test):
  log_z = jax.nn.logsumexp(-_energy_mlp(p, _GRID.reshape(-1, 2))) + np.log(_CELL)
  return jnp.mean(_energy_mlp(p, x_test)) + log_z


def _run_2d(method: str, seed: int, steps: int, every: int, x_train, x_test, noise, gamma=0.1):
  mean, chol = noise
  cov_inv = jnp.linalg.inv(chol @ chol.T)
  logdet = 2 * jnp.sum(jnp.log(jnp.diag(chol)))

  def log_q(x):
    d = x - mean
    return -0.5 * jnp.sum(d @ cov_inv * d, -1) - 0.5 * logdet - jnp.log(2 * jnp.pi)

  tx = optax.adam(1e-3)
  params = _mlp_init(jax.random.key(100 + seed))
  params = params if method == "meco" else (params, jnp.asarray(0.0))
  state = unnormalized.meco_init(params)

  def body(carry, key):
    params, state, opt = carry
    kx, kz = jax.random.split(key)
    x = x_train[jax.random.randint(kx, (256,), 0, x_train.shape[0])]
    z = mean + jax.random.normal(kz, (256, 2)) @ chol.T
    if method == "meco":
      (_, g), state = unnormalized.meco_grads(_energy_mlp, params, state, x, z, log_q, gamma=gamma)
    else:
      g = jax.grad(lambda t: unnormalized.nce_loss(_energy_mlp, t[0], t[1], x, z, log_q))(params)
    upd, opt = tx.update(g, opt)
    return (optax.apply_updates(params, upd), state, opt), None

  chunk = jax.jit(lambda carry, keys: jax.lax.scan(body, carry, keys)[0])
  carry = (params, state, tx.init(params))
  keys = jax.random.split(jax.random.key(seed), steps).reshape(steps // every, every)
  curve = []
  for k in keys:
    carry = chunk(carry, k)
    p = carry[0] if method == "meco" else carry[0][0]
    curve.append(float(_test_nll(p, x_test)))
  return curve


def density(quick: bool) -> dict:
  steps, every = (400, 200) if quick else (3000, 500)
  seeds = range(2 if quick else 3)
  # MECO at the default gamma = 0.1, NCE, and MECO at two other gammas (an ablation).
  curves = {"meco": [], "nce": [], "meco_gamma0.02": [], "meco_gamma0.5": []}
  for seed in seeds:
    x_train = _ring(jax.random.key(10 + seed), 5000)
    x_test = _ring(jax.random.key(20 + seed), 5000)
    mean = x_train.mean(0)
    chol = jnp.linalg.cholesky(jnp.cov(x_train.T))
    for name in curves:
      method, _, gamma = name.partition("_gamma")
      curve = _run_2d(
        method, seed, steps, every, x_train, x_test, (mean, chol), float(gamma or 0.1)
      )
      curves[name].append(curve)
      print(f"seed {seed}: test NLL {name} {np.round(curve, 3).tolist()}", flush=True)
  true_nll = float(-jnp.mean(_ring_log_density(_ring(jax.random.key(99), 200000))))
  final = {m: [c[-1] for c in v] for m, v in curves.items()}
  first = {m: [c[0] for c in v] for m, v in curves.items()}
  return {
    "steps": steps, "eval_every": every, "true_nll": true_nll, "curves": curves,
    "final": summary(final), "nce_minus_meco_final": paired(final["meco"], final["nce"]),
    "first_eval": summary(first), "nce_minus_meco_first_eval": paired(first["meco"], first["nce"]),
  }  # fmt: skip


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  args = ap.parse_args()
  t0 = time.perf_counter()
  result = {"gaussian_mean": gaussian_mean(args.quick), "density_2d": density(args.quick)}
  result["seconds"] = time.perf_counter() - t0
  d = result["density_2d"]
  print(
    f"2-D ring, test NLL after {d['steps']} steps (true {d['true_nll']:.3f}): "
    f"meco {d['final']['meco']['mean']:.3f} +- {d['final']['meco']['std']:.3f}, "
    f"nce {d['final']['nce']['mean']:.3f} +- {d['final']['nce']['std']:.3f}"
  )
  path = output_path("unnormalized_models.json", args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=1))
  print(f"wrote {path} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
  main()
