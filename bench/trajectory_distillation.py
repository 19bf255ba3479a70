"""Data-free consistency distillation (TBCM) on an exact 2-D mixture: one/two-step students.

TBCM (Tang et al. 2025, arXiv:2511.20410) distils a teacher into a one/few-step consistency
model without training images: the training states are taken from the teacher's own
sampling trajectories (:func:`jaxdiff.distill.trajectory_pairs`) and the student learns
sCM's continuous-time consistency objective on them
(:func:`jaxdiff.distill.trajectory_consistency_loss`). The paper's claims (MJHQ-30k, Sana
1.6B teacher): one-step FID 6.52 without data, ~40% less training time than Sana-Sprint
(which needs data), and trajectory-sampled states ("generation space") distil better than
re-noised ones ("diffusion space"). Only the last is testable on 2 CPU cores; the setting
here is a toy, not the paper's.

Setting: the exact denoiser of an 8-mode ring mixture (radius 2, variance 0.02) under the
flow schedule is the teacher; its reference sampler is deterministic DDIM with 20
evaluations. Students: a 3 x 128 SiLU MLP F, consistency function f(x, t) = x - t F(x, t)
(so f(x, 0) = x), first initialised as a copy of the teacher (200 steps regressing f onto
the teacher's denoiser on its trajectory states, data-free; sCM and TBCM start from the
teacher's weights), then 1000 Adam steps (lr 1e-3, cosine decay), batch 128, for these
training-state sources and loss forms:

* ``trajectory``: TBCM, the teacher's 20-step DDIM trajectory states, sCM's continuous
  objective with tangent normalisation c = 0.1 (data-free);
* ``renoise``: the teacher's final samples re-noised by the forward process, the same
  objective (data-free, the "diffusion space" the paper compares against);
* ``trajectory_discrete``, ``renoise_discrete``: the same states with the discrete loss
  between neighbouring grid states (the teacher's own DDIM step for ``trajectory``);
* ``data_discrete``: true mixture samples re-noised (ordinary consistency distillation,
  needs data).

Metrics against 8192 exact mixture samples: sliced W2 (256 fixed directions) and the
Frechet distance of the raw 2-D coordinates, on 4096 samples each, for the one-step
(t = 1) and two-step (t = 1, then re-noised to t = 0.5) students and for the teacher at 20
DDIM evaluations; the floor is a second exact sample set. Three seeds.

    nice -n 10 python bench/trajectory_distillation.py          # about 8 minutes, 2 busy cores
    python bench/trajectory_distillation.py --quick              # smoke run (writes to /tmp)

Writes bench/results/trajectory_distillation.json.
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

import jaxdiff
from jaxdiff import distill, metrics, schedules, solvers
from jaxdiff.testing import GaussianMixture

jax.config.update("jax_enable_x64", True)

SCHED = schedules.flow()
ANGLES = np.arange(8) * 2 * np.pi / 8
GMM = GaussianMixture(2.0 * np.stack([np.cos(ANGLES), np.sin(ANGLES)], 1), 0.02)
TEACHER = GMM.denoiser(SCHED)
TS = jaxdiff.timesteps(SCHED, 20)
SOURCES = ("trajectory", "renoise", "trajectory_discrete", "renoise_discrete", "data_discrete")
BATCH = 128


def mlp_init(key, width=128, dim=2, temb=8):
  ks = jax.random.split(key, 4)
  he = lambda k, i, o: jax.random.normal(k, (i, o)) * np.sqrt(2.0 / i)  # noqa: E731
  return {
    "w1": he(ks[0], dim + temb, width),
    "b1": jnp.zeros(width),
    "w2": he(ks[1], width, width),
    "b2": jnp.zeros(width),
    "w3": he(ks[2], width, width),
    "b3": jnp.zeros(width),
    "w4": jnp.zeros((width, dim)),
    "b4": jnp.zeros(dim),
  }


def student(p, x, t, cond=None):
  """f(x, t) = x - t F(x, t): the flow schedule's data prediction, f(x, 0) = x."""
  freqs = jnp.arange(1, 5, dtype=x.dtype) * np.pi
  emb = jnp.concatenate([jnp.sin(t[:, None] * freqs), jnp.cos(t[:, None] * freqs)], 1)
  h = jnp.concatenate([x, emb], 1)
  h = jax.nn.silu(h @ p["w1"] + p["b1"])
  h = jax.nn.silu(h @ p["w2"] + p["b2"])
  h = jax.nn.silu(h @ p["w3"] + p["b3"])
  return x - t[:, None] * (h @ p["w4"] + p["b4"])


