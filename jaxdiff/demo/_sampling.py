"""Sampling the demo's digits: one compiled sampler per (rule, solver, steps), data-parallel
over the local devices (:func:`batch_sharding`)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdiff import from_v, sample, schedules, solvers
from jaxdiff._validation import as_key, check_choice, check_scalar
from jaxdiff.demo._config import (
  NO_GUIDANCE,
  NUM_CLASSES,
  DemoConfig,
  check_rule,
  demo_rules,
  make_rule,
)
from jaxdiff.demo._training import Models

__all__ = ["Sampler", "batch_sharding", "sample_digits"]


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


class Sampler:
  """Compiled samplers, one per (rule, solver, steps, names of the traced hyperparameters).

  The scale and every numeric hyperparameter of ``rule_kwargs[rule]`` (and any numeric
  override a call passes) are traced, so sweeps over scales, APG's components or AG's
  threshold reuse one executable; other hyperparameters (strings, ...) are static. Results
  are memoised per setting and key. The batch runs data-parallel over ``devices``
  (default: every local accelerator; see :func:`batch_sharding`).
  """

  def __init__(
    self,
    models: Models,
    labels: np.ndarray,
    rule_kwargs: Mapping[str, Mapping[str, Any]],
    compiler_options=None,
    devices=None,
  ):
    self.models = models
    self.compiler_options = compiler_options
    self.labels = jnp.asarray(labels, jnp.int32)
    self.rule_kwargs = rule_kwargs
    self.cache: dict[tuple, Any] = {}
    self.results: dict[tuple, dict] = {}
    gd, params = nnx.split(models.denoiser)
    gw, wparams = nnx.split(models.weak)
    gc, cparams = nnx.split(models.classifier)
    self.graphs = (gd, gw, gc)
    self.params = (params, wparams, cparams)
    self.shardings = batch_sharding(self.labels.shape[0], devices)
    if self.shardings is not None:  # data-parallel: labels split, weights replicated
      self.labels = jax.device_put(self.labels, self.shardings[0])
      self.params = jax.device_put(self.params, self.shardings[1])

  def _split(self, rule: str) -> tuple[dict, dict]:
    """The rule's (traced defaults, static kwargs): numbers are traced, the scale too."""
    kw = dict(self.rule_kwargs.get(rule, {}))
    traced = {"scale": 1.0, **{k: v for k, v in kw.items() if _is_number(v)}}
    static = {k: v for k, v in kw.items() if not _is_number(v)}
    return traced, static

  def _build(self, rule: str, solver_name: str, steps: int, hyper: dict):
    gd, gw, gc = self.graphs
    schedule = self.models.schedule
    solver = solvers.make(solver_name)
    ts = schedules.timesteps(schedule, steps, spacing="logsnr")
    n = self.labels.shape[0]
    static = self._split(rule)[1]
    labels, shardings = self.labels, self.shardings

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
      if shardings is not None:  # drawn sharded: the same numbers (partitionable threefry)
        x_T = jax.lax.with_sharding_constraint(x_T, shardings[0])
      out = sample(denoise, solver, x_T, ts, key=k_sample, cond=labels, guidance=rule_obj)
      return out.x, out.nfe

    hyper = {k: jnp.float32(v) for k, v in hyper.items()}
    lowered = jax.jit(run).lower(self.params, hyper, jax.random.key(0))
    return lowered.compile(self.compiler_options)

  def __call__(self, rule: str, solver_name: str, steps: int, key, **hyper) -> dict:
    """Samples ``labels`` with ``rule`` and the solver: ``{"x", "nfe", "compile_s", "wall_s"}``.

    ``hyper`` overrides the scale or the rule's numeric hyperparameters (traced, also
    those ``rule_kwargs`` does not list); a static one (a string in ``rule_kwargs``) cannot
    be overridden here.
    """
    defaults, static = self._split(rule)
    fixed = sorted(set(hyper) & set(static))
    if fixed:
      raise TypeError(f"hyperparameters {fixed} of {rule!r} are static in rule_kwargs")
    hyper = {**defaults, **{k: float(v) for k, v in hyper.items()}}
    memo = (rule, solver_name, steps, tuple(sorted(hyper.items())))
    memo += (tuple(np.asarray(jax.random.key_data(key)).ravel()),)
    if memo not in self.results:  # the sweeps revisit the grid's settings: reuse them
      self.results[memo] = self._run(rule, solver_name, steps, key, hyper)
    return self.results[memo]

  def _run(self, rule: str, solver_name: str, steps: int, key, hyper: dict) -> dict:
    k = (rule, solver_name, steps, tuple(sorted(hyper)))
    t0 = time.perf_counter()
    if k not in self.cache:
      self.cache[k] = self._build(rule, solver_name, steps, hyper)
    t1 = time.perf_counter()
    traced = {name: jnp.float32(v) for name, v in hyper.items()}
    x, nfe = self.cache[k](self.params, traced, key)
    x = np.asarray(jax.block_until_ready(x))
    t2 = time.perf_counter()
    return {"x": x, "nfe": int(nfe), "compile_s": t1 - t0, "wall_s": t2 - t1}


