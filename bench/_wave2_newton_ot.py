"""HESSO, gradient-regularized Newton, Sinkhorn-Newton-Sparse.

``main(quick)`` runs the three studies, prints their tables and returns a dict;
``bench/repro_optim_wave2.py`` calls it. Alone: ``python bench/_wave2_newton_ot.py [--quick]``
writes ``bench/results/wave2_newton_ot.json`` (``--quick``: a temporary file).

* HESSO: sparsity vs test accuracy of a 64-128-10 MLP on digits (hidden units as groups),
  and the accuracy of the sliced smaller network (``prune_groups``), which must be equal.
* Gradient-regularized Newton (Semenov et al.) vs gradient descent (step 1/L) and exact
  Newton (dense Hessian, full steps) on l2-regularized logistic and softmax regression on
  digits, float64: iterations to ``||grad|| <= 1e-8`` and wall time as interleaved ratios.
* SNS (Tang et al.) vs ott-jax's Sinkhorn on uniform point clouds, float64: iterations and
  wall time to the marginal error 1e-6 (the paper claims a large speed-up).
* SNS's switch rule: the default, the old fixed warm start and SNS's Sinkhorn
  alone as ratios to ott-jax's Sinkhorn at epsilon 0.002, 0.005, 0.01, 0.05, n = 512
  (``--only sns_switch``; the real timing wants an idle machine).

``--only STUDY ...`` runs a subset (``hesso``, ``reg_newton``, ``sns``, ``sns_switch``) and
writes ``bench/results/wave2_<studies>.json`` instead.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _timing import compare, output_path  # noqa: E402

import optim  # noqa: E402
from optim.curvature import LinearOperator  # noqa: E402
from optim.ot import sinkhorn_newton_sparse, sq_euclidean_cost  # noqa: E402

GROUPS = [{"l1/w": 1, "l1/b": 0, "l2/w": 0}]


# -------------------------------------------------------------------------------------
# HESSO: sparsity vs accuracy.


def _mlp(p, x):
  return jnp.tanh(x @ p["l1"]["w"] + p["l1"]["b"]) @ p["l2"]["w"] + p["l2"]["b"]


def hesso_study(quick: bool) -> dict:
  from jaxdiff.models import load_digits

  d = load_digits(key=0)
  xtr, ytr = d.train_x.reshape(len(d.train_x), -1), d.train_y
  xte, yte = d.test_x.reshape(len(d.test_x), -1), d.test_y
  k1, k2 = jax.random.split(jax.random.key(0))
  hidden = 128
  init = {
    "l1": {"w": jax.random.normal(k1, (64, hidden)) / 8.0, "b": jnp.zeros(hidden)},
    "l2": {"w": jax.random.normal(k2, (hidden, 10)) / np.sqrt(hidden), "b": jnp.zeros(10)},
  }
  steps = 300 if quick else 1500
  start, pruning, periods = steps // 5, steps // 2, 5
  loss = lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(_mlp(p, x), y).mean()
  acc = lambda p, x, y: float(jnp.mean(jnp.argmax(_mlp(p, x), -1) == y))
  rows = []
  for target in [0.0, 0.5, 0.9] if quick else [0.0, 0.25, 0.5, 0.75, 0.9, 0.95]:
    opt = optim.hesso(1e-2, GROUPS, target, start, pruning, periods, variant="adam")

    @jax.jit
    def run(p):
      def body(carry, _):
        p, s = carry
        u, s = opt.update(jax.grad(loss)(p, xtr, ytr), s, p)
        return (optax.apply_updates(p, u), s), None

      (p, s), _ = jax.lax.scan(body, (p, opt.init(p)), length=steps)
      return p, s

    p, s = run(init)
    small = optim.pruning.prune_groups(p, GROUPS, s)
    kept = int(small["l1"]["w"].shape[1])
    rows.append(
      {
        "target_group_sparsity": target,
        "hidden_kept": kept,
        "params": int(sum(x.size for x in jax.tree.leaves(small))),
        "train_acc": acc(p, xtr, ytr),
        "test_acc": acc(p, xte, yte),
        "test_acc_sliced": acc(small, xte, yte),
      }
    )
  print(
    f"\nHESSO (Adam base, lr 1e-2, {steps} full-batch steps, pruning {start}..{start + pruning}"
    f" in {periods} periods): 64-{hidden}-10 MLP on digits, hidden units as groups"
  )
  print(f"{'target':>7} {'kept':>5} {'params':>7} {'train':>6} {'test':>6} {'sliced':>7}")
  for r in rows:
    print(
      f"{r['target_group_sparsity']:7.2f} {r['hidden_kept']:5d} {r['params']:7d} "
      f"{r['train_acc']:6.3f} {r['test_acc']:6.3f} {r['test_acc_sliced']:7.3f}"
    )
  return {
    "setting": {
      "steps": steps,
      "start": start,
      "pruning_steps": pruning,
      "periods": periods,
      "lr": 1e-2,
      "hidden": hidden,
    },
    "rows": rows,
  }


# -------------------------------------------------------------------------------------
# Gradient-regularized Newton vs GD and exact Newton.


def _problems():
  from jaxdiff.models import load_digits

  d = load_digits(key=0)
  x = np.asarray(d.train_x.reshape(len(d.train_x), -1), np.float64)
  x = np.concatenate([x, np.ones((len(x), 1))], 1)
  y = np.asarray(d.train_y)
  n, dim, mu = len(x), x.shape[1], 1e-3
  xj = jnp.asarray(x)
  gram = xj.T @ xj / n

  s = jnp.asarray(np.where(y >= 5, 1.0, -1.0))
  logistic = lambda w: jnp.mean(jnp.logaddexp(0.0, -s * (xj @ w))) + 0.5 * mu * w @ w
  bound_l = lambda w: LinearOperator(lambda v: gram @ v / 4 + mu * v, w)

  yj = jnp.asarray(y)
  k = 10
  softmax = lambda w: (
    optax.softmax_cross_entropy_with_integer_labels(xj @ w, yj).mean() + 0.5 * mu * jnp.sum(w**2)
  )
  # Boehning's bound: the softmax Hessian is below 1/2 (I - 11^T/K) (x) X^T X / n.
  bound_s = lambda w: LinearOperator(
    lambda v: 0.5 * gram @ (v - v.mean(1, keepdims=True)) + mu * v, w
  )
  lip = lambda scale: float(np.linalg.eigvalsh(np.asarray(gram)).max()) * scale + mu
  return [
    ("logistic (digits >= 5, d=65)", logistic, jnp.zeros(dim), bound_l, lip(0.25)),
    ("softmax (digits, 65x10)", softmax, jnp.zeros((dim, k)), bound_s, lip(0.5)),
  ]


def _gd(f, w0, lr, tol, max_steps):
  def cond(s):
    k, _, g = s
    return (k < max_steps) & (jnp.sqrt(jnp.sum(g**2)) > tol)

  def body(s):
    k, w, g = s
    w = w - lr * g
    return k + 1, w, jax.grad(f)(w)

  k, w, _ = jax.lax.while_loop(cond, body, (0, w0, jax.grad(f)(w0)))
  return k, f(w)


def _exact_newton(f, w0, tol, max_steps):
  shape = w0.shape

  def cond(s):
    k, w, g = s
    return (k < max_steps) & (jnp.sqrt(jnp.sum(g**2)) > tol)

  def body(s):
    k, w, g = s
    flat = lambda v: f(v.reshape(shape))
    h = jax.hessian(flat)(w.reshape(-1))
    w = w - jnp.linalg.solve(h, g.reshape(-1)).reshape(shape)
    return k + 1, w, jax.grad(f)(w)

  k, w, _ = jax.lax.while_loop(cond, body, (0, w0, jax.grad(f)(w0)))
  return k, f(w)


def newton_study(quick: bool) -> dict:
  tol, rows = 1e-8, []
  with jax.enable_x64(True):
    for name, f, w0, bound, lip in _problems():
      gd_steps = 20000 if not quick else 3000
      fns = {
        "reg_newton (exact H, CG)": jax.jit(
          lambda w: optim.loops.reg_newton_minimize(
            f, w, max_iterations=60, tol=tol, cg_max_iterations=200
          )
        ),
        "reg_newton (bound H, CG)": jax.jit(
          lambda w: optim.loops.reg_newton_minimize(
            f, w, max_iterations=200, tol=tol, hessian_fn=bound, cg_max_iterations=200
          )
        ),
        "exact Newton (dense)": jax.jit(lambda w: _exact_newton(f, w, tol, 60)),
        "gradient descent (1/L)": jax.jit(lambda w: _gd(f, w, 1.0 / lip, tol, gd_steps)),
      }
      out = {}
      for label, fn in fns.items():
        r = jax.block_until_ready(fn(w0))
        if isinstance(r, optim.loops.RegNewtonResult):
          k = int(r.n_iters)
          out[label] = {
            "iterations": k,
            "solves": int(jnp.sum(r.tries)),
            "final_grad_norm": float(r.errors[k]),
            "value": float(r.value),
          }
        else:
          out[label] = {"iterations": int(r[0]), "value": float(r[1])}
      times = compare(
        {k: (lambda fn=fn: fn(w0)) for k, fn in fns.items()},
        baseline="exact Newton (dense)",
        rounds=3 if quick else 5,
      )
      for label in fns:
        out[label]["seconds"] = times[label].seconds
        out[label]["time_vs_exact_newton"] = times[label].ratio
      rows.append({"problem": name, "tol": tol, "methods": out})
  print(
    "\nGradient-regularized Newton vs GD and exact Newton, float64, to ||grad|| <= 1e-8 "
    "(time ratios: median of interleaved rounds, measured under load)"
  )
  for r in rows:
    print(f"  {r['problem']}")
    for label, m in r["methods"].items():
      extra = f" solves {m['solves']:4d}" if "solves" in m else " " * 12
      print(
        f"    {label:26s} iters {m['iterations']:6d}{extra}  {m['seconds'] * 1e3:9.1f} ms"
        f"  x{m['time_vs_exact_newton']:.2f} of exact Newton"
      )
  return {"rows": rows}


# -------------------------------------------------------------------------------------
# SNS vs ott-jax Sinkhorn.


SNS_CONFIGS = [(512, 0.01), (1024, 0.01), (2048, 0.01), (512, 0.002), (1024, 0.002)]


def sns_study(quick: bool, configs: list[tuple[int, float]] | None = None) -> dict:
  from ott.geometry import geometry
  from ott.problems.linear import linear_problem
  from ott.solvers.linear import sinkhorn

  rows = []
  configs = configs or ([(256, 0.01)] if quick else SNS_CONFIGS)
  target = 1e-6
  print(
    "\nSNS vs ott-jax Sinkhorn, float64, uniform points in [0,1]^2, "
    f"to marginal error {target} (time ratios: interleaved rounds, under load)"
  )
  with jax.enable_x64(True):
    for n, eps in configs:
      x = jax.random.uniform(jax.random.key(n), (n, 2))
      y = jax.random.uniform(jax.random.key(n + 1), (n, 2))
      cost = sq_euclidean_cost(x, y)
      marg = lambda p: float(jnp.abs(p.sum(1) - 1 / n).sum() + jnp.abs(p.sum(0) - 1 / n).sum())
      ott_fn = jax.jit(
        lambda c: sinkhorn.Sinkhorn(threshold=target, max_iterations=50000)(
          linear_problem.LinearProblem(geometry.Geometry(cost_matrix=c, epsilon=eps))
        )
      )
      ref = jax.block_until_ready(ott_fn(cost))
      fns = {"ott-jax sinkhorn": lambda: ott_fn(cost)}
      row = {
        "n": n,
        "epsilon": eps,
        "ott": {
          "iterations": int(ref.n_iters),
          "converged": bool(ref.converged),
          "marginal_error": marg(ref.matrix),
        },
      }
      for n1, rho in [(50, 0.05), (200, 0.05)] if not quick else [(100, 0.05)]:
        label = f"SNS N1={n1} rho={rho}"
        run = lambda n1=n1, rho=rho: sinkhorn_newton_sparse(
          cost,
          epsilon=eps,
          sinkhorn_num_iterations=n1,
          max_iterations=200,
          rho=rho,
          tol=target,
        )
        out = jax.block_until_ready(run())
        row[label] = {
          "sinkhorn_iterations": n1,
          "newton_iterations": int(out.n_iters),
          "converged": bool(out.converged),
          "marginal_error": marg(out.plan),
          "plan_max_abs_diff_vs_ott": float(jnp.abs(out.plan - ref.matrix).max()),
          "cost_rel_diff_vs_ott": float(
            abs(out.reg_ot_cost - ref.reg_ot_cost) / abs(ref.reg_ot_cost)
          ),
        }
        fns[label] = run
      times = compare(fns, baseline="ott-jax sinkhorn", rounds=3 if quick or n >= 2048 else 5)
      row["ott"]["seconds"] = times["ott-jax sinkhorn"].seconds
      for label in fns:
        if label != "ott-jax sinkhorn":
          row[label]["seconds"] = times[label].seconds
          row[label]["time_vs_ott"] = times[label].ratio
      rows.append(row)
      _print_sns_row(row)
  return {"rows": rows, "target": target}


def _print_sns_row(r: dict) -> None:
  o = r["ott"]
  print(
    f"  n={r['n']}, eps={r['epsilon']}: ott {o['iterations']} iters, {o['seconds']:.3f} s, "
    f"err {o['marginal_error']:.1e}",
    flush=True,
  )
  for label, m in r.items():
    if label.startswith("SNS"):
      print(
        f"    {label}: {m['sinkhorn_iterations']} + {m['newton_iterations']} Newton, "
        f"{m['seconds']:.3f} s (x{m['time_vs_ott']:.2f} of ott), "
        f"converged {m['converged']}, err {m['marginal_error']:.1e}",
        flush=True,
      )


# -------------------------------------------------------------------------------------
# SNS's switch rule vs ott-jax Sinkhorn across epsilon.


SWITCH_EPSILONS = (0.002, 0.005, 0.01, 0.05)


def sns_switch_study(quick: bool) -> dict:
  """Time to marginal error 1e-6 at n = 512 across epsilon: SNS's default (the switch rule),
  the old fixed warm start N1 = 20, and SNS's own Sinkhorn alone, as ratios to ott-jax's
  Sinkhorn (median over interleaved rounds of the per-round ratio). Goal: no ratio above
  ~1.2 for the default, and the large gain at small epsilon kept."""
  from ott.geometry import geometry
  from ott.problems.linear import linear_problem
  from ott.solvers.linear import sinkhorn

  n, target = (128 if quick else 512), 1e-6
  rounds = 2 if quick else 9
  rows = []
  print(
    f"\nSNS switch rule vs ott-jax Sinkhorn, float64, n = {n} uniform points in [0,1]^2, "
    f"to marginal error {target} ({rounds} interleaved rounds, median of per-round ratios)"
  )
  variants = {
    "SNS default (switch rule)": {},
    "SNS N1=20 (fixed warm start)": {"sinkhorn_num_iterations": 20},
    "SNS Sinkhorn only": {"switch_threshold": float("inf"), "sinkhorn_max_iterations": 50000},
  }
  with jax.enable_x64(True):
    x = jax.random.uniform(jax.random.key(n), (n, 2))
    y = jax.random.uniform(jax.random.key(n + 1), (n, 2))
    cost = sq_euclidean_cost(x, y)
    marg = lambda p: float(jnp.abs(p.sum(1) - 1 / n).sum() + jnp.abs(p.sum(0) - 1 / n).sum())
    for eps in SWITCH_EPSILONS:
      ott_fn = jax.jit(
        lambda c, eps=eps: sinkhorn.Sinkhorn(threshold=target, max_iterations=50000)(
          linear_problem.LinearProblem(geometry.Geometry(cost_matrix=c, epsilon=eps))
        )
      )
      ref = jax.block_until_ready(ott_fn(cost))
      fns = {"ott-jax sinkhorn": lambda f=ott_fn: f(cost)}
      row = {
        "n": n,
        "epsilon": eps,
        "ott": {
          "iterations": int(ref.n_iters),
          "converged": bool(ref.converged),
          "marginal_error": marg(ref.matrix),
        },
      }
      for label, kw in variants.items():
        fn = jax.jit(
          lambda c, eps=eps, kw=kw: sinkhorn_newton_sparse(
            c, epsilon=eps, tol=target, max_iterations=200, **kw
          )
        )
        out = jax.block_until_ready(fn(cost))
        errors = np.asarray(out.errors)
        newton = int(out.n_iters)
        row[label] = {
          # errors holds one entry per Sinkhorn iteration, then the hand-over, then one
          # per Newton-phase iteration; the rest is NaN.
          "sinkhorn_iterations": int(np.isfinite(errors).sum()) - 1 - newton,
          "newton_iterations": newton,
          "converged": bool(out.converged),
          "marginal_error": marg(out.plan),
          "plan_max_abs_diff_vs_ott": float(jnp.abs(out.plan - ref.matrix).max()),
        }
        fns[label] = lambda f=fn: f(cost)
      times = compare(fns, baseline="ott-jax sinkhorn", rounds=rounds)
      row["ott"]["seconds"] = times["ott-jax sinkhorn"].seconds
      for label in variants:
        row[label]["seconds"] = times[label].seconds
        row[label]["time_vs_ott"] = times[label].ratio
        row[label]["time_vs_ott_min_max"] = times[label].ratio_min_max
      rows.append(row)
      o = row["ott"]
      print(
        f"  eps={eps}: ott {o['iterations']} iters, {o['seconds'] * 1e3:.1f} ms, "
        f"err {o['marginal_error']:.1e}",
        flush=True,
      )
      for label in variants:
        m = row[label]
        lo, hi = m["time_vs_ott_min_max"]
        print(
          f"    {label:30s} {m['sinkhorn_iterations']:5d} + {m['newton_iterations']:2d} Newton"
          f"  {m['seconds'] * 1e3:8.1f} ms  x{m['time_vs_ott']:.2f} of ott [{lo:.2f}, {hi:.2f}]"
          f"  converged {m['converged']}, err {m['marginal_error']:.1e}",
          flush=True,
        )
  return {"rows": rows, "target": target, "rounds": rounds}


STUDIES = {
  "hesso": hesso_study,
  "reg_newton": newton_study,
  "sns": sns_study,
  "sns_switch": sns_switch_study,
}


def main(quick: bool, only: list[str] | None = None) -> dict:
  return {name: study(quick) for name, study in STUDIES.items() if not only or name in only}


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
  parser.add_argument(
    "--only", nargs="+", choices=sorted(STUDIES), help="run these studies (default: all)"
  )
  args = parser.parse_args()
  result = main(args.quick, args.only)
  name = "wave2_newton_ot.json" if not args.only else f"wave2_{'_'.join(args.only)}.json"
  path = output_path(name, args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=2))
  print(f"\nwrote {path}")
