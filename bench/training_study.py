"""Training study on the 8x8 digits: timestep samplers and curriculum, reflow, Smooth
Diffusion, memorisation and locality, all through ``jaxdiff.training``.

Run: .venv/bin/python bench/training_study.py [--quick] [--parts 1,2,3,4] [--premetric]  (prints
tables, writes bench/results/training_study.json after each part; ``--quick``: a few
steps, written to the temporary directory; ``--parts``: rerun some parts and keep the
others' results; part 3 reruns part 1, whose uniform run it compares against). The demo's
classifier and its two cached models (the v-prediction denoiser and the rectified flow of
``prepare_flow_model``) are restored from the demo cache (trained first if absent).
Quality is the demo's own evaluation: Frechet distance of the classifier's features to the
held-out digits and class accuracy (``Evaluator``), 20 samples per class, Euler on a
uniform ``schedules.flow()`` grid.

1. Samplers (rectified flow, velocity prediction, squared error): uniform vs U-shaped
   (Lee et al., a = 4) vs the difficulty curriculum (Kim et al.: 5 log-SNR groups, easiest
   = noisiest first, ``STAGE`` steps per stage), FD/accuracy every ``EVAL_EVERY`` steps
   (training resumes from its orbax checkpoint between evaluations). The observational
   part: the uniform run's loss per log-SNR group on a fixed held-out batch, relative to
   its final value.
2. Reflow: pairs (sample, noise) of the 1-rectified flow (the demo's, Heun 16 steps), a
   2-rectified flow initialised from it, trained with uniform t + squared error (Liu et
   al.) and with U-shaped t + pseudo-Huber (Lee et al.'s 2-RF++ without LPIPS); FD at 1, 2
   and 20 Euler steps.
3. Smooth Diffusion: the flow trained with and without the step-wise variation term; ISTD
   of 11-frame slerp interpolations between noises (20 Euler steps), and FD.
5. (``--parts 5``, not in the default) The U-shaped density alone in Lee et al.'s setting:
   part 2's reflow with uniform vs U-shaped t and the same premetric (``--premetric``,
   default l2), 3 training seeds, FD on 500 samples (50 per class); mean and spread.
6. (``--parts 6``, not in the default) Part 1's uniform and curriculum runs at 2000 steps
   with 20 steps per stage (the curriculum's partial coverage 80 steps, 4% of the run,
   inside the 100-step learning-rate warm-up), FD on 500 samples every 500 steps, and the
   uniform run's per-group held-out loss; training seeds ``--seeds-6`` (default 3, 4, 5;
   part 1's seed is 3), each merged into the JSON beside the seeds already there.
4. Memorisation: the demo's denoiser vs the empirical (memorising) and the Wiener
   denoiser of the training set at several t, on noised held-out digits; nearest-training-
   image distance of samples vs held-out digits. Locality: the 90%-mass receptive-field
   radius of the Wiener filter and of the trained denoiser's Jacobian.
"""

import argparse
import dataclasses
import json
import math
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _timing import output_path
from flax import nnx

import jaxdiff
import optim
from jaxdiff import from_flow, from_v, metrics, schedules, solvers, training
from jaxdiff.demo import DemoConfig, default_cache_dir, prepare_models
from jaxdiff.demo._evaluation import Evaluator
from jaxdiff.demo._training import _lr, prepare_flow_model
from jaxdiff.models import DigitDenoiser, load_digits, train
from jaxdiff.testing import empirical_denoiser, locality, wiener_denoiser

FLOW = schedules.flow()
PER_CLASS = 30
GROUPS = 5


def _settings(quick):
  if quick:
    return dict(
      steps=40,
      eval_every=20,
      stage=4,
      reflow_steps=20,
      pairs=256,
      chunk=10,
      per_class=3,
      seeds=(5, 6),
      per_class_5=3,
      steps_6=80,
      stage_6=2,
    )
  # Sized for 15 minutes on 2 cores shared with other work: 600 steps per run (the demo's
  # flow model has 1500), 200 samples per evaluation.
  return dict(
    steps=600,
    eval_every=200,
    stage=40,
    reflow_steps=400,
    pairs=2048,
    chunk=50,
    per_class=20,
    seeds=(5, 6, 7),
    per_class_5=50,
    steps_6=2000,
    stage_6=20,
  )


