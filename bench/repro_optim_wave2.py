"""Small-scale reproductions of the second-wave optimizer papers.

Prints a table and writes bench/results/repro_optim_wave2.json. Studies:

1. DIFF2 (Murata & Suzuki, arXiv:2302.03884) vs DP-SGD/DP-GD at equal noise multiplier:
   final full-data loss and squared gradient norm, nonconvex-regularized softmax regression
   on digits, 8 simulated clients.
2. AdAdaGrad (Lau et al., arXiv:2402.11215): batch-size trajectory, steps and examples to
   a target training loss, adaptive (norm / augmented inner-product test) vs fixed batch.
3. TrAct (Petersen et al., arXiv:2410.23970) vs plain first-layer training: steps to a
   target test accuracy on digits (MLP; SGD+momentum and Adam).
4. Weight compander (Cakaj et al., arXiv:2306.16993) vs weight decay: test accuracy of an
   MLP trained on a small subset of digits.
5. GPPO (Su et al., arXiv:2508.07629) vs PPO clipping: expected reward of a softmax policy
   on a Bernoulli bandit with group-normalized advantages and several epochs per batch.
6. Speed: the elementwise pieces (compander forward+backward, GPPO loss+gradient) against
   their bytes-proportional share of ``optax.adam``'s update, in interleaved rounds.

Plus, when ``bench/_wave2_newton_ot.py`` exists, its studies (HESSO, gradient-normalized
smoothness Newton, Sinkhorn-Newton-Sparse), merged into the same JSON.

Usage: ``.venv/bin/python bench/repro_optim_wave2.py [--quick]`` (``--quick``: smaller
budgets, written to the temporary directory instead of ``bench/results``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optim
from jaxdiff.models import load_digits
from optim.losses import gppo_loss, ppo_clip_loss


def _digits():
  d = load_digits(key=0)
  flat = lambda x: jnp.asarray(x.reshape(len(x), -1))
  return flat(d.train_x), jnp.asarray(d.train_y), flat(d.test_x), jnp.asarray(d.test_y)


def _with_key(state, key):
  """``state`` with every typed PRNG key replaced by a split of ``key`` (one compile, many
  seeds: the optimizer's key lives in its state)."""
  leaves, treedef = jax.tree.flatten(state)
  keys = iter(jax.random.split(key, len(leaves)))
  is_key = lambda x: jnp.issubdtype(jnp.result_type(x), jax.dtypes.prng_key)
  return jax.tree.unflatten(treedef, [next(keys) if is_key(x) else x for x in leaves])


def _first(curve, target, every=1, above=False):
  """First index (times ``every``) where ``curve`` reaches ``target``; None if never."""
  c = np.asarray(curve)
  hit = np.nonzero(c >= target if above else c <= target)[0]
  return None if len(hit) == 0 else int(hit[0]) * every


# ---------------------------------------------------------------- 1. DIFF2 vs DP-SGD


def study_diff2(quick):
  x, y, _, _ = _digits()
  clients, n = 8, 179
  # Inputs scaled to |x| <= 1 so per-example gradients have norm ~1.3 (C1 = 1 clips mildly)
  # and the loss is ~1-smooth (gradient differences ~ lr |v|).
  x, y = x[: clients * n] / 8, y[: clients * n]
  lam = 1e-3  # nonconvex regularizer lam * sum w^2 / (1 + w^2) (the DP literature's test)

  def example_loss(p, xi, yi):
    logits = xi @ p["w"] + p["b"]
    reg = lam * jnp.sum(p["w"] ** 2 / (1 + p["w"] ** 2))
    return optax.softmax_cross_entropy_with_integer_labels(logits, yi) + reg

  full_loss = lambda p: jnp.mean(jax.vmap(example_loss, in_axes=(None, 0, 0))(p, x, y))
  grad_fn = lambda p: jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(p, x, y)
  p0 = {"w": jnp.zeros((64, 10)), "b": jnp.zeros(10)}
  rounds = 40 if quick else 300
  lr, c1 = 2.0, 1.0

  def run(tx, seeds):
    @jax.jit
    def go(key):
      def body(carry, _):
        p, s = carry
        u, s = tx.update(grad_fn(p), s, p, grad_fn=grad_fn)
        return (optax.apply_updates(p, u), s), None

      (p, _), _ = jax.lax.scan(body, (p0, _with_key(tx.init(p0), key)), None, length=rounds)
      g = jax.grad(full_loss)(p)
      return full_loss(p), sum(jnp.sum(v**2) for v in jax.tree.leaves(g))

    out = [go(jax.random.key(s)) for s in range(seeds)]
    return {
      "final_loss": float(np.mean([o[0] for o in out])),
      "final_loss_std": float(np.std([o[0] for o in out])),
      "grad_norm_sq": float(np.mean([o[1] for o in out])),
    }

  seeds = 2 if quick else 3
  results = {}
  sigmas = (10.0,) if quick else (10.0, 50.0)
  grid = [(0.02, 10)] if quick else [(c2, t) for c2 in (0.02, 0.1) for t in (10, 30)]
  for sigma in sigmas:
    row = {
      "dp_sgd_central_noise": run(optim.dp_sgd(lr, c1, sigma), seeds),
      "dp_gd_per_client_noise": run(
        optim.diff2(lr, c1, c1, sigma, restart_every=1, num_clients=clients), seeds
      ),
    }
    for c2, t in grid:
      # Equal privacy (sum over rounds of sigma_t^-2 equal to DP-GD's R / sigma^2), half the
      # budget to the R/T restarts, half to the other rounds.
      s1, s2 = sigma * np.sqrt(2 / t), sigma * np.sqrt(2 * (1 - 1 / t))
      row[f"diff2_C2={c2}_T={t}_budget_matched"] = run(
        optim.diff2(lr, c1, c2, s1, restart_every=t, diff_noise_multiplier=s2, num_clients=clients),
        seeds,
      )
    c2, t = grid[0]
    row[f"diff2_C2={c2}_T={t}_equal_sigma"] = run(
      optim.diff2(lr, c1, c2, sigma, restart_every=t, num_clients=clients), seeds
    )
    results[f"sigma={sigma}"] = row
  results["noise_free_gd"] = run(optim.diff2(lr, c1, c1, 0.0, restart_every=1), 1)
  return {
    "setup": (
      f"softmax regression + {lam} sum w^2/(1+w^2) on digits (inputs /8), {clients} clients "
      f"x {n} examples, full local batches (the GD subroutine), {rounds} rounds, lr {lr}, "
      f"C1 {c1}; DP-SGD adds central noise sigma C/B (B = {clients * n}), DP-GD and DIFF2 "
      "per-client noise sigma C/n; DIFF2 budget-matched: sigma_restart = sigma sqrt(2/T), "
      f"sigma_diff = sigma sqrt(2 (1 - 1/T)); mean of {seeds} seeds"
    ),
    "results": results,
  }


def gaussian_rdp_epsilon(noise_multipliers, *, sampling_rate=1.0, delta=1e-5, orders=None):
  r"""(epsilon, best order) of a composition of Gaussian mechanisms, by Renyi DP.

  Each round is the (Poisson-subsampled) Gaussian mechanism with noise multiplier
  :math:`\sigma_t` (noise std / L2 sensitivity) and sampling rate :math:`q`. Its RDP at an
  integer order :math:`\alpha \ge 2` (Mironov, Talwar & Zhang 2019, arXiv:1908.10530,
  Sec. 3.3, integer orders) is

  .. math::
    \varepsilon_t(\alpha) = \frac{1}{\alpha - 1}\log\sum_{k=0}^{\alpha}\binom{\alpha}{k}
      (1-q)^{\alpha-k} q^k \exp\!\Big(\frac{k^2 - k}{2\sigma_t^2}\Big),

  which is :math:`\alpha / (2\sigma_t^2)` at :math:`q = 1` (Mironov 2017, arXiv:1702.07476,
  Prop. 7); RDP composes additively, and the conversion
  :math:`\varepsilon = \min_\alpha \sum_t\varepsilon_t(\alpha) + \log(1/\delta)/(\alpha - 1)`
  (Mironov 2017, Prop. 3) gives :math:`(\varepsilon, \delta)`-DP. A small accountant for
  this bench only (no dependency); a zero noise multiplier gives ``inf``.

  Example: 300 full-batch rounds at sigma 10 -> about 9.8 at delta 1e-5 (order 4).
  """
  from math import lgamma, log

  orders = orders if orders is not None else list(range(2, 257))
  sig = np.asarray(noise_multipliers, np.float64)
  if np.any(sig <= 0):
    return float("inf"), None
  best = (float("inf"), None)
  for a in orders:
    if sampling_rate >= 1.0:
      rdp = float(np.sum(a / (2 * sig**2)))
    else:
      k = np.arange(a + 1)
      lbin = np.array([lgamma(a + 1) - lgamma(j + 1) - lgamma(a - j + 1) for j in k])
      q = sampling_rate
      rdp = 0.0
      for s_, n_ in zip(*np.unique(sig, return_counts=True), strict=True):
        terms = lbin + (a - k) * np.log1p(-q) + k * np.log(q) + (k * k - k) / (2 * s_**2)
        m = terms.max()
        rdp += n_ * (m + np.log(np.exp(terms - m).sum())) / (a - 1)
    eps = rdp + log(1 / delta) / (a - 1)
    if eps < best[0]:
      best = (eps, a)
  return best


def study_diff2_utility(quick):
  """DIFF2 on the paper's utility: the squared gradient norm averaged over the iterates,
  and the final loss after tuning the learning rate, against DP-GD at the same (RDP)
  privacy budget; same problem as :func:`study_diff2`."""
  x, y, _, _ = _digits()
  clients, n = 8, 179
  x, y = x[: clients * n] / 8, y[: clients * n]
  lam = 1e-3

  def example_loss(p, xi, yi):
    logits = xi @ p["w"] + p["b"]
    reg = lam * jnp.sum(p["w"] ** 2 / (1 + p["w"] ** 2))
    return optax.softmax_cross_entropy_with_integer_labels(logits, yi) + reg

  full_loss = lambda p: jnp.mean(jax.vmap(example_loss, in_axes=(None, 0, 0))(p, x, y))
  grad_fn = lambda p: jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(p, x, y)
  sq = lambda g: sum(jnp.sum(v**2) for v in jax.tree.leaves(g))
  p0 = {"w": jnp.zeros((64, 10)), "b": jnp.zeros(10)}
  rounds, c1, sigma = (40, 1.0, 10.0) if quick else (300, 1.0, 10.0)
  seeds = 2 if quick else 10
  lrs = (2.0, 4.0) if quick else (1.0, 2.0, 4.0, 8.0)

  def run(tx):
    @jax.jit
    @jax.vmap
    def go(key):
      def body(carry, _):
        p, s = carry
        u, s = tx.update(grad_fn(p), s, p, grad_fn=grad_fn)
        p = optax.apply_updates(p, u)
        return (p, s), sq(jax.grad(full_loss)(p))

      (p, _), g2 = jax.lax.scan(body, (p0, _with_key(tx.init(p0), key)), None, length=rounds)
      return full_loss(p), jnp.mean(g2)

    loss, g2 = go(jax.random.split(jax.random.key(0), seeds))
    loss, g2 = np.asarray(loss), np.asarray(g2)
    return {
      "final_loss": float(loss.mean()),
      "final_loss_std": float(loss.std()),
      "avg_grad_norm_sq": float(g2.mean()),
      "avg_grad_norm_sq_std": float(g2.std()),
    }

  grid = [(0.02, 10)] if quick else [(c2, t) for c2 in (0.02, 0.1) for t in (10, 30)]
  # RDP of one client's messages (full local batch: sampling rate 1) over all rounds.
  eps_gd, order_gd = gaussian_rdp_epsilon([sigma] * rounds)
  results = {"epsilon": {"dp_gd": eps_gd, "dp_gd_order": order_gd, "delta": 1e-5}}
  for c2, t in grid:
    s1, s2 = sigma * np.sqrt(2 / t), sigma * np.sqrt(2 * (1 - 1 / t))
    sig_t = [s1 if r % t == 0 else s2 for r in range(rounds)]
    results["epsilon"][f"diff2_C2={c2}_T={t}"] = gaussian_rdp_epsilon(sig_t)[0]
  for lr in lrs:
    row = {
      "dp_gd_per_client_noise": run(
        optim.diff2(lr, c1, c1, sigma, restart_every=1, num_clients=clients)
      ),
      "dp_sgd_central_noise": run(optim.dp_sgd(lr, c1, sigma)),
    }
    for c2, t in grid:
      s1, s2 = sigma * np.sqrt(2 / t), sigma * np.sqrt(2 * (1 - 1 / t))
      row[f"diff2_C2={c2}_T={t}_budget_matched"] = run(
        optim.diff2(lr, c1, c2, s1, restart_every=t, diff_noise_multiplier=s2, num_clients=clients)
      )
    results[f"lr={lr:g}"] = row
    print(
      f"   lr {lr:g}: "
      + ", ".join(
        f"{k.split('_C2')[0] if 'C2' not in k else k[6:]} {v['final_loss']:.3f}/"
        f"{v['avg_grad_norm_sq']:.2e}"
        for k, v in row.items()
      ),
      flush=True,
    )
  return {
    "setup": (
      f"as diff2_vs_dp_sgd (sigma {sigma}, {rounds} rounds, C1 {c1}), lr in {lrs}, "
      f"{seeds} seeds (one vmapped call per configuration); avg_grad_norm_sq = mean over "
      "the iterates x_1..x_R of ||grad f(x_t)||^2 on the full data (the paper's utility); "
      "epsilon: RDP of the Gaussian mechanism per client (sampling rate 1, every round), "
      "composed over the rounds, converted at delta 1e-5 (gaussian_rdp_epsilon)"
    ),
    "results": results,
  }


# ---------------------------------------------------------------- 2. AdAdaGrad


def study_adadagrad(quick):
  x, y, _, _ = _digits()

  def loss(p, ex):
    return optax.softmax_cross_entropy_with_integer_labels(ex[0] @ p["w"] + p["b"], ex[1])

  full = jax.jit(lambda p: jnp.mean(jax.vmap(loss, in_axes=(None, 0))(p, (x, y))))
  p0 = {"w": jnp.zeros((64, 10)), "b": jnp.zeros(10)}
  steps = 40 if quick else 400
  every = 5
  target = 0.35 if quick else 0.15
  lr = 0.05
  configs = {
    # eta = 1e9: a test that always passes, i.e. a fixed batch through the same loop.
    "fixed_b=8": dict(initial_batch_size=8, eta=1e9),
    "fixed_b=128": dict(initial_batch_size=128, eta=1e9),
    "adaptive_norm_eta=0.5": dict(initial_batch_size=8, variant="norm", eta=0.5),
    "adaptive_norm_eta=0.9": dict(initial_batch_size=8, variant="norm", eta=0.9),
    "adaptive_inner_product": dict(initial_batch_size=8, variant="inner_product"),
  }
  results = {}
  for name, kw in configs.items():
    lr0 = optim.schedules.scale_for_batch_size(lr, 8, kw["initial_batch_size"], "adaptive")
    r = optim.loops.adaptive_batch_train(
      loss,
      p0,
      (x, y),
      optax.adagrad,
      lr0,
      num_steps=steps,
      max_batch_size=1024,
      key=0,
      callback=lambda k, p: float(full(p)),
      callback_every=every,
      **kw,
    )
    curve = r.callbacks  # after steps 0, every, 2 every, ... and the last step
    hit = _first(curve, target)
    step = None if hit is None else min(hit * every, steps - 1)
    results[name] = {
      "final_loss": curve[-1],
      "steps_to_target": None if step is None else step + 1,
      "examples_to_target": None if step is None else int(r.examples[step]),
      "final_batch_size": int(r.batch_sizes[-1]),
      "examples_total": int(r.examples[-1]),
      "batch_trajectory": [int(b) for b in r.batch_sizes[::every]],
    }
  return {
    "setup": (
      f"AdaGrad (lr {lr} at b=8, sqrt-scaled with the batch) on softmax regression, digits "
      f"(1437 examples), {steps} steps, target full training loss {target}; adaptive runs "
      "start at b=8 (multiples of 8, cap 1024)"
    ),
    "results": results,
  }


# ---------------------------------------------------------------- 3. TrAct


def _mlp_init(key, sizes):
  keys = jax.random.split(key, len(sizes) - 1)
  return {
    f"l{i}": {"w": jax.random.normal(k, (m, n)) * np.sqrt(2.0 / m), "b": jnp.zeros(n)}
    for i, (k, m, n) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
  }


def _mlp(p, x, compand=None):
  if compand is not None:
    p = compand(p)
  layers = [p[f"l{i}"] for i in range(len(p))]
  for layer in layers[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  return x @ layers[-1]["w"] + layers[-1]["b"]


def study_tract(quick):
  x, y, xt, yt = _digits()
  steps = 80 if quick else 400
  batch, seeds = 32, 2 if quick else 4
  target = 0.95

  def make(base, tract):
    labels = lambda p: {
      k: jax.tree.map(lambda _: "first" if k == "l0" else "rest", v) for k, v in p.items()
    }
    first = optax.chain(optim.scale_by_tract(0.1), base) if tract else base
    return optax.partition({"first": first, "rest": base}, labels)

  def run(tx, key):
    p0 = _mlp_init(key, (64, 128, 10))
    idx = jax.random.randint(jax.random.fold_in(key, 1), (steps, batch), 0, len(y))

    def body(carry, ix):
      p, s = carry
      xb, yb = x[ix], y[ix]
      loss = lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(_mlp(p, xb), yb))
      u, s = tx.update(jax.grad(loss)(p), s, p, first_layer_inputs=xb)
      p = optax.apply_updates(p, u)
      return (p, s), jnp.mean(jnp.argmax(_mlp(p, xt), -1) == yt)

    _, acc = jax.lax.scan(body, (p0, tx.init(p0)), idx)
    return acc

  results = {}
  for base_name, base in [
    ("sgd_momentum_lr0.05", optax.sgd(0.05, momentum=0.9)),
    ("adam_lr1e-3", optax.adam(1e-3)),
  ]:
    for tract in (False, True):
      tx = make(base, tract)
      go = jax.jit(lambda k, tx=tx: run(tx, k))
      accs = np.stack([np.asarray(go(jax.random.key(s))) for s in range(seeds)])
      mean = accs.mean(0)
      # acc[i] is the test accuracy after step i + 1.
      steps_to = lambda c: (
        None if _first(c, target, above=True) is None else (_first(c, target, above=True) + 1)
      )
      hits = [steps_to(a) for a in accs]
      results[f"{base_name}_{'tract' if tract else 'plain'}"] = {
        "steps_to_target_mean_curve": steps_to(mean),
        "steps_to_target_per_seed": hits,
        "final_test_acc": float(mean[-1]),
        "acc_at_step_50": float(mean[min(49, steps - 1)]),
      }
  return {
    "setup": (
      f"MLP 64-128-10 on digits, batch {batch}, {steps} steps, {seeds} seeds; TrAct "
      f"(lambda 0.1) on the first layer only via optax.partition; target test acc {target}"
    ),
    "results": results,
  }


# ---------------------------------------------------------------- 4. weight compander


def study_compander(quick):
  x, y, xt, yt = _digits()
  n_train = 200
  steps = 150 if quick else 1500
  seeds = 2 if quick else 4
  xs, ys = x[:n_train], y[:n_train]
  alpha, beta = 0.5, 0.1
  comp = lambda p: optim.compander.compand_weights(p, alpha=alpha, beta=beta)

  def run(tx, use_compander, key):
    p0 = _mlp_init(key, (64, 256, 10))
    if use_compander:  # start the companded network at the same standard initialization
      p0 = optim.compander.expand_weights(p0, alpha=alpha, beta=beta)
    c = comp if use_compander else None
    loss = lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(_mlp(p, xs, c), ys))

    def body(carry, _):
      p, s = carry
      u, s = tx.update(jax.grad(loss)(p), s, p)
      return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(body, (p0, tx.init(p0)), None, length=steps)
    return jnp.mean(jnp.argmax(_mlp(p, xt, c), -1) == yt), loss(p)

  kernels = lambda p: jax.tree.map(lambda a: a.ndim >= 2, p)
  configs = {
    "adam": (optax.adam(1e-3), False),
    "adamw_wd=1e-2": (optax.adamw(1e-3, weight_decay=1e-2, mask=kernels), False),
    "adamw_wd=1e-1": (optax.adamw(1e-3, weight_decay=1e-1, mask=kernels), False),
    "adam_l2=1e-3": (
      optax.chain(optax.add_decayed_weights(1e-3, kernels), optax.adam(1e-3)),
      False,
    ),
    "compander": (optax.adam(1e-3), True),
    "compander+adamw_wd=1e-2": (optax.adamw(1e-3, weight_decay=1e-2, mask=kernels), True),
  }
  results = {}
  for name, (tx, use) in configs.items():
    go = jax.jit(lambda k, tx=tx, use=use: run(tx, use, k))
    out = [go(jax.random.key(s)) for s in range(seeds)]
    accs = [float(o[0]) for o in out]
    results[name] = {
      "test_acc_mean": float(np.mean(accs)),
      "test_acc_std": float(np.std(accs)),
      "train_loss": float(np.mean([float(o[1]) for o in out])),
    }
  return {
    "setup": (
      f"MLP 64-256-10, {n_train} training digits (overfits), full batch, Adam lr 1e-3, "
      f"{steps} steps, {seeds} seeds, 360 test digits; compander alpha {alpha}, beta {beta} "
      "on the kernels, raw weights initialized with expand_weights(standard init)"
    ),
    "results": results,
  }


