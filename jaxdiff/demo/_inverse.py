"""Inverse problems on the digits with the demo's cached models: box inpainting and 2x
super-resolution of held-out digits by DPS, RED-diff and FlowChef.

The problem set, the held-out images, the least-squares baseline and the scores are shared
with ``bench/inverse_problems.py`` (the study behind the README's table); the demo runs the
small version of it (:func:`inverse_problems`, ``DemoConfig.inverse_digits`` images).
"""

from __future__ import annotations

import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxdiff
from jaxdiff import from_v, guidance, inverse, schedules, solvers
from jaxdiff.demo._config import DemoConfig
from jaxdiff.demo._training import FlowModel, Models, prepare_flow_model
from jaxdiff.models import Digits

__all__ = [
  "NOISE_STD",
  "cached_flow_model",
  "held_out",
  "inverse_problems",
  "least_squares",
  "problems",
  "score",
]

# Measurement noise std of y = A x + s n, on images in [-1, 1].
NOISE_STD = 0.05
# DPS's zeta (normalized step, guidance.dps) and FlowChef's step size, as in the bench.
DPS_SCALE = 10.0
FLOWCHEF_SCALE = 1.0


def problems() -> dict[str, inverse.Operator]:
  """The digits' measurement operators by table label: the central 4x4 box hidden, and
  2x average pooling (8x8 -> 4x4).

  Example:
    >>> {k: v.out_shape for k, v in problems().items()}
    {'inpaint (box 4x4)': (48,), 'super-resolution 2x': (4, 4)}
  """
  return {
    "inpaint (box 4x4)": inverse.box_mask((8, 8), 2, 2, 4, 4),
    "super-resolution 2x": inverse.avg_pool((8, 8), 2),
  }


def held_out(data: Digits, n: int) -> tuple[jax.Array, np.ndarray]:
  """``n`` held-out digits and their labels, a fixed random subset (the same in the bench)."""
  idx = np.random.default_rng(0).permutation(len(data.test_x))[:n]
  return jnp.asarray(data.test_x[idx]), np.asarray(data.test_y[idx])


def least_squares(op: inverse.Operator, y) -> jax.Array:
  r"""The minimum-norm least-squares restoration :math:`A^+ y` (no prior): the baseline.

  For the box mask :math:`A^+ = A^\top`; for 2x average pooling :math:`A^+ = 4A^\top`.

  Example:
    >>> op = problems()["super-resolution 2x"]
    >>> x = least_squares(op, op(jnp.ones((1, 8, 8))))
    >>> bool(jnp.allclose(x, 1.0, atol=1e-5))
    True
  """
  pinv = jnp.linalg.pinv(op.matrix())
  return (y.reshape(y.shape[0], -1) @ pinv.T).reshape(y.shape[0], *op.in_shape)


def score(x, x_true, op: inverse.Operator, y, classifier, labels) -> dict[str, float]:
  r"""PSNR (dB) to the truth, measurement residual :math:`\|Ax - y\|/\sqrt{M}` and the
  classifier's accuracy, each the mean over the batch of restorations ``x`` clipped to
  ``[-1, 1]``. A residual near the noise std means the measurement is met to its noise."""
  x = jnp.clip(jnp.asarray(x), -1, 1)
  m = int(np.prod(op.out_shape))
  resid = jnp.linalg.norm((op(x) - y).reshape(x.shape[0], -1), axis=1) / np.sqrt(m)
  return {
    "psnr": float(jnp.mean(inverse.psnr(x, x_true))),
    "residual": float(jnp.mean(resid)),
    "accuracy": float(np.mean(np.asarray(classifier(x)).argmax(-1) == labels)),
  }


def cached_flow_model(config: DemoConfig, data: Digits, cache_dir) -> FlowModel | None:
  """The demo's rectified flow if the cache holds it complete, else ``None``; never trains.

  ``stop_after=0`` makes :func:`prepare_flow_model` restore the newest checkpoint and stop
  before any training step (it may leave an empty checkpoint folder behind).
  """
  fm = prepare_flow_model(config, data, cache_dir, progress=False, stop_after=0)
  return fm if fm.resumed_from == config.flow_steps else None


