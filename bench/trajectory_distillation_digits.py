"""Data-free consistency distillation (TBCM) of the demo's digits denoiser: 1/2-step students.

The digits half of the TBCM study (the mixture half, with an exact teacher, is
``bench/trajectory_distillation.py``). TBCM (Tang et al. 2025, arXiv:2511.20410) claims that
a consistency student distilled on states taken from the teacher's own sampling
trajectories ("generation space", no training images) does at least as well as one
distilled on re-noised samples ("diffusion space") or on re-noised training images. Here
the teacher is the demo's class-conditional DiT on sklearn's 8x8 digits (v prediction,
VP cosine schedule, conditional, no guidance), its sampler deterministic DDIM with 20
evaluations on the demo's logSNR grid. A pool of the teacher's trajectories (1024 per
seed, labels cycling over the digits) is drawn once. Every student starts from the
teacher's weights (as sCM and TBCM do) and trains ``--steps`` steps of ``optim.adamp``
(warmup + cosine, peak ``--lr``, batch 64) with one of:

* ``continuous/trajectory``: TBCM, sCM's continuous-time objective with tangent
  normalisation c = 0.1 on the pool's states (data-free);
* ``continuous/renoise``: the same objective on the pool's final samples re-noised by the
  forward process to the same grid times (data-free, "diffusion space");
* ``continuous/data``: the same objective on re-noised *training digits* (ordinary
  consistency distillation: needs data);
* ``discrete/trajectory``: the discrete loss between neighbouring states of a trajectory;
* ``endpoint/trajectory``: regression of every state onto its trajectory's end (the
  ``make demo`` student's recipe).

Every student is ``f(x, t) = (1 - c_t) x + c_t D_theta(x, t)``, ``c_t`` linear in ``t`` from
0 at the grid's last time to 1 at its first, so ``f(x, t_min) = x`` holds exactly: the
boundary condition of a consistency function, without which the continuous and discrete
objectives are zeroed by a constant ``f`` (the first run of this study, with ``f = D``,
collapsed to one image for every continuous recipe: FD about 500, accuracy 0.10).

Metrics with the demo's classifier on 300 samples (30 per digit, same noise for every
row): FD against the held-out digits, accuracy, precision/recall, and FD to the teacher's
own 20-step samples; the teacher's DDIM at 20, 1 and 2 evaluations are the reference rows.
Wall time per sample: compiled, interleaved rounds (``_timing.compare``), ratios to the
teacher at 20 evaluations.

    nice -n 10 python bench/trajectory_distillation_digits.py [--steps 300] [--seeds 2]
    nice -n 10 python bench/trajectory_distillation_digits.py --lr 5e-5 --seeds 1 \
        --out trajectory_distillation_digits_lr5e-5.json        # the smaller learning rate
    python bench/trajectory_distillation_digits.py --quick        # smoke run (writes to /tmp)

Writes bench/results/trajectory_distillation_digits.json.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _digits import class_labels, demo_models
from _seeds import paired, summary
from _timing import compare, output_path
from flax import nnx

import optim
from jaxdiff import distill, from_v, sample, schedules, solvers
from jaxdiff.demo._evaluation import Evaluator
from jaxdiff.demo._few_step import StudentModel, mid_index, student_sample

RECIPES = (
  ("continuous", "trajectory"),
  ("continuous", "renoise"),
  ("continuous", "data"),
  ("discrete", "trajectory"),
  ("endpoint", "trajectory"),
)
BATCH = 64
MID_T = 0.2
POOL = 1024


def pool(models, grid, n, key):
  teacher = from_v(models.denoiser, models.schedule)
  labels = jnp.asarray(np.arange(n) % 10, jnp.int32)
  x_T = jax.random.normal(key, (n, 8, 8))
  run = jax.jit(
    lambda x: (
      sample(
        teacher, solvers.ddim(), x, grid, key=0, cond=labels, return_trajectory=True
      ).trajectory
    )
  )
  return jnp.asarray(run(x_T)), labels  # (N + 1, n, 8, 8)


def boundary_student(graphdef, sched, grid):
  """``f(x, t) = (1 - c_t) x + c_t D(x, t)`` with ``c_t`` linear in ``t`` from 0 at the grid's
  last time to 1 at its first: ``f(x, t_min) = x`` exactly (a consistency function's
  boundary condition; without it a constant ``f`` zeroes the continuous loss), and at the
  noisiest time ``f`` is the network's x0 prediction ``D`` (v prediction, as the teacher)."""
  t_first, t_last = float(grid.t[0]), float(grid.t[-1])

  def student(params, x, t, cond):
    d = from_v(nnx.merge(graphdef, params), sched)(x, t, cond)
    c = jnp.clip((t - t_last) / (t_first - t_last), 0.0, 1.0).reshape(-1, 1, 1)
    return (1 - c) * x + c * d

  return student