# ---------------------------------------------------------------- 5. GPPO vs PPO


def study_gppo(quick):
  k, group, epochs, lr = 20, 16, 4, 2.0
  iters = 30 if quick else 150
  seeds = 64 if quick else 256
  means = jnp.linspace(0.05, 0.95, k)  # Bernoulli arm means; the best is 0.95

  def run(loss_fn, key):
    def it(theta, key):
      ka, kr = jax.random.split(key)
      old = jax.nn.log_softmax(theta)
      arms = jax.random.categorical(ka, old, shape=(group,))
      r = jax.random.bernoulli(kr, means[arms]).astype(jnp.float32)
      adv = (r - r.mean()) / (r.std() + 1e-6)  # GRPO's group-normalized advantage

      def epoch(th, _):
        g = jax.grad(lambda t: loss_fn(jax.nn.log_softmax(t)[arms], old[arms], adv))(th)
        return th - lr * g, None

      theta, _ = jax.lax.scan(epoch, theta, None, length=epochs)
      pi = jax.nn.softmax(theta)
      return theta, (pi @ means, -jnp.sum(pi * jnp.log(pi + 1e-30)))

    _, (reward, entropy) = jax.lax.scan(it, jnp.zeros(k), jax.random.split(key, iters))
    return reward, entropy

  results = {}
  for name, fn in [
    ("ppo_eps0.2", lambda a, b, c: ppo_clip_loss(a, b, c, epsilon_low=0.2, epsilon_high=0.2)),
    ("ppo_clip_higher_0.2_0.28", lambda a, b, c: ppo_clip_loss(a, b, c, epsilon_high=0.28)),
    ("gppo_0.2_0.28", lambda a, b, c: gppo_loss(a, b, c, epsilon_low=0.2, epsilon_high=0.28)),
  ]:
    reward, entropy = jax.jit(jax.vmap(lambda key, fn=fn: run(fn, key)))(
      jax.random.split(jax.random.key(0), seeds)
    )
    curve = np.asarray(reward.mean(0))
    hit = _first(curve, 0.9, above=True)
    results[name] = {
      "reward_at": {str(t): float(curve[t - 1]) for t in (10, 30, 60, 150) if t <= iters},
      "iters_to_0.9": None if hit is None else hit + 1,  # curve[i]: after iteration i + 1
      "final_entropy": float(entropy.mean(0)[-1]),
      "final_reward_sem": float(np.asarray(reward[:, -1]).std() / np.sqrt(seeds)),
    }
  return {
    "setup": (
      f"softmax policy over {k} Bernoulli arms (means 0.05..0.95), {group} samples per "
      f"iteration, group-normalized advantages, {epochs} gradient epochs (lr {lr}) on each "
      f"batch against the sampling policy, {iters} iterations, {seeds} seeds"
    ),
    "results": results,
  }


