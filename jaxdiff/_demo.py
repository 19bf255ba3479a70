"""The end-to-end demo behind ``make demo`` / ``python -m jaxdiff demo``.

On sklearn's 8x8 handwritten digits it

1. trains a class-conditional diffusion transformer (with :func:`optim.adamp`), a smaller,
   shorter-trained copy of it (the "bad version" autoguidance needs) and an MLP classifier
   (with :func:`optim.diffgrad`), with tqdm bars and resumable orbax checkpoints in a cache
   directory;
2. samples a grid of guidance rules x solvers at a fixed budget of network evaluations;
3. measures Frechet distance on the classifier's features against held-out digits, class
   accuracy, precision/recall, saturation, evaluations and wall time;
4. writes ``out/``: ``report.md``, ``metrics.json``, PNG sample grids and plots (training
   curves, metrics vs guidance scale, the classifier's Hessian spectrum).

Everything here is plain orchestration of the public API; the numbers in the report are
the ones this run measured.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optim
from jaxdiff import from_v, metrics, sample, schedules, solvers
from jaxdiff import guidance as G
from jaxdiff.models import (
  DigitClassifier,
  DigitDenoiser,
  Digits,
  classifier_loss,
  load_digits,
  train,
  v_prediction_loss,
)

Array = jax.Array

__all__ = [
  "GUIDANCE_NAMES",
  "SOLVER_NAMES",
  "DemoConfig",
  "Models",
  "default_cache_dir",
  "make_guidance",
  "make_solver",
  "prepare_models",
  "run_demo",
  "sample_digits",
]

SOLVER_NAMES = ("ddim", "dpmpp_2m", "unipc")
SOLVER_LABELS = {"ddim": "DDIM", "dpmpp_2m": "DPM-Solver++(2M)", "unipc": "UniPC (bh2)"}
GUIDANCE_NAMES = ("none", "cfg", "apg", "cfgpp", "adaptive", "pag", "autoguidance", "classifier")
GUIDANCE_LABELS = {
  "none": "conditional (no guidance)",
  "cfg": "CFG",
  "apg": "APG",
  "cfgpp": "CFG++",
  "adaptive": "Adaptive Guidance",
  "pag": "PAG",
  "autoguidance": "Autoguidance",
  "classifier": "Classifier (EluCD)",
}
# Network evaluations per step (what the NFE budget is divided by). Adaptive Guidance gets
# CFG's number of steps: its saving is the point of the measurement.
EVALS_PER_STEP = {
  "none": 1,
  "cfg": 2,
  "apg": 2,
  "cfgpp": 2,
  "adaptive": 2,
  "pag": 2,
  "autoguidance": 2,
  "classifier": 1,
}
# APG hyperparameters (Sadat et al. 2024, Sec. 5: eta = 0, reverse momentum beta = -0.5,
# a norm threshold r). r is a per-sample L2 radius of the guidance update in data space;
# for 64-pixel images in [-1, 1] (norm about 6) we use 2.
APG_KW = dict(eta=0.0, norm_threshold=2.0, momentum=-0.5)
ADAPTIVE_THRESHOLD = 0.99  # gamma_bar, Castillo et al. 2023 (0.99 - 0.999)
PAG_CFG_SCALE = 1.0  # PAG alone (no CFG term): 2 evaluations per step


def default_cache_dir() -> pathlib.Path:
  """``$JAXDIFF_CACHE_DIR`` or ``.cache/jaxdiff-demo`` under the working directory."""
  return pathlib.Path(os.environ.get("JAXDIFF_CACHE_DIR", ".cache/jaxdiff-demo"))


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  """Sizes of the demo; :meth:`full` is ``make demo``, :meth:`small` the CI smoke run.

  The cache key of each trained model hashes exactly the fields that determine it, so a
  change of, e.g., the sampling budget reuses the trained networks.
  """

  seed: int = 0
  batch_size: int = 128
  # main denoiser
  dim: int = 64
  depth: int = 2
  num_heads: int = 4
  denoiser_steps: int = 2000
  learning_rate: float = 2e-3
  # the weak model for autoguidance: smaller and trained for fewer steps
  weak_dim: int = 32
  weak_depth: int = 2
  weak_steps: int = 500
  # classifier
  classifier_steps: int = 1500
  classifier_lr: float = 3e-3
  # sampling and evaluation
  samples_per_class: int = 30
  nfe_budget: int = 20
  solvers: tuple[str, ...] = SOLVER_NAMES
  rules: tuple[str, ...] = GUIDANCE_NAMES
  scale: float = 3.0
  cfgpp_lambda: float = 0.6
  pag_scale: float = 2.0
  autoguidance_scale: float = 2.0
  classifier_scale: float = 0.3
  sweep_solver: str = "dpmpp_2m"
  sweep_scales: tuple[float, ...] = (2.0, 3.0, 5.0, 8.0)
  cfgpp_lambdas: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
  adaptive_thresholds: tuple[float, ...] = (0.99, 0.9999, 0.99999)
  classifier_scales: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)
  # curvature
  hessian_examples: int = 512
  slq_iters: int = 80
  slq_probes: int = 2
  top_k: int = 12
  tour: bool = True
  chunk: int = 100
  checkpoint_every: int = 500
  # XLA's CPU backend optimisation level: 1 compiles ~35% faster than the default (2) at
  # the same speed for these small networks; 0 compiles ~3x faster but runs ~2-3x slower
  # (the smoke configuration, where compilation is all the work).
  xla_opt_level: int = 1

  @classmethod
  def full(cls) -> DemoConfig:
    return cls()

  @classmethod
  def small(cls) -> DemoConfig:
    """A few seconds of training: exercises every stage, proves nothing numerically."""
    return cls(
      batch_size=32,
      dim=16,
      depth=1,
      num_heads=2,
      denoiser_steps=20,
      weak_dim=16,
      weak_depth=1,
      weak_steps=20,
      classifier_steps=20,
      samples_per_class=2,
      nfe_budget=4,
      solvers=("dpmpp_2m",),
      sweep_scales=(3.0, 5.0),
      cfgpp_lambdas=(0.6,),
      adaptive_thresholds=(0.99,),
      classifier_scales=(0.3,),
      hessian_examples=64,
      slq_iters=8,
      slq_probes=1,
      top_k=2,
      tour=False,
      chunk=10,
      checkpoint_every=10,
      xla_opt_level=0,
    )

  @property
  def compiler_options(self) -> dict[str, Any]:
    return {"xla_backend_optimization_level": self.xla_opt_level}

  @classmethod
  def from_env(cls) -> DemoConfig:
    """:meth:`small` when ``JAXDIFF_DEMO_SMALL=1``, else :meth:`full`."""
    return cls.small() if os.environ.get("JAXDIFF_DEMO_SMALL", "") == "1" else cls.full()

  def key_of(self, *fields: str) -> str:
    blob = json.dumps({f: getattr(self, f) for f in fields}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


_DENOISER_FIELDS = (
  "xla_opt_level",
  "seed",
  "batch_size",
  "dim",
  "depth",
  "num_heads",
  "denoiser_steps",
  "learning_rate",
  "chunk",
)
_WEAK_FIELDS = (
  "xla_opt_level",
  "seed",
  "batch_size",
  "weak_dim",
  "weak_depth",
  "num_heads",
  "weak_steps",
  "learning_rate",
  "chunk",
)
_CLASSIFIER_FIELDS = (
  "xla_opt_level",
  "seed",
  "batch_size",
  "classifier_steps",
  "classifier_lr",
  "chunk",
)


class Models(NamedTuple):
  """The trained networks and their training histories."""

  schedule: Any
  denoiser: DigitDenoiser
  weak: DigitDenoiser
  classifier: DigitClassifier
  losses: dict[str, np.ndarray]
  resumed: dict[str, int]


def _lr(peak: float, steps: int) -> optax.Schedule:
  warmup = max(1, min(100, steps // 10))
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(steps, warmup + 1), peak / 100)


def prepare_models(
  config: DemoConfig,
  data: Digits,
  cache_dir: str | pathlib.Path,
  *,
  progress: bool = True,
  stop_after: int | None = None,
) -> Models:
  """Trains (or restores from ``cache_dir``) the denoiser, the weak denoiser, the classifier.

  Each model checkpoints under ``cache_dir/<name>-<hash of its config>``; a completed
  checkpoint is restored without training, an incomplete one resumes bit-for-bit.
  """
  cache_dir = pathlib.Path(cache_dir)
  schedule = schedules.vp_cosine()
  xy = (data.train_x, data.train_y)
  c = config

  def fit(name, model, loss, tx, steps, fields, seed_offset):
    return train(
      model,
      loss,
      tx,
      xy,
      steps=steps,
      batch_size=c.batch_size,
      seed=c.seed + seed_offset,
      chunk=c.chunk,
      checkpoint_dir=cache_dir / f"{name}-{c.key_of(*fields)}",
      checkpoint_every=c.checkpoint_every,
      stop_after=stop_after,
      progress=name if progress else False,
      compiler_options=c.compiler_options,
    )

  # One optimizer object per distinct setting: `train` keys its compiled chunk on it, so
  # models of equal architecture and schedule (the smoke configuration) share one compile.
  adamp = functools.lru_cache(maxsize=None)(lambda steps: optim.adamp(_lr(c.learning_rate, steps)))
  net = DigitDenoiser(dim=c.dim, depth=c.depth, num_heads=c.num_heads, rngs=nnx.Rngs(c.seed))
  weak = DigitDenoiser(
    dim=c.weak_dim, depth=c.weak_depth, num_heads=c.num_heads, rngs=nnx.Rngs(c.seed + 1)
  )
  clf = DigitClassifier(rngs=nnx.Rngs(c.seed + 2))
  loss = v_prediction_loss(schedule)
  r_clf = fit(
    "classifier",
    clf,
    classifier_loss(),
    optim.diffgrad(_lr(c.classifier_lr, c.classifier_steps), weight_decay=1e-4),
    c.classifier_steps,
    _CLASSIFIER_FIELDS,
    2,
  )
  r_net = fit(
    "denoiser",
    net,
    loss,
    adamp(c.denoiser_steps),
    c.denoiser_steps,
    _DENOISER_FIELDS,
    0,
  )
  r_weak = fit(
    "weak-denoiser",
    weak,
    loss,
    adamp(c.weak_steps),
    c.weak_steps,
    _WEAK_FIELDS,
    1,
  )
  return Models(
    schedule,
    r_net.model,
    r_weak.model,
    r_clf.model,
    {"denoiser": r_net.losses, "weak denoiser": r_weak.losses, "classifier": r_clf.losses},
    {
      "denoiser": r_net.resumed_from,
      "weak denoiser": r_weak.resumed_from,
      "classifier": r_clf.resumed_from,
    },
  )


# ----------------------------------------------------------------------------------------
# Sampling.


def make_solver(name: str):
  """``"ddim"``, ``"dpmpp_2m"`` or ``"unipc"`` -> a :mod:`jaxdiff.solvers` solver."""
  if name == "ddim":
    return solvers.ddim()
  if name == "dpmpp_2m":
    return solvers.dpmpp_2m()
  if name == "unipc":
    return solvers.unipc()
  raise ValueError(f"unknown solver {name!r}; expected one of {SOLVER_NAMES}")


def make_guidance(
  name: str,
  scale,
  *,
  eta=APG_KW["eta"],
  norm_threshold=APG_KW["norm_threshold"],
  momentum=APG_KW["momentum"],
  threshold=ADAPTIVE_THRESHOLD,
  weak=None,
  classifier_logits=None,
):
  """The demo's guidance rule ``name`` at ``scale`` (``None`` for ``"none"``).

  ``scale`` follows each rule's own convention: CFG's ``w`` for cfg/apg/adaptive/
  autoguidance (``w = 1``: no guidance), PAG's ``s`` (0: none), CFG++'s ``lambda`` in
  ``[0, 1]``, the classifier-guidance scale ``s`` (guiding the *unconditional* model, the
  classic use). ``eta``, ``norm_threshold``, ``momentum`` are APG's, ``threshold`` Adaptive
  Guidance's; all may be traced, so one compiled sampler serves a whole sweep.
  """
  if name == "none":
    return None
  if name == "cfg":
    return G.cfg(scale)
  if name == "apg":
    return G.apg(scale, eta=eta, norm_threshold=norm_threshold, momentum=momentum)
  if name == "cfgpp":
    return G.cfgpp(scale)
  if name == "adaptive":
    return G.adaptive(scale, threshold)
  if name == "pag":
    return G.pag(scale, cfg_scale=PAG_CFG_SCALE)
  if name == "autoguidance":
    if weak is None:
      raise ValueError("autoguidance needs the weak denoiser")
    return G.autoguidance(weak, scale)
  if name == "classifier":
    if classifier_logits is None:
      raise ValueError("classifier guidance needs a classifier")
    return G.classifier(classifier_logits, 10, scale, input="denoised")
  raise ValueError(f"unknown guidance {name!r}; expected one of {GUIDANCE_NAMES}")


def default_scale(config: DemoConfig, name: str) -> float:
  return {
    "none": 0.0,
    "cfg": config.scale,
    "apg": config.scale,
    "adaptive": config.scale,
    "cfgpp": config.cfgpp_lambda,
    "pag": config.pag_scale,
    "autoguidance": config.autoguidance_scale,
    "classifier": config.classifier_scale,
  }[name]


def steps_for_budget(name: str, nfe_budget: int) -> int:
  """Solver steps that spend ``nfe_budget`` evaluations per sample (at least 1)."""
  return max(1, nfe_budget // EVALS_PER_STEP[name])


_HYPER_DEFAULTS = dict(
  scale=1.0,
  eta=APG_KW["eta"],
  norm_threshold=APG_KW["norm_threshold"],
  momentum=APG_KW["momentum"],
  threshold=ADAPTIVE_THRESHOLD,
)


class _Sampler:
  """Compiled samplers, one per (rule, solver, steps); every rule hyperparameter is traced,
  so sweeps over scales, APG's components or AG's threshold reuse one executable."""

  def __init__(self, models: Models, labels: np.ndarray, compiler_options=None):
    self.models = models
    self.compiler_options = compiler_options
    self.labels = jnp.asarray(labels, jnp.int32)
    self.cache: dict[tuple[str, str, int], Any] = {}
    self.results: dict[tuple, dict] = {}
    gd, params = nnx.split(models.denoiser)
    gw, wparams = nnx.split(models.weak)
    gc, cparams = nnx.split(models.classifier)
    self.graphs = (gd, gw, gc)
    self.params = (params, wparams, cparams)

  def _build(self, rule: str, solver_name: str, steps: int):
    gd, gw, gc = self.graphs
    schedule = self.models.schedule
    solver = make_solver(solver_name)
    ts = schedules.timesteps(schedule, steps, spacing="logsnr")
    labels = self.labels
    n = labels.shape[0]

    def run(params, hyper, key):
      p, wp, cp = params
      denoise = from_v(nnx.merge(gd, p), schedule)
      weak = from_v(nnx.merge(gw, wp), schedule)
      clf = nnx.merge(gc, cp)
      rule_obj = make_guidance(rule, **hyper, weak=weak, classifier_logits=clf)
      k_noise, k_sample = jax.random.split(key)
      x_T = jax.random.normal(k_noise, (n, 8, 8))
      out = sample(denoise, solver, x_T, ts, key=k_sample, cond=labels, guidance=rule_obj)
      return out.x, out.nfe

    hyper = {k: jnp.float32(v) for k, v in _HYPER_DEFAULTS.items()}
    lowered = jax.jit(run).lower(self.params, hyper, jax.random.key(0))
    return lowered.compile(self.compiler_options)

  def __call__(self, rule: str, solver_name: str, steps: int, key, **hyper) -> dict:
    unknown = set(hyper) - set(_HYPER_DEFAULTS)
    if unknown:
      raise TypeError(f"unknown hyperparameters {sorted(unknown)}")
    hyper = {**_HYPER_DEFAULTS, **{k: float(v) for k, v in hyper.items()}}
    memo = (rule, solver_name, steps, tuple(sorted(hyper.items())))
    memo += (tuple(np.asarray(jax.random.key_data(key)).ravel()),)
    if memo not in self.results:  # the sweeps revisit the grid's settings: reuse them
      self.results[memo] = self._run(rule, solver_name, steps, key, hyper)
    return self.results[memo]

  def _run(self, rule: str, solver_name: str, steps: int, key, hyper: dict) -> dict:
    k = (rule, solver_name, steps)
    t0 = time.perf_counter()
    if k not in self.cache:
      self.cache[k] = self._build(rule, solver_name, steps)
    t1 = time.perf_counter()
    traced = {name: jnp.float32(v) for name, v in hyper.items()}
    x, nfe = self.cache[k](self.params, traced, key)
    x = np.asarray(jax.block_until_ready(x))
    t2 = time.perf_counter()
    return {"x": x, "nfe": int(nfe), "compile_s": t1 - t0, "wall_s": t2 - t1}


def sample_digits(
  models: Models,
  *,
  guidance: str,
  scale: float,
  solver: str,
  steps: int,
  labels,
  seed: int = 0,
  compiler_options: dict[str, Any] | None = None,
) -> tuple[np.ndarray, int]:
  """Samples digits of the given ``labels`` with one rule and solver: ``(x, nfe)``.

  ``x`` is unclipped, shape ``(len(labels), 8, 8)``, data range ``[-1, 1]``; ``scale``
  follows the rule's convention (see :func:`make_guidance`).
  """
  if guidance not in GUIDANCE_NAMES:
    raise ValueError(f"unknown guidance {guidance!r}; expected one of {GUIDANCE_NAMES}")
  make_solver(solver)
  sampler = _Sampler(models, np.asarray(labels), compiler_options)
  out = sampler(guidance, solver, steps, jax.random.key(seed), scale=scale)
  return out["x"], out["nfe"]


# ----------------------------------------------------------------------------------------
# Evaluation.


class _Evaluator:
  """Classifier features, accuracy and the four metrics against held-out digits."""

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


# ----------------------------------------------------------------------------------------
# Plots.


def _plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _tile(x: np.ndarray, labels: np.ndarray, rows: int) -> np.ndarray:
  """Images ``(N, 8, 8)`` -> one array with a column per class and ``rows`` per class."""
  classes = np.unique(labels)
  pad = 1
  canvas = np.full((rows * (8 + pad) + pad, len(classes) * (8 + pad) + pad), -1.0)
  for ci, c in enumerate(classes):
    imgs = x[labels == c][:rows]
    for r, img in enumerate(imgs):
      canvas[pad + r * (8 + pad) : pad + r * (8 + pad) + 8, pad + ci * 9 : pad + ci * 9 + 8] = img
  return canvas


def _save_panels(path, panels: list[tuple[str, np.ndarray]], labels: np.ndarray, rows: int, title):
  plt = _plt()
  cols = min(4, len(panels))
  nrows = -(-len(panels) // cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.0 * nrows + 0.4), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, (name, x) in zip(axes.flat, panels):
    ax.imshow(_tile(np.clip(x, -1, 1), labels, rows), cmap="gray_r", vmin=-1, vmax=1)
    ax.set_title(name, fontsize=9)
  fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_training(path, losses: dict[str, np.ndarray]):
  plt = _plt()
  fig, axes = plt.subplots(1, len(losses), figsize=(4.2 * len(losses), 3.2))
  for ax, (name, curve) in zip(np.atleast_1d(axes), losses.items()):
    steps = np.arange(1, len(curve) + 1)
    ax.plot(steps, curve, lw=0.5, alpha=0.35, color="C0")
    if len(curve) >= 20:
      w = max(5, len(curve) // 50)
      smooth = np.convolve(curve, np.ones(w) / w, mode="valid")
      ax.plot(steps[w - 1 :], smooth, lw=1.5, color="C0", label=f"moving mean ({w})")
      ax.legend(fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(f"{name} training loss", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_sweep(path, sweep: list[dict], solver_label: str):
  plt = _plt()
  keys = [
    ("accuracy", "class accuracy"),
    ("fd", "Frechet distance (clf features)"),
    ("saturation", "saturation (mean excess beyond [-1, 1])"),
  ]
  fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
  rules = sorted({r["rule"] for r in sweep}, key=GUIDANCE_NAMES.index)
  for ax, (k, label) in zip(axes, keys):
    for i, rule in enumerate(rules):
      rows = sorted((r for r in sweep if r["rule"] == rule), key=lambda r: r["w"])
      ax.plot(
        [r["w"] for r in rows],
        [r[k] for r in rows],
        "o-",
        color=f"C{i}",
        label=GUIDANCE_LABELS[rule],
      )
    ax.set_xlabel("guidance scale w (CFG convention; PAG: w = 1 + s)")
    ax.set_title(label, fontsize=10)
    if k == "fd":
      ax.set_yscale("log")
  axes[0].legend(fontsize=8)
  fig.suptitle(f"metrics vs guidance scale ({solver_label})", fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ----------------------------------------------------------------------------------------
# Curvature of the classifier.


def _hessian_section(config: DemoConfig, models: Models, data: Digits, out: pathlib.Path):
  """SLQ density and top eigenvalues of the classifier's training-loss Hessian."""
  from optim import curvature

  gc, params = nnx.split(models.classifier)
  n = min(config.hessian_examples, len(data.train_x))
  x, y = jnp.asarray(data.train_x[:n]), jnp.asarray(data.train_y[:n])

  def loss(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(gc, p)(x), y).mean()

  op = curvature.hessian_matvec(loss, params, x, y)
  key = jax.random.key(config.seed + 7)
  density = curvature.slq_density(
    op, key=key, num_iters=config.slq_iters, num_probes=config.slq_probes
  )
  top = curvature.top_eigenvalues(op, key=jax.random.fold_in(key, 1), k=config.top_k)
  eig = np.asarray(top.eigenvalues, np.float64)
  num_params = sum(int(np.size(v)) for v in jax.tree.leaves(params))
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 3.8))
  curvature.plot_density(density, ax, label=f"SLQ ({config.slq_iters} Lanczos steps)")
  for i, e in enumerate(eig):
    ax.axvline(e, color="C3", lw=0.6, alpha=0.6, label="top eigenvalues" if i == 0 else None)
  ax.set_xlabel("eigenvalue")
  ax.set_ylabel("density (log)")
  ax.set_title(f"Hessian spectrum of the digit classifier ({num_params} params)", fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / "hessian_spectrum.png", dpi=110)
  plt.close(fig)
  bulk = float(np.median(np.abs(eig))) if eig.size else float("nan")
  return {
    "num_params": num_params,
    "examples": n,
    "top_eigenvalues": eig.tolist(),
    "converged": np.asarray(top.converged).tolist(),
    "median_top": bulk,
  }


