"""The guidance testbed: an exact 3-class mixture, a schedule, a grid and the real sampler.

The 2-D isotropic :class:`jaxdiff.testing.GaussianMixture` has exact conditional and
unconditional denoisers and an exact class posterior; trajectories run through
:func:`jaxdiff.sample` with :func:`jaxdiff.solvers.ddim` on a logSNR-uniform
``vp_cosine`` grid. The mixture and the grid are built in the current precision mode, so
tests under the ``x64`` fixture get float64 references.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxdiff
from jaxdiff import StepContext, schedules, solvers
from jaxdiff.testing import GaussianMixture

MEANS = np.array([[3.0, 0.0], [-1.5, 2.6], [-1.5, -2.6]])
WEIGHTS = np.array([0.5, 0.3, 0.2])
S2 = 0.25  # per-component variance
NUM_STEPS = 12
B = 16
SCHED = schedules.vp_cosine()


def mixture() -> GaussianMixture:
  return GaussianMixture(MEANS, S2, weights=WEIGHTS)


def gmm_denoise(x, t, cond):
  """Exact ``E[x0 | x_t, y]``; label -1 is the unconditional model."""
  return mixture().denoiser(SCHED)(x, t, cond)


def class_logits(x, t):
  """Exact ``log p(y | x_t)`` (a noise-aware classifier)."""
  return mixture().class_posterior(x, t, SCHED, log=True)


def clean_logits(z):
  """``log p(y | x)`` of clean data: an off-the-shelf classifier on ``x0``."""
  return class_logits(z, jnp.full((z.shape[0],), SCHED.t_min, z.dtype))


def pag_denoiser(x, t, c, *, perturb=None):
  """The mixture has no attention: perturbing shrinks the prediction, so the flag provably
  reaches the output."""
  out = gmm_denoise(x, t, c)
  return out if perturb is None else jnp.where(perturb[:, None], 0.5 * out, out)


def grid(num_steps=NUM_STEPS):
  return schedules.timesteps(SCHED, num_steps, spacing="logsnr")


def run(rule, batch, denoise=gmm_denoise, num_steps=NUM_STEPS):
  """``(x_0, nfe per sample)`` of deterministic DDIM driven by ``rule``."""
  x_T, cond = batch
  out = jaxdiff.sample(
    denoise,
    solvers.ddim(),
    x_T,
    grid(num_steps),
    key=jax.random.key(0),
    cond=cond,
    guidance=rule,
  )
  return out.x, out.nfe


def fixed(xc, xu):
  """A denoiser returning fixed conditional / unconditional predictions (batched call)."""
  xc, xu = jnp.asarray(xc), jnp.asarray(xu)

  def den(x, t, c):
    n = x.shape[0] // xc.shape[0]
    mask = (c >= 0).reshape((-1,) + (1,) * (xc.ndim - 1))
    return jnp.where(mask, jnp.concatenate([xc] * n), jnp.concatenate([xu] * n))

  return den


def step(rule, den, x, cond, ctx, state=()):
  """One jitted rule application (one compile instead of many eager op dispatches)."""
  return jax.jit(lambda x, state: rule.apply(den, x, cond, ctx, state))(x, state)


def ctx(t=0.5, step=0, num_steps=NUM_STEPS):
  t = jnp.asarray(t, jnp.result_type(float))
  return StepContext(t, SCHED.alpha(t), SCHED.sigma(t), jnp.int32(step), jnp.int32(num_steps), None)


def counting(denoise):
  """Wraps a denoiser with a host callback that records how many rows each call evaluates."""
  rows = []

  def den(x, t, c):
    jax.debug.callback(lambda n: rows.append(int(n)), jnp.int32(x.shape[0]))
    return denoise(x, t, c)

  return den, rows


def make_batch():
  """``(x_T, cond)``: a float64 batch of ``B`` starting points and labels ``0, 1, 2, 0, ...``."""
  with jax.enable_x64(True):
    x_T = jax.random.normal(jax.random.key(0), (B, 2), jnp.float64)
    cond = jnp.arange(B, dtype=jnp.int32) % 3
  return x_T, cond


def unguided_refs(batch):
  """Conditional and unconditional DDIM trajectories of ``batch`` (no guidance rule)."""
  x_T, cond = batch
  with jax.enable_x64(True):
    cond_traj, _ = run(None, batch)
    uncond_traj, _ = run(None, (x_T, -jnp.ones_like(cond)))
  return cond_traj, uncond_traj