def batch_sharding(n: int, devices=None) -> tuple[NamedSharding, NamedSharding] | None:
  """Data parallelism for a batch of ``n``: ``(batch, replicated)`` shardings on a 1-D mesh
  of the first ``gcd(n, len(devices))`` devices; ``batch`` splits the batch evenly along
  its first axis, the networks' weights are ``replicated``. Every sample is independent of
  the others, so the loop runs without any collective. ``None`` where that is one device:
  the plain single-device program, unchanged.

  ``devices`` defaults to every local accelerator (``jax.local_devices()`` on GPU/TPU). On
  CPU the default is one device: it already runs on every core, and the virtual devices of
  ``--xla_force_host_platform_device_count`` only split the same cores (measured on the
  small demo with 8 of them: 15% longer compiles and slower sampling). Pass
  ``jax.local_devices()`` to shard over them anyway.
  """
  if devices is None:
    devices = jax.local_devices()
    devices = devices[:1] if devices[0].platform == "cpu" else devices
  d = math.gcd(n, len(devices))
  if d == 1:
    return None
  mesh = Mesh(np.asarray(devices[:d]), ("batch",))
  return NamedSharding(mesh, PartitionSpec("batch")), NamedSharding(mesh, PartitionSpec())


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
  follows the rule's convention (see :func:`make_rule`; ``"none"`` takes ``0``); the rule's
  other hyperparameters and the compiler options are ``config``'s (default
  :class:`DemoConfig`). ``key`` (typed key, raw key or int seed) draws the initial noise and
  the solver's noise. ``labels`` are digit classes, integers in ``[0, 10)``.

  Everything is checked before compiling: the names, ``steps`` (an int ``>= 1``), ``scale``
  (by the rule's own factory) and ``labels`` (a non-empty 1-D integer array in range); a bad
  one is a ``TypeError``/``ValueError`` naming it.
  """
  check_choice("guidance", guidance, demo_rules())
  check_choice("solver", solver, tuple(solvers.REGISTRY))
  if isinstance(steps, bool):
    raise TypeError("steps must be an int, got a bool")
  steps = check_scalar("steps", steps, lo=1, integer=True, static=True)
  config = DemoConfig() if config is None else config
  if guidance == NO_GUIDANCE:
    if scale not in (0, None):
      raise ValueError(f"scale: guidance {NO_GUIDANCE!r} takes no scale (pass 0), got {scale!r}")
    scale = 0.0
  else:
    check_rule(guidance, scale, **config.rule_kwargs.get(guidance, {}))
  labels = _check_labels(labels)
  sampler = Sampler(models, labels, config.rule_kwargs, config.compiler_options)
  out = sampler(guidance, solver, steps, as_key(key), scale=scale)
  return out["x"], out["nfe"]


def _check_labels(labels) -> np.ndarray:
  """Digit classes: a non-empty 1-D integer array with values in ``[0, NUM_CLASSES)``."""
  labels = np.asarray(labels)
  if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
    raise TypeError(f"labels must be integer digit classes, got dtype {labels.dtype}")
  if labels.ndim != 1 or labels.size == 0:
    raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
  bad = labels[(labels < 0) | (labels >= NUM_CLASSES)]
  if bad.size:
    raise ValueError(f"labels must lie in [0, {NUM_CLASSES}), got {bad[0]}")
  return labels.astype(np.int32)
