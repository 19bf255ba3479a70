"""What the demo measures: sample metrics, the rules x solvers grid, the scale sweep and
the one-dimensional studies, the classifier's Hessian spectrum and the Sagun et al. tour."""

from __future__ import annotations

import inspect
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxdiff import guidance, metrics
from jaxdiff.demo._config import DemoConfig, rule_label
from jaxdiff.demo._sampling import Sampler
from jaxdiff.demo._training import Models
from jaxdiff.models import DigitClassifier, Digits
from optim import curvature

__all__ = [
  "Evaluator",
  "curvature_tour",
  "hessian_spectrum",
  "sample_grid",
  "scale_studies",
  "scale_sweep",
]


class Evaluator:
  """Classifier features, accuracy and the four metrics against held-out digits.

  For samples ``x`` with intended ``labels``: the Frechet distance of the classifier's
  penultimate features to the reference's, class accuracy under the classifier,
  precision/recall (k = 3) and the saturation of the *unclipped* samples.
  """

  def __init__(self, classifier: DigitClassifier, reference: np.ndarray, seed: int):
    gc, cparams = nnx.split(classifier)

    @jax.jit
    def feats_logits(params, x):
      clf = nnx.merge(gc, params)
      return clf.features(x), clf(x)

    self._apply = lambda x: feats_logits(cparams, jnp.asarray(x, jnp.float32))
    self.ref_features = np.asarray(self._apply(reference)[0], np.float64)
    self.key = jax.random.key(seed)

  def __call__(self, x: np.ndarray, labels: np.ndarray) -> dict:
    feats, logits = self._apply(np.clip(x, -1.0, 1.0))
    feats = np.asarray(feats, np.float64)
    with jax.enable_x64(True):
      fd = float(metrics.frechet_distance(feats, self.ref_features))
      precision, recall = metrics.precision_recall(self.ref_features, feats, k=3)
      sat = float(metrics.saturation(np.asarray(x, np.float64)))
    return {
      "fd": fd,
      "accuracy": float(np.mean(np.asarray(logits).argmax(-1) == labels)),
      "precision": float(precision),
      "recall": float(recall),
      "saturation": sat,
    }


def sample_grid(
  config: DemoConfig,
  sampler: Sampler,
  evaluator: Evaluator,
  labels: np.ndarray,
  key,
  log: Callable[[str], None],
) -> tuple[list[dict], dict[tuple[str, str], np.ndarray]]:
  """Every rule x solver at the demo's scales and NFE budget: (metric rows, samples)."""
  grid: list[dict] = []
  samples: dict[tuple[str, str], np.ndarray] = {}
  for solver_name in config.solvers:
    for rule in config.rules:
      steps = config.steps_for(rule, solver_name)
      res = sampler(rule, solver_name, steps, key, scale=config.scale_of(rule))
      row = {
        "rule": rule,
        "solver": solver_name,
        "scale": config.scale_of(rule),
        "steps": steps,
        "nfe": res["nfe"],
        "wall_s": res["wall_s"],
        "compile_s": res["compile_s"],
        **evaluator(res["x"], labels),
      }
      grid.append(row)
      samples[(rule, solver_name)] = res["x"]
      log(
        f"[demo] {solver_name:>8} {rule:>12}: acc {row['accuracy']:.3f}  fd {row['fd']:.3f}  "
        f"sat {row['saturation']:.4f}  nfe {row['nfe']}  {row['wall_s']:.2f} s"
      )
  return grid, samples


def sweep_solver_of(config: DemoConfig) -> str:
  """The solver of the sweep and studies: ``config.sweep_solver`` if sampled, else the first."""
  return config.sweep_solver if config.sweep_solver in config.solvers else config.solvers[0]


def scale_sweep(
  config: DemoConfig, sampler: Sampler, evaluator: Evaluator, labels: np.ndarray, key
) -> tuple[list[dict], dict[str, np.ndarray]]:
  """Metrics vs the CFG-convention ``w`` for ``config.sweep_rules``: (rows, samples at max w)."""
  sweep: list[dict] = []
  high_samples: dict[str, np.ndarray] = {}
  w_max = max(config.sweep_scales)
  solver = sweep_solver_of(config)
  for rule, offset in config.sweep_rules.items():
    if rule not in config.rules:
      continue
    steps = config.steps_for(rule, solver)
    for w in config.sweep_scales:
      scale = w + offset
      res = sampler(rule, solver, steps, key, scale=scale)
      sweep.append(
        {"rule": rule, "w": w, "scale": scale, "nfe": res["nfe"], **evaluator(res["x"], labels)}
      )
      if w == w_max:
        high_samples[f"{rule_label(rule)} (w={w:g})"] = res["x"]
  return sweep, high_samples