def few_step(p, x_T, key, num_steps):
  """One step at t = 1; two steps: re-noise the estimate to t = 0.5 and apply f again."""
  x0 = student(p, x_T, jnp.ones(x_T.shape[0]))
  if num_steps == 2:
    eps = jax.random.normal(key, x0.shape)
    x0 = student(p, 0.5 * x0 + 0.5 * eps, jnp.full(x0.shape[0], 0.5))
  return x0


def teacher_init(key, num_steps, batch=BATCH):
  """The student starts as a copy of the teacher (sCM, TBCM): f regressed onto the teacher's
  denoiser on its own trajectory states (data-free)."""
  p = mlp_init(jax.random.fold_in(key, 0))
  opt = optax.adam(1e-3)
  state = opt.init(p)

  @jax.jit
  def step(p, state, k):
    pairs = distill.trajectory_pairs(TEACHER, jax.random.normal(k, (batch, 2)), TS, key=k)
    d = TEACHER(pairs.x_t, pairs.t)
    g = jax.grad(lambda q: jnp.mean((student(q, pairs.x_t, pairs.t) - d) ** 2))(p)
    upd, state = opt.update(g, state, p)
    return optax.apply_updates(p, upd), state

  for i in range(num_steps):
    p, state = step(p, state, jax.random.fold_in(key, i + 1))
  return p


def make_step(source, opt, batch):
  def states(key):
    k_T, k_p, k_d, k_e, k_i = jax.random.split(key, 5)
    x_T = jax.random.normal(k_T, (batch, 2))
    if source.startswith("data"):  # sCM with data: true samples re-noised on the same grid times
      x0 = GMM.sample(k_d, batch)
      i = jax.random.randint(k_i, (batch,), 0, TS.t.shape[0] - 1)
      eps = jax.random.normal(k_e, x0.shape)
      a, s = TS.alpha[i][:, None], TS.sigma[i][:, None]
      a2, s2 = TS.alpha[i + 1][:, None], TS.sigma[i + 1][:, None]
      return distill.TrajectoryPairs(a * x0 + s * eps, TS.t[i], a2 * x0 + s2 * eps, TS.t[i + 1], x0)
    variant = "renoise" if source.startswith("renoise") else "trajectory"
    return distill.trajectory_pairs(TEACHER, x_T, TS, key=k_p, variant=variant)

  loss_variant = "discrete" if source.endswith("_discrete") else "continuous"
  norm = None if loss_variant == "discrete" else 0.1

  @jax.jit
  def step(p, state, key):
    pairs = states(key)
    loss, g = jax.value_and_grad(
      lambda q: distill.trajectory_consistency_loss(
        student, q, pairs, teacher=TEACHER, schedule=SCHED, variant=loss_variant,
        tangent_normalization=norm,
      )
    )(p)  # fmt: skip
    upd, state = opt.update(g, state, p)
    return optax.apply_updates(p, upd), state, loss

  return step


def evaluate(samples, ref, key):
  sw = float(metrics.sliced_wasserstein(samples, ref, key=key, num_projections=256))
  fd = float(metrics.frechet_distance(samples, ref))
  return sw, fd


