"""Sampling the demo's digits: one compiled sampler per (rule, solver, steps)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff import from_v, guidance, sample, schedules, solvers
from jaxdiff._validation import as_key, check_choice
from jaxdiff.demo._config import NO_GUIDANCE, DemoConfig, demo_rules
from jaxdiff.demo._training import Models

__all__ = ["Sampler", "make_rule", "sample_digits"]

NUM_CLASSES = 10


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def make_rule(name: str, scale, *, weak_denoise=None, classifier_fn=None, **hyperparameters):
  """Guidance rule ``name`` at ``scale`` from :data:`jaxdiff.guidance.REGISTRY`.

  ``"none"`` gives ``None`` (plain conditional sampling). ``scale`` follows the rule's own
  convention (see its factory); the resources are the demo's weak denoiser and classifier
  (guiding the *unconditional* model, the classic use of classifier guidance).

  Example:
    >>> make_rule("none", 0.0) is None
    True
    >>> make_rule("apg", 5.0, momentum=-0.5) is not None
    True
  """
  if name == NO_GUIDANCE:
    return None
  return guidance.make(
    name,
    scale,
    weak_denoise=weak_denoise,
    classifier_fn=classifier_fn,
    num_classes=NUM_CLASSES,
    **hyperparameters,
  )


class Sampler:
  """Compiled samplers, one per (rule, solver, steps).

  The scale and every numeric hyperparameter of ``rule_kwargs[rule]`` are traced, so sweeps
  over scales, APG's components or AG's threshold reuse one executable; other
  hyperparameters (strings, ...) are static. Results are memoised per setting and key.
  """

  def __init__(
    self,
    models: Models,
    labels: np.ndarray,
    rule_kwargs: Mapping[str, Mapping[str, Any]],
    compiler_options=None,
  ):
    self.models = models
    self.compiler_options = compiler_options
    self.labels = jnp.asarray(labels, jnp.int32)
    self.rule_kwargs = rule_kwargs
    self.cache: dict[tuple[str, str, int], Any] = {}
    self.results: dict[tuple, dict] = {}
    gd, params = nnx.split(models.denoiser)
    gw, wparams = nnx.split(models.weak)
    gc, cparams = nnx.split(models.classifier)
    self.graphs = (gd, gw, gc)
    self.params = (params, wparams, cparams)

  def _split(self, rule: str) -> tuple[dict, dict]:
    """The rule's (traced defaults, static kwargs): numbers are traced, the scale too."""
    kw = dict(self.rule_kwargs.get(rule, {}))
    traced = {"scale": 1.0, **{k: v for k, v in kw.items() if _is_number(v)}}
    static = {k: v for k, v in kw.items() if not _is_number(v)}
    return traced, static

  def _build(self, rule: str, solver_name: str, steps: int):
    gd, gw, gc = self.graphs
    schedule = self.models.schedule
    solver = solvers.make(solver_name)
    ts = schedules.timesteps(schedule, steps, spacing="logsnr")
    labels = self.labels
    n = labels.shape[0]
    defaults, static = self._split(rule)

    def run(params, hyper, key):
      p, wp, cp = params
      denoise = from_v(nnx.merge(gd, p), schedule)
      weak = from_v(nnx.merge(gw, wp), schedule)
      clf = nnx.merge(gc, cp)
      hyper = dict(hyper)
      rule_obj = make_rule(
        rule, hyper.pop("scale"), weak_denoise=weak, classifier_fn=clf, **hyper, **static
      )
      k_noise, k_sample = jax.random.split(key)
      x_T = jax.random.normal(k_noise, (n, 8, 8))
      out = sample(denoise, solver, x_T, ts, key=k_sample, cond=labels, guidance=rule_obj)
      return out.x, out.nfe

    hyper = {k: jnp.float32(v) for k, v in defaults.items()}
    lowered = jax.jit(run).lower(self.params, hyper, jax.random.key(0))
    return lowered.compile(self.compiler_options)

  def __call__(self, rule: str, solver_name: str, steps: int, key, **hyper) -> dict:
    """Samples ``labels`` with ``rule`` and the solver: ``{"x", "nfe", "compile_s", "wall_s"}``.

    ``hyper`` overrides the scale or the rule's numeric hyperparameters.
    """
    defaults, _ = self._split(rule)
    unknown = set(hyper) - set(defaults)
    if unknown:
      raise TypeError(f"unknown hyperparameters of {rule!r}: {sorted(unknown)}")
    hyper = {**defaults, **{k: float(v) for k, v in hyper.items()}}
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
  key=0,
  config: DemoConfig | None = None,
) -> tuple[np.ndarray, int]:
  """Samples digits of the given ``labels`` with one rule and solver: ``(x, nfe)``.

  ``x`` is unclipped, shape ``(len(labels), 8, 8)``, data range ``[-1, 1]``; ``scale``
  follows the rule's convention (see :func:`make_rule`); the rule's other hyperparameters
  and the compiler options are ``config``'s (default :class:`DemoConfig`). ``key`` (typed
  key, raw key or int seed) draws the initial noise and the solver's noise.
  """
  check_choice("guidance", guidance, demo_rules())
  check_choice("solver", solver, tuple(solvers.REGISTRY))
  config = DemoConfig() if config is None else config
  sampler = Sampler(models, np.asarray(labels), config.rule_kwargs, config.compiler_options)
  out = sampler(guidance, solver, steps, as_key(key), scale=scale)
  return out["x"], out["nfe"]
