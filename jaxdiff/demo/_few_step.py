"""A few-step student of the demo's denoiser, distilled from the teacher's own trajectories.

The teacher (the demo's conditional denoiser, no guidance) samples a pool of trajectories
with DDIM at the demo's budget of ``nfe_budget`` evaluations; no training digit is used.
The student, a copy of the teacher's network, learns to map every state of a trajectory to
its end (:func:`jaxdiff.distill.trajectory_consistency_loss` with ``variant="endpoint"``,
the consistency function of the teacher's sampler), and then samples in one evaluation
(``x_0 = f(x_T, T)``) or two (re-noise that sample to ``student_mid_t`` and map it again,
the multistep consistency sampler of Song et al. 2023, Algorithm 1, on the VP schedule).

The stage compares, on the grid's metrics and from the same noise: the teacher at the full
budget, the teacher's DDIM at 1 and 2 evaluations (what the student must beat at equal
cost) and the student at 1 and 2; and the wall time per sample, compiled, interleaved over
rounds (median of the per-round ratios to the teacher). The study of every few-step method
on the digits is ``bench/trajectory_distillation_digits.py`` (TBCM: trajectory, re-noised
and data states; continuous, discrete and endpoint losses).
"""

from __future__ import annotations

import pathlib
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optim
from jaxdiff import distill, from_v, sample, schedules, solvers
from jaxdiff.demo import _evaluation as ev
from jaxdiff.demo import _figures as fig
from jaxdiff.demo._config import DemoConfig
from jaxdiff.demo._training import _DENOISER_FIELDS, Models
from jaxdiff.models import train

__all__ = ["StudentModel", "few_step_stage", "prepare_student", "student_sample"]

# The student's recipe (pool sampler, loss, parameterization) is code: a change bumps it.
_STUDENT_RECIPE = "student-v1"
_STUDENT_FIELDS = (*_DENOISER_FIELDS, "nfe_budget", "student_steps", "student_pool", "student_lr")
_ROUNDS = 5  # interleaved timing rounds


class StudentModel(NamedTuple):
  """The distilled few-step student (:func:`prepare_student`).

  Attributes:
    net: the student network (a copy of the teacher's architecture, v prediction).
    denoise: ``jaxdiff.from_v(net, schedule)``: the consistency function ``(x, t, y) -> x0``.
    grid: the teacher's time grid the pool was drawn on (``nfe_budget`` DDIM steps).
    losses: per-step training losses.
    resumed_from: the checkpoint step training resumed from (``student_steps`` when
      restored complete).
    pool_s: seconds spent drawing the teacher's trajectory pool (compilation included).
  """

  net: Any
  denoise: Any
  grid: Any
  losses: np.ndarray
  resumed_from: int
  pool_s: float


def _pool(config: DemoConfig, models: Models, grid) -> tuple[np.ndarray, np.ndarray]:
  """The teacher's trajectories as a training set: ``x`` of shape ``(M, 2, 8, 8)`` holds
  ``(x_{t_i}, x_0)`` pairs (a state and its trajectory's end), ``y`` of shape ``(M, 2)``
  holds ``(label, i)``: :func:`jaxdiff.models.train` takes two arrays with a shared
  leading axis, so the time enters as its grid index."""
  n = config.student_pool
  labels = jnp.asarray(np.arange(n) % 10, jnp.int32)
  key = jax.random.key(config.seed + 31)
  x_T = jax.random.normal(key, (n, 8, 8))
  teacher = from_v(models.denoiser, models.schedule)
  run = jax.jit(
    lambda x, y: (
      sample(teacher, solvers.ddim(), x, grid, key=0, cond=y, return_trajectory=True).trajectory
    )
  )
  traj = np.asarray(run(x_T, labels))  # (N + 1, n, 8, 8)
  steps = traj.shape[0] - 1  # states with sigma > 0: x_T, ..., x_{N-1}
  end = np.broadcast_to(traj[-1], traj[:steps].shape)
  x = np.stack([traj[:steps], end], axis=2).reshape(steps * n, 2, 8, 8)
  idx = np.repeat(np.arange(steps), n)
  y = np.stack([np.tile(np.asarray(labels), steps), idx], axis=-1)
  return x.astype(np.float32), y.astype(np.int32)