def make_step(models, grid, traj, labels, train_x, train_y, recipe, opt):
  loss_kind, source = recipe
  sched = models.schedule
  teacher = from_v(models.denoiser, sched)
  graphdef, _ = nnx.split(models.denoiser)
  n_steps, n = traj.shape[0] - 1, traj.shape[1]
  tgrid, alpha, sigma = (jnp.asarray(v) for v in (grid.t, grid.alpha, grid.sigma))

  student = boundary_student(graphdef, sched, grid)

  def batch(key):
    k_row, k_i, k_eps = jax.random.split(key, 3)
    i = jax.random.randint(k_i, (BATCH,), 0, n_steps)
    eps = jax.random.normal(k_eps, (BATCH, 8, 8))
    a, s = alpha[i][:, None, None], sigma[i][:, None, None]
    if source == "data":
      row = jax.random.randint(k_row, (BATCH,), 0, train_x.shape[0])
      x0, y = train_x[row], train_y[row]
      x_t = x_s = a * x0 + s * eps
    else:
      row = jax.random.randint(k_row, (BATCH,), 0, n)
      x0, y = traj[-1, row], labels[row]
      if source == "trajectory":
        x_t, x_s = traj[i, row], traj[i + 1, row]
      else:  # renoise: the trajectory's end, forward-noised to the same time
        x_t = x_s = a * x0 + s * eps
    pairs = distill.TrajectoryPairs(x_t, tgrid[i], x_s, tgrid[i + 1], x0)
    return pairs, y

  def loss_fn(params, key):
    pairs, y = batch(key)
    kw = dict(teacher=teacher, schedule=sched, cond=y, variant=loss_kind)
    if loss_kind == "continuous":
      kw["tangent_normalization"] = 0.1
    return distill.trajectory_consistency_loss(student, params, pairs, **kw)

  @jax.jit
  def step(params, opt_state, key):
    loss, grads = jax.value_and_grad(loss_fn)(params, key)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step, graphdef


