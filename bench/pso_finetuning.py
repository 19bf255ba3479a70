"""Pairwise sample optimization (PSO) of a two-step distilled student on an exact mixture.

PSO (Miao et al., ICLR 2025, arXiv:2410.03190) tunes a timestep-distilled model towards
target samples with a pairwise likelihood-margin loss against reference samples drawn from
the model itself (:func:`jaxdiff.finetune.pso_loss`). The paper's claims: fine-tuning a
distilled model with the naive diffusion objective gives degraded, blurry outputs, while
PSO adapts the output distribution (style transfer, concepts, preferences) and keeps the
few-step ability. Its images and metrics (SDXL-Turbo/DMD2/SDXL-Lightning, PickScore, CLIP,
style galleries) are out of reach here; this is the same question on an exact toy.

Setting: the 8-mode ring mixture and the two-step TBCM student of
``bench/trajectory_distillation.py`` (distilled here data-free: teacher copy, then 1000
steps of the discrete loss on trajectory pairs; the base model). The "style" is one mode:
1024 target samples of component 0. Tuning runs 300 Adam steps
(lr 1e-4, batch 256) of

* ``pso_online``: :func:`~jaxdiff.finetune.pso_loss` (``"x0"`` errors at the student's two
  sampling times 1 and 0.5, beta = 50), references = fresh two-step samples of the current
  student each step (stop-gradient);
* ``pso_offline``: the same with references drawn once from the base student;
* ``naive``: the naive objective, ``mean |x0 - f(alpha x0 + sigma eps, t)|^2`` on the
  targets at the same times.

Every 50 steps, on 4096 two-step samples (fixed noise): the reward (the exact posterior
probability of mode 0), the sliced W2 to the target component (target fit), the sample
variance over the target's (0.02 per axis: blur = collapse to the mode's mean, < 1), and
the drift from the base student (sliced W2 between tuned and base samples of the same
noise). Three seeds.

    nice -n 10 python bench/pso_finetuning.py          # about 4 minutes on 2 cores
    python bench/pso_finetuning.py --quick              # smoke run (writes to /tmp)

Writes bench/results/pso_finetuning.json.
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
from trajectory_distillation import BATCH, GMM, SCHED, few_step, make_step, student, teacher_init

from jaxdiff import finetune, metrics
from jaxdiff.testing import GaussianMixture

jax.config.update("jax_enable_x64", True)

TARGET = GaussianMixture(GMM.means[:1], 0.02)
TIMES = jnp.array([1.0, 0.5])  # the two-step student's sampling times
METHODS = ("pso_online", "pso_offline", "naive")
BETA = 50.0


def distill_base(key, num_steps, init_steps):
  """The data-free student of bench/trajectory_distillation.py (trajectory_discrete)."""
  opt = optax.adam(optax.cosine_decay_schedule(1e-3, num_steps))
  p = teacher_init(jax.random.fold_in(key, 10**6), init_steps)
  state = opt.init(p)
  step = make_step("trajectory_discrete", opt, BATCH)
  for i in range(num_steps):
    p, state, _ = step(p, state, jax.random.fold_in(key, i + 1))
  return p


def make_tune_step(method, opt, base, targets, batch, beta=BETA):
  def loss_fn(p, key):
    k_b, k_T, k_two, k_loss, k_eps, k_t = jax.random.split(key, 6)
    tgt = targets[jax.random.randint(k_b, (batch,), 0, targets.shape[0])]
    if method == "naive":
      t = TIMES[jax.random.randint(k_t, (batch,), 0, TIMES.shape[0])]
      eps = jax.random.normal(k_eps, tgt.shape)
      x_t = SCHED.alpha(t)[:, None] * tgt + SCHED.sigma(t)[:, None] * eps
      return jnp.mean((tgt - student(p, x_t, t)) ** 2)
    sampler = base if method == "pso_offline" else jax.lax.stop_gradient(p)
    ref = few_step(sampler, jax.random.normal(k_T, tgt.shape), k_two, 2)
    return finetune.pso_loss(
      student, p, base, tgt, ref, schedule=SCHED, timesteps=TIMES, key=k_loss, beta=beta
    )

  @jax.jit
  def step(p, state, key):
    loss, g = jax.value_and_grad(loss_fn)(p, key)
    upd, state = opt.update(g, state, p)
    return optax.apply_updates(p, upd), state, loss

  return step


def measure(p, base_samples, x_T, k_two, target_ref, k_sw):
  x = few_step(p, x_T, k_two, 2)
  reward = float(jnp.mean(GMM.class_posterior(x, jnp.zeros(x.shape[0]), SCHED)[:, 0]))
  fit = float(metrics.sliced_wasserstein(x, target_ref, key=k_sw, num_projections=256))
  in_mode = x[jnp.argmax(GMM.class_posterior(x, jnp.zeros(x.shape[0]), SCHED), 1) == 0]
  var = float(jnp.mean(jnp.var(in_mode, axis=0)) / 0.02) if in_mode.shape[0] > 10 else float("nan")
  drift = float(metrics.sliced_wasserstein(x, base_samples, key=k_sw, num_projections=256))
  return {"reward": reward, "target_sw2": fit, "variance_ratio": var, "drift_sw2": drift}


def run(seed, distill_steps, init_steps, tune_steps, every, n_eval, methods=METHODS):
  key = jax.random.key(100 + seed)
  k_base, k_tgt, k_T, k_two, k_sw, k_ref, k_tune = jax.random.split(key, 7)
  base = distill_base(k_base, distill_steps, init_steps)
  targets = TARGET.sample(k_tgt, 1024)
  target_ref = TARGET.sample(k_ref, 8192)
  x_T = jax.random.normal(k_T, (n_eval, 2))
  base_samples = few_step(base, x_T, k_two, 2)
  out = {"base": measure(base, base_samples, x_T, k_two, target_ref, k_sw)}
  for method in methods:
    name, beta = (method, BETA) if isinstance(method, str) else method
    opt = optax.adam(1e-4)
    p, state = base, opt.init(base)
    step = make_tune_step(name, opt, base, targets, 256, beta)
    curve = [{"step": 0, **out["base"]}]
    t0 = time.perf_counter()
    for i in range(1, tune_steps + 1):
      p, state, _ = step(p, state, jax.random.fold_in(k_tune, i))
      if i % every == 0:
        curve.append({"step": i, **measure(p, base_samples, x_T, k_two, target_ref, k_sw)})
    key_name = method if isinstance(method, str) else f"{name}_beta{beta:g}"
    out[key_name] = {"curve": curve, "seconds": time.perf_counter() - t0}
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument(
    "--betas", type=float, nargs="+", default=None,
    help="only online PSO at these betas (writes pso_finetuning_betas.json)",
  )  # fmt: skip
  args = ap.parse_args()
  if args.quick:
    distill_steps, init_steps, tune_steps, every, seeds, n_eval = 40, 20, 20, 10, (0,), 512
  else:
    distill_steps, init_steps, tune_steps, every = 1000, 200, 300, 50
    seeds, n_eval = (0, 1, 2), 4096
  t_start = time.perf_counter()
  if args.betas:
    return beta_sweep(args, distill_steps, init_steps, tune_steps, every, seeds, n_eval)
  per_seed = [run(s, distill_steps, init_steps, tune_steps, every, n_eval) for s in seeds]
  names = ("reward", "target_sw2", "variance_ratio", "drift_sw2")
  final = {"base": summary({k: [r["base"][k] for r in per_seed] for k in names})}
  curves = {}
  for m in METHODS:
    final[m] = summary({k: [r[m]["curve"][-1][k] for r in per_seed] for k in names})
    curves[m] = []
    for j, c in enumerate(per_seed[0][m]["curve"]):
      mean = {k: float(np.mean([r[m]["curve"][j][k] for r in per_seed])) for k in names}
      curves[m].append({"step": c["step"], **mean})
  last = lambda m, k: [r[m]["curve"][-1][k] for r in per_seed]  # noqa: E731
  comparisons = {
    f"{k}: pso_online - naive": paired(last("naive", k), last("pso_online", k)) for k in names
  }
  print(f"{'model':12s} " + " ".join(f"{k:>22s}" for k in names))
  for m, v in final.items():
    print(f"{m:12s} " + " ".join(f"{v[k]['mean']:12.4f} +- {v[k]['std']:6.4f}" for k in names))
  for m in METHODS:
    print(m, "curve (mean over seeds):")
    for c in curves[m]:
      print("  ", " ".join(f"{k}={c[k]:.4f}" if k != "step" else f"step={c[k]}" for k in c))
  for k, v in comparisons.items():
    print(f"{k:34s} {v['mean']:+.4f} (se {v['se']:.4f}, n={v['n']})")
  result = {
    "setting": {
      "mixture": "8-mode ring, radius 2, variance 0.02; target = mode 0 (1024 samples)",
      "base": f"two-step TBCM student (trajectory_discrete, {init_steps} + {distill_steps} steps)",
      "tuning": f"{tune_steps} Adam steps, lr 1e-4, batch 256", "beta": BETA,
      "times": [1.0, 0.5], "seeds": list(seeds), "n_eval": n_eval,
    },
    "final": final,
    "curves_mean": curves,
    "paired_differences": comparisons,
    "seconds": {m: [r[m]["seconds"] for r in per_seed] for m in METHODS},
    "wall_s": time.perf_counter() - t_start,
  }  # fmt: skip
  path = output_path("pso_finetuning.json", args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=2))
  print("wrote", path)


def beta_sweep(args, distill_steps, init_steps, tune_steps, every, seeds, n_eval):
  """Online PSO at several betas (same seeds, base and targets as the main run)."""
  t_start = time.perf_counter()
  methods = [("pso_online", b) for b in args.betas]
  per_seed = [run(s, distill_steps, init_steps, tune_steps, every, n_eval, methods) for s in seeds]
  names = ("reward", "target_sw2", "variance_ratio", "drift_sw2")
  final = {}
  for m in per_seed[0]:
    if m == "base":
      final[m] = summary({k: [r["base"][k] for r in per_seed] for k in names})
    else:
      final[m] = summary({k: [r[m]["curve"][-1][k] for r in per_seed] for k in names})
      final[m]["reward_curve"] = [
        float(np.mean([r[m]["curve"][j]["reward"] for r in per_seed]))
        for j in range(len(per_seed[0][m]["curve"]))
      ]
  for m, v in final.items():
    print(f"{m:22s} " + " ".join(f"{k}={v[k]['mean']:.4f}+-{v[k]['std']:.4f}" for k in names))
  result = {"betas": args.betas, "tune_steps": tune_steps, "seeds": list(seeds), "final": final,
            "wall_s": time.perf_counter() - t_start}  # fmt: skip
  path = output_path("pso_finetuning_betas.json", args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=2))
  print("wrote", path)


if __name__ == "__main__":
  main()
