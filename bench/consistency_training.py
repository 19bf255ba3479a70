"""Consistency training: Cauchy + diffusion loss + OT + adaptive c against iCT's pseudo-Huber.

Dao et al., "Improved Training Technique for Latent Consistency Models" (ICLR 2025,
arXiv:2502.01441). The paper's headline: in latent space, where the data carry impulsive
outliers, replacing iCT's pseudo-Huber premetric by the Cauchy one, adding the diffusion
loss at low noise, pairing noise and data by minibatch OT and scheduling ``c`` adaptively
improve one- and two-step FID (their Table 2/3: CelebA-HQ, LSUN Church, FFHQ 256 latents;
1-step FID e.g. 38 -> 7 on CelebA-HQ). Their setting (VAE latents of 256x256 images, DiT
backbones, hundreds of GPU hours) is far beyond 2 CPU cores; this study runs the same
recipe, transcribed from the official code (``jaxdiff.distill``), at small scale:

* ``ring``: a 2-D mixture of 8 Gaussians (std 0.05) on the circle of radius 1;
* ``ring_outliers``: the same with 3% of the points replaced by heavy-tailed draws
  (Student-t with 3 degrees of freedom, scale 0.5: finite variance, so W2 is defined):
  impulsive outliers in the data itself, the mechanism the paper names;
* ``digits``: the 8x8 digits (64-d pixels in [-1, 1]; not latents).

Four recipes, each from the same initialisation, data order and noise per seed:

* ``ict``: pseudo-Huber, ``c = 0.00054 sqrt(d)`` fixed, no diffusion loss, independent
  noise (iCT as the official code runs it);
* ``cauchy``: the Cauchy premetric, otherwise ``ict``;
* ``ict_plus``: pseudo-Huber with the diffusion loss, OT pairing and adaptive ``c`` (the
  paper's other three pieces without the premetric);
* ``full``: Cauchy + diffusion loss (weight 5, the last quarter of the grid) + OT + adaptive
  ``c`` (the paper's recipe).

iCT's curriculum ``N(k)`` from ``s0 = 10`` to ``s1 = 160`` (five stages), the
discretised log-normal intervals, ``sigma in [0.002, 80]``, Adam, an EMA of the weights
for evaluation. Metrics: the sliced 2-Wasserstein distance to exact samples (ring) or to
the held-out digits, and for the digits the Frechet distance in the demo classifier's
feature space (the demo's evaluator), of 1-step (``sigma = 80``) and 2-step
(``80 -> 0.8``) samples. Three seeds.

    nice -n 10 python bench/consistency_training.py          # 17 minutes on 2 busy cores
    nice -n 10 python bench/consistency_training.py --settings ring_outliers  # one setting
    nice -n 10 python bench/consistency_training.py --ablation   # 6 minutes: one piece at a time
    nice -n 10 python bench/consistency_training.py --dit        # digits with the small DiT
    python bench/consistency_training.py --quick             # smoke run (writes to /tmp)

Writes bench/results/consistency_training.json (``--ablation``:
consistency_training_ablation.json; ``--dit``: consistency_training_dit.json). On an idle
machine each setting runs in a few minutes.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _seeds import paired, summary
from _timing import output_path

from jaxdiff import distill, metrics

RECIPES = {
  "ict": dict(premetric="pseudo_huber", diffusion=False, ot=False, adaptive=False),
  "cauchy": dict(premetric="cauchy", diffusion=False, ot=False, adaptive=False),
  "ict_plus": dict(premetric="pseudo_huber", diffusion=True, ot=True, adaptive=True),
  "full": dict(premetric="cauchy", diffusion=True, ot=True, adaptive=True),
  # one piece at a time on top of iCT (--ablation)
  "ict_diffusion": dict(premetric="pseudo_huber", diffusion=True, ot=False, adaptive=False),
  "ict_ot": dict(premetric="pseudo_huber", diffusion=False, ot=True, adaptive=False),
  "ict_adaptive_c": dict(premetric="pseudo_huber", diffusion=False, ot=False, adaptive=True),
  "cauchy_adaptive_c": dict(premetric="cauchy", diffusion=False, ot=False, adaptive=True),
}
S0, S1 = 10, 160
TWO_STEP = (80.0, 0.8)


# --------------------------------------------------------------------------- data


def ring(key, n, outliers=0.0):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  ang = 2 * jnp.pi * jax.random.randint(k1, (n,), 0, 8) / 8
  x = jnp.stack([jnp.cos(ang), jnp.sin(ang)], 1) + 0.05 * jax.random.normal(k2, (n, 2))
  if outliers:
    t = 0.5 * jax.random.t(k3, 3.0, (n, 2))
    x = jnp.where(jax.random.uniform(k4, (n, 1)) < outliers, t, x)
  return x


# --------------------------------------------------------------------------- network


def mlp_init(key, dim, width):
  ks = jax.random.split(key, 4)
  he = lambda k, i, o: jax.random.normal(k, (i, o)) * math.sqrt(2.0 / i)  # noqa: E731
  d_in = dim + 32
  return {
    "w1": he(ks[0], d_in, width), "b1": jnp.zeros(width),
    "w2": he(ks[1], width, width), "b2": jnp.zeros(width),
    "w3": he(ks[2], width, width), "b3": jnp.zeros(width),
    "w4": he(ks[3], width, dim) * 0.01, "b4": jnp.zeros(dim),
  }  # fmt: skip


def mlp(params, x_in, sigma):
  # noise-level embedding: Fourier features of EDM's c_noise = log(sigma) / 4
  freqs = jnp.exp(jnp.linspace(0.0, math.log(100.0), 16))
  c = (jnp.log(sigma) / 4.0)[:, None] * freqs[None]
  h = jnp.concatenate([x_in.reshape(x_in.shape[0], -1), jnp.sin(c), jnp.cos(c)], 1)
  h = jax.nn.silu(h @ params["w1"] + params["b1"])
  h = jax.nn.silu(h @ params["w2"] + params["b2"])
  h = jax.nn.silu(h @ params["w3"] + params["b3"])
  return (h @ params["w4"] + params["b4"]).reshape(x_in.shape)


class DiT:
  """The repository's small DiT (``jaxdiff.models.DigitDenoiser``, the demo's size, null
  label) as the raw network; its LayerNorms already have no learnable scale (nor bias)."""

  def __init__(self, seed):
    from flax import nnx

    from jaxdiff.models import DigitDenoiser

    self.nnx = nnx
    self.graphdef, self.init_params = nnx.split(
      DigitDenoiser(dim=64, depth=3, num_heads=4, rngs=nnx.Rngs(seed))
    )

  def __call__(self, params, x_in, sigma):
    net = self.nnx.merge(self.graphdef, params)
    t = (jnp.log(sigma) + 6.3) / 10.7  # log sigma in [log 0.002, log 80] -> about [0, 1]
    return net(x_in, t, -jnp.ones(x_in.shape[0], jnp.int32))


def consistency_fn(params, net=mlp):
  return distill.consistency_function(lambda xi, s: net(params, xi, s))


# --------------------------------------------------------------------------- training


@functools.cache
def _adam(lr):
  return optax.adam(lr)  # one object per rate: the compiled step is reused across seeds


@functools.partial(jax.jit, static_argnames=("premetric", "diffusion", "ot", "opt", "net"))
def _step(params, ema, opt_state, x, key, c, num_scales, *, premetric, diffusion, ot, opt, net):
  def loss_fn(p):
    return distill.consistency_training_loss(
      consistency_fn(p, net), x, key=key, num_scales=num_scales, c=c, premetric=premetric,
      diffusion_weight=5.0 if diffusion else 0.0, pair_noise=ot,
    )  # fmt: skip

  loss, g = jax.value_and_grad(loss_fn)(params)
  upd, opt_state = opt.update(g, opt_state, params)
  params = optax.apply_updates(params, upd)
  ema = jax.tree.map(lambda e, p: 0.999 * e + 0.001 * p, ema, params)
  return params, ema, opt_state, loss


def train(recipe, data, seed, steps, batch, width, lr, net=None):
  r = RECIPES[recipe]
  dim = int(np.prod(data.shape[1:]))
  c0 = 0.00054 * math.sqrt(dim)
  key = jax.random.key(seed)
  if net is None:
    net, params = mlp, mlp_init(jax.random.fold_in(key, 0), dim, width)
  else:
    net = DiT(seed)
    params = net.init_params
  ema = params
  opt = _adam(lr)
  opt_state = opt.init(params)
  rng = np.random.default_rng(seed)
  losses = []
  for k in range(steps):
    n = distill.ict_num_scales(k, total_steps=steps, s0=S0, s1=S1)
    c = distill.adaptive_c(n) if (r["adaptive"] and n > S0 + 1) else c0
    x = jnp.asarray(data[rng.integers(0, data.shape[0], batch)])
    params, ema, opt_state, loss = _step(
      params, ema, opt_state, x, jax.random.fold_in(key, k + 1), c, n,
      premetric=r["premetric"], diffusion=r["diffusion"], ot=r["ot"], opt=opt, net=net,
    )  # fmt: skip
    if k % 500 == 0 or k == steps - 1:
      losses.append(float(loss))
  return (ema, net), losses


def samples(model, key, n, shape):
  params, net = model
  z = jax.random.normal(key, (n, *shape))
  f = consistency_fn(params, net)
  one = distill.consistency_sample(f, z, sigmas=(80.0,))
  two = distill.consistency_sample(f, z, sigmas=TWO_STEP, key=jax.random.fold_in(key, 1))
  return np.asarray(one), np.asarray(two)


# --------------------------------------------------------------------------- studies


def run_setting(name, data, reference, evaluator, args, recipes):
  shape = data.shape[1:]
  per = {rec: {} for rec in recipes}
  for seed in range(args.seeds):
    for rec in recipes:
      t0 = time.perf_counter()
      net = getattr(args, "net", None)
      ema, losses = train(rec, data, seed, args.steps, args.batch, args.width, args.lr, net)
      one, two = samples(ema, jax.random.key(1000 + seed), args.num_samples, shape)
      row = {}
      for tag, s in (("1step", one), ("2step", two)):
        sw = metrics.sliced_wasserstein(
          jnp.asarray(s.reshape(len(s), -1)), jnp.asarray(reference.reshape(len(reference), -1)),
          key=jax.random.key(7), num_projections=256,
        )  # fmt: skip
        row[f"sw2_{tag}"] = float(sw)
        if evaluator is not None:
          row[f"fd_{tag}"] = evaluator(s.reshape(-1, 8, 8), np.zeros(len(s), np.int32))["fd"]
      row["seconds"] = time.perf_counter() - t0
      for k, v in row.items():
        per[rec].setdefault(k, []).append(v)
      print(
        f"{name:14s} seed {seed} {rec:9s} " + " ".join(f"{k}={v:.4g}" for k, v in row.items()),
        flush=True,
      )
  out = {rec: summary(v) for rec, v in per.items()}
  metric_keys = [k for k in per[recipes[0]] if k != "seconds"]
  if "full" in per and "ict" in per:
    out["paired_full_minus_ict"] = {k: paired(per["ict"][k], per["full"][k]) for k in metric_keys}
  if "cauchy" in per and "ict" in per:
    out["paired_cauchy_minus_ict"] = {
      k: paired(per["ict"][k], per["cauchy"][k]) for k in metric_keys
    }
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--steps", type=int, default=4000)
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--width", type=int, default=128)
  ap.add_argument("--lr", type=float, default=1e-3)
  ap.add_argument("--num-samples", type=int, default=2000)
  ap.add_argument("--settings", default="ring_outliers,ring,digits")
  ap.add_argument("--recipes", default="ict,cauchy,ict_plus,full;ict,full;ict,full")
  ap.add_argument("--digits-seeds", type=int, default=2)
  ap.add_argument("--digits-steps", type=int, default=2000)
  ap.add_argument(
    "--dit",
    action="store_true",
    help="the digits with the repository's small DiT (writes consistency_training_dit.json)",
  )
  ap.add_argument(
    "--ablation",
    action="store_true",
    help="one piece at a time on ring_outliers (writes consistency_training_ablation.json)",
  )
  args = ap.parse_args()
  if args.quick:
    args.seeds, args.steps, args.num_samples = 1, 200, 500
  if args.dit:
    args.settings, args.recipes, args.lr = "digits", "ict,full", 5e-4
  if args.ablation:
    args.settings = "ring_outliers"
    args.recipes = "ict,ict_diffusion,ict_ot,ict_adaptive_c,cauchy_adaptive_c"
  t_start = time.perf_counter()
  results = {"config": vars(args), "recipes": RECIPES, "s0": S0, "s1": S1, "two_step": TWO_STEP}
  settings = args.settings.split(",")
  recipe_lists = [r.split(",") for r in args.recipes.split(";")]
  fname = "consistency_training_ablation.json" if args.ablation else "consistency_training.json"
  fname = "consistency_training_dit.json" if args.dit else fname
  path = output_path(fname, args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  for name, recipes in zip(settings, recipe_lists):
    if name in ("ring", "ring_outliers"):
      out = 0.03 if name == "ring_outliers" else 0.0
      data = np.asarray(ring(jax.random.key(11), 20000, out))
      ref = np.asarray(ring(jax.random.key(12), args.num_samples, out))
      results[name] = run_setting(name, data, ref, None, args, recipes)
      # the estimator's floor: fresh exact samples against the same reference
      results[name]["floor_sw2_exact_samples"] = [
        float(
          metrics.sliced_wasserstein(
            ring(jax.random.key(100 + s), args.num_samples, out), jnp.asarray(ref),
            key=jax.random.key(7), num_projections=256,
          )
        )
        for s in range(3)
      ]  # fmt: skip
    elif name == "digits":
      import _digits

      dm = _digits.demo_models()
      data = np.asarray(dm.data.train_x, np.float32)
      ref = np.asarray(dm.data.test_x, np.float32)
      seeds = min(args.seeds, args.digits_seeds)
      steps = min(args.steps, args.digits_steps)
      lr = args.lr if args.dit else 5e-4
      net = "dit" if args.dit else None
      a = argparse.Namespace(
        **{**vars(args), "width": 512, "lr": lr, "seeds": seeds, "steps": steps, "net": net}
      )
      results[name] = run_setting(name, data, ref, dm.evaluator, a, recipes)
      results[name]["reference_fd_train_vs_test"] = dm.evaluator(
        data[:360], np.zeros(360, np.int32)
      )["fd"]
    results["wall_seconds"] = time.perf_counter() - t_start
    path.write_text(json.dumps(results, indent=1))  # after each setting: a cut run keeps it
  path.write_text(json.dumps(results, indent=1))
  print(f"wrote {path} ({results['wall_seconds']:.0f} s)")


if __name__ == "__main__":
  main()