class FlowSampler:
  """Euler on a uniform flow grid, one compile per number of steps (noise and labels fixed)."""

  def __init__(self, graphdef, labels, key):
    self.graphdef = graphdef
    self.labels = jnp.asarray(labels, jnp.int32)
    self.key = key
    self._fns = {}

  def frames(self, params, x_T, labels, steps):
    k = ("x", steps, x_T.shape)
    if k not in self._fns:
      ts = jaxdiff.timesteps(FLOW, steps)  # built with NumPy: outside the trace

      @jax.jit
      def run(params, x_T, labels):
        den = from_flow(nnx.merge(self.graphdef, params), FLOW)
        return jaxdiff.sample(den, solvers.euler(), x_T, ts, key=0, cond=labels).x

      self._fns[k] = run
    return np.asarray(self._fns[k](params, x_T, labels))

  def __call__(self, params, steps):
    x_T = jax.random.normal(self.key, (self.labels.shape[0], 8, 8))
    return self.frames(params, x_T, self.labels, steps)


def _params(model):
  return nnx.split(model)[1]


def _fit(name, loss, c, data, steps, workdir, *, init=None, stop_points=(), ema=False, key=3):
  """Trains a flow-sized DigitDenoiser; yields (step, model) at each stop point (resuming
  from the orbax checkpoint in between: the bit-for-bit restart path)."""
  net = (
    init
    if init is not None
    else DigitDenoiser(dim=c.dim, depth=c.depth, num_heads=c.num_heads, rngs=nnx.Rngs(key))
  )
  tx = optim.adamp(_lr(c.learning_rate, steps))
  if ema:
    tx = optax.chain(tx, optim.weight_ema(c.ema_decay))
  out = []
  for stop in (*stop_points, steps):
    r = train(
      net,
      loss,
      tx,
      data,
      steps=steps,
      batch_size=c.batch_size,
      key=key,
      chunk=c.chunk,
      checkpoint_dir=f"{workdir}/{name}",
      checkpoint_every=max(stop_points[:1] or (steps,)),
      stop_after=stop,
      progress=False,
      compiler_options=c.compiler_options,
    )
    out.append((r.steps_done, r.model, r.losses))
  return out


def _slerp(z0, z1, w):
  n0 = z0 / jnp.linalg.norm(z0.reshape(z0.shape[0], -1), axis=1)[:, None, None]
  n1 = z1 / jnp.linalg.norm(z1.reshape(z1.shape[0], -1), axis=1)[:, None, None]
  om = jnp.arccos(jnp.clip(jnp.sum(n0 * n1, axis=(1, 2)), -1, 1))[:, None, None]
  return (jnp.sin((1 - w) * om) * z0 + jnp.sin(w * om) * z1) / jnp.sin(om)


def study_samplers(c, s, data, ev, labels, workdir, fs, log, keep=None, key=3):
  xy = (data.train_x, data.train_y)
  stops = tuple(range(s["eval_every"], s["steps"], s["eval_every"]))
  groups = training.curriculum_groups(FLOW, GROUPS)
  samplers = {
    "uniform": training.uniform(),
    "u_shaped(a=4)": training.u_shaped(4.0),
    f"curriculum({GROUPS} groups, {s['stage']} steps/stage)": training.curriculum(
      groups, stage_steps=s["stage"]
    ),
  }
  if keep is not None:  # part 6: a subset of the samplers
    samplers = {k: v for k, v in samplers.items() if k.split("(")[0] in keep}
  # the observational part: per-group loss on a fixed held-out batch (fixed noise and t)
  k_e, k_t = jax.random.split(jax.random.key(11))
  x_ho = jnp.asarray(data.test_x[:256])
  y_ho = jnp.asarray(data.test_y[:256])
  eps = jax.random.normal(k_e, x_ho.shape)
  base = training.denoising_loss(FLOW, prediction="velocity")
  u = jax.random.uniform(k_t, (256,))
  rows, per_group = [], []
  for name, sampler in samplers.items():
    loss = training.denoising_loss(
      FLOW, prediction="velocity", timesteps=sampler, label_dropout=0.1
    )
    t0 = time.perf_counter()
    for step, model, _ in _fit(
      name.split("(")[0], loss, c, xy, s["steps"], workdir, stop_points=stops, key=key
    ):
      x = fs(_params(model), 20)
      row = {"sampler": name, "step": step, **ev(x, labels)}
      rows.append(row)
      log(f"  {name:<34} step {step:>5}: fd {row['fd']:.3f}  acc {row['accuracy']:.3f}")
      if name == "uniform":
        g = {"step": step}
        for k in range(GROUPS):
          t = groups[k] + u * (groups[k + 1] - groups[k])
          g[f"group{k}"] = float(jnp.mean(base.per_example(model, x_ho, eps, t, y_ho)))
        per_group.append(g)
    rows[-1]["train_s"] = time.perf_counter() - t0
  final = per_group[-1]
  for g in per_group:
    g.update({f"rel{k}": g[f"group{k}"] / final[f"group{k}"] for k in range(GROUPS)})
  return rows, per_group, [float(b) for b in groups]


