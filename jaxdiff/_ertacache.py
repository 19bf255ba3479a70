"""ERTACache: the rule (a profiled reuse schedule with its corrections) and its offline
calibration, which runs the full sampler once (so this module stands above the loop)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._caching import _features, _output, _Reuse, _run, cacheable_net
from jaxdiff._module import module, setfield, static
from jaxdiff._sampling import sample
from jaxdiff._validation import check_choice, check_scalar

Array = jax.Array


@module
class ERTACache(_Reuse):
  r"""ERTACache: a profiled reuse schedule, residual rectification and step adjustment.

  Built by :func:`ertacache`, which profiles the full-computation trajectory offline
  (see there). With the schedule ``full``, at a reuse step :math:`i` after the last full
  step :math:`k` the features are the cached ones with the closed-form linear correction
  of the cache-induced error (``variant`` ``"both"`` or ``"rectify"``),

  .. math:: \hat F(i) = (1 + a_i)\,F(k),

  and the output is moved along the step's direction by the trajectory-aware coefficient
  :math:`\phi_i` (``"both"`` or ``"adjust"``):

  .. math:: \hat x_0 \leftarrow x + \phi_i\,(\hat x_0 - x).

  For the flow schedule's Euler/DDIM step, scaling :math:`\hat x_0 - x` by
  :math:`\phi_i` is exactly scaling the velocity, i.e. the integration interval
  :math:`\Delta t \to \phi_i \Delta t` of the paper's timestep adjustment; for other
  schedules it is the same correction in the data-prediction form. ``variant="none"``
  is the profiled schedule with plain reuse. ``gain`` and ``phi`` hold
  :math:`a_i` and :math:`\phi_i` per step (0 and 1 at full steps): float64 arrays, leaves
  of the pytree (a new profile of the same schedule does not recompile ``sample``).

  Example:
    >>> from jaxdiff import caching
    >>> rule = caching.ERTACache(full=(True, False, True), gain=(0.0, 0.1, 0.0),
    ...                          phi=(1.0, 0.9, 1.0))
    >>> rule.full_steps(3).tolist()
    [True, False, True]

  References:
    Peng et al., "ERTACache: Error Rectification and Timesteps Adjustment for Efficient
    Diffusion", arXiv:2508.21091.
  """

  full: tuple[bool, ...] = static()
  gain: Any = None
  phi: Any = None
  variant: str = static("both")

  def __post_init__(self):
    check_choice("variant", self.variant, ERTA_VARIANTS)
    full = tuple(bool(v) for v in np.asarray(self.full, bool).reshape(-1))
    if not full or not full[0]:
      raise ValueError(f"full must be a non-empty schedule whose first step is full, got {full}")
    setfield(self, "full", full)
    for name in ("gain", "phi"):
      v = np.asarray(getattr(self, name), np.float64).reshape(-1)
      if v.shape != (len(full),) or not np.isfinite(v).all():
        raise ValueError(f"{name} must hold {len(full)} finite numbers (one per step), got {v}")
      setfield(self, name, v)

  def full_steps(self, num_steps: int) -> np.ndarray:
    if num_steps != len(self.full):
      raise ValueError(
        f"cache: this ertacache schedule was profiled for {len(self.full)} steps, the grid "
        f"has {num_steps}"
      )
    return np.asarray(self.full)

  def predict(self, state, pos):
    if self.variant not in ("both", "rectify"):
      return state
    return state * (1 + jnp.asarray(self.gain, state.dtype)[pos])

  def adjust(self, x0, x, step):
    if self.variant not in ("both", "adjust"):
      return x0
    return x + jnp.asarray(self.phi, x.dtype)[step] * (x0 - x)


ERTA_VARIANTS = ("both", "rectify", "adjust", "none")


def ertacache(
  denoise,
  solver,
  x_T: Array,
  ts,
  *,
  key,
  cond: Any = None,
  threshold: float = 0.1,
  variant: str = "both",
) -> ERTACache:
  r"""Profiles a denoiser/solver/grid offline and returns the :class:`ERTACache` rule.

  The calibration run is the full-computation sampler from ``x_T`` (conditional calls
  only, no guidance), giving states :math:`x_i` and features :math:`F(i)` (every block's
  residual branches). Then, step by step (``k`` the last full step; step 0 is full):

  1. residual profiling: the reuse error the cache would make,
     :math:`e_i = \|F(i) - F(k)\|_1 / \|F(i)\|_1` (summed over branches and the batch);
     step :math:`i` reuses if :math:`e_i \le` ``threshold``, else it is full (``k = i``);
  2. residual linearization: at a reuse step, the closed-form least-squares gain of the
     additive error along the cached features,
     :math:`a_i = \langle F(i) - F(k), F(k)\rangle / \|F(k)\|^2`;
  3. timestep adjustment: with :math:`\tilde x_0` the output at :math:`x_i` from the
     rectified cache and :math:`x_0` the full one, the closed-form
     :math:`\phi_i = \langle x_0 - x_i, \tilde x_0 - x_i\rangle / \|\tilde x_0 - x_i\|^2`
     (the step-size scale that best matches the full step, see :class:`ERTACache`).

  Assumptions (the official code was not available here): the error is measured on the
  same per-block branch features the other rules cache (the paper caches the
  transformer's residual output), the criterion is the direct reuse error against the
  last full step (not a running sum), and the coefficients are pooled over the
  calibration batch.

  Args:
    denoise: a cacheable denoiser (see :mod:`jaxdiff.caching`).
    solver, x_T, ts, key, cond: the calibration run, as for :func:`jaxdiff.sample`.
    threshold: relative L1 reuse error allowed (``>= 0``; 0 reuses only identical steps).
    variant: corrections applied, ``"both"``, ``"rectify"``, ``"adjust"`` or ``"none"``.

  Returns:
    An :class:`ERTACache` rule for grids of ``ts.num_steps`` steps.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxdiff import caching, from_v, schedules, solvers
    >>> from jaxdiff.models import DigitDenoiser
    >>> sched = schedules.vp_cosine()
    >>> den = from_v(DigitDenoiser(dim=8, depth=1, num_heads=2, rngs=nnx.Rngs(0)), sched)
    >>> ts = schedules.timesteps(sched, 3)
    >>> x_T = jax.random.normal(jax.random.key(0), (2, 8, 8))
    >>> rule = caching.ertacache(den, solvers.ddim(), x_T, ts, key=0, cond=jnp.array([1, 2]))
    >>> len(rule.full), rule.full[0]
    (3, True)

  References:
    Peng et al., "ERTACache: Error Rectification and Timesteps Adjustment for Efficient
    Diffusion", arXiv:2508.21091 (offline residual profiling, trajectory-aware timestep
    adjustment, closed-form residual linearization).
  """
  net = cacheable_net(denoise)
  threshold = check_scalar("threshold", threshold, lo=0.0, static=True)
  check_choice("variant", variant, ERTA_VARIANTS)
  traj = sample(denoise, solver, x_T, ts, key=key, cond=cond, return_trajectory=True).trajectory

  @jax.jit
  def features(x, t):
    return _features(net, x, t, cond, None)

  @jax.jit
  def outputs(x, t, feats, scale):
    out = _run(net, x, t, cond, None, lambda j, h, run: scale * feats[j])
    exact = _run(net, x, t, cond, None, lambda j, h, run: run(h))
    return _output(denoise, net, out, x, t), _output(denoise, net, exact, x, t)

  dot = lambda a, b: sum(float(jnp.vdot(u, v)) for u, v in zip(a, b))
  l1 = lambda a: sum(float(jnp.sum(jnp.abs(u))) for u in a)
  n = ts.num_steps
  full, gain, phi = [True], [0.0], [1.0]
  cached = None
  for i in range(n):
    x, t = traj[i], jnp.full((x_T.shape[0],), ts.t[i])
    feats = features(x, t)
    if i == 0:
      cached = feats
      continue
    diff = [f - c for f, c in zip(feats, cached)]
    if l1(diff) > threshold * l1(feats):
      full.append(True), gain.append(0.0), phi.append(1.0)
      cached = feats
      continue
    a = dot(diff, cached) / max(dot(cached, cached), np.finfo(np.float32).tiny)
    rectified, exact = outputs(x, t, cached, 1.0 + a)
    u, w = exact - x, rectified - x
    p = float(jnp.vdot(u, w)) / max(float(jnp.vdot(w, w)), np.finfo(np.float32).tiny)
    full.append(False), gain.append(a), phi.append(p)
  return ERTACache(tuple(full), tuple(gain), tuple(phi), variant)
