"""Studies of the training recipes, part one (regime adaptation + ghost BN, multi-sample
dropout, PS-KD, MaskSparsity), on sklearn's digits (run through bench/repro_recipes.py).

Each study tests its paper's headline claim at a setting two CPU cores allow, with every
configuration trained over several seeds at once (``jax.vmap`` over the seeds of one
``lax.scan`` training run) and reported as mean and standard deviation over seeds, plus the
paired difference to the baseline with its standard error where the seeds are shared:

1. ``regime_gbn`` (Hoffer, Hubara, Soudry 2017): small batch vs large batch, and the large
   batch with the square-root learning-rate fix, Ghost Batch Normalization and regime
   adaptation (same number of updates); test error and training loss.
2. ``multi_sample_dropout`` (Inoue 2019): one vs eight dropout samples through a shared
   head: training loss along the run (iterations to a target), final test error, and the
   cost of a training step (interleaved timing, ratio to one sample).
3. ``pskd`` (Kim et al. 2021): cross-entropy vs label smoothing vs PS-KD targets: test
   error, negative log-likelihood and expected calibration error (15 bins).
4. ``mask_sparsity`` (Jiang et al.): the same pruning mask (half the normalization channels,
   from global sparsity training), reached by more global sparsity training (network
   slimming) or by MaskSparsity's masked L1: test accuracy before pruning, right after and
   after a short fine-tuning.
"""

from __future__ import annotations

import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optim
from jaxdiff.models import batch_indices, load_digits
from optim.layers import GhostBatchNorm, MultiSampleDropout
from optim.losses import pskd_alpha, pskd_targets
from optim.pruning import smallest_groups
from optim.schedules import regime_adaptation

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _seeds import paired as _paired  # noqa: E402
from _seeds import summary as _summary  # noqa: E402
from _timing import Stateful, compare  # noqa: E402

# --------------------------------------------------------------------------- shared helpers


def _digits():
  d = load_digits(key=0)
  flat = lambda x: jnp.asarray(x.reshape(len(x), -1))
  return flat(d.train_x), jnp.asarray(d.train_y), flat(d.test_x), jnp.asarray(d.test_y)


def _stack(models):
  """graphdef and the per-seed (params, rest) states stacked on a leading axis."""
  graphdef = nnx.graphdef(models[0])
  splits = [nnx.split(m, nnx.Param, ...)[1:] for m in models]
  params = jax.tree.map(lambda *x: jnp.stack(x), *[s[0] for s in splits])
  rest = jax.tree.map(lambda *x: jnp.stack(x), *[s[1] for s in splits])
  return graphdef, params, rest