# ---------------------------------------------------------------- 6. speed


def study_speed(quick):
  from _timing import compare

  n = 1 << (20 if quick else 22)
  key = jax.random.key(0)
  w = jax.random.normal(key, (n // 1024, 1024))
  adam = optax.adam(1e-3)
  s = adam.init(w)
  adam_step = jax.jit(lambda g, s: adam.update(g, s, w))
  comp = jax.jit(
    lambda w, g: jax.vjp(lambda v: optim.compander.compand_weights({"k": v})["k"], w)[1](g)
  )
  lp = jax.random.normal(key, (n,)) * 0.1 - 1.0
  old = lp + 0.3 * jax.random.normal(jax.random.key(1), (n,))
  adv = jax.random.normal(jax.random.key(2), (n,))
  gp = jax.jit(jax.grad(lambda x: gppo_loss(x, old, adv)))
  pp = jax.jit(jax.grad(lambda x: ppo_clip_loss(x, old, adv)))
  t = compare(
    {
      "adam": lambda: adam_step(w, s),
      "compander_fwd_bwd": lambda: comp(w, w),
      "gppo_loss_grad": lambda: gp(lp),
      "ppo_loss_grad": lambda: pp(lp),
    },
    baseline="adam",
    rounds=5 if quick else 11,
  )
  # Bytes per element (float32 arrays read + written): adam reads g, m, v and writes m, v, u
  # (6); the compander's forward + backward reads w (twice: forward, then the VJP), the
  # cotangent, and writes w_hat and the gradient (5); the policy losses read log_probs,
  # old_log_probs, advantages and write the gradient (4).
  share = {"compander_fwd_bwd": 5 / 6, "gppo_loss_grad": 4 / 6, "ppo_loss_grad": 4 / 6}
  results = {
    name: {
      "ratio_to_adam": t[name].ratio,
      "bytes_share_of_adam": share[name],
      "ratio_to_bytes_share": t[name].ratio / share[name],
      "within_1.5x": bool(t[name].ratio / share[name] <= 1.5),
    }
    for name in share
  }
  return {
    "setup": (
      f"{n} float32 elements, jitted, interleaved rounds (bench/_timing.compare), median of "
      "per-round ratios to optax.adam's update; measured under the shared machine's load"
    ),
    "results": results,
  }


# ---------------------------------------------------------------- main


def _newton_ot():
  """Helper C's studies (bench/_wave2_newton_ot.py), when present."""
  path = pathlib.Path(__file__).with_name("_wave2_newton_ot.py")
  if not path.exists():
    return None
  spec = importlib.util.spec_from_file_location("_wave2_newton_ot", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true", help="smaller budgets (CI smoke)")
  ap.add_argument("--only", default=None, help="comma-separated study names")
  args = ap.parse_args()
  # Imported here: tests load this file as a module without bench/ on the path.
  from _timing import output_path, time_once

  studies = [
    ("diff2_vs_dp_sgd", study_diff2),
    ("diff2_utility", study_diff2_utility),
    ("adadagrad_batch_size", study_adadagrad),
    ("tract_first_layer", study_tract),
    ("weight_compander_vs_decay", study_compander),
    ("gppo_vs_ppo", study_gppo),
    ("speed_elementwise", study_speed),
  ]
  only = None if args.only is None else set(args.only.split(","))
  out, timing = {}, {}
  for name, fn in studies:
    if only is not None and name not in only:
      continue
    out[name], timing[name] = time_once(lambda fn=fn: fn(args.quick))
    print(f"\n== {name} ({timing[name]:.1f}s) ==\n   {out[name]['setup']}")
    for k, v in out[name]["results"].items():
      print(f"   {k:<34} {json.dumps(v)}")
  other = _newton_ot() if only is None or "newton_ot" in only else None
  if other is not None:
    out["newton_ot"], timing["newton_ot"] = time_once(lambda: other.main(args.quick))
  out["seconds"] = timing
  out["backend"] = jax.default_backend()
  path = output_path("repro_optim_wave2.json", args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  if only is not None and path.exists():  # --only: merged into the other studies' results
    old = json.loads(path.read_text())
    out = {**old, **out, "seconds": {**old.get("seconds", {}), **timing}}
  path.write_text(json.dumps(out, indent=1, default=str))
  print(f"\nwrote {path}")


if __name__ == "__main__":
  main()