def study_reflow(c, s, data, ev, labels, flow, workdir, fs, log):
  gd, p1 = nnx.split(flow.net)
  n = s["pairs"]
  kz, ky = jax.random.split(jax.random.key(21))
  z = jax.random.normal(kz, (n, 8, 8))
  y = jax.random.randint(ky, (n,), 0, 10)
  t0 = time.perf_counter()
  pairs = np.asarray(
    training.reflow_pairs(flow.denoise, z, cond=y, steps=16, solver=solvers.heun())
  )
  pair_s = time.perf_counter() - t0
  rows = []

  def evaluate(name, params, extra):
    for k in (1, 2, 20):
      row = {"model": name, "euler_steps": k, **extra, **ev(fs(params, k), labels)}
      rows.append(row)
      log(f"  {name:<36} {k:>2} steps: fd {row['fd']:.3f}  acc {row['accuracy']:.3f}")

  evaluate("1-rectified (demo flow, EMA)", p1, {})
  recipes = {
    "2-rectified (uniform, L2)": dict(),
    "2-rectified++ (U-shaped, pseudo-Huber)": dict(
      timesteps=training.u_shaped(4.0), premetric="pseudo_huber"
    ),
  }
  for name, kw in recipes.items():
    loss = training.denoising_loss(
      FLOW, prediction="velocity", label_dropout=0.1, coupled=True, **kw
    )
    init = nnx.merge(gd, jax.tree.map(jnp.copy, p1))  # Lee et al.: start from the 1-RF
    t0 = time.perf_counter()
    ((_, model, _),) = _fit(
      name.split(" ")[0] + str(len(kw)),
      loss,
      c,
      (pairs, np.asarray(y)),
      s["reflow_steps"],
      workdir,
      init=init,
      ema=False,
      key=5,
    )
    evaluate(name, _params(model), {"train_s": time.perf_counter() - t0})
  return rows, {"pairs": n, "pair_solver": "heun, 16 steps", "pair_s": pair_s}


