"""``run_demo``: wires the stages (train, evaluate, sample, sweep, figures, curvature,
report) and times each one."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import guidance
from jaxdiff._validation import import_extra
from jaxdiff.demo import _evaluation as ev
from jaxdiff.demo import _figures as fig
from jaxdiff.demo._accelerators import feature_caching, searched_schedule
from jaxdiff.demo._config import DemoConfig, default_cache_dir, rule_label, solver_label
from jaxdiff.demo._few_step import few_step_stage
from jaxdiff.demo._highres import highres_stage
from jaxdiff.demo._inverse import inverse_problems
from jaxdiff.demo._report import fmt, report
from jaxdiff.demo._sampling import Sampler
from jaxdiff.demo._training import prepare_models
from jaxdiff.models import load_digits

__all__ = ["run_demo"]


class _Stages:
  """Wall and process-CPU seconds per stage, logged as each stage ends."""

  def __init__(self, log: Callable[[str], None]):
    self.log = log
    self.wall: dict[str, float] = {}
    self.cpu: dict[str, float] = {}
    self._start = self._t0 = time.perf_counter()
    self._cpu0 = time.process_time()

  def start(self) -> None:
    self._t0 = time.perf_counter()

  def end(self, name: str) -> None:
    self.wall[name] = time.perf_counter() - self._t0
    now = time.process_time()
    self.cpu[name], self._cpu0 = now - self._cpu0, now
    self.log(f"[demo] {name}: {self.wall[name]:.1f} s (CPU {self.cpu[name]:.1f} s)")

  def total(self) -> None:
    self.wall["total"] = time.perf_counter() - self._start
    self.cpu["total"] = sum(self.cpu.values())


def _figures(config, out, data, models, labels, grid_samples, high_samples, sweep, sweep_solver):
  rows = min(4, config.samples_per_class)
  for s in config.solvers:
    panels = [
      (f"{rule_label(r)} ({fmt(config.scale_of(r), 2)})", grid_samples[(r, s)])
      for r in config.rules
    ]
    title = f"{solver_label(s)}, {config.nfe_budget} network evaluations per sample"
    fig.save_panels(out / f"samples_{s}.png", panels, labels, rows, title)
  if high_samples:
    title = f"highest guidance scale, {solver_label(sweep_solver)}"
    fig.save_panels(out / "samples_high_scale.png", list(high_samples.items()), labels, rows, title)
  real = [("held-out digits", data.test_x[np.argsort(data.test_y, kind="stable")])]
  fig.save_panels(
    out / "real_digits.png", real, np.sort(data.test_y), rows, "real (held-out) digits"
  )
  fig.plot_training(out / "training_curves.png", models.losses)
  if sweep:
    names = {r["rule"]: rule_label(r["rule"]) for r in sweep}
    fig.plot_sweep(out / "metric_vs_scale.png", sweep, names, solver_label(sweep_solver))


def _guidance_ablation(config, models, sampler, evaluator, labels, key) -> list[dict]:
  """Rows for the studies table: APG's parts beyond the component study, and Adaptive
  Guidance against CFG at equal quality (``config.guidance_ablation``).

  AG (Castillo et al.) claims to keep CFG's samples while skipping evaluations, so its
  quality is its closeness to full CFG's samples from the same noise (``fd_to_cfg``: the FD
  of classifier features to them); CFG on the coarser grids of ``config.ag_cfg_steps`` is
  the cheap alternative it must beat, and full CFG (the reference) the most expensive one.
  Both AG variants run (``guidance.adaptive``): the configured one (the demo's ``"x0"``)
  with the grid's sampler, the other with its own.
  """
  rows: list[dict] = []
  solver = ev.sweep_solver_of(config)

  def row(study, setting, res):
    return {"study": study, "setting": setting, "nfe": res["nfe"], **evaluator(res["x"], labels)}

  if "apg" in config.rules:
    w = max(config.sweep_scales)
    steps = config.steps_for("apg", solver)
    for setting, hyper in (
      ("momentum only (eta=1, r=inf, beta=-0.5)", dict(eta=1.0, norm_threshold=np.inf)),
      ("paper's (eta=0, r=2.5, beta=-0.75)", dict(eta=0.0, norm_threshold=2.5, momentum=-0.75)),
    ):
      res = sampler("apg", solver, steps, key, scale=w, **{"momentum": -0.5, **hyper})
      rows.append(row(f"APG components, w = {w:g}", setting, res))
  if "adaptive" in config.rules and "cfg" in config.rules:
    w = config.scale_of("adaptive")
    steps = config.steps_for("cfg", solver)
    full = sampler("cfg", solver, steps, key, scale=w)["x"]
    to_cfg = ev.Evaluator(models.classifier, np.clip(full, -1.0, 1.0), config.seed)
    ag_kwargs = config.rule_kwargs.get("adaptive", {})
    configured = ev._setting(config, "adaptive", guidance.adaptive, "variant")
    runs = [(f"CFG, {k} steps", sampler, "cfg", k, {}) for k in config.ag_cfg_steps if k < steps]
    runs.append((f"CFG, {steps} steps (the reference)", sampler, "cfg", steps, {}))
    for v in ("eps", "x0"):  # the grid's sampler serves the configured variant
      smp = sampler
      if v != configured:
        kw = {**config.rule_kwargs, "adaptive": {**ag_kwargs, "variant": v}}
        smp = Sampler(models, labels, kw, config.compiler_options)
      runs.append((f"AG {v}, {steps} steps", smp, "adaptive", steps, {"variant": v}))
    for setting, smp, rule, k, extra in runs:
      res = smp(rule, solver, k, key, scale=w)
      r = row(f"AG vs CFG at equal quality, w = {w:g}", setting, res)
      rows.append({**r, **extra, "fd_to_cfg": to_cfg(res["x"], labels)["fd"]})
  return rows


def run_demo(
  config: DemoConfig | None = None,
  *,
  out_dir: str | pathlib.Path = "out",
  cache_dir: str | pathlib.Path | None = None,
  progress: bool = True,
  log: Callable[[str], None] = print,
) -> dict:
  """Runs the whole demo and writes ``out_dir``; returns the measured results.

  ``config`` defaults to :meth:`DemoConfig.from_env`; ``cache_dir`` (default
  :func:`default_cache_dir`) holds the resumable checkpoints of the trained models.
  """
  # The `demo` extra (figures, data, progress bars) is checked before minutes of training.
  for module in ("matplotlib.figure", "sklearn.datasets", *(("tqdm.auto",) if progress else ())):
    import_extra(module, caller="jaxdiff.demo.run_demo")
  config = DemoConfig.from_env() if config is None else config
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  cache = default_cache_dir() if cache_dir is None else pathlib.Path(cache_dir)
  stages = _Stages(log)
  device = jax.devices()[0]
  log(f"[demo] device: {device.platform} ({device.device_kind}); cache: {cache}; out: {out}")

  data = load_digits(key=config.seed)
  models = prepare_models(config, data, cache, progress=progress)
  stages.end("train (or restore) denoiser, weak denoiser, classifier")

  stages.start()
  evaluator = ev.Evaluator(models.classifier, data.test_x, config.seed)
  labels = np.repeat(np.arange(10), config.samples_per_class).astype(np.int32)
  sampler = Sampler(models, labels, config.rule_kwargs, config.compiler_options)
  test_logits = np.asarray(models.classifier(jnp.asarray(data.test_x)))
  clf_test_acc = float(np.mean(test_logits.argmax(-1) == data.test_y))
  # Reference row: real training digits scored exactly like samples (the floor of each metric).
  ref_idx = np.random.default_rng(config.seed).permutation(len(data.train_x))[: len(labels)]
  reference = evaluator(data.train_x[ref_idx], data.train_y[ref_idx])
  stages.end("evaluator setup")

  stages.start()
  key = jax.random.key(config.seed + 100)
  grid, grid_samples = ev.sample_grid(config, sampler, evaluator, labels, key, log)
  stages.end("sampling grid (rules x solvers, incl. compilation)")

  stages.start()
  sweep, high_samples = ev.scale_sweep(config, sampler, evaluator, labels, key)
  studies, study_samples = ev.scale_studies(config, sampler, evaluator, labels, key)
  high_samples = {**high_samples, **study_samples}
  stages.end("guidance-scale sweep")

  if config.guidance_ablation:
    stages.start()
    studies += _guidance_ablation(config, models, sampler, evaluator, labels, key)
    stages.end("guidance ablation (APG parts, AG vs CFG at equal quality)")

  caching_results = None
  if config.cache_steps:
    stages.start()
    caching_results = feature_caching(config, models, evaluator, labels, key, out)
    stages.end("feature caching (TaylorSeer vs full computation)")

  searched = None
  if config.searched_nfe:
    stages.start()
    searched = searched_schedule(config, models, evaluator, labels, key, out)
    stages.end("searched schedule (S³) vs DPM-Solver++(2M)")

  few_step = None
  if config.student_steps:
    stages.start()
    few_step = few_step_stage(config, models, evaluator, labels, key, cache, out, progress=progress)
    stages.end("few-step student (distilled from the teacher's trajectories)")

  highres = None
  if config.highres_steps:
    stages.start()
    highres = highres_stage(config, models, data, labels, key, cache, out, progress=progress)
    stages.end("high resolution (DiffuseHigh 8 -> 16) and Jacobian eigenvectors")

  stages.start()
  sweep_solver = ev.sweep_solver_of(config)
  _figures(config, out, data, models, labels, grid_samples, high_samples, sweep, sweep_solver)
  stages.end("figures")

  stages.start()
  hessian, density = ev.hessian_spectrum(config, models, data)
  eig = np.asarray(hessian["top_eigenvalues"])
  fig.plot_hessian(
    out / "hessian_spectrum.png", density, eig, hessian["num_params"], config.slq_iters
  )
  stages.end("classifier Hessian spectrum (optim.curvature)")

  inverse = None
  if config.inverse_digits:
    stages.start()
    inverse, inverse_grids = inverse_problems(config, models, data, cache)
    rows = min(8, config.inverse_digits)
    fig.save_columns(out / "inverse_problems.png", inverse_grids, rows=rows)
    stages.end("inverse problems (DPS, RED-diff, FlowChef)")

  tour_note = "skipped in this configuration"
  if config.tour:
    stages.start()
    tour_note = ev.curvature_tour(out)
    stages.end("Sagun et al. Hessian tour (optim)")

  stages.total()
  results = {
    "config": dataclasses.asdict(config),
    "device": f"{device.platform} ({device.device_kind})",
    "classifier_test_accuracy": clf_test_acc,
    "reference": reference,
    "grid": grid,
    "sweep": sweep,
    "studies": studies,
    "hessian": hessian,
    "stages_s": stages.wall,
    "stages_cpu_s": stages.cpu,
    "resumed_from": models.resumed,
    "cache_dir": str(cache),
    "tour": tour_note,
    "inverse": inverse,
    "caching": caching_results,
    "searched": searched,
    "highres": highres,
    "few_step": few_step,
  }
  (out / "metrics.json").write_text(json.dumps(results, indent=2))
  (out / "report.md").write_text(report(config, models, results, sweep_solver))
  log(f"[demo] wrote {out / 'report.md'} ({stages.wall['total']:.1f} s in all)")
  return results
