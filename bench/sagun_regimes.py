"""Sagun et al.'s "about k outliers" in the regimes the paper and its follow-ups describe.

Run: .venv/bin/python bench/sagun_regimes.py [--quick]    (prints a table, writes
bench/results/sagun_regimes.json; ``--quick``: k = 4 only, fewer steps, to the temporary
directory). CPU, a few minutes.

``optim.curvature.run_tour`` trains a small ReLU MLP on well separated Gaussian clusters and
finds outlier counts that do not track k (1, 3, 2, 3, 6 for k = 2, 3, 4, 6, 8). Sagun et al.
(arXiv:1706.04454) and Papyan ("Measurements of Three-Level Hierarchical Structure in the
Outliers in the Spectrum of Deepnet Hessians", arXiv:1901.08244) attribute the outliers to
the class structure of the Gauss-Newton part G = J^T H_L J of the Hessian: C classes give
about C (or C - 1) outliers, from the class means of the logit gradients. This study tries:

- the tour's separated clusters (separation 3, noise 1) and overlapping ones (separation 0.3:
  centers about 1.9 noise standard deviations apart in 20 dimensions, so the loss stays > 0),
- the tour's network (two hidden layers of 24) and a larger one (two of 128),
- the full Hessian H and the generalized Gauss-Newton G (``optim.curvature.ggn_matvec``),
- the demo's digits classifier (10 classes; restored from the demo cache) on 512 training
  digits.

Outliers: the tour's rule, fixed in advance (the largest multiplicative gap among the top
2k + 2 Ritz values of one Lanczos run), plus the ratio theta_{k-1} / theta_{k+1} that shows
whether a gap sits at k - 1 or k (Papyan's C - 1 / C).
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from _timing import output_path

from optim import curvature
from optim.curvature import _tour

# (name, cluster separation, hidden width)
REGIMES = (
  ("separated, 24-24", 3.0, 24),
  ("overlapping, 24-24", 0.3, 24),
  ("separated, 128-128", 3.0, 128),
  ("overlapping, 128-128", 0.3, 128),
)


def ritz_top(op, key, num_iters: int) -> np.ndarray:
  """The Ritz values of one Lanczos run, largest first (the extreme ones converge first)."""
  slq = curvature.slq_density(op, key=key, num_iterations=num_iters, num_probes=1)
  live = np.asarray(slq.weights[0]) > 0
  return np.sort(np.asarray(slq.nodes[0], np.float64)[live])[::-1]


def summarize(ritz: np.ndarray, k: int) -> dict:
  top = ritz[: 2 * k + 2]
  gap = lambda i: float(top[i - 1] / top[i]) if 0 < i < top.size and top[i] > 0 else None
  return {
    "outliers": _tour.count_outliers(top),
    "top": [float(v) for v in top],
    "gap_after_k_minus_1": gap(k - 1),
    "gap_after_k": gap(k),
  }


def mlp_rows(quick: bool) -> list[dict]:
  ks = (4,) if quick else (4, 10)
  steps = 300 if quick else 3000
  dim, n_per_class = 20, 64
  loss_z = lambda z, y: jnp.mean(curvature.softmax_nll(z, y))
  rows = []
  for name, separation, hidden in REGIMES:
    for k in ks:
      t0 = time.perf_counter()
      key = jax.random.key(k)
      k_data, k_init, k_h, k_g = jax.random.split(key, 4)
      batch = _tour.make_clusters(k_data, k, n_per_class, dim, separation=separation)
      params, losses = _tour.train_mlp(k_init, batch, sizes=(dim, hidden, hidden, k), steps=steps)
      acc = float(jnp.mean(jnp.argmax(_tour._mlp(params, batch[0]), -1) == batch[1]))
      num_iters = 40 if quick else 80
      hess = curvature.hessian_matvec(_tour._loss, params, batch)
      ggn = curvature.ggn_matvec(_tour._mlp, loss_z, params, batch)
      row = {
        "regime": name,
        "k": k,
        "num_params": int(sum(x.size for x in jax.tree.leaves(params))),
        "steps": steps,
        "final_loss": float(losses[-1]),
        "train_accuracy": acc,
        "hessian": summarize(ritz_top(hess, k_h, num_iters), k),
        "ggn": summarize(ritz_top(ggn, k_g, num_iters), k),
        "seconds": time.perf_counter() - t0,
      }
      rows.append(row)
      show(row)
  return rows


def digits_row(quick: bool) -> dict:
  """The demo's cached digits classifier: 10 classes, Hessian and GGN on training digits."""
  import optax
  from _digits import demo_models
  from flax import nnx

  from jaxdiff.demo._config import DemoConfig

  config, data, models, _ = demo_models(DemoConfig.small() if quick else DemoConfig.full())
  gc, params = nnx.split(models.classifier)
  n = 128 if quick else 512
  batch = (jnp.asarray(data.train_x[:n]), jnp.asarray(data.train_y[:n]))
  model = lambda p, x: nnx.merge(gc, p)(x)
  loss_z = lambda z, y: optax.softmax_cross_entropy_with_integer_labels(z, y).mean()
  loss = lambda p, b: loss_z(model(p, b[0]), b[1])
  t0 = time.perf_counter()
  acc = float(jnp.mean(jnp.argmax(model(params, batch[0]), -1) == batch[1]))
  k_h, k_g = jax.random.split(jax.random.key(0))
  num_iters = 30 if quick else 80
  row = {
    "regime": f"digits classifier ({config.classifier_steps} steps)",
    "k": 10,
    "num_params": int(sum(np.size(x) for x in jax.tree.leaves(params))),
    "examples": n,
    "train_accuracy": acc,
    "final_loss": float(loss(params, batch)),
    "hessian": summarize(
      ritz_top(curvature.hessian_matvec(loss, params, batch), k_h, num_iters), 10
    ),
    "ggn": summarize(
      ritz_top(curvature.ggn_matvec(model, loss_z, params, batch), k_g, num_iters), 10
    ),
  }
  row["seconds"] = time.perf_counter() - t0
  show(row)
  return row


def show(r: dict) -> None:
  f = lambda v: "-" if v is None else f"{v:.1f}"
  print(
    f"{r['regime']:<34} k={r['k']:2d} acc {r['train_accuracy']:.3f} loss {r['final_loss']:.2e} | "
    f"H: {r['hessian']['outliers']:2d} (gaps k-1 {f(r['hessian']['gap_after_k_minus_1'])}, "
    f"k {f(r['hessian']['gap_after_k'])}) | G: {r['ggn']['outliers']:2d} "
    f"(gaps k-1 {f(r['ggn']['gap_after_k_minus_1'])}, k {f(r['ggn']['gap_after_k'])})"
  )


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="k = 4 only, few steps")
  quick = ap.parse_args().quick
  rows = mlp_rows(quick)
  rows.append(digits_row(quick))
  path = output_path("sagun_regimes.json", quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  result = {
    "papers": ["Sagun et al., arXiv:1706.04454", "Papyan, arXiv:1901.08244"],
    "outlier_rule": "largest ratio gap among the top 2k+2 Ritz values (one Lanczos run)",
    "rows": rows,
    "backend": jax.default_backend(),
    "unix_time": time.time(),
  }
  path.write_text(json.dumps(result, indent=2))
  print(f"\nwrote {path}")


if __name__ == "__main__":
  main()