def _sample(denoise, solver, x_T, ts, rule, cond):
  out = jaxdiff.sample(denoise, solver, x_T, ts, key=1, guidance=rule, cond=cond)
  return out.x, out.nfe


def inverse_problems(
  config: DemoConfig, models: Models, data: Digits, cache_dir: str | pathlib.Path
) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
  """The demo stage: each of :func:`problems` on ``config.inverse_digits`` held-out digits.

  Methods, each ``config.nfe_budget`` steps of the demo's unconditional (label ``-1``)
  denoiser: DPS (``guidance.dps``, DDPM), RED-diff (``inverse.red_diff``, Adam), and
  FlowChef (``guidance.flowchef`` on the cached rectified flow, Euler) when the cache
  holds that model complete (the demo does not train it), next to the least-squares
  baseline :func:`least_squares`. Each method is one program of the measurement ``y``,
  compiled with the demo's XLA options; wall time is its second run.

  Returns:
    ``(results, grids)``: ``results["rows"]`` a list of dicts (problem, method, steps, nfe,
    psnr, residual, accuracy, wall_s) and the setting; ``grids[problem][column]`` the
    images of the figure (measurement, restorations, truth).
  """
  n, steps = config.inverse_digits, config.nfe_budget
  x_true, labels = held_out(data, n)
  null = -jnp.ones((n,), jnp.int32)
  x_T = jax.random.normal(jax.random.key(config.seed + 2), (n, 8, 8))
  vp = models.schedule
  den = from_v(models.denoiser, vp)
  flow = cached_flow_model(config, data, cache_dir)
  ts_vp = schedules.timesteps(vp, steps, spacing="logsnr")
  rows, grids = [], {}
  for pname, op in problems().items():
    y = inverse.measure(op, x_true, NOISE_STD, key=config.seed + 3)
    methods = {
      "least squares A^+ y (no prior)": lambda y, op=op: (least_squares(op, y), jnp.int32(0)),
      "DPS": lambda y, op=op: _sample(
        den, solvers.ddpm(), x_T, ts_vp, guidance.dps(op, y, DPS_SCALE), null
      ),
      "RED-diff": lambda y, op=op: (lambda o: (o.x, o.nfe))(
        inverse.red_diff(den, op, y, ts_vp, key=config.seed + 4, cond=null)
      ),
    }
    if flow is not None:
      ts_flow = schedules.timesteps(flow.schedule, steps, spacing="uniform")
      methods["FlowChef"] = lambda y, op=op: _sample(
        flow.denoise,
        solvers.ddim(),
        x_T,
        ts_flow,
        guidance.flowchef(inverse.measurement_loss(op, y), FLOWCHEF_SCALE),
        null,
      )
    grids[pname] = {"measurement (A^+ y)": None}
    for name, fn in methods.items():
      run = jax.jit(fn).lower(y).compile(config.compiler_options)
      jax.block_until_ready(run(y))
      t0 = time.perf_counter()
      x, nfe = jax.block_until_ready(run(y))
      wall = time.perf_counter() - t0
      nfe = int(nfe)
      rows.append(
        {
          "problem": pname,
          "method": name,
          "steps": 0 if nfe == 0 else steps,
          "nfe": nfe,
          **score(x, x_true, op, y, models.classifier, labels),
          "wall_s": wall,
        }
      )
      key = "measurement (A^+ y)" if nfe == 0 else name
      grids[pname][key] = np.clip(np.asarray(x), -1, 1)
    grids[pname]["ground truth"] = np.asarray(x_true)
  flow_note = (
    "the cached rectified flow (prepare_flow_model)"
    if flow is not None
    else "skipped: the rectified-flow model is not in the cache (the demo does not train it; "
    "`python bench/inverse_problems.py --part digits` trains and caches it)"
  )
  setting = {"digits": n, "steps": steps, "noise_std": NOISE_STD, "dps_scale": DPS_SCALE}
  setting |= {"flowchef_scale": FLOWCHEF_SCALE, "flowchef": flow_note}
  return {"setting": setting, "rows": rows}, grids
