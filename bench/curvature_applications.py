"""What curvature is for, measured on the digits: mixed precision, data pruning, domain shift,
and which optimizer survives quantization.

Four studies on sklearn's 8x8 digits (``jaxdiff.models.load_digits``) with a small MLP
(64-64-32-10, 6.6k parameters, plain JAX), every number an average over seeds:

1. Mixed precision at equal model size: HAWQ-V2 (Hutchinson block traces), HAWQ (block top
   eigenvalues), HAWQ-V2 + inter-layer terms, against uniform widths and random
   allocations. All 4^3 configurations of the three weight matrices at widths 2/3/4/8 are
   evaluated, so each method's pick is ranked against the best one that fits the budget.
2. Data Diet: prune 30/50/70 % of the training set by EL2N (after a few epochs) or GraNd
   (at initialization), both averaged over the paper's 10 initializations, by the input
   norm (Kirsch 2023's baseline, arXiv:2303.14753) or at random; retrain from scratch. Why
   GraNd at initialization fails: the classes of the kept set at 70% pruning and the
   Spearman correlation of each score with the input norm.
3. Domain generalization: four domains built from the digits (upright, rotated 30 and 60
   degrees, thickened strokes); leave one domain out, train on the other three with ERM,
   HGP or Hutchinson alignment of the classifier head, report accuracy on the held-out one.
4. Optimizers under quantization: AdamW, SGD, AdamP, diffGrad, Sophia, AdaHessian and
   PerpGrad+AdamW train the same network; post-training quantization at 8/4/3 bits and a
   short QAT at 4/3 bits; degradation next to the weights' max-to-mean ratio and
   kurtosis, with Spearman rank correlations.

Run: ``.venv/bin/python bench/curvature_applications.py [--quick]`` (prints tables, writes
``bench/results/curvature_applications.json``; ``--quick``: fewer steps and seeds, written
to the temporary directory).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.ndimage
import scipy.stats
from _timing import output_path

import optim
from jaxdiff.models import load_digits
from optim import data_scores, quant
from optim.curvature import hessian_alignment

SIZES = (64, 64, 32, 10)
WEIGHTS = [{"w": True, "b": False}] * (len(SIZES) - 1)  # quantized layers: weight matrices
CANDIDATE_BITS = (2, 3, 4, 8)


def settings(quick: bool) -> dict:
  if quick:
    return dict(
      steps=150,
      seeds=1,
      prune_seeds=1,
      dg_steps=300,
      qat_steps=30,
      probes=30,
      score_runs=2,
      el2n_steps=20,
      dg_weights=(0.1, 1.0),
    )
  return dict(
    steps=400,
    seeds=3,
    prune_seeds=3,
    dg_steps=400,
    qat_steps=100,
    probes=200,
    score_runs=10,  # Paul et al. average both scores over 10 initializations
    el2n_steps=60,
    dg_weights=(0.01, 0.1, 1.0),
  )


# ---------------------------------------------------------------------------------------
# Model and training.


def init_mlp(key, sizes=SIZES):
  params = []
  for k, (a, b) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
    params.append({"w": jax.random.normal(k, (a, b)) * np.sqrt(2.0 / a), "b": jnp.zeros(b)})
  return params


def features(params, x):
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  return x


def apply(params, x):
  return features(params, x) @ params[-1]["w"] + params[-1]["b"]


def loss_fn(params, x, y):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y))


@jax.jit
def accuracy(params, x, y):
  return jnp.mean(jnp.argmax(apply(params, x), -1) == y)


def weight_bits(b):
  return [{"w": b, "b": None}] * (len(SIZES) - 1)


def make_trainer(tx, steps: int, batch: int = 128, qat_bits: int | None = None):
  """A jitted ``(params, key, x, y, probs) -> params``: ``steps`` mini-batch steps with
  indices drawn from ``probs`` (uniform over the kept examples when pruning)."""
  tx = optax.with_extra_args_support(tx)
  quantize = (
    (lambda p: p)
    if qat_bits is None
    else (lambda p: quant.quantize_params(p, weight_bits(qat_bits), axis=-1))
  )

  @jax.jit
  def run(params, key, x, y, probs):
    def step(carry, k):
      params, state = carry
      idx = jax.random.choice(k, x.shape[0], (batch,), p=probs)
      f = lambda p: loss_fn(quantize(p), x[idx], y[idx])
      g = jax.grad(f)(params)
      u, state = tx.update(g, state, params, obj_fn=f)
      return (optax.apply_updates(params, u), state), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(key, steps))
    return params

  return run


# ---------------------------------------------------------------------------------------
# 1. Mixed precision.


def study_mixed_precision(d, s) -> dict:
  x, y, xt, yt = d
  train = make_trainer(optax.adam(3e-3), s["steps"])
  uniform = np.full(x.shape[0], 1.0 / x.shape[0])
  configs = list(itertools.product(CANDIDATE_BITS, repeat=len(SIZES) - 1))
  sizes = [a * b for a, b in zip(SIZES[:-1], SIZES[1:])]
  size_of = lambda c: sum(n * b for n, b in zip(sizes, c))
  budgets = {"avg 2.5 bits": int(2.5 * sum(sizes)), "avg 3 bits": 3 * sum(sizes)}
  rows = {
    name: {
      k: []
      for k in (
        "hawq_v2",
        "hawq",
        "interlayer",
        "uniform",
        "random",
        "best",
        "rank_hawq_v2",
        "float",
      )
    }
    for name in budgets
  }
  picks = {name: {"hawq_v2": [], "hawq": [], "interlayer": []} for name in budgets}
  for seed in range(s["seeds"]):
    params = train(init_mlp(jax.random.key(seed)), jax.random.key(100 + seed), x, y, uniform)
    calib = (x[:512], y[:512])
    kw = dict(bits=CANDIDATE_BITS, layers=WEIGHTS, axis=-1, key=seed)
    v2 = quant.layer_sensitivity(loss_fn, params, *calib, num_probes=s["probes"], **kw)
    v1 = quant.layer_sensitivity(loss_fn, params, *calib, variant="hawq", **kw)
    cross = quant.interlayer_sensitivity(
      loss_fn, params, *calib, bits=CANDIDATE_BITS, layers=WEIGHTS, axis=-1
    )
    acc = {
      c: float(accuracy(quant.quantize_params(params, weight_bits_config(c), axis=-1), xt, yt))
      for c in configs
    }
    for name, budget in budgets.items():
      r = rows[name]
      feasible = [c for c in configs if size_of(c) <= budget]
      near = [c for c in feasible if size_of(c) >= 0.85 * budget]
      a2 = quant.pareto_bit_allocation(v2, budget).choice
      a1 = quant.pareto_bit_allocation(v1, budget).choice
      ai = quant.pareto_bit_allocation(v2, budget, cross=np.asarray(cross)).choice
      uni = max((c for c in feasible if len(set(c)) == 1), key=size_of)
      r["hawq_v2"].append(acc[a2])
      r["hawq"].append(acc[a1])
      r["interlayer"].append(acc[ai])
      r["uniform"].append(acc[uni])
      r["random"].append(float(np.mean([acc[c] for c in near])))
      r["best"].append(max(acc[c] for c in feasible))
      r["rank_hawq_v2"].append(1 + sum(acc[c] > acc[a2] for c in feasible))
      r["float"].append(float(accuracy(params, xt, yt)))
      picks[name]["hawq_v2"].append(a2)
      picks[name]["hawq"].append(a1)
      picks[name]["interlayer"].append(ai)
    rows_curv = np.asarray(v2.curvature).tolist()
  out = {name: {k: float(np.mean(v)) for k, v in r.items()} for name, r in rows.items()}
  for name in budgets:
    out[name]["picks"] = picks[name]
    out[name]["feasible_configs"] = sum(size_of(c) <= budgets[name] for c in configs)
    out[name]["budget_bits"] = budgets[name]
  out["trace_per_param_last_seed"] = rows_curv
  out["layer_sizes"] = sizes
  return out


def weight_bits_config(config):
  return [{"w": b, "b": None} for b in config]


# ---------------------------------------------------------------------------------------
# 2. Data Diet pruning.


def study_pruning(d, s) -> dict:
  x, y, xt, yt = d
  n = x.shape[0]
  runs = jax.vmap(init_mlp)(jax.random.split(jax.random.key(7), s["score_runs"]))
  early = make_trainer(optax.adam(3e-3), s["el2n_steps"])
  uniform = np.full(n, 1.0 / n)
  trained = jax.vmap(lambda p, k: early(p, k, x, y, uniform))(
    runs, jax.random.split(jax.random.key(8), s["score_runs"])
  )
  scores = {
    "el2n": np.asarray(data_scores.el2n(apply, trained, (x, y), stacked=True)),
    "grand": np.asarray(data_scores.grand(apply, runs, (x, y), stacked=True)),
    # Kirsch (2023): GraNd at initialization tracks the input norm; as a score of its own.
    "input_norm": np.linalg.norm(x, axis=-1),
  }
  train = make_trainer(optax.adam(3e-3), s["steps"])
  out = {"full": []}
  for seed in range(s["prune_seeds"]):
    p = train(init_mlp(jax.random.key(20 + seed)), jax.random.key(40 + seed), x, y, uniform)
    out["full"].append(float(accuracy(p, xt, yt)))
  kept_per_class = {}
  for pruned in (0.3, 0.5, 0.7):
    for name in ("el2n", "grand", "input_norm", "random"):
      accs = []
      for seed in range(s["prune_seeds"]):
        if name == "random":
          keep = data_scores.keep_indices(np.zeros(n), 1 - pruned, variant="random", key=seed)
        else:
          keep = data_scores.keep_indices(scores[name], 1 - pruned)
        if seed == 0:
          counts = np.bincount(y[np.asarray(keep)], minlength=10)
          kept_per_class[f"{name}@{int(pruned * 100)}"] = counts.tolist()
        probs = np.zeros(n)
        probs[keep] = 1.0 / len(keep)
        p = train(init_mlp(jax.random.key(20 + seed)), jax.random.key(40 + seed), x, y, probs)
        accs.append(float(accuracy(p, xt, yt)))
      out[f"{name}@{int(pruned * 100)}"] = accs
  summary = {k: float(np.mean(v)) for k, v in out.items()}
  rho = lambda a, b: float(scipy.stats.spearmanr(scores[a], scores[b])[0])  # noqa: E731
  summary["score_spearman_el2n_grand"] = rho("el2n", "grand")
  summary["score_spearman_grand_input_norm"] = rho("grand", "input_norm")
  summary["score_spearman_el2n_input_norm"] = rho("el2n", "input_norm")
  return {
    "mean": summary,
    "per_seed": out,
    "class_counts_full": np.bincount(y, minlength=10).tolist(),
    # kept examples per digit class (0-9); deterministic scores keep the same set every seed
    "kept_per_class": kept_per_class,
  }


# ---------------------------------------------------------------------------------------
# 3. Domain generalization.

DOMAINS = ("upright", "rot30", "rot60", "thick")


def make_domain(images: np.ndarray, name: str) -> np.ndarray:
  """The digits (in [-1, 1], shape (n, 8, 8)) as seen in one domain, flattened."""
  z = images + 1.0  # background 0 so rotation and dilation pad with background
  if name.startswith("rot"):
    z = scipy.ndimage.rotate(z, float(name[3:]), axes=(1, 2), reshape=False, order=1)
  elif name == "thick":
    z = scipy.ndimage.grey_dilation(z, size=(1, 2, 2))
  return (np.clip(z, 0.0, 2.0) - 1.0).reshape(len(images), -1).astype(np.float32)


def study_domains(digits, s) -> dict:
  xs = {k: make_domain(digits.train_x, k) for k in DOMAINS}
  xts = {k: make_domain(digits.test_x, k) for k in DOMAINS}
  y, yt = np.asarray(digits.train_y), np.asarray(digits.test_y)
  batch = 64

  def head_loss(head, b):
    feats, labels = b
    logits = feats @ head["w"] + head["b"]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

  def make(variant, weight):
    tx = optax.adam(3e-3)

    @jax.jit
    def run(params, key, xd, y):
      def step(carry, xs):
        params, state = carry
        i, k = xs
        ks, kp = jax.random.split(k)
        idx = jax.random.randint(ks, (xd.shape[0], batch), 0, xd.shape[1])
        xb = jnp.take_along_axis(xd, idx[:, :, None], axis=1)
        yb = y[idx]

        def total(p):
          feats = jax.vmap(lambda xx: features(p, xx))(xb)
          domains = (feats, yb)
          if variant == "erm":
            return jnp.mean(jax.vmap(lambda b: head_loss(p[-1], b))(domains))
          pen = hessian_alignment(head_loss, p[-1], domains, variant=variant, key=kp, num_probes=4)
          return pen.loss + w_now * (pen.hessian + pen.gradient)

        # As in the paper's code (from IRM's): ERM first, the penalty from a third of the way.
        w_now = jnp.where(i >= s["dg_steps"] // 3, weight, 0.0)
        g = jax.grad(total)(params)
        u, state = tx.update(g, state, params)
        return (optax.apply_updates(params, u), state), None

      steps = (jnp.arange(s["dg_steps"]), jax.random.split(key, s["dg_steps"]))
      (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), steps)
      return params

    return run

  methods = [("erm", 0.0)] + [(v, w) for v in ("hgp", "hutchinson") for w in s["dg_weights"]]
  out = {}
  for variant, weight in methods:
    name = variant if variant == "erm" else f"{variant} (w={weight:g})"
    run = make(variant, weight)
    accs = {}
    for held in DOMAINS:
      train_domains = [k for k in DOMAINS if k != held]
      xd = jnp.stack([xs[k] for k in train_domains])
      per_seed = []
      for seed in range(s["seeds"]):
        p = run(init_mlp(jax.random.key(60 + seed)), jax.random.key(80 + seed), xd, y)
        per_seed.append(float(accuracy(p, xts[held], yt)))
      accs[held] = float(np.mean(per_seed))
    accs["mean"] = float(np.mean([accs[k] for k in DOMAINS]))
    out[name] = accs
  return out


# ---------------------------------------------------------------------------------------
# 4. Optimizers under quantization.


def optimizers():
  return {
    "adamw": optax.adamw(3e-3, weight_decay=1e-4),
    "sgd": optax.sgd(0.05, momentum=0.9),
    "adamp": optim.adamp(3e-3),
    "diffgrad": optim.diffgrad(3e-3),
    "sophia": optim.sophia(3e-3, weight_decay=1e-4, update_interval=5, key=0),
    "adahessian": optim.adahessian(0.02, key=0),
    "perp_grad+adamw": optax.chain(optim.perp_grad(), optax.adamw(3e-3, weight_decay=1e-4)),
  }


def weight_stats(params) -> tuple[float, float]:
  """Mean over weight matrices of max|w| / mean|w| and of the excess kurtosis."""
  mmr, kurt = [], []
  for layer in params:
    w = np.asarray(layer["w"]).ravel()
    mmr.append(np.max(np.abs(w)) / np.mean(np.abs(w)))
    kurt.append(scipy.stats.kurtosis(w))
  return float(np.mean(mmr)), float(np.mean(kurt))


def study_optimizers(d, s) -> dict:
  x, y, xt, yt = d
  uniform = np.full(x.shape[0], 1.0 / x.shape[0])
  out = {}
  for name, tx in optimizers().items():
    train = make_trainer(tx, s["steps"])
    qat = {b: make_trainer(tx, s["qat_steps"], qat_bits=b) for b in (4, 3)}
    rec = {k: [] for k in ("float", "ptq8", "ptq4", "ptq3", "qat4", "qat3", "mmr", "kurtosis")}
    for seed in range(s["seeds"]):
      p = train(init_mlp(jax.random.key(seed)), jax.random.key(100 + seed), x, y, uniform)
      rec["float"].append(float(accuracy(p, xt, yt)))
      for b in (8, 4, 3):
        q = quant.quantize_params(p, weight_bits(b), axis=-1)
        rec[f"ptq{b}"].append(float(accuracy(q, xt, yt)))
      for b in (4, 3):
        pq = qat[b](p, jax.random.key(200 + seed), x, y, uniform)
        rec[f"qat{b}"].append(
          float(accuracy(quant.quantize_params(pq, weight_bits(b), axis=-1), xt, yt))
        )
      mmr, kurt = weight_stats(p)
      rec["mmr"].append(mmr)
      rec["kurtosis"].append(kurt)
    out[name] = {k: float(np.mean(v)) for k, v in rec.items()}
  names = list(out)
  corr = {}
  for b in (4, 3):
    drop = [out[n]["float"] - out[n][f"ptq{b}"] for n in names]
    for stat in ("mmr", "kurtosis"):
      rho, pval = scipy.stats.spearmanr([out[n][stat] for n in names], drop)
      corr[f"ptq{b}_drop~{stat}"] = {"rho": float(rho), "p": float(pval)}
  return {"optimizers": out, "spearman": corr}


# ---------------------------------------------------------------------------------------


def _table(title, header, rows):
  print(f"\n{title}")
  print(" | ".join(header))
  for r in rows:
    print(" | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="few steps and one seed: proves it runs")
  ap.add_argument("--only", default="", help="comma-separated subset of mp,prune,dg,opt")
  args = ap.parse_args()
  s = settings(args.quick)
  digits = load_digits()
  d = (
    np.asarray(digits.train_x).reshape(-1, 64),
    np.asarray(digits.train_y),
    np.asarray(digits.test_x).reshape(-1, 64),
    np.asarray(digits.test_y),
  )
  only = set(args.only.split(",")) if args.only else {"mp", "prune", "dg", "opt"}
  results, times = {"settings": s}, {}
  t0 = time.perf_counter()
  if "mp" in only:
    t = time.perf_counter()
    mp = results["mixed_precision"] = study_mixed_precision(d, s)
    times["mixed_precision"] = time.perf_counter() - t
    for name in ("avg 2.5 bits", "avg 3 bits"):
      r = mp[name]
      _table(
        f"1. Mixed precision, budget {name} ({r['budget_bits']} bits): test accuracy",
        ["float", "uniform", "random", "HAWQ", "HAWQ-V2", "HAWQ-V2+inter", "best", "V2 rank"],
        [
          [
            r["float"],
            r["uniform"],
            r["random"],
            r["hawq"],
            r["hawq_v2"],
            r["interlayer"],
            r["best"],
            f"{r['rank_hawq_v2']:.1f}/{r['feasible_configs']}",
          ]
        ],
      )
  if "prune" in only:
    t = time.perf_counter()
    pr = results["pruning"] = study_pruning(d, s)
    times["pruning"] = time.perf_counter() - t
    m = pr["mean"]
    _table(
      f"2. Data Diet (full data: {m['full']:.3f}): test accuracy after pruning",
      ["pruned", "EL2N", "GraNd", "input norm", "random"],
      [
        [f"{p}%", m[f"el2n@{p}"], m[f"grand@{p}"], m[f"input_norm@{p}"], m[f"random@{p}"]]
        for p in (30, 50, 70)
      ],
    )
    print(f"  per class in the full set: {pr['class_counts_full']}")
    for k, v in pr["kept_per_class"].items():
      if k.endswith("@70"):
        print(f"  kept per class, {k}: {v} (min {min(v)})")
    for k in ("el2n_grand", "grand_input_norm", "el2n_input_norm"):
      print(f"  Spearman {k}: {m['score_spearman_' + k]:.2f}")
  if "dg" in only:
    t = time.perf_counter()
    dg = results["domain_generalization"] = study_domains(digits, s)
    times["domain_generalization"] = time.perf_counter() - t
    _table(
      "3. Leave-one-domain-out accuracy on the held-out domain",
      ["method", *DOMAINS, "mean"],
      [[k, *[v[dm] for dm in DOMAINS], v["mean"]] for k, v in dg.items()],
    )
  if "opt" in only:
    t = time.perf_counter()
    op = results["optimizers_under_quantization"] = study_optimizers(d, s)
    times["optimizers_under_quantization"] = time.perf_counter() - t
    _table(
      "4. Optimizers under quantization: test accuracy",
      ["optimizer", "float", "PTQ8", "PTQ4", "PTQ3", "QAT4", "QAT3", "max/mean", "kurtosis"],
      [
        [k, *[v[c] for c in ("float", "ptq8", "ptq4", "ptq3", "qat4", "qat3", "mmr", "kurtosis")]]
        for k, v in op["optimizers"].items()
      ],
    )
    for k, v in op["spearman"].items():
      print(f"  Spearman {k}: rho = {v['rho']:.2f} (p = {v['p']:.2f})")
  times["total"] = time.perf_counter() - t0
  results["seconds"] = times
  print(f"\ntimes (s): {json.dumps({k: round(v, 1) for k, v in times.items()})}")
  path = output_path("curvature_applications.json", args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  if args.only and path.exists():  # a subset: keep the other studies' results
    old = json.loads(path.read_text())
    seconds = {**old.get("seconds", {}), **times}
    seconds["total"] = sum(v for k, v in seconds.items() if k != "total")
    results = {**old, **results, "seconds": seconds}
  path.write_text(json.dumps(results, indent=1))
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