def run(seed, dm, steps, lr, n_pool, per_class, timing_rounds):
  models, data, evaluator = dm.models, dm.data, dm.evaluator
  sched = models.schedule
  grid = schedules.timesteps(sched, 20, spacing="logsnr")
  key = jax.random.key(1000 + seed)
  k_pool, k_train, k_T, k_two = jax.random.split(key, 4)
  t0 = time.perf_counter()
  traj, labels = pool(models, grid, n_pool, k_pool)
  pool_s = time.perf_counter() - t0
  train_x, train_y = jnp.asarray(data.train_x), jnp.asarray(data.train_y, jnp.int32)
  lab = class_labels(per_class)
  y = jnp.asarray(lab)
  x_T = jax.random.normal(k_T, (len(lab), 8, 8))
  teacher = from_v(models.denoiser, sched)

  def ddim(n):
    ts = schedules.timesteps(sched, n, spacing="logsnr")
    return jax.jit(lambda x: sample(teacher, solvers.ddim(), x, ts, key=0, cond=y).x)

  fns = {f"teacher DDIM {n}": ddim(n) for n in (20, 1, 2)}
  train_info = {}
  warmup = max(1, min(50, steps // 10))
  for recipe in RECIPES:
    name = "/".join(recipe)
    opt = optim.adamp(optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps, lr / 100))
    step, graphdef = make_step(models, grid, traj, labels, train_x, train_y, recipe, opt)
    params = nnx.state(models.denoiser)
    opt_state = opt.init(params)
    t1 = time.perf_counter()
    losses = []
    for k in range(steps):
      params, opt_state, loss = step(params, opt_state, jax.random.fold_in(k_train, k))
      losses.append(loss)
    losses = np.asarray(jax.block_until_ready(jnp.stack(losses)))
    train_info[name] = {
      "seconds": time.perf_counter() - t1,
      "first_loss": float(losses[:10].mean()),
      "final_loss": float(losses[-max(1, steps // 20) :].mean()),
      "finite": bool(np.all(np.isfinite(losses))),
    }
    net = nnx.merge(graphdef, params)
    f = boundary_student(graphdef, sched, grid)
    st = StudentModel(
      net, lambda x, t, c, p=params, f=f: f(p, x, t, c), grid, losses, steps, pool_s
    )
    for n_eval in (1, 2):
      fns[f"{name} {n_eval}-step"] = jax.jit(
        lambda x, st=st, n_eval=n_eval: student_sample(
          st, x, y, num_steps=n_eval, mid_t=MID_T, key=k_two
        )
      )
    print(f"  seed {seed} {name}: {train_info[name]}", flush=True)
  samples = {k: np.asarray(f(x_T)) for k, f in fns.items()}
  to_teacher = Evaluator(models.classifier, np.clip(samples["teacher DDIM 20"], -1, 1), 0)
  rows = {}
  for k, x in samples.items():
    m = evaluator(x, lab)
    rows[k] = {key_: m[key_] for key_ in ("fd", "accuracy", "precision", "recall")}
    rows[k]["fd_to_teacher"] = to_teacher(x, lab)["fd"]
  timing = compare(
    {k: (lambda f=f: f(x_T)) for k, f in fns.items()},
    baseline="teacher DDIM 20",
    rounds=timing_rounds,
  )
  for k in rows:
    rows[k]["ms_per_sample"] = 1e3 * timing[k].seconds / len(lab)
    rows[k]["time_ratio_to_teacher_20"] = timing[k].ratio
  return {"rows": rows, "train": train_info, "pool_s": pool_s,
          "mid_t": float(grid.t[mid_index(grid, MID_T)])}  # fmt: skip


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--steps", type=int, default=300)
  ap.add_argument("--lr", type=float, default=5e-4)
  ap.add_argument("--seeds", type=int, default=2)
  ap.add_argument("--out", default="trajectory_distillation_digits.json", help="file name")
  args = ap.parse_args()
  steps, seeds, n_pool, per_class, rounds = (
    (10, 1, 64, 3, 2) if args.quick else (args.steps, args.seeds, POOL, 30, 5)
  )
  t_start = time.perf_counter()
  dm = demo_models()
  per_seed = [run(s, dm, steps, args.lr, n_pool, per_class, rounds) for s in range(seeds)]
  names = list(per_seed[0]["rows"])
  metrics_ = {
    k: summary({m: [r["rows"][k][m] for r in per_seed] for m in per_seed[0]["rows"][k]})
    for k in names
  }
  train = {
    k: summary({m: [r["train"][k][m] for r in per_seed] for m in ("seconds", "final_loss")})
    for k in per_seed[0]["train"]
  }
  comparisons = {}
  for n in (1, 2):
    for a, b in (("continuous/trajectory", "continuous/renoise"),
                 ("continuous/trajectory", "continuous/data"),
                 ("endpoint/trajectory", "continuous/trajectory")):  # fmt: skip
      comparisons[f"fd {n}-step: {a} - {b}"] = paired(
        [r["rows"][f"{b} {n}-step"]["fd"] for r in per_seed],
        [r["rows"][f"{a} {n}-step"]["fd"] for r in per_seed],
      )
  print(f"{'row':34s} {'FD':>16s} {'acc':>7s} {'FD->teacher':>12s} {'ms/sample':>10s}")
  for k, v in metrics_.items():
    print(
      f"{k:34s} {v['fd']['mean']:8.3f} +- {v['fd']['std']:5.2f} {v['accuracy']['mean']:7.3f} "
      f"{v['fd_to_teacher']['mean']:12.3f} {v['ms_per_sample']['mean']:10.4f}"
    )
  for k, v in comparisons.items():
    print(f"{k:60s} {v['mean']:+.3f} (se {v['se']:.3f}, n={v['n']})")
  result = {
    "setting": {
      "teacher": "demo DiT (DemoConfig.full), v prediction, VP cosine, conditional, DDIM 20",
      "student": "copy of the teacher (initialised from its weights), f = (1 - c_t) x + c_t D",
      "steps": steps, "lr": args.lr, "batch": BATCH, "pool": n_pool, "seeds": seeds,
      "samples": 10 * per_class, "mid_t": per_seed[0]["mid_t"],
      "tangent_normalization": 0.1, "timing": "under load: other jobs shared the 2 cores",
    },
    "metrics": metrics_,
    "train": train,
    "paired_differences": comparisons,
    "wall_s": time.perf_counter() - t_start,
  }  # fmt: skip
  path = output_path(args.out, args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=2))
  print("wrote", path)


if __name__ == "__main__":
  main()
