"""RL fine-tuning on the 8x8 digits against a sparse reward: B²-DiffuRL vs DDPO-style RL
(the sampler's network tuned), and FIND (only the starting-noise distribution tuned).

Models: the demo's cached class-conditional DiT denoiser (v-prediction on ``vp_cosine``)
and classifier (``bench/_digits.py``: ``prepare_models`` of ``DemoConfig.full()``; trained
on first use). The base sampler is *unconditional* (the null label ``-1``); the reward is
the classifier's confidence ``p(target | x_0)`` of a target digit, given only for the final
sample (sparse). The target is the digit the base sampler produces least often in a
probe batch, so the base reward is low.

* **B²-DiffuRL** (``jaxdiff.finetune.branch_rollout`` / ``branch_advantages`` /
  ``b2diffurl_loss``): per stage, ``B = 8`` prefixes branched ``K = 4`` times at ``N - w_k``
  (``progressive_windows``: the window grows backwards from the last 2 to all 6 of the
  ``N = 6`` stochastic DDPM steps; the official script grows 14-of-20 to 20-of-20, the
  paper's text starts "on the final timesteps"),
  z-scores against the last 8 stages' rewards, best / worst branch kept above 0.5 / below
  -0.5, PPO clip 0.1 over the window's steps (official defaults, per-entry mean
  log-probabilities).
* **DDPO-style baseline** (the "naive RL" the paper compares with): the same sample
  budget (``B K`` full trajectories a stage), every sample trained on every step with the
  same z-scored advantage, same loss and optimizer.
* **FIND** (``noise_policy`` / ``find_sample`` / ``find_calibration`` / ``find_loss``): a
  diagonal Gaussian over ``x_T`` in front of the frozen *deterministic* DDIM sampler
  (6 steps); ``B K = 32`` samples an iteration (30 iterations), a scalar reward
  predictor (Adam on the calibration MSE), the official clip 0.2 against the original
  N(0, I), reward weight 10, anchor weight 0.01; Adam lr 1e-2 on (mu, sigma) (the
  official 1e-3 over 150 steps hardly moves the policy in 30).

Optimizer for the network: Adam (lr 1e-4, global-norm clip 1, the official code's) on all
DiT parameters; 2 inner epochs a stage (official ``TrainEpoch=2``), 2 minibatches each.
10 stages. Evaluated after stages 1, 6 and at the end (FIND also after iteration 10, the
network runs' sample budget) on fresh samples (128, same keys
for every method of a seed): mean reward, hit rate (argmax = target), FD of the
classifier features to the base sampler's samples (drift from the base model) and to
the held-out digits (all classes: quality and diversity of the whole output), and the
mean pairwise distance of the samples (diversity). 3 seeds for the network runs and for
FIND; paired differences (B²-DiffuRL - DDPO). The sizes are what a shared 2-core CPU
allows, far below the paper's (Stable Diffusion, 100 stages of 32 x 8 prompts x 5
branches).

    cd bench && nice -n 10 ../.venv/bin/python rl_finetuning.py   # minutes of CPU (2 cores)
    cd bench && nice -n 10 ../.venv/bin/python rl_finetuning.py --quick  # smoke run (to /tmp)

Writes bench/results/rl_finetuning.json.
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
from _seeds import paired, summary
from _timing import output_path
from flax import nnx

from jaxdiff import finetune as ft
from jaxdiff import from_v, metrics, sample, solvers, timesteps
from optim.losses import ppo_clip_loss

N_STEPS = 6


def setup():
  _, data, models, _ = demo_models()
  sched = models.schedule
  gd, params0 = nnx.split(models.denoiser)
  gc, cparams = nnx.split(models.classifier)

  def denoiser(params):
    return from_v(nnx.merge(gd, params), sched)

  @jax.jit
  def feats_probs(x):
    clf = nnx.merge(gc, cparams)
    x = jnp.clip(x, -1.0, 1.0)
    return clf.features(x), jax.nn.softmax(clf(x), axis=-1)

  grid = timesteps(sched, N_STEPS, spacing="logsnr")
  ref = np.asarray(feats_probs(jnp.asarray(data.test_x, jnp.float32))[0], np.float64)
  return sched, params0, denoiser, feats_probs, grid, ref


def fd(a, b):
  with jax.enable_x64(True):
    return float(metrics.frechet_distance(np.asarray(a, np.float64), np.asarray(b, np.float64)))


def pairwise(x):
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  d = np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 0))
  return float(d.sum() / (len(x) * (len(x) - 1)))


class Study:
  def __init__(self, quick: bool):
    self.sched, self.params0, self.denoiser, self.feats_probs, self.grid, self.ref = setup()
    self.quick = quick
    self.B, self.K = (4, 4) if quick else (8, 4)
    self.n_eval = 64 if quick else 128
    self.null = lambda n: jnp.full((n,), -1, jnp.int32)

    grid = self.grid

    @jax.jit
    def ddpm(params, x_T, key):
      return ft.stochastic_rollout(
        self.denoiser(params),
        grid,
        x_T,
        key=key,
        cond=self.null(x_T.shape[0]),
        reduction="mean",
      )

    self.ddpm = ddpm

    @jax.jit
    def ddim(x_T):
      den = self.denoiser(self.params0)
      return sample(den, solvers.ddim(), x_T, grid, key=0, cond=self.null(x_T.shape[0])).x

    self.ddim = ddim

    def loss_fn(params, states, old, adv, mask, start):
      den = self.denoiser(params)
      n = states.shape[0]
      lp = ft.trajectory_log_probs(
        den, grid, states, start=start, cond=self.null(n), reduction="mean"
      )
      return ppo_clip_loss(
        lp,
        old,
        adv[:, None],
        epsilon_low=0.1,
        epsilon_high=0.1,
        mask=jnp.broadcast_to(mask[:, None], lp.shape),
      )

    self.grad_fn = jax.jit(jax.value_and_grad(loss_fn), static_argnums=5)
    self.branch = {}

  def branch_rollout(self, params, x, key, w):
    if w not in self.branch:
      self.branch[w] = jax.jit(
        lambda p, x, k: ft.branch_rollout(
          self.denoiser(p),
          self.grid,
          x,
          key=k,
          window=w,
          num_branches=self.K,
          cond=self.null(x.shape[0]),
        )
      )
    return self.branch[w](params, x, key)

  def reward(self, x, target):
    return self.feats_probs(x)[1][:, target]

  def evaluate(self, x, target, base_feats):
    feats, probs = self.feats_probs(x)
    probs = np.asarray(probs)
    return {
      "reward": float(probs[:, target].mean()),
      "hit_rate": float((probs.argmax(-1) == target).mean()),
      "fd_to_base": fd(feats, base_feats),
      "fd_to_data": fd(feats, self.ref),
      "pairwise": pairwise(x),
    }

  # ---------------------------------------------------------------- network RL
  def train_network(self, method: str, target: int, seed: int, num_stages: int, eval_every):
    B, K = self.B, self.K
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-4))
    params = self.params0
    opt = tx.init(params)
    windows = ft.progressive_windows(num_stages, first=2, last=N_STEPS)
    history: list[np.ndarray] = []
    curve = []
    key = jax.random.key(1000 * seed + 7)
    eval_key = jax.random.key(seed + 99)
    x_eval = jax.random.normal(eval_key, (self.n_eval, 8, 8))
    base_x = self.ddpm(self.params0, x_eval, jax.random.fold_in(eval_key, 1)).states[:, -1]
    base_feats = self.feats_probs(base_x)[0]

    samples_seen = 0
    for stage in range(num_stages):
      key, k_x, k_roll, k_perm = jax.random.split(key, 4)
      x_T = jax.random.normal(k_x, (B, 8, 8))
      if method == "b2diffurl":
        w = windows[stage]
        roll = self.branch_rollout(params, x_T, k_roll, w)
        r = self.reward(roll.states[:, :, -1].reshape(B * K, 8, 8), target).reshape(B, K)
        hist = np.concatenate(history[-8:]) if history else None
        sel = ft.branch_advantages(r, history=hist)
        history.append(np.asarray(r).ravel())
        states = roll.states.reshape((B * K,) + roll.states.shape[2:])
        old = roll.log_probs.reshape(B * K, -1)
        adv, mask, start = sel.advantages.ravel(), sel.mask.ravel(), N_STEPS - w
      else:
        x_T = jax.random.normal(k_x, (B * K, 8, 8))
        roll = self.ddpm(params, x_T, k_roll)
        r = self.reward(roll.states[:, -1], target)
        pool = np.concatenate(history[-8:] + [np.asarray(r)])
        history.append(np.asarray(r))
        z = (r - pool.mean()) / (pool.std(ddof=1) + 1e-8)
        adv = jnp.clip(z, -5, 5)
        mask = jnp.ones_like(adv, bool)
        states, old, start = roll.states, roll.log_probs, 0
      samples_seen += B * K
      n = states.shape[0]
      for epoch in range(2):
        perm = jax.random.permutation(jax.random.fold_in(k_perm, epoch), n)
        for half in (perm[: n // 2], perm[n // 2 :]):
          _, g = self.grad_fn(params, states[half], old[half], adv[half], mask[half], start)
          upd, opt = tx.update(g, opt, params)
          params = optax.apply_updates(params, upd)
      if stage in eval_every or stage == num_stages - 1:
        x = self.ddpm(params, x_eval, jax.random.fold_in(eval_key, 1)).states[:, -1]
        row = {"stage": stage + 1, "samples": samples_seen, "train_reward": float(np.mean(r))}
        row.update(self.evaluate(x, target, base_feats))
        curve.append(row)
        print(
          f"  [{method} seed {seed}] stage {stage + 1}: reward {row['reward']:.3f} "
          f"hit {row['hit_rate']:.2f} fd_base {row['fd_to_base']:.2f}",
          flush=True,
        )
    base = self.evaluate(base_x, target, base_feats)
    return {"base": base, "curve": curve, "final": curve[-1], "windows": list(windows)}

  # ---------------------------------------------------------------- FIND
  def train_find(self, target: int, seed: int, num_iters: int, eval_every):
    n = self.B * self.K
    base = ft.noise_policy((8, 8))
    policy, v = base, jnp.asarray(0.0)
    tx, tv = optax.adam(1e-2), optax.adam(5e-2)
    opt, optv = tx.init(policy), tv.init(v)
    key = jax.random.key(1000 * seed + 11)
    eval_key = jax.random.key(seed + 99)
    z_eval = jax.random.normal(eval_key, (self.n_eval, 8, 8))
    base_x = self.ddim(z_eval)
    base_feats = self.feats_probs(base_x)[0]

    @jax.jit
    def step(policy, v, opt, optv, x_T, r):
      adv, _ = ft.find_calibration(v, r)
      gv = jax.grad(lambda u: ft.find_calibration(u, r)[1])(v)
      uv, optv = tv.update(gv, optv, v)
      v = optax.apply_updates(v, uv)
      g = jax.grad(
        lambda p: ft.find_loss(p, base, x_T, adv, epsilon=0.2, reward_weight=10.0, kl_weight=0.01)
      )(policy)
      up, opt = tx.update(g, opt, policy)
      policy = ft.find_clamp(optax.apply_updates(policy, up))
      return policy, v, opt, optv

    curve = []
    for it in range(num_iters):
      key, k = jax.random.split(key)
      x_T = ft.find_sample(policy, n, key=k)
      r = self.reward(self.ddim(x_T), target)
      policy, v, opt, optv = step(policy, v, opt, optv, x_T, r)
      if it in eval_every or it == num_iters - 1:
        x = self.ddim(policy.mean + policy.std * z_eval)
        row = {"iteration": it + 1, "samples": (it + 1) * n, "train_reward": float(r.mean())}
        row.update(self.evaluate(x, target, base_feats))
        row["mean_abs_mu"] = float(jnp.abs(policy.mean).mean())
        row["mean_sigma"] = float(policy.std.mean())
        curve.append(row)
        print(
          f"  [find seed {seed}] iter {it + 1}: reward {row['reward']:.3f} "
          f"hit {row['hit_rate']:.2f} fd_base {row['fd_to_base']:.2f}",
          flush=True,
        )
    return {"base": self.evaluate(base_x, target, base_feats), "curve": curve, "final": curve[-1]}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--seeds", type=int, default=3, help="seeds of the network RL runs")
  ap.add_argument("--find-seeds", type=int, default=3)
  ap.add_argument("--stages", type=int, default=10)
  ap.add_argument("--find-iterations", type=int, default=30)
  args = ap.parse_args()
  t0 = time.perf_counter()
  st = Study(args.quick)
  seeds = 1 if args.quick else args.seeds
  find_seeds = 1 if args.quick else args.find_seeds
  stages = 3 if args.quick else args.stages
  find_iters = 3 if args.quick else args.find_iterations
  every = {0, stages // 2}
  find_every = {0, stages - 1, find_iters // 2}  # stages - 1: the network runs' budget
  # the digit the base unconditional sampler makes least often (a low base reward)
  probe = st.ddpm(
    st.params0, jax.random.normal(jax.random.key(123), (256, 8, 8)), jax.random.key(124)
  ).states[:, -1]
  freq = np.bincount(np.asarray(st.feats_probs(probe)[1]).argmax(-1), minlength=10) / 256
  target = int(freq.argmin())
  print(f"base class frequencies {np.round(freq, 3).tolist()} -> target digit {target}")
  out = {
    "target": target,
    "base_class_frequencies": freq.tolist(),
    "stages": stages,
    "samples_per_stage": st.B * st.K,
    "num_steps": N_STEPS,
    "runs": {},
  }
  for method in ("b2diffurl", "ddpo", "find"):
    runs = []
    t_m = time.perf_counter()
    for seed in range(find_seeds if method == "find" else seeds):
      if method == "find":
        runs.append(st.train_find(target, seed, find_iters, find_every))
      else:
        runs.append(st.train_network(method, target, seed, stages, every))
    out.setdefault("wall_s_per_method", {})[method] = time.perf_counter() - t_m
    print(f"{method}: {out['wall_s_per_method'][method]:.0f} s", flush=True)
    out["runs"][method] = runs
    keys = ("reward", "hit_rate", "fd_to_base", "fd_to_data", "pairwise")
    out.setdefault("summary", {})[method] = {
      "final": summary({k: [r["final"][k] for r in runs] for k in keys}),
      "base": summary({k: [r["base"][k] for r in runs] for k in keys}),
    }
  fin = lambda m, k: [r["final"][k] for r in out["runs"][m]]
  out["paired_b2diffurl_minus_ddpo"] = {
    k: paired(fin("ddpo", k), fin("b2diffurl", k))
    for k in ("reward", "hit_rate", "fd_to_base", "fd_to_data", "pairwise")
  }
  out["wall_s"] = time.perf_counter() - t0
  path = output_path("rl_finetuning.json", args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1))
  print(
    json.dumps(
      {
        m: {k: round(v["mean"], 3) for k, v in s["final"].items()}
        for m, s in out["summary"].items()
      },
      indent=1,
    )
  )
  print(json.dumps(out["paired_b2diffurl_minus_ddpo"], indent=1))
  print(f"wrote {path} in {out['wall_s']:.0f} s")


if __name__ == "__main__":
  main()