def study_reflow_seeds(c, s, data, ev, flow, workdir, log, premetric="l2"):
  """Part 5: the U-shaped density alone in Lee et al.'s setting (reflow): uniform vs
  U-shaped t with the same premetric, ``s["seeds"]`` training seeds (batch order, t and
  label dropout), FD on ``s["per_class_5"]`` samples per class; pairs and initialisation
  as in part 2."""
  gd, p1 = nnx.split(flow.net)
  n = s["pairs"]
  kz, ky = jax.random.split(jax.random.key(21))
  z = jax.random.normal(kz, (n, 8, 8))
  y = jax.random.randint(ky, (n,), 0, 10)
  pairs = np.asarray(
    training.reflow_pairs(flow.denoise, z, cond=y, steps=16, solver=solvers.heun())
  )
  labels = np.repeat(np.arange(10), s["per_class_5"]).astype(np.int32)
  fs = FlowSampler(gd, labels, jax.random.key(c.seed + 200))
  rows = []
  densities = (
    ("uniform", "uni", training.uniform()),
    ("u_shaped(a=4)", "ush", training.u_shaped(4.0)),
  )
  for name, tag, ts in densities:
    loss = training.denoising_loss(
      FLOW,
      prediction="velocity",
      label_dropout=0.1,
      coupled=True,
      timesteps=ts,
      premetric=premetric,
    )
    for seed in s["seeds"]:
      init = nnx.merge(gd, jax.tree.map(jnp.copy, p1))
      t0 = time.perf_counter()
      ((_, model, _),) = _fit(
        f"seeds_{tag}_{premetric}_{seed}",  # one checkpoint folder per run
        loss,
        c,
        (pairs, np.asarray(y)),
        s["reflow_steps"],
        workdir,
        init=init,
        key=seed,
      )
      train_s = time.perf_counter() - t0
      for k in (1, 2, 20):
        row = {
          "timesteps": name,
          "premetric": premetric,
          "seed": seed,
          "euler_steps": k,
          "train_s": train_s,
          **ev(fs(_params(model), k), labels),
        }
        rows.append(row)
        log(
          f"  {name:<14} {premetric} seed {seed} {k:>2} steps: fd {row['fd']:.3f}"
          f"  acc {row['accuracy']:.3f}"
        )
  summary = {}
  for name in ("uniform", "u_shaped(a=4)"):
    for k in (1, 2, 20):
      fd = np.array([r["fd"] for r in rows if r["timesteps"] == name and r["euler_steps"] == k])
      summary[f"{name}_{k}"] = {
        "fd_mean": float(fd.mean()),
        "fd_std": float(fd.std(ddof=1)),
        "fd": fd.tolist(),
      }
      log(f"  {name:<14} {k:>2} steps: FD {fd.mean():.2f} +- {fd.std(ddof=1):.2f} (n={len(fd)})")
  return rows, summary


def study_smooth(c, s, data, ev, labels, workdir, fs, uniform_model, log):
  xy = (data.train_x, data.train_y)
  loss = training.denoising_loss(FLOW, prediction="velocity", label_dropout=0.1, smoothness=1.0)
  t0 = time.perf_counter()
  ((_, smooth_model, _),) = _fit("smooth", loss, c, xy, s["steps"], workdir)
  train_s = time.perf_counter() - t0
  nseq, frames = 30 if s["per_class"] == PER_CLASS else 4, 11
  k0, k1 = jax.random.split(jax.random.key(31))
  z0 = jax.random.normal(k0, (nseq, 8, 8))
  z1 = jax.random.normal(k1, (nseq, 8, 8))
  w = jnp.linspace(0.0, 1.0, frames)
  zs = jax.vmap(lambda wi: _slerp(z0, z1, wi))(w)  # (K, B, 8, 8)
  lab = jnp.repeat(jnp.arange(10), math.ceil(nseq / 10))[:nseq]
  rows = []
  for name, model in (
    ("without (lambda = 0)", uniform_model),
    ("Smooth Diffusion (lambda = 1)", smooth_model),
  ):
    params = _params(model)
    seq = np.stack([fs.frames(params, zs[k], lab, 20) for k in range(frames)], axis=1)
    row = {
      "model": name,
      "istd_mse": float(metrics.istd(seq)),
      "istd_l2": float(metrics.istd(seq, variant="l2")),
      **ev(fs(params, 20), labels),
    }
    rows.append(row)
    log(
      f"  {name:<30}: ISTD {row['istd_mse']:.5f} (l2 {row['istd_l2']:.4f})  "
      f"fd {row['fd']:.3f}  acc {row['accuracy']:.3f}"
    )
  rows[-1]["train_s"] = train_s
  return rows