def _ece(probs, labels, bins=15):
  conf = probs.max(-1)
  correct = (probs.argmax(-1) == labels).astype(jnp.float32)
  edges = jnp.linspace(0.0, 1.0, bins + 1)
  idx = jnp.clip(jnp.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
  acc = jnp.zeros(bins).at[idx].add(correct)
  cnf = jnp.zeros(bins).at[idx].add(conf)
  return jnp.sum(jnp.abs(acc - cnf)) / len(labels)


def _metrics(graphdef, params, rest, x, y, **call):
  """Evaluation mode: error (%), mean NLL and ECE of the model on (x, y)."""
  model = nnx.merge(graphdef, params, rest)
  model.eval()
  logits = model(x, **call)
  if logits.ndim == 3:  # multi-sample dropout: equal samples in evaluation
    logits = logits[0]
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  err = 100.0 * jnp.mean(logits.argmax(-1) != y)
  return {"error": err, "nll": nll, "ece": _ece(jax.nn.softmax(logits), y)}


def _relu_mlp(x, layers):
  for layer in layers[:-1]:
    x = jax.nn.relu(layer(x))
  return layers[-1](x)


def _fmt(s):
  return f"{s['mean']:.3f} ± {s['std']:.3f}"


# ----------------------------------------------------- 1. regime adaptation + ghost BN


class _NormNet(nnx.Module):
  """64 -> width -> width -> 10 with (ghost) batch normalization after each hidden layer."""

  def __init__(self, ghost, width, *, rngs, momentum=0.9):
    self.l1 = nnx.Linear(64, width, rngs=rngs)
    self.n1 = GhostBatchNorm(width, ghost_batch_size=ghost, momentum=momentum, rngs=rngs)
    self.l2 = nnx.Linear(width, width, rngs=rngs)
    self.n2 = GhostBatchNorm(width, ghost_batch_size=ghost, momentum=momentum, rngs=rngs)
    self.out = nnx.Linear(width, 10, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu(self.n1(self.l1(x)))
    x = jax.nn.relu(self.n2(self.l2(x)))
    return self.out(x)


def _fit(
  graphdef, params, rest, make_tx, x, y, *, batch, steps, seeds, offset, aux=None, hook=None
):
  """Trains the stacked seeds with cross-entropy for ``steps`` steps; returns (params, rest).

  ``make_tx(aux)`` builds the optimizer and ``hook(params, aux)`` runs after each update
  (a projection), where ``aux`` is a per-seed pytree (stacked on axis 0) or None."""
  n = x.shape[0]

  def one(params, rest, key, aux):
    tx = make_tx(aux)
    opt = tx.init(params)

    def body(carry, t):
      params, rest, opt = carry
      idx = batch_indices(key, t, n, batch)

      def loss(p, r):
        m = nnx.merge(graphdef, p, r, copy=True)  # fresh Variables: updated in this trace
        logits = m(x[idx])
        value = optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean()
        return value, nnx.split(m, nnx.Param, ...)[2]

      (_, rest), g = jax.value_and_grad(loss, has_aux=True)(params, rest)
      u, opt = tx.update(g, opt, params)
      params = optax.apply_updates(params, u)
      if hook is not None:
        params = hook(params, aux)
      return (params, rest, opt), None

    (params, rest, _), _ = jax.lax.scan(body, (params, rest, opt), jnp.arange(steps))
    return params, rest

  keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(100 + offset), s))(jnp.asarray(seeds))
  return jax.jit(jax.vmap(one))(params, rest, keys, aux)


def _evaluate(graphdef, params, rest, x, y, **call):
  return jax.jit(jax.vmap(lambda p, r: _metrics(graphdef, p, r, x, y, **call)))(params, rest)