def run(seed, num_steps, init_steps, batch, n_eval):
  key = jax.random.key(seed)
  k_ref, k_floor, k_T, k_two, k_sw, k_train = jax.random.split(key, 6)
  p_init = teacher_init(jax.random.fold_in(k_train, 10**6), init_steps, batch)
  ref = GMM.sample(k_ref, 8192)
  x_T = jax.random.normal(k_T, (n_eval, 2))
  out = {}
  out["floor"] = evaluate(GMM.sample(k_floor, n_eval), ref, k_sw)
  teacher = jaxdiff.sample(TEACHER, solvers.make("ddim"), x_T, TS, key=0).x
  out["teacher_20"] = evaluate(teacher, ref, k_sw)
  for source in SOURCES:
    sched = optax.cosine_decay_schedule(1e-3, num_steps)
    opt = optax.adam(sched)
    p = p_init  # the same teacher-initialised student for every source
    state = opt.init(p)
    step = make_step(source, opt, batch)
    t0 = time.perf_counter()
    for i in range(num_steps):
      p, state, loss = step(p, state, jax.random.fold_in(k_train, i + 1))
    jax.block_until_ready(p)
    secs = time.perf_counter() - t0
    for n in (1, 2):
      out[f"{source}_{n}step"] = evaluate(few_step(p, x_T, k_two, n), ref, k_sw)
    out[f"{source}_train_s"] = (secs, float(loss))
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--steps", type=int, default=None, help="training steps (default 1000)")
  args = ap.parse_args()
  num_steps, init_steps, seeds, n_eval = (
    (40, 20, (0,), 512) if args.quick else (1000, 200, (0, 1, 2), 4096)
  )
  num_steps = args.steps or num_steps
  t_start = time.perf_counter()
  per_seed = [run(s, num_steps, init_steps, BATCH, n_eval) for s in seeds]
  keys = [k for k in per_seed[0] if not k.endswith("_train_s")]
  table = {}
  for k in keys:
    table[k] = summary(
      {"sliced_w2": [r[k][0] for r in per_seed], "fd": [r[k][1] for r in per_seed]}
    )
  train = {
    s: summary({"seconds": [r[f"{s}_train_s"][0] for r in per_seed],
                "final_loss": [r[f"{s}_train_s"][1] for r in per_seed]})
    for s in SOURCES
  }  # fmt: skip
  comparisons = {}
  pairs_ = [("trajectory", "renoise"), ("trajectory_discrete", "renoise_discrete"),
            ("trajectory_discrete", "data_discrete"), ("trajectory_discrete", "trajectory"),
            ("trajectory_discrete", "teacher")]  # fmt: skip
  for n in (1, 2):
    for a, b in pairs_:
      other = "teacher_20" if b == "teacher" else f"{b}_{n}step"
      comparisons[f"sliced_w2 {n}step: {a} - {b}"] = paired(
        [r[other][0] for r in per_seed], [r[f"{a}_{n}step"][0] for r in per_seed]
      )
  print(f"{'model':28s} {'sliced W2':>22s} {'FD':>22s}")
  for k, v in table.items():
    sw, fd = v["sliced_w2"], v["fd"]
    print(f"{k:28s} {sw['mean']:10.4f} +- {sw['std']:8.4f} {fd['mean']:10.4f} +- {fd['std']:8.4f}")
  for k, v in comparisons.items():
    print(f"{k:45s} {v['mean']:+.4f} (se {v['se']:.4f}, n={v['n']})")
  result = {
    "setting": {
      "mixture": "8-mode ring, radius 2, variance 0.02 (2-D)",
      "teacher": "exact denoiser, flow schedule, DDIM 20 evaluations",
      "student": "3x128 SiLU MLP, f = x - t F, initialised by regression on the teacher",
      "train_steps": num_steps, "teacher_init_steps": init_steps, "batch": BATCH,
      "lr": "adam 1e-3 cosine",
      "tangent_normalization": 0.1, "seeds": list(seeds), "n_eval": n_eval,
    },
    "metrics": table,
    "train": train,
    "paired_differences": comparisons,
    "wall_s": time.perf_counter() - t_start,
  }  # fmt: skip
  path = output_path("trajectory_distillation.json", args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=2))
  print("wrote", path)


if __name__ == "__main__":
  main()