def study_memorisation(c, data, models, flow, fs, labels, log):
  sched = models.schedule
  den = from_v(models.denoiser, sched)
  emp = empirical_denoiser(data.train_x, sched)
  wien = wiener_denoiser(data.train_x, sched)
  x0 = jnp.asarray(data.test_x[:256])
  y0 = jnp.asarray(data.test_y[:256])
  eps = jax.random.normal(jax.random.key(41), x0.shape)
  rows = []
  for t in (0.1, 0.3, 0.5, 0.7, 0.9):
    tt = jnp.full((x0.shape[0],), t)
    xt = sched.alpha(tt)[:, None, None] * x0 + sched.sigma(tt)[:, None, None] * eps
    d_net, d_emp, d_w = den(xt, tt, y0), emp(xt, tt), wien(xt, tt)
    msd = lambda a, b: float(jnp.mean((a - b) ** 2))  # noqa: E731
    row = {
      "t": t,
      "logsnr": float(sched.logsnr(jnp.float32(t))),
      "net_vs_empirical": msd(d_net, d_emp),
      "net_vs_wiener": msd(d_net, d_w),
      "net_vs_clean": msd(d_net, x0),
      "empirical_vs_clean": msd(d_emp, x0),
      "wiener_vs_clean": msd(d_w, x0),
    }
    rows.append(row)
    log(
      f"  t={t:.1f}: |net-emp|^2 {row['net_vs_empirical']:.4f}  "
      f"|net-wiener|^2 {row['net_vs_wiener']:.4f}"
      f"  |net-x0|^2 {row['net_vs_clean']:.4f}  |emp-x0|^2 {row['empirical_vs_clean']:.4f}"
    )
  # copying: nearest training image of samples (the demo flow, 20 Euler steps) vs of held-out digits
  train_flat = data.train_x.reshape(len(data.train_x), -1)

  def nn_dist(x):
    x = np.asarray(x).reshape(len(x), -1)
    d2 = (x**2).sum(1)[:, None] - 2 * x @ train_flat.T + (train_flat**2).sum(1)[None]
    return np.sqrt(np.maximum(d2.min(1), 0.0))

  samples = np.clip(fs(_params(flow.net), 20), -1, 1)
  copy = {
    "samples_nn_train_mean": float(nn_dist(samples).mean()),
    "heldout_nn_train_mean": float(nn_dist(data.test_x).mean()),
    "samples_exact_copies(<0.5)": int((nn_dist(samples) < 0.5).sum()),
    "num_samples": int(len(samples)),
  }
  log(
    f"  nearest training image: samples {copy['samples_nn_train_mean']:.3f}, "
    f"held-out {copy['heldout_nn_train_mean']:.3f}"
  )
  # locality: Wiener filter vs the trained denoiser's Jacobian at one held-out digit
  loc = []
  for t in (0.3, 0.5, 0.7):
    jw = np.asarray(wien.jacobian(t))
    tt = jnp.full((1,), t)
    xt = sched.alpha(tt)[0] * x0[:1] + sched.sigma(tt)[0] * eps[:1]
    jn = jax.jacfwd(lambda v: den(v.reshape(1, 8, 8), tt, y0[:1]).reshape(-1))(xt.reshape(-1))
    active = np.asarray(jnp.sum(jn**2, 1) > 1e-8 * float(jnp.sum(jn**2)))
    rw = locality(jw, (8, 8))
    rn = locality(np.asarray(jn), (8, 8))
    loc.append(
      {"t": t, "wiener_radius": float(rw[active].mean()), "net_radius": float(rn[active].mean())}
    )
    log(
      f"  locality t={t}: 90%-mass radius  Wiener {loc[-1]['wiener_radius']:.2f}  "
      f"network {loc[-1]['net_radius']:.2f}"
    )
  return rows, copy, loc


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="a few steps: proves the script runs")
  ap.add_argument(
    "--parts",
    default="1,2,3,4",
    help="comma-separated parts to run; the others' results are kept from the JSON",
  )
  ap.add_argument(
    "--premetric", default="l2", help="part 5's premetric for both densities (l2, pseudo_huber)"
  )
  ap.add_argument("--seeds-6", default="3,4,5", help="part 6's training seeds")
  args = ap.parse_args()
  quick, parts = args.quick, {int(v) for v in args.parts.split(",")}
  s = _settings(quick)
  c = DemoConfig.small() if quick else DemoConfig.full()
  c = dataclasses.replace(c, chunk=s["chunk"])
  log = lambda m: print(m, flush=True)  # noqa: E731
  t_start = time.perf_counter()
  data = load_digits(key=c.seed)
  cache = default_cache_dir()
  base = DemoConfig.small() if quick else DemoConfig.full()
  models = prepare_models(base, data, cache, progress=False)
  flow = prepare_flow_model(base, data, cache, progress=False)
  ev = Evaluator(models.classifier, data.test_x, c.seed)
  labels = np.repeat(np.arange(10), s["per_class"]).astype(np.int32)
  fs = FlowSampler(nnx.split(flow.net)[0], labels, jax.random.key(c.seed + 100))
  path = output_path("training_study.json", quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  results = json.loads(path.read_text()) if parts != {1, 2, 3, 4} and path.exists() else {}
  results["settings"] = {**results.get("settings", {}), **s}
  ref_idx = np.random.default_rng(c.seed).permutation(len(data.train_x))[: len(labels)]
  results["reference (real training digits)"] = ev(data.train_x[ref_idx], data.train_y[ref_idx])

  # a rerun of some parts keeps the full run's wall time and records its own beside it
  wall_key = (
    "wall_s" if parts == {1, 2, 3, 4} else "wall_s_parts_" + "_".join(map(str, sorted(parts)))
  )

  def save():
    results[wall_key] = time.perf_counter() - t_start
    path.write_text(json.dumps(results, indent=2))

  with tempfile.TemporaryDirectory() as workdir:
    if 1 in parts or 3 in parts:
      log("[1] timestep samplers / curriculum (rectified flow)")
      rows, per_group, groups = study_samplers(c, s, data, ev, labels, workdir, fs, log)
      results.update(samplers=rows, per_group_loss=per_group, curriculum_groups=groups)
      save()
    if 2 in parts:
      log("[2] reflow")
      rf_rows, rf_info = study_reflow(c, s, data, ev, labels, flow, workdir, fs, log)
      results.update(reflow=rf_rows, reflow_info=rf_info)
      save()
    if 3 in parts:
      log("[3] Smooth Diffusion")
      # the uniform run of [1] is restored complete from its checkpoint (no training)
      loss_u = training.denoising_loss(
        FLOW, prediction="velocity", timesteps=training.uniform(), label_dropout=0.1
      )
      ((_, uniform_final, _),) = _fit(
        "uniform", loss_u, c, (data.train_x, data.train_y), s["steps"], workdir
      )
      results["smooth"] = study_smooth(c, s, data, ev, labels, workdir, fs, uniform_final, log)
      save()
    if 6 in parts:
      s6 = {**s, "steps": s["steps_6"], "eval_every": s["steps_6"] // 4, "stage": s["stage_6"]}
      log(f"[6] curriculum vs uniform, {s6['steps']} steps, {s6['stage']} steps/stage")
      labels6 = np.repeat(np.arange(10), s["per_class_5"]).astype(np.int32)
      fs6 = FlowSampler(nnx.split(flow.net)[0], labels6, jax.random.key(c.seed + 100))
      old = results.get("curriculum_long", {}).get("seeds", {})
      results["curriculum_long"] = {
        "steps": s6["steps"],
        "stage": s6["stage"],
        "samples": len(labels6),
        "seeds": old,  # training seed -> rows, per-group loss; other seeds' runs are kept
      }
      for seed in map(int, args.seeds_6.split(",")):
        long_dir = f"{workdir}/long{seed}"  # apart from part 1's checkpoints of the same names
        os.makedirs(long_dir, exist_ok=True)
        rows6, per_group6, _ = study_samplers(
          c, s6, data, ev, labels6, long_dir, fs6, log, keep=("uniform", "curriculum"), key=seed
        )
        old[str(seed)] = {"rows": rows6, "per_group_loss": per_group6}
        save()
    if 5 in parts:
      log(f"[5] reflow: uniform vs U-shaped t, {args.premetric}, seeds {s['seeds']}")
      rows5, summary5 = study_reflow_seeds(
        c, s, data, ev, flow, workdir, log, premetric=args.premetric
      )
      results[f"reflow_seeds_{args.premetric}"] = {"rows": rows5, "summary": summary5}
      save()
  if 4 in parts:
    log("[4] memorisation and locality")
    mem, copy, loc = study_memorisation(c, data, models, flow, fs, labels, log)
    results.update(memorisation=mem, copying=copy, locality=loc)
    save()
  log(f"wrote {path} ({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
  main()