def study_regime_gbn(quick: bool) -> dict:
  """Hoffer et al.: the large-batch gap and what closes it (Table 1's rows, on digits)."""
  x, y, xt, yt = _digits()
  seeds = list(range(2 if quick else 5))
  b0, b, ghost, width = 16, 512, 16, 128
  base_steps = 300 if quick else 1800  # 20 epochs at B0 = 16 (3.3 in quick)
  lr0 = 0.05

  def base(count):  # the small-batch regime: lr0, then lr0 / 10 for the last third
    return jnp.where(count < (2 * base_steps) // 3, lr0, lr0 / 10)

  def tx_of(lr):
    # The official optimizer: SGD with momentum 0.9, weight decay 1e-4, gradient clip 5.
    return optax.chain(
      optax.clip_by_global_norm(5.0),
      optax.add_decayed_weights(1e-4),
      optax.sgd(lr, momentum=0.9),
    )

  k = b // b0
  same_epochs = regime_adaptation(base, b0, b, base_steps, variant="epochs")
  ra = regime_adaptation(base, b0, b, base_steps, variant="updates")
  configs = {
    "SB (B=16)": (b0, b0, base, base_steps),
    "LB (B=512)": (b, b, lambda t: base(t * k), same_epochs.num_steps),
    "LB + LR (sqrt)": (b, b, same_epochs.learning_rate, same_epochs.num_steps),
    "LB + LR + GBN (G=16)": (b, ghost, same_epochs.learning_rate, same_epochs.num_steps),
    "LB + LR + GBN + RA": (b, ghost, ra.learning_rate, ra.num_steps),
  }
  out = {"setting": {}, "rows": {}}
  out["setting"] = {
    "model": f"MLP 64-{width}-{width}-10, (ghost) batch norm after each hidden layer "
    "(momentum 0.9 = PyTorch's 0.1)",
    "optimizer": "SGD momentum 0.9, weight decay 1e-4, clip 5 (official); lr0 = 0.05 at "
    "B0 = 16, /10 for the last third",
    "base_steps": base_steps,
    "seeds": seeds,
  }
  for name, (batch, g, lr, steps) in configs.items():
    t0 = time.perf_counter()
    gd, p, r = _stack([_NormNet(g, width, rngs=nnx.Rngs(s)) for s in seeds])
    p, r = _fit(
      gd, p, r, lambda _, lr=lr: tx_of(lr), x, y, batch=batch, steps=steps, seeds=seeds, offset=0
    )
    test = _evaluate(gd, p, r, xt, yt)
    train = _evaluate(gd, p, r, x, y)
    row = _summary(
      {"test_error": test["error"], "train_error": train["error"], "train_nll": train["nll"]}
    )
    row["steps"] = steps
    row["epochs"] = round(steps * batch / x.shape[0], 1)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    out["rows"][name] = row
    print(
      f"  {name:24s} steps {steps:5d} test err {_fmt(row['test_error'])} %  "
      f"train nll {_fmt(row['train_nll'])}  ({row['seconds']} s)",
      flush=True,
    )
  sb = out["rows"]["SB (B=16)"]["test_error"]["seeds"]
  out["paired_vs_SB"] = {
    name: _paired(sb, row["test_error"]["seeds"]) for name, row in out["rows"].items()
  }
  return out


# ----------------------------------------------------------- 2. multi-sample dropout


class _DropNet(nnx.Module):
  def __init__(self, num_samples, rate, width, *, rngs):
    self.l1 = nnx.Linear(64, width, rngs=rngs)
    self.l2 = nnx.Linear(width, width, rngs=rngs)
    self.msd = MultiSampleDropout(
      nnx.Linear(width, 10, rngs=rngs), rate=rate, num_samples=num_samples
    )

  def __call__(self, x, key=None):
    h = jax.nn.relu(self.l2(jax.nn.relu(self.l1(x))))
    return self.msd(h, key=key)


def study_multi_sample_dropout(quick: bool) -> dict:
  """Inoue: eight dropout samples vs one, same steps, same data order and inits."""
  x, y, xt, yt = _digits()
  seeds = list(range(2 if quick else 8))
  width, rate, batch = 128, 0.5, 32
  steps = 300 if quick else 1500
  every = 50
  tx = optax.sgd(0.05, momentum=0.9)
  n = x.shape[0]
  out = {
    "setting": {
      "model": f"MLP 64-{width}-{width} + dropout {rate} + shared FC head (10)",
      "optimizer": "SGD momentum 0.9, lr 0.05, batch 32",
      "steps": steps,
      "seeds": seeds,
    },
    "rows": {},
  }
  curves = {}
  for k in (1, 8):
    models = [_DropNet(k, rate, width, rngs=nnx.Rngs(s)) for s in seeds]
    graphdef, params, rest = _stack(models)

    def one(params, key, graphdef=graphdef):
      opt = tx.init(params)

      def step(carry, t):
        params, opt = carry
        idx = batch_indices(key, t, n, batch)

        def loss(p):
          outs = nnx.merge(graphdef, p, rest0)(x[idx], key=jax.random.fold_in(key, t))
          labels = jnp.broadcast_to(y[idx], outs.shape[:-1])
          return optax.softmax_cross_entropy_with_integer_labels(outs, labels).mean()

        g = jax.grad(loss)(params)
        u, opt = tx.update(g, opt, params)
        return (optax.apply_updates(params, u), opt), None

      def chunk(carry, c):
        carry, _ = jax.lax.scan(step, carry, c * every + jnp.arange(every))
        tr = _metrics(graphdef, carry[0], rest0, x, y)
        te = _metrics(graphdef, carry[0], rest0, xt, yt)
        return carry, (tr["nll"], tr["error"], te["error"], te["nll"])

      carry, rec = jax.lax.scan(chunk, (params, opt), jnp.arange(steps // every))
      return rec

    rest0 = jax.tree.map(lambda r: r[0], rest)  # no running state (no batch norm, keys given)
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(99), s))(jnp.asarray(seeds))
    t0 = time.perf_counter()
    rec = jax.jit(jax.vmap(one))(params, keys)
    rec = [np.asarray(r) for r in rec]  # each (seeds, chunks)
    curves[k] = rec
    final = _summary(
      {
        "train_nll": rec[0][:, -1],
        "train_error": rec[1][:, -1],
        "test_error": rec[2][:, -1],
        "test_nll": rec[3][:, -1],
      }
    )
    final["train_nll_curve_mean"] = rec[0].mean(0).round(4).tolist()
    final["test_error_curve_mean"] = rec[2].mean(0).round(3).tolist()
    final["seconds"] = round(time.perf_counter() - t0, 1)
    out["rows"][f"K={k}"] = final
    print(
      f"  K={k}: test err {_fmt(final['test_error'])} %  train nll "
      f"{_fmt(final['train_nll'])}  ({final['seconds']} s)",
      flush=True,
    )
  # Iterations to a training-loss target: the K=1 run's final mean training loss, and 2x it.
  checkpoints = every * (np.arange(steps // every) + 1)
  targets = {}
  for factor in (1.0, 2.0):
    target = float(curves[1][0][:, -1].mean() * factor)
    reach = {}
    for k in (1, 8):
      hit = [
        checkpoints[np.nonzero(c <= target)[0][0]] if np.any(c <= target) else None
        for c in curves[k][0]
      ]
      reach[f"K={k}"] = hit
    targets[f"{factor:g}x K=1 final ({target:.4f})"] = reach
  out["steps_to_train_nll"] = targets
  out["paired_test_error_K8_minus_K1"] = _paired(curves[1][2][:, -1], curves[8][2][:, -1])
  out["paired_train_nll_K8_minus_K1"] = _paired(curves[1][0][:, -1], curves[8][0][:, -1])
  out["cost"] = _msd_cost(quick)
  return out


class _HeadsNoMasks(nnx.Module):
  """K copies of the head on the undropped features (vmapped): the K heads' arithmetic
  without the masks' random bits."""

  def __init__(self, num_samples, width, *, rngs):
    self.l1 = nnx.Linear(64, width, rngs=rngs)
    self.l2 = nnx.Linear(width, width, rngs=rngs)
    self.head = nnx.Linear(width, 10, rngs=rngs)
    self.num_samples = num_samples

  def __call__(self, x, key=None):
    h = jax.nn.relu(self.l2(jax.nn.relu(self.l1(x))))
    graphdef, state = nnx.split(self.head)
    hs = jnp.broadcast_to(h, (self.num_samples, *h.shape))
    return jax.vmap(lambda h: nnx.merge(graphdef, state)(h))(hs)


def _msd_cost(quick: bool) -> dict:
  """Seconds per training step (forward, backward, SGD) with K = 8 vs K = 1, interleaved.

  Also: no dropout (rate 0: the head once, no masks) and K = 8 heads without masks, which
  separates the masks' random bits from the K heads' arithmetic; the body's and head's
  multiply-adds give the arithmetic ratio."""
  x, y, _, _ = _digits()
  tx = optax.sgd(0.05, momentum=0.9)
  width = 128
  body, head = 64 * width + width * width, width * 10  # multiply-adds per example
  res = {"flop_ratio_K8_to_K1": round((body + 8 * head) / (body + head), 3)}
  configs = {
    "K=1": lambda: _DropNet(1, 0.5, width, rngs=nnx.Rngs(0)),
    "K=8": lambda: _DropNet(8, 0.5, width, rngs=nnx.Rngs(0)),
    "no dropout": lambda: _DropNet(1, 0.0, width, rngs=nnx.Rngs(0)),
    "K=8 heads, no masks": lambda: _HeadsNoMasks(8, width, rngs=nnx.Rngs(0)),
  }
  for batch in (32, 256):
    fns = {}
    for label, make in configs.items():
      graphdef, params, rest = nnx.split(make(), nnx.Param, ...)

      @jax.jit
      def step(state, graphdef=graphdef, rest=rest):
        params, opt, t = state

        def loss(p):
          key = jax.random.fold_in(jax.random.key(0), t)
          outs = nnx.merge(graphdef, p, rest)(x[:batch], key=key)
          labels = jnp.broadcast_to(y[:batch], outs.shape[:-1])
          return optax.softmax_cross_entropy_with_integer_labels(outs, labels).mean()

        g = jax.grad(loss)(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt, t + 1

      fns[label] = Stateful(step, (params, tx.init(params), jnp.int32(0)))
    t = compare(fns, baseline="K=1", rounds=5 if quick else 25, calls_per_round=20)
    res[f"batch {batch}"] = {
      name: {
        "us_per_step": round(v.seconds * 1e6, 1),
        "ratio_to_K1": v.ratio,
        "ratio_min_max": v.ratio_min_max,
      }
      for name, v in t.items()
    }
    print(
      f"  cost batch {batch}: K=8 / K=1 = {t['K=8'].ratio:.2f} "
      f"({t['K=1'].seconds * 1e6:.0f} us vs {t['K=8'].seconds * 1e6:.0f} us); "
      f"no dropout / K=1 = {t['no dropout'].ratio:.2f}; "
      f"8 heads without masks / K=1 = {t['K=8 heads, no masks'].ratio:.2f}",
      flush=True,
    )
  return res


# ---------------------------------------------------------------------------- 3. PS-KD


class _MLP(nnx.Module):
  def __init__(self, width, *, rngs):
    self.layers = nnx.List(
      [
        nnx.Linear(64, width, rngs=rngs),
        nnx.Linear(width, width, rngs=rngs),
        nnx.Linear(width, 10, rngs=rngs),
      ]
    )

  def __call__(self, x):
    return _relu_mlp(x, list(self.layers))


def study_pskd(quick: bool) -> dict:
  """Kim et al.: CE vs label smoothing vs PS-KD (alpha_T = 0.8), paired over seeds."""
  x, y, xt, yt = _digits()
  seeds = list(range(2 if quick else 8))
  width, batch = 128, 32
  n = x.shape[0]
  epochs = 8 if quick else 40
  steps = epochs * n // batch
  sched = optax.piecewise_constant_schedule(0.05, {steps // 2: 0.1, (3 * steps) // 4: 0.1})
  tx = optax.sgd(sched, momentum=0.9)
  onehot = jax.nn.one_hot(y, 10)
  out = {
    "setting": {
      "model": f"MLP 64-{width}-{width}-10",
      "optimizer": "SGD momentum 0.9, lr 0.05 /10 at 50% and 75% (the official schedule's "
      "shape), batch 32",
      "epochs": epochs,
      "seeds": seeds,
    },
    "rows": {},
  }
  models = [_MLP(width, rngs=nnx.Rngs(s)) for s in seeds]
  graphdef, params0, rest = _stack(models)
  rest0 = jax.tree.map(lambda r: r[0], rest)
  keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(7), s))(jnp.asarray(seeds))

  def run(variant):
    def one(params, key):
      opt = tx.init(params)
      store = onehot  # the official all_predictions at epoch 0: the one-hot labels

      def step(carry, t):
        params, opt, store = carry
        idx = batch_indices(key, t, n, batch)
        labels = onehot[idx]
        epoch = jnp.minimum((t * batch) // n, epochs - 1)
        if variant == "pskd":
          targets = pskd_targets(labels, store[idx], pskd_alpha(epoch, epochs, alpha_T=0.8))
        elif variant == "ls":
          targets = optax.smooth_labels(labels, 0.1)
        else:
          targets = labels

        def loss(p):
          logits = nnx.merge(graphdef, p, rest0)(x[idx])
          return optax.softmax_cross_entropy(logits, targets).mean(), jax.nn.softmax(logits)

        (_, prob), g = jax.value_and_grad(loss, has_aux=True)(params)
        u, opt = tx.update(g, opt, params)
        return (optax.apply_updates(params, u), opt, store.at[idx].set(prob)), None

      (params, _, _), _ = jax.lax.scan(step, (params, opt, store), jnp.arange(steps))
      return _metrics(graphdef, params, rest0, xt, yt)

    return jax.jit(jax.vmap(one))(params0, keys)

  per = {}
  for name, variant in (("CE", "ce"), ("label smoothing 0.1", "ls"), ("PS-KD (α_T=0.8)", "pskd")):
    t0 = time.perf_counter()
    m = run(variant)
    per[name] = {k: np.asarray(v) for k, v in m.items()}
    row = _summary({"test_error": m["error"], "test_nll": m["nll"], "test_ece": m["ece"]})
    row["seconds"] = round(time.perf_counter() - t0, 1)
    out["rows"][name] = row
    print(
      f"  {name:20s} err {_fmt(row['test_error'])} %  nll {_fmt(row['test_nll'])}  "
      f"ece {_fmt(row['test_ece'])}  ({row['seconds']} s)",
      flush=True,
    )
  out["paired_vs_CE"] = {
    name: {k: _paired(per["CE"][k], per[name][k]) for k in ("error", "nll", "ece")}
    for name in per
    if name != "CE"
  }
  return out


# ----------------------------------------------------------------------- 4. MaskSparsity


def _prune(params, masks):
  """One seed's params with the masked channels of n1, n2 removed: their scale and bias set
  to 0, and their constant output relu(bias) (exact when the scale is 0) folded into the
  next layer's bias, as structured pruning does (idempotent: a pruned bias is 0)."""
  names = lambda path: tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path[:2])
  leaves = {names(path): v for path, v in jax.tree_util.tree_leaves_with_path(params)}
  shift = {
    ("l2", "bias"): (jax.nn.relu(leaves[("n1", "bias")]) * masks[0]) @ leaves[("l2", "kernel")],
    ("out", "bias"): (jax.nn.relu(leaves[("n2", "bias")]) * masks[1]) @ leaves[("out", "kernel")],
  }

  def f(path, v):
    key = names(path)
    for layer, m in (("n1", masks[0]), ("n2", masks[1])):
      if key[0] == layer and key[1] in ("scale", "bias"):
        return v * (~m).astype(v.dtype)
    return v + shift[key].astype(v.dtype) if key in shift else v

  return jax.tree_util.tree_map_with_path(f, params)


def study_mask_sparsity(quick: bool) -> dict:
  """Jiang et al.: the same mask reached by global L1 (network slimming) or masked L1."""
  x, y, xt, yt = _digits()
  seeds = list(range(2 if quick else 5))
  width, batch, lam, fraction = 128, 64, 5e-3, 0.5
  pre, sparse, finetune = (200, 200, 100) if quick else (800, 800, 300)
  # nnx.State paths end in the Variable's "value".
  groups = [{"n1/scale/value": 0}, {"n2/scale/value": 0}]
  base = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.05, momentum=0.9))
  everything = [jnp.ones(width, bool), jnp.ones(width, bool)]
  plain = lambda aux: base
  global_l1 = lambda aux: optax.chain(optim.mask_sparsity(lam, groups, everything), base)
  masked_l1 = lambda masks: optax.chain(optim.mask_sparsity(lam, groups, list(masks)), base)
  graphdef, p, r = _stack([_NormNet(batch, width, rngs=nnx.Rngs(s)) for s in seeds])
  fit = lambda p, r, make_tx, steps, offset, aux=None, hook=None: _fit(
    graphdef,
    p,
    r,
    make_tx,
    x,
    y,
    batch=batch,
    steps=steps,
    seeds=seeds,
    offset=offset,
    aux=aux,
    hook=hook,
  )

  def acc(p, r):
    return 100.0 - np.asarray(_evaluate(graphdef, p, r, xt, yt)["error"])

  t0 = time.perf_counter()
  p, r = fit(p, r, plain, pre, 0)  # the trained baseline
  p_g, r_g = fit(p, r, global_l1, sparse, 1)  # global sparsity training (network slimming)
  masks = jax.vmap(lambda q: smallest_groups(q, groups, fraction))(p_g)  # one per seed
  p_g2, r_g2 = fit(p_g, r_g, global_l1, sparse, 2)  # as many more steps, global
  p_ms, r_ms = fit(p_g, r_g, masked_l1, sparse, 2, aux=masks)  # MaskSparsity, same steps
  rows = {"baseline (no pruning)": {"test_acc": acc(p, r)}}
  prune = jax.vmap(_prune)
  for name, (q, s) in {
    f"global L1, {sparse} steps": (p_g, r_g),
    f"global L1, {2 * sparse} steps": (p_g2, r_g2),
    f"global L1 {sparse} + MaskSparsity {sparse}": (p_ms, r_ms),
  }.items():
    qf, sf = fit(prune(q, masks), s, plain, finetune, 4, aux=masks, hook=_prune)
    scales = lambda q: jnp.concatenate([q["n1"]["scale"][...], q["n2"]["scale"][...]], axis=-1)
    m = np.concatenate([np.asarray(masks[0]), np.asarray(masks[1])], axis=-1)
    sc = np.abs(np.asarray(scales(q)))
    rows[name] = {
      "test_acc_before_pruning": acc(q, s),
      "test_acc_pruned": acc(prune(q, masks), s),
      "test_acc_pruned_finetuned": acc(qf, sf),
      "max_abs_masked_scale": np.where(m, sc, 0).max(-1),
      "mean_abs_kept_scale": (sc * ~m).sum(-1) / (~m).sum(-1),
    }
  out = {
    "setting": {
      "model": f"MLP 64-{width}-{width}-10 with batch norm (momentum 0.9)",
      "optimizer": "SGD momentum 0.9, lr 0.05, weight decay 1e-4, batch 64",
      "stages": f"baseline {pre} steps; global L1 (lambda {lam}, optim.mask_sparsity with an "
      f"all-true mask) on both BN scale vectors {sparse} steps; mask = the {fraction:.0%} "
      f"smallest |gamma| of all 2 x {width} channels (optim.pruning.smallest_groups); then "
      f"{sparse} more steps of global L1 or of MaskSparsity (masked L1, same lambda); "
      "pruning = the masked channels removed (gamma and beta set to 0, their constant "
      f"output relu(beta) folded into the next layer's bias); fine-tuning {finetune} steps "
      "with them held at 0",
      "seeds": seeds,
    },
    "rows": {name: _summary(v) for name, v in rows.items()},
    "seconds": round(time.perf_counter() - t0, 1),
  }
  names = list(rows)[1:]
  out["paired_masksparsity_minus_global_equal_steps"] = {
    k: _paired(rows[names[1]][k], rows[names[2]][k])
    for k in ("test_acc_before_pruning", "test_acc_pruned", "test_acc_pruned_finetuned")
  }
  for name, row in out["rows"].items():
    print(f"  {name}: " + "  ".join(f"{k} {_fmt(v)}" for k, v in row.items()), flush=True)
  return out


STUDIES = {
  "regime_gbn": study_regime_gbn,
  "multi_sample_dropout": study_multi_sample_dropout,
  "pskd": study_pskd,
  "mask_sparsity": study_mask_sparsity,
}
