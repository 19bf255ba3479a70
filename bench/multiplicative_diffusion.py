"""Multiplicative (GBM) diffusion: the generative claim on the digits, then the exact testbed.

The paper (Shetty, Prasath & Seelamantula, arXiv:2510.02730) claims that a score model
trained by multiplicative denoising score matching and sampled by the Dale-Langevin
(sign-preserving) reverse-GBM sampler generates MNIST / Fashion-MNIST / KMNIST / CIFAR-10
images (its figures of samples; its numbers could not be read here). Two cores do not train
a 28x28 U-Net, so the setting is scaled down to sklearn's 8x8 digits and one MLP:

1. **Digits.** Pixels ``p`` in ``0..16`` made positive as ``x = (p + 1) / 17`` (the GBM
   needs positive data). One MLP (3 hidden layers of 256, SiLU; input the normalised
   ``log x`` and ``log s(t)`` features) trained for 4000 Adam steps (batch 256) with
   ``multiplicative.mdsm_loss`` (``gbm_geometric(0.01, 10, mu=50)``: ``mu = sigma_max^2/2``
   keeps ``x_t`` inside float32), sampled with ``multiplicative.sample`` (Dale-Langevin and
   ambient, 400 steps) from ``log_normal_prior``. Baseline at equal budget: the same MLP
   trained by additive VE denoising score matching on the demo's ``[-1, 1]`` pixels (same
   ``sigma_min``, ``sigma_max``, steps, sampler steps). Metric: the demo's Frechet distance
   in the demo classifier's features against the held-out digits
   (``jaxdiff.demo._evaluation.Evaluator``), with two anchors: the training digits (the
   floor) and the prior's samples (no model).
2. **Exact testbed.** A 2-D log-normal mixture (``jaxdiff.testing.LogNormalMixture``, 3
   components): the MLP trained by M-DSM against the exact Hyvarinen score in the same
   sampler; sliced W2 of ``log`` samples against exact samples (the floor: two exact sets).

    nice -n 10 python bench/multiplicative_diffusion.py --seed 0 --part digits   # ~5 min
    nice -n 10 python bench/multiplicative_diffusion.py --seed 0 --part testbed  # ~2 min
    nice -n 10 python bench/multiplicative_diffusion.py --quick  # smoke run, writes to /tmp

Each run adds its seed and part to the JSON (the figures quoted are seeds 0, 1, 2).

Writes bench/results/multiplicative_diffusion.json.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _digits import demo_models
from _timing import output_path

from jaxdiff import multiplicative as M
from jaxdiff.testing import GaussianMixture, LogNormalMixture

SIGMA_MIN, SIGMA_MAX = 0.01, 10.0


def mlp_init(key, d_in, d_out, width=256, depth=3):
  sizes = [d_in] + [width] * depth + [d_out]
  keys = jax.random.split(key, len(sizes) - 1)
  return [
    (jax.random.normal(k, (a, b)) * jnp.sqrt(1.0 / a), jnp.zeros(b))
    for k, a, b in zip(keys, sizes[:-1], sizes[1:])
  ]


def mlp(params, u, feat):
  h = jnp.concatenate([u, feat], axis=-1)
  for w, b in params[:-1]:
    h = jax.nn.silu(h @ w + b)
  w, b = params[-1]
  return h @ w + b


def time_features(s):
  ls = jnp.log(s)[:, None]
  freqs = jnp.arange(1, 9, dtype=s.dtype)[None, :] * 0.4
  return jnp.concatenate([ls / 4.0, jnp.sin(freqs * ls), jnp.cos(freqs * ls)], axis=-1)


def make_scores(g, center, spread):
  """eps-prediction network -> Hyvarinen score (multiplicative) / Stein score (additive)."""

  def hyvarinen(params, x, t):
    s = g.log_std(t)[:, None]
    u = (jnp.log(x) - center - g.log_mean(t)[:, None]) / jnp.sqrt(spread**2 + s**2)
    return -mlp(params, u, time_features(s[:, 0])) / s - 1.0

  def stein(params, z, t):
    s = g.log_std(t)[:, None]
    u = (z - center) / jnp.sqrt(spread**2 + s**2)
    return -mlp(params, u, time_features(s[:, 0])) / s

  return hyvarinen, stein


def train(loss_fn, params, data, steps, key, lr=1e-3, batch=256):
  tx = optax.adam(optax.cosine_decay_schedule(lr, steps))
  state = tx.init(params)

  @jax.jit
  def step(params, state, key):
    kb, kt, kn = jax.random.split(key, 3)
    x0 = data[jax.random.randint(kb, (batch,), 0, data.shape[0])]
    t = jax.random.uniform(kt, (batch,), minval=1e-3, maxval=1.0)
    loss, grad = jax.value_and_grad(loss_fn)(params, x0, t, kn)
    u, state = tx.update(grad, state, params)
    return optax.apply_updates(params, u), state, loss

  losses = []
  for k in jax.random.split(key, steps):
    params, state, loss = step(params, state, k)
    losses.append(float(loss))
  return params, float(np.mean(losses[-200:]))


def additive_loss(stein, g):
  def loss(params, z0, t, key):
    eps = jax.random.normal(key, z0.shape)
    s = g.log_std(t)[:, None]
    return jnp.mean((s * stein(params, z0 + s * eps, t) + eps) ** 2)

  return loss


def additive_sample(stein_fn, z, g, num_steps, key, t_min=1e-3):
  """Euler-Maruyama on the reverse VE SDE (volatility g.volatility, no drift)."""
  grid = jnp.linspace(1.0, t_min, num_steps + 1)

  def step(z, inp):
    t, tn, k = inp
    dt, vol = t - tn, g.volatility(t)
    sc = stein_fn(z, jnp.full((z.shape[0],), t))
    return z + dt * vol**2 * sc + vol * jnp.sqrt(dt) * jax.random.normal(k, z.shape), None

  out, _ = jax.lax.scan(step, z, (grid[:-1], grid[1:], jax.random.split(key, num_steps)))
  return out


def sliced_w2(a, b, key, n_proj=128):
  d = a.shape[1]
  v = np.array(jax.random.normal(jax.random.key(key), (d, n_proj)), np.float64)
  v /= np.linalg.norm(v, axis=0, keepdims=True)
  pa, pb = np.sort(a @ v, axis=0), np.sort(b @ v, axis=0)
  return float(np.sqrt(np.mean((pa - pb) ** 2)))


def digits_study(steps, n_samples, num_steps, seed):
  t_load = time.perf_counter()
  dm = demo_models()
  print(f"demo models loaded in {time.perf_counter() - t_load:.0f} s", flush=True)
  train_px = np.asarray(dm.data.train_x).reshape(-1, 64)  # [-1, 1]
  p = (train_px + 1.0) * 8.0  # 0..16
  x_pos = (p + 1.0) / 17.0  # positive
  to_demo = lambda x: ((17.0 * x - 1.0) / 8.0 - 1.0).reshape(-1, 8, 8)  # noqa: E731
  labels = np.zeros(n_samples, np.int32)  # accuracy is not reported (unconditional)

  def fd(x_demo):
    return dm.evaluator(np.asarray(x_demo, np.float32), labels)["fd"]

  key = jax.random.key(seed)
  k_init, k_tm, k_ta, k_prior, k_s1, k_s2, k_s3, k_floor = jax.random.split(key, 8)
  g_mult = M.gbm_geometric(SIGMA_MIN, SIGMA_MAX, mu=SIGMA_MAX**2 / 2)
  g_add = M.gbm_geometric(SIGMA_MIN, SIGMA_MAX)  # only its s(t) and volatility are used
  logs = np.log(x_pos)
  hyv, _ = make_scores(g_mult, float(logs.mean()), float(logs.std()))
  _, stein = make_scores(g_add, float(train_px.mean()), float(train_px.std()))

  def mdsm(params, x0, t, key):
    return M.mdsm_loss(lambda x, t: hyv(params, x, t), x0, t, schedule=g_mult, key=key)

  params0 = mlp_init(k_init, 64 + 17, 64)
  out = {}
  t0 = time.perf_counter()
  pm, lm = train(mdsm, params0, jnp.asarray(x_pos), steps, k_tm)
  pa, la = train(additive_loss(stein, g_add), params0, jnp.asarray(train_px), steps, k_ta)
  out["train_seconds"] = time.perf_counter() - t0
  out["final_loss"] = {"multiplicative": lm, "additive": la}

  x_T = M.log_normal_prior(
    (n_samples, 64),
    schedule=g_mult,
    key=k_prior,
    log_mean=jnp.asarray(logs.mean(0)),
    log_std=jnp.asarray(logs.std(0)),
  )
  t0 = time.perf_counter()
  for name, variant, k in (("dale_langevin", "dale_langevin", k_s1), ("ambient", "ambient", k_s2)):
    x = np.asarray(
      M.sample(
        lambda x, t: hyv(pm, x, t),
        x_T,
        schedule=g_mult,
        num_steps=num_steps,
        key=k,
        variant=variant,
      )
    )
    ok = np.all(np.isfinite(x) & (x > 0), axis=1)
    demo = to_demo(np.where(ok[:, None], x, 1.0 / 17.0))
    out[f"multiplicative_{name}"] = {
      "fd": fd(demo) if ok.mean() > 0.5 else None,
      "fraction_valid": float(ok.mean()),
      "fraction_pixels_outside_data_range": float(np.mean((demo < -1.0) | (demo > 1.0))),
    }
  z_T = jnp.asarray(train_px.mean()) + SIGMA_MAX * jax.random.normal(k_s3, (n_samples, 64))
  z = np.asarray(additive_sample(lambda z, t: stein(pa, z, t), z_T, g_add, num_steps, k_s3))
  out["additive_ve"] = {
    "fd": fd(z.reshape(-1, 8, 8)),
    "fraction_pixels_outside_data_range": float(np.mean((z < -1.0) | (z > 1.0))),
  }
  out["sample_seconds"] = time.perf_counter() - t0
  idx = np.asarray(jax.random.choice(k_floor, train_px.shape[0], (n_samples,), replace=False))
  out["floor_training_digits_fd"] = fd(train_px[idx].reshape(-1, 8, 8))
  out["prior_fd"] = fd(to_demo(np.clip(np.asarray(x_T), 1.0 / 17.0, 1.0)))
  return out


def testbed_study(steps, n, num_steps, seed):
  lnm = LogNormalMixture(
    GaussianMixture(
      jnp.array([[-1.0, 0.5], [1.0, 1.0], [0.0, -1.0]]), [0.05, 0.1, 0.08], [0.3, 0.3, 0.4]
    )
  )
  g = M.gbm_geometric(0.01, 5.0, mu=12.5)
  key = jax.random.key(seed)
  k_data, k_init, k_tr, k_prior, k_s1, k_s2, k_ref, k_ref2 = jax.random.split(key, 8)
  data = lnm.sample(k_data, 20000)
  logs = np.log(np.asarray(data))
  hyv, _ = make_scores(g, float(logs.mean()), float(logs.std()))

  def mdsm(params, x0, t, key):
    return M.mdsm_loss(lambda x, t: hyv(params, x, t), x0, t, schedule=g, key=key)

  params, loss = train(mdsm, mlp_init(k_init, 2 + 17, 2, width=128), data, steps, k_tr)
  x_T = M.log_normal_prior(
    (n, 2), schedule=g, key=k_prior, log_mean=jnp.asarray(logs.mean(0)),
    log_std=jnp.asarray(logs.std(0)),
  )  # fmt: skip
  ref = np.log(np.asarray(lnm.sample(k_ref, n)))
  out = {"final_loss": loss}
  for name, fn in (
    ("trained", lambda x, t: hyv(params, x, t)),
    ("exact_score", lambda x, t: lnm.hyvarinen_score(x, t, g)),
  ):
    x = M.sample(fn, x_T, schedule=g, num_steps=num_steps, key=k_s1)
    out[f"sliced_w2_{name}"] = sliced_w2(np.log(np.asarray(x)), ref, 0)
  out["sliced_w2_floor_two_exact_sets"] = sliced_w2(
    np.log(np.asarray(lnm.sample(k_ref2, n))), ref, 0
  )
  out["sliced_w2_prior"] = sliced_w2(np.log(np.asarray(x_T)), ref, 0)
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--part", choices=("all", "digits", "testbed"), default="all")
  args = ap.parse_args()
  steps, n, num_steps = (200, 200, 50) if args.quick else (4000, 1000, 400)
  path = output_path("multiplicative_diffusion.json", args.quick)
  # Runs accumulate per seed and part (each run stays under ~8 minutes on 2 cores).
  out = json.loads(path.read_text()) if path.exists() else {}
  out["command"] = "nice -n 10 python bench/multiplicative_diffusion.py --seed S --part P"
  out["setting"] = {"train_steps": steps, "num_samples": n, "sampler_steps": num_steps,
                    "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX}  # fmt: skip
  runs = out.setdefault("seeds", {}).setdefault(str(args.seed), {})
  t0 = time.perf_counter()
  if args.part in ("all", "digits"):
    runs["digits"] = digits_study(steps, n, num_steps, args.seed)
    print(json.dumps(runs["digits"], indent=1), flush=True)
  if args.part in ("all", "testbed"):
    runs["testbed"] = testbed_study(steps // 2, 4000, num_steps, args.seed)
    print(json.dumps(runs["testbed"], indent=1), flush=True)
  runs[f"wall_seconds_{args.part}"] = time.perf_counter() - t0
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1))
  print(f"wrote {path} ({runs[f'wall_seconds_{args.part}']:.0f} s)")


if __name__ == "__main__":
  main()