def prepare_student(
  config: DemoConfig,
  models: Models,
  cache_dir: str | pathlib.Path,
  *,
  progress: bool = True,
  stop_after: int | None = None,
) -> StudentModel:
  """Distills (or restores) the few-step student of the demo's denoiser.

  The pool: ``config.student_pool`` teacher trajectories (labels cycling over the ten
  digits) by deterministic DDIM on the demo's logSNR grid of ``config.nfe_budget`` steps.
  The student starts from the teacher's weights and minimises, over
  ``config.student_steps`` steps of :func:`optim.adamp` (warmup + cosine, peak
  ``config.student_lr``, batch ``config.batch_size``),

  .. math::
    \\mathcal L(\\theta) = \\mathbb E_{i, \\text{trajectory}}
      \\big\\|f_\\theta(x_{t_i}, t_i, y) - x_0\\big\\|^2

  (:func:`jaxdiff.distill.trajectory_consistency_loss`, ``variant="endpoint"``). Cached
  under ``cache_dir/student-v1-<hash>`` (the teacher's fields and the student's), restored
  bit for bit.
  """
  c = config
  grid = schedules.timesteps(models.schedule, c.nfe_budget, spacing="logsnr")
  sched = models.schedule
  tgrid = jnp.asarray(grid.t)
  ckpt = pathlib.Path(cache_dir) / f"{_STUDENT_RECIPE}-{c.key_of(*_STUDENT_FIELDS)}"
  t0 = time.perf_counter()
  x, y = _pool(c, models, grid)  # a few seconds; drawn again on a restore (it is the data)
  pool_s = time.perf_counter() - t0

  def student(net, xx, tt, cond):
    return from_v(net, sched)(xx, tt, cond)

  def loss_fn(net, xb, yb, key):
    t = tgrid[yb[:, 1]]
    pairs = distill.TrajectoryPairs(xb[:, 0], t, xb[:, 0], t, xb[:, 1])
    return distill.trajectory_consistency_loss(
      student, net, pairs, teacher=None, schedule=sched, cond=yb[:, 0], variant="endpoint"
    )

  warmup = max(1, min(50, c.student_steps // 10))
  lr = optax.warmup_cosine_decay_schedule(
    0.0, c.student_lr, warmup, max(c.student_steps, warmup + 1), c.student_lr / 100
  )
  r = train(
    nnx.clone(models.denoiser),
    loss_fn,
    optim.adamp(lr),
    (x, y),
    steps=c.student_steps,
    batch_size=c.batch_size,
    key=c.seed + 32,
    chunk=c.chunk,
    checkpoint_dir=ckpt,
    checkpoint_every=c.checkpoint_every,
    stop_after=stop_after,
    progress="few-step student" if progress else False,
    compiler_options=c.compiler_options,
  )
  return StudentModel(r.model, from_v(r.model, sched), grid, r.losses, r.resumed_from, pool_s)


def student_sample(student: StudentModel, x_T, labels, *, num_steps: int, mid_t: float, key):
  """One- or two-evaluation sampling with the student (pure, jit-able).

  One step: :math:`x = f(x_T, t_0)`. Two: with :math:`t_i` the pool grid's point nearest
  ``mid_t`` (a time the student was trained at), :math:`x \\leftarrow f(\\alpha_{t_i} x +
  \\sigma_{t_i} z, t_i)` with fresh noise :math:`z` from ``key``.
  """
  if num_steps not in (1, 2):
    raise ValueError(f"student_sample: num_steps must be 1 or 2, got {num_steps!r}")
  grid = student.grid
  n = x_T.shape[0]
  x = student.denoise(x_T, jnp.full((n,), grid.t[0]), labels)
  if num_steps == 2:
    i = mid_index(grid, mid_t)
    z = jax.random.normal(key, x_T.shape, x_T.dtype)
    x_mid = grid.alpha[i] * x + grid.sigma[i] * z
    x = student.denoise(x_mid, jnp.full((n,), grid.t[i]), labels)
  return x


def mid_index(grid, mid_t: float) -> int:
  """The interior grid point nearest ``mid_t`` (never the pure-noise start or the end)."""
  t = np.asarray(grid.t)
  inner = np.arange(1, len(t) - 1)
  return int(inner[np.argmin(np.abs(t[inner] - mid_t))])


def few_step_stage(
  config, models, evaluator, labels, key, cache_dir, out, *, progress=True
) -> dict:
  """Distils (or restores) the student and compares it with the teacher; writes
  ``few_step.png``. Returns the rows (FD, accuracy, precision, recall, FD to the teacher's
  samples, evaluations, wall ms per sample) and the training facts."""
  t0 = time.perf_counter()
  st = prepare_student(config, models, cache_dir, progress=progress)
  train_s = time.perf_counter() - t0
  sched = models.schedule
  y = jnp.asarray(labels, jnp.int32)
  x_T = jax.random.normal(jax.random.fold_in(key, 13), (len(labels), 8, 8))
  k2 = jax.random.fold_in(key, 14)
  teacher = from_v(models.denoiser, sched)
  budget = config.nfe_budget

  def ddim(steps):
    ts = schedules.timesteps(sched, steps, spacing="logsnr")
    return jax.jit(lambda x: sample(teacher, solvers.ddim(), x, ts, key=0, cond=y).x)

  def few(k):
    return jax.jit(
      lambda x: student_sample(st, x, y, num_steps=k, mid_t=config.student_mid_t, key=k2)
    )

  runs = {
    f"teacher, DDIM {budget} steps": (ddim(budget), budget),
    "teacher, DDIM 1 step": (ddim(1), 1),
    "teacher, DDIM 2 steps": (ddim(2), 2),
    "student, 1 step": (few(1), 1),
    "student, 2 steps": (few(2), 2),
  }
  samples = {name: np.asarray(jax.block_until_ready(fn(x_T))) for name, (fn, _) in runs.items()}
  walls = {name: [] for name in runs}
  for _ in range(_ROUNDS):  # interleaved: each round times every run once
    for name, (fn, _) in runs.items():
      t1 = time.perf_counter()
      jax.block_until_ready(fn(x_T))
      walls[name].append(time.perf_counter() - t1)
  ref_name = f"teacher, DDIM {budget} steps"
  to_teacher = ev.Evaluator(models.classifier, np.clip(samples[ref_name], -1.0, 1.0), config.seed)
  n = len(labels)
  rows = []
  for name, (_, nfe) in runs.items():
    m = evaluator(samples[name], labels)
    ratio = np.median(np.asarray(walls[ref_name]) / np.asarray(walls[name]))
    rows.append(
      {"setting": name, "nfe": nfe}
      | {k: m[k] for k in ("fd", "accuracy", "precision", "recall")}
      | {
        "fd_to_teacher": to_teacher(samples[name], labels)["fd"],
        "ms_per_sample": 1e3 * float(np.median(walls[name])) / n,
        "speedup": float(ratio),
      }
    )
  rows_shown = min(4, config.samples_per_class)
  fig.save_panels(
    out / "few_step.png",
    list(samples.items()),
    labels,
    rows_shown,
    "few-step student vs its teacher (same noise)",
  )
  losses = np.asarray(st.losses)
  return {
    "rows": rows,
    "student_steps": config.student_steps,
    "pool": config.student_pool,
    "teacher_steps": budget,
    "mid_t": float(st.grid.t[mid_index(st.grid, config.student_mid_t)]),
    "final_loss": float(losses[-max(1, len(losses) // 20) :].mean()) if len(losses) else None,
    "resumed_from": st.resumed_from,
    "pool_s": st.pool_s,
    "train_s": train_s,
    "rounds": _ROUNDS,
  }