# ----------------------------------------------------------------------------------------
# The run.


def _fmt(v, nd=3):
  if isinstance(v, float):
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
      return f"{v:.2e}"
    return f"{v:.{nd}f}"
  return str(v)


def run_demo(
  config: DemoConfig | None = None,
  *,
  out_dir: str | pathlib.Path = "out",
  cache_dir: str | pathlib.Path | None = None,
  progress: bool = True,
  log: Callable[[str], None] = print,
) -> dict:
  """Runs the whole demo and writes ``out_dir``; returns the measured results."""
  config = DemoConfig.from_env() if config is None else config
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  cache = default_cache_dir() if cache_dir is None else pathlib.Path(cache_dir)
  stages: dict[str, float] = {}
  t_start = time.perf_counter()

  cpu: dict[str, float] = {}
  cpu_mark = [time.process_time()]

  def stage(name, t0):
    stages[name] = time.perf_counter() - t0
    now = time.process_time()
    cpu[name], cpu_mark[0] = now - cpu_mark[0], now
    log(f"[demo] {name}: {stages[name]:.1f} s (CPU {cpu[name]:.1f} s)")

  device = jax.devices()[0]
  log(f"[demo] device: {device.platform} ({device.device_kind}); cache: {cache}; out: {out}")

  t0 = time.perf_counter()
  data = load_digits(seed=config.seed)
  models = prepare_models(config, data, cache, progress=progress)
  stage("train (or restore) denoiser, weak denoiser, classifier", t0)

  t0 = time.perf_counter()
  evaluator = _Evaluator(models.classifier, data.test_x, config.seed)
  labels = np.repeat(np.arange(10), config.samples_per_class).astype(np.int32)
  sampler = _Sampler(models, labels, config.compiler_options)
  clf_test_acc = float(
    np.mean(np.asarray(models.classifier(jnp.asarray(data.test_x))).argmax(-1) == data.test_y)
  )
  # Reference row: real training digits scored exactly like samples (the floor of each metric).
  ref_idx = np.random.default_rng(config.seed).permutation(len(data.train_x))[: len(labels)]
  reference = evaluator(data.train_x[ref_idx], data.train_y[ref_idx])
  stage("evaluator setup", t0)

  t0 = time.perf_counter()
  grid: list[dict] = []
  samples: dict[tuple[str, str], np.ndarray] = {}
  key = jax.random.key(config.seed + 100)
  for solver_name in config.solvers:
    for rule in config.rules:
      steps = steps_for_budget(rule, config.nfe_budget)
      res = sampler(rule, solver_name, steps, key, scale=default_scale(config, rule))
      row = {
        "rule": rule,
        "solver": solver_name,
        "scale": default_scale(config, rule),
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
  stage("sampling grid (rules x solvers, incl. compilation)", t0)

  t0 = time.perf_counter()
  sweep: list[dict] = []
  sweep_solver = config.sweep_solver if config.sweep_solver in config.solvers else config.solvers[0]
  high_samples: dict[str, np.ndarray] = {}
  w_max = max(config.sweep_scales)
  for rule in ("cfg", "apg", "adaptive", "pag", "autoguidance"):
    if rule not in config.rules:
      continue
    steps = steps_for_budget(rule, config.nfe_budget)
    for w in config.sweep_scales:
      scale = w - 1.0 if rule == "pag" else w
      res = sampler(rule, sweep_solver, steps, key, scale=scale)
      sweep.append(
        {"rule": rule, "w": w, "scale": scale, "nfe": res["nfe"], **evaluator(res["x"], labels)}
      )
      if w == w_max:
        high_samples[f"{GUIDANCE_LABELS[rule]} (w={w:g})"] = res["x"]
  # Other one-dimensional studies, all on the sweep solver with the grid's noise.
  studies: list[dict] = []

  def study(name, setting, rule, **hyper):
    res = sampler(rule, sweep_solver, steps_for_budget(rule, config.nfe_budget), key, **hyper)
    studies.append(
      {"study": name, "setting": setting, "nfe": res["nfe"], **evaluator(res["x"], labels)}
    )
    return res

  if "cfgpp" in config.rules:
    for lam in config.cfgpp_lambdas:
      res = study("CFG++ lambda", f"lambda = {lam:g}", "cfgpp", scale=lam)
    high_samples[f"CFG++ (lambda={max(config.cfgpp_lambdas):g})"] = res["x"]
  if "apg" in config.rules:
    # Which APG component does what at the highest scale (Sadat et al., Sec. 4-5).
    apg_variants = [
      ("eta=1, r=inf, beta=0 (= CFG)", dict(eta=1.0, norm_threshold=float("inf"), momentum=0.0)),
      ("eta=0 (projection only)", dict(eta=0.0, norm_threshold=float("inf"), momentum=0.0)),
      (f"eta=0, r={APG_KW['norm_threshold']:g}", dict(eta=0.0, momentum=0.0)),
      (f"eta=0, r={APG_KW['norm_threshold']:g}, beta={APG_KW['momentum']:g} (demo default)", {}),
    ]
    for setting, hyper in apg_variants:
      study(f"APG components, w = {w_max:g}", setting, "apg", scale=w_max, **hyper)
  if "adaptive" in config.rules:
    for th in config.adaptive_thresholds:
      study(
        f"AG threshold, w = {config.scale:g}",
        f"gamma_bar = {th:g}",
        "adaptive",
        scale=config.scale,
        threshold=th,
      )
  if "classifier" in config.rules:
    for sc in config.classifier_scales:
      study("classifier guidance scale", f"s = {sc:g}", "classifier", scale=sc)
  stage("guidance-scale sweep", t0)

  t0 = time.perf_counter()
  rows = min(4, config.samples_per_class)
  for solver_name in config.solvers:
    panels = [
      (f"{GUIDANCE_LABELS[r]} ({_fmt(default_scale(config, r), 2)})", samples[(r, solver_name)])
      for r in config.rules
    ]
    _save_panels(
      out / f"samples_{solver_name}.png",
      panels,
      labels,
      rows,
      f"{SOLVER_LABELS[solver_name]}, {config.nfe_budget} network evaluations per sample",
    )
  if high_samples:
    _save_panels(
      out / "samples_high_scale.png",
      list(high_samples.items()),
      labels,
      rows,
      f"highest guidance scale, {SOLVER_LABELS[sweep_solver]}",
    )
  real_panel = [("held-out digits", data.test_x[np.argsort(data.test_y, kind="stable")])]
  _save_panels(
    out / "real_digits.png", real_panel, np.sort(data.test_y), rows, "real (held-out) digits"
  )
  _plot_training(out / "training_curves.png", models.losses)
  if sweep:
    _plot_sweep(out / "metric_vs_scale.png", sweep, SOLVER_LABELS[sweep_solver])
  stage("figures", t0)

  t0 = time.perf_counter()
  hessian = _hessian_section(config, models, data, out)
  stage("classifier Hessian spectrum (optim.curvature)", t0)

  tour_note = "skipped in this configuration"
  if config.tour:
    t0 = time.perf_counter()
    try:
      from optim._tour import run_tour
    except ImportError as e:  # the curvature tour is another issue's deliverable
      tour_note = f"not available ({e})"
    else:
      tour = run_tour(out / "tour", small=False)
      counts = ", ".join(
        f"k = {r.get('k')}: {r.get('outliers')} outliers" for r in tour.get("runs", [])
      )
      tour_note = (
        f"{counts} (Sagun et al. predict about k; rule: {tour.get('outlier_rule', 'n/a')}); "
        "see `tour/curvature_density.png` and `tour/curvature_tour.json`"
      )
    stage("Sagun et al. Hessian tour (optim)", t0)

  stages["total"] = time.perf_counter() - t_start
  cpu["total"] = sum(cpu.values())
  results = {
    "config": dataclasses.asdict(config),
    "device": f"{device.platform} ({device.device_kind})",
    "classifier_test_accuracy": clf_test_acc,
    "reference": reference,
    "grid": grid,
    "sweep": sweep,
    "studies": studies,
    "hessian": hessian,
    "stages_s": stages,
    "stages_cpu_s": cpu,
    "resumed_from": models.resumed,
    "tour": tour_note,
  }
  (out / "metrics.json").write_text(json.dumps(results, indent=2))
  (out / "report.md").write_text(_report(config, models, results, sweep_solver))
  log(f"[demo] wrote {out / 'report.md'} ({stages['total']:.1f} s in all)")
  return results


# ----------------------------------------------------------------------------------------
# The report.


def _claims(config: DemoConfig, results: dict, sweep_solver: str) -> list[str]:
  grid, sweep = results["grid"], results["sweep"]
  lines = []

  def find(rule, solver):
    return next((r for r in grid if r["rule"] == rule and r["solver"] == solver), None)

  # 1. guided accuracy above unguided, per solver.
  verdicts = []
  for s in config.solvers:
    base, cfg = find("none", s), find("cfg", s)
    if base and cfg:
      others = [r for r in grid if r["solver"] == s and r["rule"] not in ("none",)]
      above = sum(r["accuracy"] > base["accuracy"] for r in others)
      verdicts.append(
        f"{SOLVER_LABELS[s]}: unguided {base['accuracy']:.3f} vs CFG {cfg['accuracy']:.3f} "
        f"({above}/{len(others)} guided rules above unguided)"
      )
  if verdicts:
    holds = all(
      find("cfg", s)["accuracy"] > find("none", s)["accuracy"]
      for s in config.solvers
      if find("cfg", s) and find("none", s)
    )
    lines.append(
      f"- **Guided class accuracy above unguided** (CFG at w = {config.scale:g}): "
      f"{'holds' if holds else 'does NOT hold'} -- " + "; ".join(verdicts) + "."
    )
  # 2. APG saturation below CFG at the highest scale.
  w_max = max(config.sweep_scales) if config.sweep_scales else None
  cfg_hi = next((r for r in sweep if r["rule"] == "cfg" and r["w"] == w_max), None)
  apg_hi = next((r for r in sweep if r["rule"] == "apg" and r["w"] == w_max), None)
  if cfg_hi and apg_hi:
    holds = apg_hi["saturation"] < cfg_hi["saturation"]
    lines.append(
      f"- **APG's saturation below CFG's at the highest scale** (w = {w_max:g}, "
      f"{SOLVER_LABELS[sweep_solver]}): {'holds' if holds else 'does NOT hold'} -- "
      f"APG {apg_hi['saturation']:.4f} vs CFG {cfg_hi['saturation']:.4f} (mean excess "
      f"beyond [-1, 1]); accuracy APG {apg_hi['accuracy']:.3f} vs CFG {cfg_hi['accuracy']:.3f}, "
      f"FD APG {apg_hi['fd']:.3f} vs CFG {cfg_hi['fd']:.3f}."
    )
    parts = [r for r in results["studies"] if r["study"].startswith("APG components")]
    if parts:
      verdict = lambda r: "below" if r["saturation"] < cfg_hi["saturation"] else "not below"
      lines.append(
        "  Component study at the same scale (saturation, and whether it is below CFG's): "
        + "; ".join(f"{r['setting']}: {r['saturation']:.4f} ({verdict(r)})" for r in parts)
        + "."
      )
  # 3. Adaptive Guidance's savings.
  ag_rows = []
  for s in config.solvers:
    ag, cfg = find("adaptive", s), find("cfg", s)
    if ag and cfg:
      saving = 1.0 - ag["nfe"] / cfg["nfe"]
      ag_rows.append(
        f"{SOLVER_LABELS[s]}: {ag['nfe']} vs {cfg['nfe']} evaluations ({100 * saving:.0f}% "
        f"saved), accuracy {ag['accuracy']:.3f} vs {cfg['accuracy']:.3f}, FD {ag['fd']:.3f} "
        f"vs {cfg['fd']:.3f}, wall {ag['wall_s']:.2f} s vs {cfg['wall_s']:.2f} s"
      )
  if ag_rows:
    saved = any(
      find("adaptive", s)["nfe"] < find("cfg", s)["nfe"]
      for s in config.solvers
      if find("adaptive", s) and find("cfg", s)
    )
    lines.append(
      f"- **Adaptive Guidance saves evaluations** (threshold {ADAPTIVE_THRESHOLD}, same steps "
      f"as CFG): {'holds' if saved else 'does NOT hold (it never switched)'} -- "
      + "; ".join(ag_rows)
      + "."
    )
    ths = [r for r in results["studies"] if r["study"].startswith("AG threshold")]
    if ths:
      lines.append(
        "  Threshold study: "
        + "; ".join(f"{r['setting']}: NFE {r['nfe']}, accuracy {r['accuracy']:.3f}" for r in ths)
        + ". After its switch AG is conditional-only, so its accuracy falls back toward the "
        "unguided value: how early it switches decides the trade-off."
      )
  return lines


def _report(config: DemoConfig, models: Models, results: dict, sweep_solver: str) -> str:
  def nparams(m):
    return sum(int(np.size(v)) for v in jax.tree.leaves(nnx.state(m, nnx.Param)))

  ref = results["reference"]
  small = config.denoiser_steps < 100
  mode = "`JAXDIFF_DEMO_SMALL=1` (smoke test: the numbers mean nothing)" if small else "full"
  L = []
  L.append("# jaxdiff digits demo: guidance rules x solvers on sklearn's 8x8 digits\n")
  L.append(
    f"Every number below was measured by this run (`python -m jaxdiff demo`) on "
    f"**{results['device']}**. Configuration: "
    f"{mode}.\n"
  )
  L.append("## Setup\n")
  L.append(
    f"- Data: `sklearn.datasets.load_digits` (1797 images, 8x8, scaled to [-1, 1]), "
    f"stratified split: 1437 train / 360 held-out.\n"
    f"- Denoiser: `jaxdiff.models.DigitDenoiser` (DiT, 2x2 patches, adaLN-Zero, "
    f"PAG-aware `SelfAttention`), {nparams(models.denoiser):,} parameters, v-prediction on "
    f"`schedules.vp_cosine()`, label dropout 0.1 (null label -1), "
    f"{config.denoiser_steps} steps of `optim.adamp` (batch {config.batch_size}, warmup + "
    f"cosine, peak lr {config.learning_rate}).\n"
    f"- Weak denoiser (autoguidance): same architecture, {nparams(models.weak):,} parameters, "
    f"{config.weak_steps} steps.\n"
    f"- Classifier: `jaxdiff.models.DigitClassifier` (MLP, SiLU), {nparams(models.classifier):,}"
    f" parameters, {config.classifier_steps} steps of `optim.diffgrad`; held-out accuracy "
    f"**{results['classifier_test_accuracy']:.3f}**. Its 32-d penultimate features are the "
    f"feature space of the Frechet distance (FD) and precision/recall (k = 3).\n"
    f"- Sampling: {config.samples_per_class} samples per class ({10 * config.samples_per_class}"
    f" per configuration), logSNR-uniform grid, a budget of **{config.nfe_budget} network "
    f"evaluations per sample**: rules that call the network twice per step get half the "
    f"steps. Adaptive Guidance gets CFG's steps and spends what it spends.\n"
    f"- Metrics: FD vs the held-out digits, class accuracy of the samples under the "
    f"classifier, precision/recall (Kynkaanniemi et al.), saturation = mean excess of the "
    f"*unclipped* sample beyond [-1, 1] (`metrics.saturation`), NFE per sample as "
    f"reported by `jaxdiff.sample`, sampling wall time (compiled, excluding compilation).\n"
    f"- Checkpoints: `{default_cache_dir()}` (override: `--cache-dir` or "
    f"`JAXDIFF_CACHE_DIR`); resumed from steps {results['resumed_from']}.\n"
  )
  L.append("## Claims, measured\n")
  L.extend(_claims(config, results, sweep_solver))
  L.append("")
  L.append(
    f"Reference (real training digits scored like samples): FD {ref['fd']:.3f}, accuracy "
    f"{ref['accuracy']:.3f}, precision {ref['precision']:.3f}, recall {ref['recall']:.3f}, "
    f"saturation {ref['saturation']:.4f}.\n"
  )
  L.append("## Rules x solvers\n")
  L.append(
    "| solver | rule | scale | steps | NFE | wall s | FD | accuracy | precision | recall | "
    "saturation |"
  )
  L.append("|---|---|---|---|---|---|---|---|---|---|---|")
  for r in results["grid"]:
    L.append(
      f"| {SOLVER_LABELS[r['solver']]} | {GUIDANCE_LABELS[r['rule']]} | {_fmt(r['scale'], 2)} | "
      f"{r['steps']} | {r['nfe']} | {r['wall_s']:.2f} | {r['fd']:.3f} | {r['accuracy']:.3f} | "
      f"{r['precision']:.3f} | {r['recall']:.3f} | {r['saturation']:.4f} |"
    )
  L.append(
    "\nScales follow each rule's convention: CFG / APG / Adaptive / autoguidance `w` "
    "(1 = no guidance), PAG `s` (0 = none), CFG++ `lambda` in [0, 1], classifier `s`. APG: "
    f"{APG_KW}.\n"
  )
  L.append("![samples](samples_" + (config.solvers[0]) + ".png)\n")
  for s in config.solvers[1:]:
    L.append(f"![samples {s}](samples_{s}.png)\n")
  if results["sweep"]:
    L.append(f"## Metrics vs guidance scale ({SOLVER_LABELS[sweep_solver]})\n")
    L.append("| rule | w | NFE | FD | accuracy | precision | recall | saturation |")
    L.append("|---|---|---|---|---|---|---|---|")
    for r in results["sweep"]:
      L.append(
        f"| {GUIDANCE_LABELS[r['rule']]} | {r['w']:g} | {r['nfe']} | {r['fd']:.3f} | "
        f"{r['accuracy']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
        f"{r['saturation']:.4f} |"
      )
    L.append("\n![metric vs scale](metric_vs_scale.png)\n")
    L.append("![highest scale](samples_high_scale.png)\n")
  if results["studies"]:
    L.append(f"## Other studies ({SOLVER_LABELS[sweep_solver]}, same noise as the grid)\n")
    L.append("| study | setting | NFE | FD | accuracy | precision | recall | saturation |")
    L.append("|---|---|---|---|---|---|---|---|")
    for r in results["studies"]:
      L.append(
        f"| {r['study']} | {r['setting']} | {r['nfe']} | {r['fd']:.3f} | {r['accuracy']:.3f} | "
        f"{r['precision']:.3f} | {r['recall']:.3f} | {r['saturation']:.4f} |"
      )
    L.append("")
  L.append("## Training\n")
  for name, curve in models.losses.items():
    if len(curve):
      tail = curve[-max(1, len(curve) // 20) :].mean()
      L.append(f"- {name}: {len(curve)} steps, final loss (mean of last 5%) {tail:.4f}")
  L.append("\n![training curves](training_curves.png)\n")
  h = results["hessian"]
  L.append("## Hessian spectrum of the classifier (`optim.curvature`)\n")
  L.append(
    f"Cross-entropy Hessian at the trained classifier on {h['examples']} training digits "
    f"({h['num_params']:,} parameters): SLQ density (`slq_density`, {config.slq_iters} "
    f"Lanczos steps x {config.slq_probes} probes) and the top {config.top_k} eigenvalues by "
    f"power iteration with deflation (`top_eigenvalues`): "
    + ", ".join(f"{e:.3g}" for e in h["top_eigenvalues"])
    + ". Sagun et al. predict a bulk near zero plus about one outlier per class (10).\n"
  )
  L.append("![hessian spectrum](hessian_spectrum.png)\n")
  L.append(f"Sagun et al. reproduction on k-cluster data (`optim._tour`): {results['tour']}.\n")
  L.append("## Stage times\n")
  L.append(
    "Wall time depends on what else runs on the machine; CPU time (all threads of this "
    "process) does not, and on a dedicated machine the wall time is at most about it.\n"
  )
  L.append("| stage | wall s | CPU s |")
  L.append("|---|---|---|")
  for k, v in results["stages_s"].items():
    L.append(f"| {k} | {v:.1f} | {results['stages_cpu_s'].get(k, float('nan')):.1f} |")
  L.append("")
  return "\n".join(L) + "\n"