def scale_studies(
  config: DemoConfig, sampler: Sampler, evaluator: Evaluator, labels: np.ndarray, key
) -> tuple[list[dict], dict[str, np.ndarray]]:
  """One-dimensional studies on the sweep solver with the grid's noise: (rows, samples).

  CFG++'s lambda, APG's components at the highest ``w`` (Sadat et al., Sec. 4-5), Adaptive
  Guidance's threshold, the classifier-guidance scale; each only when its rule runs.
  """
  studies: list[dict] = []
  high_samples: dict[str, np.ndarray] = {}
  solver = sweep_solver_of(config)
  w_max = max(config.sweep_scales)

  def study(name, setting, rule, **hyper):
    res = sampler(rule, solver, config.steps_for(rule, solver), key, **hyper)
    studies.append(
      {"study": name, "setting": setting, "nfe": res["nfe"], **evaluator(res["x"], labels)}
    )
    return res

  if "cfgpp" in config.rules:
    for lam in config.cfgpp_lambdas:
      res = study("CFG++ lambda", f"lambda = {lam:g}", "cfgpp", scale=lam)
    high_samples[f"CFG++ (lambda={max(config.cfgpp_lambdas):g})"] = res["x"]
  if "apg" in config.rules:
    r, beta = (_setting(config, "apg", guidance.apg, k) for k in ("norm_threshold", "momentum"))
    apg_variants = [
      ("eta=1, r=inf, beta=0 (= CFG)", dict(eta=1.0, norm_threshold=float("inf"), momentum=0.0)),
      ("eta=0 (projection only)", dict(eta=0.0, norm_threshold=float("inf"), momentum=0.0)),
      (f"eta=0, r={r:g}", dict(eta=0.0, momentum=0.0)),
      (f"eta=0, r={r:g}, beta={beta:g} (demo default)", {}),
    ]
    for setting, hyper in apg_variants:
      study(f"APG components, w = {w_max:g}", setting, "apg", scale=w_max, **hyper)
  if "adaptive" in config.rules:
    w = config.scale_of("adaptive")
    for th in config.adaptive_thresholds:
      study(f"AG threshold, w = {w:g}", f"gamma_bar = {th:g}", "adaptive", scale=w, threshold=th)
  if "classifier" in config.rules:
    for sc in config.classifier_scales:
      study("classifier guidance scale", f"s = {sc:g}", "classifier", scale=sc)
  return studies, high_samples


def _setting(config: DemoConfig, rule: str, factory, name: str):
  """``config.rule_kwargs[rule][name]``, else the factory's default for ``name``."""
  default = inspect.signature(factory).parameters[name].default
  return config.rule_kwargs.get(rule, {}).get(name, default)


def hessian_spectrum(config: DemoConfig, models: Models, data: Digits) -> tuple[dict, object]:
  """SLQ density and top eigenvalues of the classifier's training-loss Hessian.

  Returns the summary written to ``metrics.json`` and the :mod:`optim.curvature` density.
  """
  gc, params = nnx.split(models.classifier)
  n = min(config.hessian_examples, len(data.train_x))
  x, y = jnp.asarray(data.train_x[:n]), jnp.asarray(data.train_y[:n])

  def loss(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(gc, p)(x), y).mean()

  op = curvature.hessian_matvec(loss, params, x, y)
  key = jax.random.key(config.seed + 7)
  density = curvature.slq_density(
    op, key=key, num_iterations=config.slq_iters, num_probes=config.slq_probes
  )
  top = curvature.top_eigenvalues(op, key=jax.random.fold_in(key, 1), k=config.top_k)
  eig = np.asarray(top.eigenvalues, np.float64)
  num_params = sum(int(np.size(v)) for v in jax.tree.leaves(params))
  bulk = float(np.median(np.abs(eig))) if eig.size else float("nan")
  summary = {
    "num_params": num_params,
    "examples": n,
    "top_eigenvalues": eig.tolist(),
    "converged": np.asarray(top.converged).tolist(),
    "median_top": bulk,
  }
  return summary, density


def curvature_tour(out: pathlib.Path) -> str:
  """Runs :func:`optim.curvature.run_tour` into ``out/tour``; returns the report's line."""
  tour = curvature.run_tour(out / "tour", small=False)
  counts = ", ".join(
    f"k = {r.get('k')}: {r.get('outliers')} outliers" for r in tour.get("runs", [])
  )
  return (
    f"{counts} (Sagun et al. predict about k; rule: {tour.get('outlier_rule', 'n/a')}); "
    "see `tour/curvature_density.png` and `tour/curvature_tour.json`"
  )
