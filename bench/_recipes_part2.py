"""Studies of the training recipes, part two (STORM, USEFUL, coherence, opposing signals),
on sklearn's digits and the papers' toy settings (run
through bench/repro_recipes.py).

Every configuration is trained over several seeds at once (``jax.vmap`` over the seeds of
one ``lax.scan`` run) and reported as mean and standard deviation over seeds, plus the
paired difference to the baseline with its standard error (seeds share data noise, init
and batch order):

5. ``storm`` (Heck et al. 2025): 30% symmetric label noise, an MLP trained with Adam on the
   plain loss vs STORM (meta loss rescaling) vs the meta update without meta loss
   rescaling; clean test accuracy, and how well weights < 1/2 flag the corrupted labels.
6. ``useful`` (Nguyen et al. 2024): SGD and SAM (``optax.contrib.sam``) on the original
   training set, on the set with the slow-learnable cluster upsampled (USEFUL) and with as
   many random examples upsampled; test error.
7. ``coherence`` (Chatterjee & Zielinski 2022): m-coherence of real vs random labels along
   training; winsorized gradient descent and M3 vs SGD under 50% label noise (memorization
   of the noisy labels, test accuracy).
8. ``opposing_signals`` (Rosenfeld & Risteski 2024): the two-layer linear toy (exact), and
   full-batch GD on digits: sharpness vs 2/eta, and at the loss spikes the groups of the
   largest loss changes (antiphase, opposing gradients, shared inputs) vs random groups.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _seeds import paired as _paired  # bench/ is on sys.path (repro_recipes.py)
from _seeds import summary as _summary

import optim
from jaxdiff.models import load_digits
from optim.curvature import opposing_groups, opposing_signals
from optim.curvature._opposing import toy_data, toy_hessian, toy_losses
from optim.data_scores import gradient_coherence, slow_learnable, upsample
from optim.loops import StormState, storm_step
from optim.losses import storm_features, storm_rescaler, storm_rescaler_init

# --------------------------------------------------------------------------- shared helpers


def _digits():
  d = load_digits(key=0)
  flat = lambda x: jnp.asarray(x.reshape(len(x), -1))
  return flat(d.train_x), jnp.asarray(d.train_y), flat(d.test_x), jnp.asarray(d.test_y)


def _noisy(y, rate, seed, classes=10):
  """Symmetric label noise: a fraction ``rate`` of labels replaced by another class."""
  rng = np.random.default_rng(1000 + seed)
  y = np.asarray(y).copy()
  flip = rng.random(len(y)) < rate
  y[flip] = (y[flip] + rng.integers(1, classes, flip.sum())) % classes
  return jnp.asarray(y), jnp.asarray(flip)


def _mlp_init(key, sizes):
  params = []
  for k, (a, b) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
    params.append({"w": jax.random.normal(k, (a, b)) * np.sqrt(2.0 / a), "b": jnp.zeros(b)})
  return params


def _mlp(params, x, key=None, rate=0.0):
  """ReLU MLP; with ``key``, inverted dropout of ``rate`` after each hidden layer."""
  for i, layer in enumerate(params[:-1]):
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
    if key is not None:
      keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - rate, x.shape)
      x = jnp.where(keep, x / (1.0 - rate), 0.0)
  return x @ params[-1]["w"] + params[-1]["b"]


def _ce(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def _acc(params, x, y):
  return 100.0 * jnp.mean(jnp.argmax(_mlp(params, x), -1) == y)


def _fmt(v):
  v = np.asarray(v, np.float64)
  return f"{v.mean():7.3f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.3f}"


def _epoch_batches(seed, n, batch, epochs):
  """``(epochs * (n // batch), batch)`` indices: a fresh permutation each epoch."""
  rng = np.random.default_rng(seed)
  per = n // batch
  return np.concatenate(
    [rng.permutation(n)[: per * batch].reshape(per, batch) for _ in range(epochs)]
  )


# --------------------------------------------------------------------------- 5. STORM


def study_storm(quick: bool) -> dict:
  """Heck et al.: STORM vs plain training under 30% symmetric label noise (digits, MLP).

  The spam setting of the official ``DO.example.spam`` transposed to digits: a small model,
  batch 32, 10 epochs, rescaler Adam 1e-2, G = 3 forward passes (pass 0 without dropout,
  passes 1-2 with dropout 0.1), the meta batch drawn from the noisy training set. The model
  optimizer is Adam 1e-2 with its state carried (the official code restarts it each step).
  """
  x, y, xt, yt = _digits()
  n = x.shape[0]
  seeds = list(range(2 if quick else 5))
  epochs, batch, width, g_passes = (2 if quick else 10), 32, 128, 3
  steps = epochs * (n // batch)

  def passes(params, xb, yb, key):
    logits = jnp.stack(
      [_mlp(params, xb)]
      + [_mlp(params, xb, jax.random.fold_in(key, i), 0.1) for i in range(1, g_passes)]
    )
    losses = jax.vmap(lambda lg: _ce(lg, yb))(logits)
    return losses, jax.nn.softmax(logits, -1)

  def loss_fn(params, b):
    xb, yb, key = b
    losses, probs = passes(params, xb, yb, key)
    feats = storm_features(
      jax.lax.stop_gradient(losses), jax.lax.stop_gradient(probs), yb, num_classes=10
    )
    return losses[0], feats

  rescale = lambda p, f, b: storm_rescaler(p, f, b[1])
  tx, meta_tx = optax.adam(1e-2, eps_root=1e-12), optax.adam(1e-2)

  def run(variant):
    def one(seed, y_noisy, idx, midx):
      key = jax.random.key(seed)
      params = _mlp_init(key, [64, width, 10])
      rp = storm_rescaler_init(key=jax.random.fold_in(key, 1), num_classes=10)
      state = StormState(params, tx.init(params), rp, meta_tx.init(rp))

      def body(state, t):
        k = jax.random.fold_in(key, 2 + t)
        b = (x[idx[t]], y_noisy[idx[t]], k)
        mb = (x[midx[t]], y_noisy[midx[t]], jax.random.fold_in(k, 7))
        if variant == "plain":
          g = jax.grad(lambda p: jnp.sum(loss_fn(p, b)[0]))(state.params)
          u, opt = tx.update(g, state.opt_state, state.params)
          new = state._replace(params=optax.apply_updates(state.params, u), opt_state=opt)
          return new, jnp.ones(batch)
        new, m = storm_step(
          loss_fn, rescale, tx, meta_tx, state, b, mb, meta_loss_rescaling=variant == "storm"
        )
        return new, m.weights

      state, weights = jax.lax.scan(body, state, jnp.arange(steps))
      return _acc(state.params, xt, yt), weights

    return one

  ys, flips, idxs, midxs = [], [], [], []
  for s in seeds:
    yn, flip = _noisy(y, 0.3, s)
    ys.append(yn)
    flips.append(flip)
    idxs.append(_epoch_batches(s, n, batch, epochs))
    midxs.append(_epoch_batches(500 + s, n, batch, epochs))
  ys, flips = jnp.stack(ys), np.stack(flips)
  idxs, midxs = jnp.asarray(np.stack(idxs)), jnp.asarray(np.stack(midxs))
  seeds_a = jnp.asarray(seeds)

  results, detect = {}, {}
  for variant in ("plain", "storm", "no_meta_loss_rescaling"):
    t0 = time.perf_counter()
    acc, weights = jax.jit(jax.vmap(run(variant)))(seeds_a, ys, idxs, midxs)
    results[variant] = np.asarray(acc)
    if variant != "plain":
      # Noise detection over the last epoch: weight < 1/2 flags an example as corrupted.
      last = slice(steps - n // batch, steps)
      w = np.asarray(weights)[:, last].reshape(len(seeds), -1)
      ix = np.asarray(idxs)[:, last].reshape(len(seeds), -1)
      fl = np.take_along_axis(flips, ix, 1)
      flagged = w < 0.5
      prec = (flagged & fl).sum(1) / np.maximum(flagged.sum(1), 1)
      rec = (flagged & fl).sum(1) / fl.sum(1)
      wc, wn = [np.array([w[i][fl[i] == v].mean() for i in range(len(seeds))]) for v in (0, 1)]
      detect[variant] = _summary(
        {"precision": prec, "recall": rec, "weight_clean": wc, "weight_noisy": wn}
      )
    print(f"  {variant:24s} test acc {_fmt(acc)}  ({time.perf_counter() - t0:.0f} s)", flush=True)
  for v, d in detect.items():
    print(
      f"  {v:24s} flags (w<1/2): precision {d['precision']['mean']:.3f} recall "
      f"{d['recall']['mean']:.3f}; mean weight clean {d['weight_clean']['mean']:.3f} "
      f"noisy {d['weight_noisy']['mean']:.3f}"
    )
  diff = _paired(results["plain"], results["storm"])
  print(f"  STORM - plain: {diff['mean']:+.3f} ± {diff['se']:.3f} (s.e., paired)")
  # Clean labels (the paper: STORM does not hurt when there is no noise).
  clean = {}
  for variant in ("plain", "storm"):
    acc, _ = jax.jit(jax.vmap(run(variant)))(seeds_a, jnp.tile(y, (len(seeds), 1)), idxs, midxs)
    clean[variant] = np.asarray(acc)
    print(f"  clean labels: {variant:10s} test acc {_fmt(acc)}", flush=True)
  clean_diff = _paired(clean["plain"], clean["storm"])
  print(f"  clean labels: STORM - plain: {clean_diff['mean']:+.3f} ± {clean_diff['se']:.3f}")
  return {
    "clean_labels": {"test_accuracy": _summary(clean), "storm_minus_plain": clean_diff},
    "setting": {
      "noise": 0.3,
      "epochs": epochs,
      "batch": batch,
      "width": width,
      "passes": g_passes,
      "lr": 1e-2,
      "meta_lr": 1e-2,
    },
    "test_accuracy": _summary(results),
    "detection_last_epoch": detect,
    "storm_minus_plain": diff,
    "no_mlr_minus_plain": _paired(results["plain"], results["no_meta_loss_rescaling"]),
  }


# --------------------------------------------------------------------------- 6. USEFUL


def _useful_setting(x, y, xt, yt, seeds, updates, sep_updates, batch=64, width=256, lr=0.05):
  """One USEFUL comparison: SGD/SAM x original/random/USEFUL data, same number of updates."""
  n = x.shape[0]

  def sgd():
    return optax.sgd(lr, momentum=0.9)

  def sam():
    adv = optax.chain(optax.contrib.normalize(), optax.sgd(0.05))  # rho = 0.05
    return optax.contrib.sam(sgd(), adv, sync_period=2)

  def train(make, calls):
    def one(seed, pool, pool_size):
      key = jax.random.key(seed)
      params = _mlp_init(key, [64, width, 10])
      tx = make()
      opt = tx.init(params)

      def body(carry, t):
        params, opt = carry
        k = jax.random.fold_in(key, 1000 + t)
        idx = pool[jax.random.randint(k, (batch,), 0, pool_size)]
        g = jax.grad(lambda p: jnp.mean(_ce(_mlp(p, x[idx]), y[idx])))(params)
        u, opt = tx.update(g, opt, params)
        return (optax.apply_updates(params, u), opt), None

      (params, _), _ = jax.lax.scan(body, (params, opt), jnp.arange(calls))
      return params

    return jax.jit(jax.vmap(one))

  # The early run (SGD, the same seeds) to the separating point, then the split per seed.
  base_pool = jnp.tile(jnp.arange(n), (len(seeds), 1))
  early = train(sgd, sep_updates)(jnp.asarray(seeds), base_pool, jnp.full((len(seeds),), n))
  pools = {"original": [], "useful": [], "random": []}
  n_slow = []
  for i, s in enumerate(seeds):
    p = jax.tree.map(lambda a, i=i: a[i], early)
    logits = _mlp(p, x)
    slow = slow_learnable(logits, _ce(logits, y), y, key=s)
    n_slow.append(int(slow.sum()))
    rng = np.random.default_rng(2000 + s)
    rand = np.zeros(n, bool)
    rand[rng.choice(n, slow.sum(), replace=False)] = True
    pools["original"].append(np.arange(n))
    pools["useful"].append(upsample(slow))
    pools["random"].append(upsample(rand))
  width_pool = max(len(p) for v in pools.values() for p in v)

  def pad(ps):
    padded = np.stack([np.pad(p, (0, width_pool - len(p))) for p in ps])
    return jnp.asarray(padded), jnp.asarray([len(p) for p in ps])

  errors = {}
  for opt_name, make in (("SGD", sgd), ("SAM", sam)):
    # The same number of parameter updates on every data set; SAM's update calls alternate
    # adversarial and outer steps (sync_period=2), so it gets twice the calls.
    fit = train(make, updates * (2 if opt_name == "SAM" else 1))
    for data in ("original", "random", "useful"):
      t0 = time.perf_counter()
      pool, size = pad(pools[data])
      params = fit(jnp.asarray(seeds), pool, size)
      err = 100.0 - np.asarray(jax.vmap(lambda p: _acc(p, xt, yt))(params))
      errors[f"{opt_name} {data}"] = err
      dt = time.perf_counter() - t0
      print(f"    {opt_name} {data:9s} test error {_fmt(err)} %  ({dt:.0f} s)", flush=True)
  paired = {}
  for opt_name in ("SGD", "SAM"):
    for a, b in (("original", "useful"), ("original", "random"), ("random", "useful")):
      d = _paired(errors[f"{opt_name} {a}"], errors[f"{opt_name} {b}"])
      paired[f"{opt_name}: {b} - {a}"] = d
      print(f"    {opt_name}: {b} - {a}: {d['mean']:+.3f} ± {d['se']:.3f} pp (paired s.e.)")
  d = _paired(errors["SGD original"], errors["SAM original"])
  paired["SAM - SGD (original)"] = d
  print(f"    SAM - SGD on the original data: {d['mean']:+.3f} ± {d['se']:.3f} pp")
  print(f"    slow-learnable examples: {np.mean(n_slow):.0f} of {n} on average")
  return {
    "setting": {
      "n_train": n,
      "updates": updates,
      "separating_updates": sep_updates,
      "batch": batch,
      "width": width,
      "lr": lr,
      "momentum": 0.9,
      "sam_rho": 0.05,
      "seeds": len(seeds),
    },
    "slow_learnable_count": _summary({"n": n_slow}),
    "test_error": _summary(errors),
    "paired": paired,
  }


def study_useful(quick: bool) -> dict:
  """Nguyen et al.: SGD and SAM on the original, USEFUL-upsampled and randomly upsampled
  training sets (digits, MLP 64-256-10): test error, paired over seeds. Two settings: the
  whole training set, and 30 images per class (where the test error leaves more room)."""
  x, y, xt, yt = _digits()
  seeds = list(range(2 if quick else 16))
  updates = 120 if quick else 660  # 30 epochs of the full set at batch 64
  sep = 16 if quick else 44  # 2 epochs: ~7% of the run, the paper's 5-10%
  out = {}
  print("  all 1437 training images:")
  out["full"] = _useful_setting(x, y, xt, yt, seeds, updates, sep)
  keep = np.concatenate([np.flatnonzero(np.asarray(y) == c)[:30] for c in range(10)])
  print("  30 training images per class:")
  out["subset_300"] = _useful_setting(x[keep], y[keep], xt, yt, seeds, updates, sep)
  return out


# --------------------------------------------------------------------------- 7. coherence


def study_coherence(quick: bool) -> dict:
  """Chatterjee & Zielinski: m-coherence of real vs random labels along SGD training, and
  winsorized GD / M3 vs SGD under 50% label noise (digits, MLP)."""
  x, y, xt, yt = _digits()
  n = x.shape[0]
  seeds = list(range(2 if quick else 3))
  width, batch, lr, m = 128, 64, 0.1, 256
  checkpoints = [0, 20, 100, 400] if quick else [0, 20, 100, 400, 1600]

  def ex_grads(params, xb, yb):
    return jax.vmap(jax.grad(lambda p, xi, yi: _ce(_mlp(p, xi[None]), yi[None])[0]), (None, 0, 0))(
      params, xb, yb
    )

  # (1) m * alpha along training, real vs shuffled labels (the same sample of m examples).
  coh = {}
  for labels in ("real", "random"):
    vals = []
    for s in seeds:
      yl = (
        y if labels == "real" else jnp.asarray(np.random.default_rng(s).permutation(np.asarray(y)))
      )
      params = _mlp_init(jax.random.key(s), [64, width, 10])
      tx = optax.sgd(lr)
      opt = tx.init(params)
      sample = np.random.default_rng(100 + s).choice(n, m, replace=False)

      @jax.jit
      def step(params, opt, idx, yl=yl):
        g = jax.grad(lambda p: jnp.mean(_ce(_mlp(p, x[idx]), yl[idx])))(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt

      row, t = [], 0
      rng = np.random.default_rng(200 + s)
      for c in checkpoints:
        while t < c:
          params, opt = step(params, opt, jnp.asarray(rng.choice(n, batch, replace=False)))
          t += 1
        row.append(m * float(gradient_coherence(ex_grads(params, x[sample], yl[sample]))))
      vals.append(row)
    coh[labels] = np.asarray(vals)
    print(
      f"  m-coherence (m={m}) {labels:6s}: "
      + "  ".join(f"t={c}: {v:6.1f}" for c, v in zip(checkpoints, coh[labels].mean(0))),
      flush=True,
    )

  # (2) Robust aggregation under 50% symmetric label noise.
  seeds = list(range(2 if quick else 5))
  epochs = 3 if quick else 60
  steps = epochs * (n // batch)
  configs = {
    "SGD": dict(variant="winsorize", c=0),
    "WGD c=1": dict(variant="winsorize", c=1),
    "WGD c=2": dict(variant="winsorize", c=2),
    "WGD c=4": dict(variant="winsorize", c=4),
    "M3": dict(variant="median_of_means", num_groups=3),
  }
  out = {}
  for name, kw in configs.items():
    tx = optim.robust_mean_sgd(lr, **kw)

    def one(seed, yn, idx):
      params = _mlp_init(jax.random.key(seed), [64, width, 10])
      opt = tx.init(params)

      def body(carry, t):
        params, opt = carry
        g = ex_grads(params, x[idx[t]], yn[idx[t]])
        u, opt = tx.update(g, opt, params)
        return (optax.apply_updates(params, u), opt), None

      (params, _), _ = jax.lax.scan(body, (params, opt), jnp.arange(steps))
      pred = jnp.argmax(_mlp(params, x), -1)
      return _acc(params, xt, yt), pred

    ys, flips, idxs = [], [], []
    for s in seeds:
      yn, flip = _noisy(y, 0.5, s)
      ys.append(yn)
      flips.append(np.asarray(flip))
      idxs.append(_epoch_batches(300 + s, n, batch, epochs))
    t0 = time.perf_counter()
    acc, pred = jax.jit(jax.vmap(one))(
      jnp.asarray(seeds), jnp.stack(ys), jnp.asarray(np.stack(idxs))
    )
    pred, ys_np, flips = np.asarray(pred), np.asarray(jnp.stack(ys)), np.stack(flips)
    memo = np.array(
      [100 * np.mean(pred[i][flips[i]] == ys_np[i][flips[i]]) for i in range(len(seeds))]
    )
    clean = np.array(
      [100 * np.mean(pred[i][~flips[i]] == ys_np[i][~flips[i]]) for i in range(len(seeds))]
    )
    out[name] = {"test_acc": np.asarray(acc), "fit_noisy": memo, "fit_clean": clean}
    print(
      f"  {name:8s} test acc {_fmt(acc)}  fits noisy labels {_fmt(memo)} %  clean {_fmt(clean)} %"
      f"  ({time.perf_counter() - t0:.0f} s)",
      flush=True,
    )
  paired = {k: _paired(out["SGD"]["test_acc"], out[k]["test_acc"]) for k in configs if k != "SGD"}
  for k, d in paired.items():
    print(f"  {k} - SGD test acc: {d['mean']:+.3f} ± {d['se']:.3f}")
  return {
    "m_coherence": {
      "m": m,
      "checkpoints": checkpoints,
      "real": _summary(dict(zip(map(str, checkpoints), coh["real"].T))),
      "random": _summary(dict(zip(map(str, checkpoints), coh["random"].T))),
    },
    "label_noise_0.5": {
      "setting": {"epochs": epochs, "batch": batch, "lr": lr, "width": width},
      "results": {k: _summary(v) for k, v in out.items()},
      "test_acc_minus_sgd": paired,
    },
  }


# --------------------------------------------------------------------------- 8. opposing signals


def _toy_run(steps=30, alpha=6.0, beta=0.25, eta=0.25, p=0.1, n=40, a_o=1e-3, s0=1.4):
  with jax.enable_x64(True):
    x, y, m = toy_data(n, p, alpha, beta)
    batch = (jnp.asarray(x), jnp.asarray(y))
    params = {"a": jnp.array([a_o, s0]), "b": jnp.array(s0)}
    tx = optax.sgd(eta)
    st = tx.init(params)
    mean = lambda q: jnp.mean(toy_losses(q, batch))
    snaps = []
    for _ in range(steps):
      snaps.append(params)
      u, st = tx.update(jax.grad(mean)(params), st, params)
      params = optax.apply_updates(params, u)
    hist = jax.tree.map(lambda *a: jnp.stack(a), *snaps)
    r = opposing_signals(toy_losses, hist, batch, k=2 * m, key=0)
    rows = []
    for t, q in enumerate(snaps):
      ev = np.linalg.eigvalsh(toy_hessian(jax.tree.map(np.asarray, q), p, alpha, beta))
      lam = ev[-1]
      l = np.asarray(r.losses[t])
      inc = np.flatnonzero(r.groups.increased[t]) if t < steps - 1 else []
      dec = np.flatnonzero(r.groups.decreased[t]) if t < steps - 1 else []
      rows.append(
        {
          "step": t,
          "eta_lambda": float(eta * r.sharpness[t]),
          "closed_form_eta_lambda": float(eta * lam),
          "loss": float(l.mean()),
          "loss_plus": float(l[:m].mean()),
          "loss_minus": float(l[m : 2 * m].mean()),
          "increased": [int(i) for i in inc],
          "decreased": [int(i) for i in dec],
        }
      )
  return {"setting": {"alpha": alpha, "beta": beta, "eta": eta, "p": p, "n": n}, "steps": rows}


def study_opposing_signals(quick: bool) -> dict:
  """Rosenfeld & Risteski: the toy (exact), and full-batch GD on digits at a large step."""
  toy = _toy_run()
  print("  toy (alpha 6, beta 1/4, eta 1/4, p 0.1): step, eta*lambda, L, L+, L-, groups up/down")
  for r in toy["steps"]:
    if r["step"] % 2 == 0 or 7 <= r["step"] <= 19:
      print(
        f"   {r['step']:3d} {r['eta_lambda']:6.2f} {r['loss']:9.4f} {r['loss_plus']:9.4f} "
        f"{r['loss_minus']:9.4f}  up {r['increased']} down {r['decreased']}"
      )

  # Digits: a tanh MLP (64-128-128-10, LeCun init) on the squared loss to one-hot targets,
  # full-batch GD at eta = 0.05: the sharpness rises to 2/eta and stays there (edge of
  # stability), with the loss rising at hundreds of steps. (With cross-entropy the
  # sharpness of this MLP falls after the first steps: no progressive sharpening.)
  x, y, _, _ = _digits()
  n = x.shape[0]
  seeds = list(range(1 if quick else 3))
  eta, width, k = 0.05, 128, 20
  steps = 300 if quick else 2000
  every = steps // 20
  per_seed = []

  def tanh_mlp(params, xb):
    for layer in params[:-1]:
      xb = jnp.tanh(xb @ layer["w"] + layer["b"])
    return xb @ params[-1]["w"] + params[-1]["b"]

  loss_fn = lambda p, b: 0.5 * jnp.sum((tanh_mlp(p, b[0]) - jax.nn.one_hot(b[1], 10)) ** 2, -1)
  for s in seeds:
    t0 = time.perf_counter()
    params = _mlp_init(jax.random.key(s), [64, width, width, 10])
    params = [{"w": layer["w"] / np.sqrt(2.0), "b": layer["b"]} for layer in params]  # LeCun

    @jax.jit
    def run(params):
      def body(p, _):
        losses = loss_fn(p, (x, y))
        g = jax.grad(lambda q: jnp.mean(loss_fn(q, (x, y))))(p)
        return jax.tree.map(lambda a, b: a - eta * b, p, g), (losses, p)

      _, (losses, hist) = jax.lax.scan(body, params, None, length=steps)
      return losses, hist

    losses, hist = run(params)
    sub = jax.tree.map(lambda a: a[::every], hist)
    tracked = opposing_signals(loss_fn, sub, (x, y), k=k, key=s, num_iterations=20)
    sharp = np.asarray(tracked.sharpness)
    groups = opposing_groups(losses, k=k)
    mean_loss = np.asarray(losses.mean(1))
    # The spikes: the steps where the mean loss rose most (after the first 10% of the run),
    # at least 25 steps apart (one step per episode: neighbouring steps share their groups).
    rise = np.diff(mean_loss)
    start = steps // 10
    spikes = []
    for t in start + np.argsort(-rise[start : steps - 11]):  # 10 steps after each spike
      if rise[t] <= 0 or len(spikes) == 10:
        break
      if all(abs(t - u) >= 25 for u in spikes):
        spikes.append(int(t))

    def grad_cos(t, ga, gb):
      p = jax.tree.map(lambda a: a[t], hist)
      g = lambda m: jax.grad(lambda q: jnp.sum(jnp.where(m, loss_fn(q, (x, y)), 0.0)) / jnp.sum(m))(
        p
      )
      a, b = g(ga), g(gb)
      dot = sum(jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
      na = jnp.sqrt(sum(jnp.vdot(u, u) for u in jax.tree.leaves(a)))
      nb = jnp.sqrt(sum(jnp.vdot(u, u) for u in jax.tree.leaves(b)))
      return float(dot / (na * nb))

    rng = np.random.default_rng(s)
    stats = {"grad_cos": [], "grad_cos_random": [], "antiphase": [], "antiphase_random": [],
             "input_cos": [], "input_cos_random": [], "same_label": [], "sizes": []}  # fmt: skip
    for t in spikes:
      inc, dec = np.asarray(groups.increased[t]), np.asarray(groups.decreased[t])
      if inc.sum() == 0 or dec.sum() == 0:
        continue
      perm = rng.permutation(n)
      ra, rb = np.zeros(n, bool), np.zeros(n, bool)
      ra[perm[: inc.sum()]], rb[perm[inc.sum() : inc.sum() + dec.sum()]] = True, True
      stats["sizes"].append((int(inc.sum()), int(dec.sum())))
      stats["grad_cos"].append(grad_cos(t, inc, dec))
      stats["grad_cos_random"].append(grad_cos(t, ra, rb))
      # Antiphase: correlation of the two groups' mean-loss changes over the next 10 steps.
      w = slice(t, min(t + 11, steps))
      la = np.diff(np.asarray(losses[w])[:, inc].mean(1))
      lb = np.diff(np.asarray(losses[w])[:, dec].mean(1))
      lra = np.diff(np.asarray(losses[w])[:, ra].mean(1))
      lrb = np.diff(np.asarray(losses[w])[:, rb].mean(1))
      stats["antiphase"].append(float(np.corrcoef(la, lb)[0, 1]))
      stats["antiphase_random"].append(float(np.corrcoef(lra, lrb)[0, 1]))
      xa, xb = np.asarray(x)[inc].mean(0), np.asarray(x)[dec].mean(0)
      xra, xrb = np.asarray(x)[ra].mean(0), np.asarray(x)[rb].mean(0)
      cos = lambda u, v: float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))
      stats["input_cos"].append(cos(xa, xb))
      stats["input_cos_random"].append(cos(xra, xrb))
      ya, yb = np.asarray(y)[inc], np.asarray(y)[dec]
      stats["same_label"].append(float(np.mean(ya[:, None] == yb[None, :])))
    el = sharp * eta
    low = int(np.argmin(el))  # after the initial drop from the init's transient
    back = np.flatnonzero(el[low:] >= 1.9)
    res = {
      "sharpness_eta": el.tolist(),
      "snapshot_every": every,
      "min_eta_lambda": float(el[low]),
      "first_step_eta_lambda_back_at_1.9": int((low + back[0]) * every) if back.size else None,
      "late_half_eta_lambda_mean": float(el[len(el) // 2 :].mean()),
      "loss_rises": int((rise > 0).sum()),
      "loss_start_end": [float(mean_loss[0]), float(mean_loss[-1])],
      "spike_steps": [int(t) for t in spikes],
      **{k: v for k, v in stats.items()},
    }
    per_seed.append(res)
    avg = lambda v: float(np.mean(v)) if len(v) else float("nan")
    print(
      f"  seed {s}: eta*lambda {el[0]:.2f} at init, min {res['min_eta_lambda']:.2f}, back at 1.9 "
      f"by step {res['first_step_eta_lambda_back_at_1.9']}, late-half mean "
      f"{res['late_half_eta_lambda_mean']:.2f}; loss {mean_loss[0]:.3f} -> {mean_loss[-1]:.4f} "
      f"({res['loss_rises']} rising steps); {len(stats['grad_cos'])} spikes: grad cos "
      f"{avg(stats['grad_cos']):+.3f} (random {avg(stats['grad_cos_random']):+.3f}), antiphase "
      f"corr {avg(stats['antiphase']):+.3f} (random {avg(stats['antiphase_random']):+.3f}), input "
      f"cos {avg(stats['input_cos']):.3f} (random {avg(stats['input_cos_random']):.3f}), "
      f"same-label pairs {avg(stats['same_label']):.3f}  ({time.perf_counter() - t0:.0f} s)",
      flush=True,
    )
  pooled = {
    k: _summary(
      {"v": np.concatenate([np.asarray(r[k], float) for r in per_seed] + [[np.nan]])[:-1]}
    )["v"]
    for k in (
      "grad_cos",
      "grad_cos_random",
      "antiphase",
      "antiphase_random",
      "input_cos",
      "input_cos_random",
      "same_label",
    )
  }
  return {
    "toy": toy,
    "digits": {
      "setting": {
        "eta": eta,
        "width": width,
        "depth": 3,
        "activation": "tanh",
        "loss": "squared error to one-hot",
        "steps": steps,
        "k": k,
        "every": every,
      },
      "per_seed": per_seed,
      "pooled_over_spikes": pooled,
    },
  }


STUDIES = {
  "storm": study_storm,
  "useful": study_useful,
  "coherence": study_coherence,
  "opposing_signals": study_opposing_signals,
}
