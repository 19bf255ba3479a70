"""Kadkhodaie et al.'s geometry of trained denoisers, small: disjoint halves and shrinkage.

Two MLP denoisers are trained on disjoint halves of sklearn's digits (``N`` images each,
``N`` in 8, 64, 512), with the same initialisation seed, EDM preconditioning
(``sigma_data = 0.5``), the EDM log-normal noise distribution and 4000 Adam steps. The
paper's test: as ``N`` grows the two networks become the same denoiser (generalisation),
while at small ``N`` each reproduces its own training images (memorisation). Measured:

* ``denoiser_gap``: ``||f_A(y) - f_B(y)|| / ||f_A(y)||`` on 256 held-out digits noised at
  ``sigma`` (median over images);
* samples of both networks from the same noise (DPM-Solver++(2M), 24 steps of
  ``schedules.edm(0.002, 10)``): their relative distance, and the RMS distance of network
  A's samples to the nearest of its own training images (a copy is near 0);
* the shrinkage spectrum of network A at ``N = 512`` at a held-out noisy digit: all 64
  eigenvalues of the symmetric part of its Jacobian (:func:`jaxdiff.metrics.jacobian_spectrum`,
  64 Lanczos steps: exact), their sum (the effective dimensionality ``tr J``), the
  Jacobian's asymmetry, and the overlap ``|<e_1^A, e_1^B>|`` of the two networks' leading
  eigenvectors.

    python bench/denoiser_geometry.py            # a few minutes on 2 cores
    python bench/denoiser_geometry.py --quick    # smoke run (writes to /tmp)

Writes bench/results/denoiser_geometry.json and bench/results/denoiser_geometry.png (the
leading eigenvectors at N = 512).
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

import jaxdiff
from jaxdiff import schedules, solvers
from jaxdiff.metrics import jacobian_asymmetry, jacobian_spectrum
from jaxdiff.models import load_digits

SIGMA_DATA = 0.5
SCHED = schedules.edm(0.002, 10.0)


def init_mlp(key, width=512, depth=3, dim=64):
  sizes = [dim + 1] + [width] * depth + [dim]
  keys = jax.random.split(key, len(sizes) - 1)
  return [
    (jax.random.normal(k, (a, b)) * np.sqrt(1.0 / a), jnp.zeros(b))
    for k, a, b in zip(keys, sizes[:-1], sizes[1:])
  ]


def mlp(params, x, sigma):
  h = jnp.concatenate([x, jnp.log(sigma)[:, None] / 4], axis=1)
  for w, b in params[:-1]:
    h = jax.nn.silu(h @ w + b)
  w, b = params[-1]
  return h @ w + b


def denoise_fn(params):
  """EDM-preconditioned ``D(x, sigma)`` on ``(B, 8, 8)`` images, ``t = sigma``."""

  def den(x, t, cond=None):
    del cond
    xf = x.reshape(x.shape[0], -1)
    s = jnp.broadcast_to(jnp.asarray(t, xf.dtype), (x.shape[0],))
    s2 = s**2 + SIGMA_DATA**2
    c_skip = SIGMA_DATA**2 / s2
    c_out = s * SIGMA_DATA / jnp.sqrt(s2)
    c_in = 1 / jnp.sqrt(s2)
    out = c_skip[:, None] * xf + c_out[:, None] * mlp(params, c_in[:, None] * xf, s)
    return out.reshape(x.shape)

  return den


def train(data, key, steps):
  params = init_mlp(jax.random.key(0))  # the same initialisation for both halves
  opt = optax.adam(optax.cosine_decay_schedule(2e-3, steps))
  state = opt.init(params)
  n = data.shape[0]

  def loss(p, key):
    kb, ks, ke = jax.random.split(key, 3)
    x = data[jax.random.randint(kb, (256,), 0, n)]
    sigma = jnp.exp(-1.2 + 1.2 * jax.random.normal(ks, (256,)))
    y = x + sigma[:, None, None] * jax.random.normal(ke, x.shape)
    weight = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
    err = jnp.sum((denoise_fn(p)(y, sigma) - x) ** 2, axis=(1, 2))
    return jnp.mean(weight * err)

  @jax.jit
  def run(params, state, key):
    def step(carry, k):
      p, s = carry
      value, g = jax.value_and_grad(loss)(p, k)
      upd, s = opt.update(g, s, p)
      return (optax.apply_updates(p, upd), s), value

    (params, state), values = jax.lax.scan(step, (params, state), jax.random.split(key, steps))
    return params, values[-100:].mean()

  params, final = run(params, state, key)
  return params, float(final)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  t0 = time.perf_counter()
  digits = load_digits(key=0)
  train_x = jnp.asarray(digits.train_x)
  test_x = jnp.asarray(digits.test_x[:256])
  perm = np.random.default_rng(0).permutation(train_x.shape[0])
  sizes, steps = ((8, 64), 300) if args.quick else ((8, 64, 512), 4000)
  sigmas = (0.3, 1.0)
  ts = jaxdiff.timesteps(SCHED, 24)
  x_T = SCHED.sigma(ts.t[0]) * jax.random.normal(jax.random.key(5), (64, 8, 8))
  out = {"sizes": list(sizes), "adam_steps": steps, "rows": []}
  nets = {}
  for n in sizes:
    half_a = train_x[perm[:n]]
    half_b = train_x[perm[n : 2 * n]]
    pa, la = train(half_a, jax.random.key(1), steps)
    pb, lb = train(half_b, jax.random.key(2), steps)
    fa, fb = denoise_fn(pa), denoise_fn(pb)
    nets[n] = (fa, fb)
    gaps = {}
    for s in sigmas:
      y = test_x + s * jax.random.normal(jax.random.key(3), test_x.shape)
      da, db = fa(y, jnp.full((y.shape[0],), s)), fb(y, jnp.full((y.shape[0],), s))
      rel = jnp.linalg.norm((da - db).reshape(y.shape[0], -1), axis=1) / jnp.linalg.norm(
        da.reshape(y.shape[0], -1), axis=1
      )
      gaps[str(s)] = float(jnp.median(rel))
    xa = jaxdiff.sample(fa, solvers.dpmpp_2m(), x_T, ts, key=0).x
    xb = jaxdiff.sample(fb, solvers.dpmpp_2m(), x_T, ts, key=0).x
    flat = lambda v: v.reshape(v.shape[0], -1)  # noqa: E731
    sample_gap = float(
      jnp.median(jnp.linalg.norm(flat(xa - xb), axis=1) / jnp.linalg.norm(flat(xa), axis=1))
    )
    d2 = jnp.sum((flat(xa)[:, None] - flat(half_a)[None]) ** 2, -1)
    nearest = float(jnp.median(jnp.sqrt(jnp.min(d2, 1) / 64)))
    row = {
      "n": n,
      "train_loss": [la, lb],
      "denoiser_gap": gaps,
      "sample_gap": sample_gap,
      "nearest_training_rms": nearest,
    }
    out["rows"].append(row)
    print(
      f"N={n:4d}  denoiser gap "
      + ", ".join(f"s={k}: {v:.3f}" for k, v in gaps.items())
      + f"  sample gap {sample_gap:.3f}  nearest own training image (RMS) {nearest:.3f}",
      flush=True,
    )
  # The shrinkage spectrum of the largest-N network at one held-out digit.
  n = sizes[-1]
  fa, fb = nets[n]
  spectrum = {}
  vectors = None
  for s in (0.1, 0.3, 1.0, 3.0):
    y = test_x[0] + s * jax.random.normal(jax.random.key(4), test_x[0].shape)
    spec_a = jacobian_spectrum(fa, y, s, key=0, num_iterations=64)
    spec_b = jacobian_spectrum(fb, y, s, key=0, num_iterations=64)
    lam = np.asarray(spec_a.eigenvalues)
    overlap = float(jnp.abs(jnp.vdot(spec_a.eigenvectors[0], spec_b.eigenvectors[0])))
    asym = float(jacobian_asymmetry(fa, y, s, key=0, num_probes=64))
    spectrum[str(s)] = {
      "top": [round(float(v), 4) for v in lam[:8]],
      "effective_dim": float(lam.sum()),
      "max_residual": float(jnp.max(spec_a.residuals)),
      "asymmetry": asym,
      "top_eigenvector_overlap_a_b": overlap,
    }
    print(
      f"N={n} sigma={s}: top eigenvalues {spectrum[str(s)]['top'][:5]}  tr J {lam.sum():.2f}  "
      f"asymmetry {asym:.3f}  |<e1_A, e1_B>| {overlap:.3f}",
      flush=True,
    )
    if s == 0.3:
      vectors = np.asarray(spec_a.eigenvectors[:8])
  out["spectrum"] = spectrum
  out["seconds"] = time.perf_counter() - t0
  path = output_path("denoiser_geometry.json", args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1))
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 8, figsize=(12, 1.8))
    for i, ax in enumerate(axes):
      ax.imshow(vectors[i], cmap="RdBu_r")
      ax.set_title(f"e{i + 1}: {spectrum['0.3']['top'][i]:.2f}", fontsize=8)
      ax.axis("off")
    fig.suptitle(f"leading Jacobian eigenvectors, N = {n}, sigma = 0.3", fontsize=9)
    fig.savefig(path.with_suffix(".png"), dpi=100, bbox_inches="tight")
  except ImportError:
    pass
  print(f"wrote {path} in {out['seconds']:.0f} s")


if __name__ == "__main__":
  main()
