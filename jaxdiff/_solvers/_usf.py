"""USF: an exponential-integrator solver whose per-step configuration is data.

Liu et al.'s unified sampling framework writes every step of DDIM, DPM-Solver(++),
UniPC, ... as one exponential integrator with free per-step decisions; a *solver
schedule* fixes them, step by step. Here a step's decisions are a :class:`StepChoice`
(Taylor order, prediction type, derivative estimate, corrector) and the timesteps are an
ordinary :class:`~jaxdiff.schedules.Grid`, so a searched schedule is plain data to save
and reload. The choices are array leaves of the solver (a pytree), so that
:func:`jaxdiff.sample` compiles once for every schedule of the same length: a search
scores thousands of them without retracing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._grids import Grid
from jaxdiff._solvers._base import Solver, cast, ddim_terms, noise, phi, push, set_field, switch
from jaxdiff._solvers._unipc import _unic, _unipc_pred
from jaxdiff._validation import check_choice, check_flag, check_scalar, is_traced

Array = jax.Array

PREDICTIONS = ("x0", "eps")
DERIVATIVES = ("taylor", "unipc")
MAX_ORDER = 3


class StepChoice(NamedTuple):
  """The decisions of one USF step (plain data; a schedule is a tuple of them).

  Attributes:
    order: Taylor order ``p`` in {1, 2, 3} of the exponential integrator; uses the
      predictions at the last ``p`` grid points, so step ``i`` (0-based) allows ``p <= i + 1``.
    prediction: the integrand, ``"x0"`` (data prediction, DPM-Solver++ form) or ``"eps"``
      (noise prediction, DPM-Solver form).
    derivative: how the derivatives of the prediction in the Taylor terms are estimated
      from the last ``p`` predictions: ``"taylor"`` (divided differences in log-SNR with
      the exact ``phi_{k+1}`` weights) or ``"unipc"`` (UniPC's bh2 coefficients, which
      match the Taylor terms only to order ``p``; order 2 is DPM-Solver++(2M)'s update).
    corrector: apply UniC to this step's result once the network has been evaluated
      there (no extra evaluation; not allowed on the last step, which no evaluation
      follows).
  """

  order: int = 1
  prediction: str = "x0"
  derivative: str = "unipc"
  corrector: bool = False


# The compiled update kinds: (prediction index, order, derivative index; 0 at order 1) and
# the corrections (prediction index, order). Update 0 is the first-order data step.
_ALL_UPDATES = ((0, 1, 0), (1, 1, 0)) + tuple(
  (e, p, u) for e in (0, 1) for u in (0, 1) for p in (2, 3)
)
_ALL_CORRECTIONS = tuple((e, p) for e in (0, 1) for p in (1, 2, 3))


class USFState(NamedTuple):
  grid: Grid
  hist_x0: Array  # (MAX_ORDER, *x.shape) data predictions at points i-1, i-2, ..., newest first
  hist_eps: Array  # the noise predictions at the same points
  base: Array  # the first-order part of the last step (what UniC corrects)
  last: Array  # int32 corrector branch for the last step: 0 none, else 1 + 3 * pred + order - 1


def _taylor(g, at, i, h, order: int, hh):
  r"""``sum_k h phi_{k+1}(hh) D_k`` with ``D_k ~ h^k f^{(k)} / k!`` by divided differences.

  ``at(k)`` is the prediction at point ``i - k``; derivatives are in log-SNR. Through
  ``k = 2`` this is DPM-Solver++(3M)'s update (whose second difference is weighted 2x,
  see :class:`~jaxdiff.solvers.DPMSolverPP3M`).
  """
  r0 = (g.lam[i] - g.lam[i - 1]) / h
  d1_0 = (at(0) - at(1)) / r0
  if order == 2:
    return h * phi(2, hh) * d1_0
  r1 = (g.lam[i - 1] - g.lam[i - 2]) / h
  d1_1 = (at(1) - at(2)) / r1
  d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
  d2 = (d1_0 - d1_1) / (r0 + r1)
  return h * phi(2, hh) * d1 + (2.0 * h * phi(3, hh)) * d2


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True, eq=False)
class USF(Solver):
  r"""The unified-sampling-framework solver: a per-step :class:`StepChoice` schedule.

  With :math:`h = \lambda_{i+1} - \lambda_i` (half log-SNR), the step of order ``p`` on
  the data prediction (``"x0"``) or on the noise prediction (``"eps"``) is the Taylor
  expansion of the exact exponential integral (Lu et al. 2022a eq. 3.6, 2022b eq. 9),

  .. math::
    x_{i+1} = \tfrac{\sigma_{i+1}}{\sigma_i}x_i + \alpha_{i+1}\sum_{k=0}^{p-1}
      h^{k+1}\varphi_{k+1}(-h)\,\hat x_0^{(k)}(\lambda_i)
    \quad\text{or}\quad
    x_{i+1} = \tfrac{\alpha_{i+1}}{\alpha_i}x_i - \sigma_{i+1}\sum_{k=0}^{p-1}
      h^{k+1}\varphi_{k+1}(h)\,\hat\epsilon^{(k)}(\lambda_i),

  whose ``k = 0`` term is DDIM for either prediction. The derivatives come from the
  predictions at the last ``p`` points: ``"taylor"`` uses divided differences in
  :math:`\lambda` with the exact :math:`\varphi` weights; ``"unipc"`` uses UniPC's bh2
  coefficients :math:`B(h)\sum_k\rho_k D_k` (UniP-p; order 2 is DPM-Solver++(2M)). A step
  with ``corrector=True`` is corrected by UniC of the same order and prediction once the
  network has been evaluated at its end point (no extra evaluation). A step into
  ``sigma = 0`` is the first-order data step (``alpha_{i+1} x0``).

  The choice vectors are array leaves: ``USF`` is a pytree, so :func:`jaxdiff.sample`
  traces them and compiles once per schedule length. Build one with :func:`usf`; the
  decisions of DDIM, DPM-Solver++(2M) and UniPC are :func:`usf_steps`. Noise-prediction
  steps need ``alpha_i > 0`` where they start (checked on concrete grids).

  Attributes:
    orders, predictions, derivatives, correctors: ``(N,)`` int32 vectors (prediction
      index into ``("x0", "eps")``, derivative index into ``("taylor", "unipc")``).
    kinds: the compiled updates and corrections (static; see ``all_branches`` of
      :func:`usf`).

  References:
    Liu et al., "A Unified Sampling Framework for Solver Searching of Diffusion
    Probabilistic Models", ICLR 2024, arXiv:2312.07243 (Sec. 3-4);
    Lu et al., "DPM-Solver", arXiv:2206.00927 (eq. 3.6); Lu et al., "DPM-Solver++",
    arXiv:2211.01095; Zhao et al., "UniPC", arXiv:2302.04867 (eq. 8, bh2).
  """

  orders: Array
  predictions: Array
  derivatives: Array
  correctors: Array
  kinds: tuple = (_ALL_UPDATES, _ALL_CORRECTIONS)

  order = MAX_ORDER

  def tree_flatten(self):
    return (self.orders, self.predictions, self.derivatives, self.correctors), self.kinds

  @classmethod
  def tree_unflatten(cls, kinds, children):
    obj = object.__new__(cls)  # leaves may be tracers: no re-validation
    for f, v in zip(("orders", "predictions", "derivatives", "correctors"), children):
      set_field(obj, f, v)
    set_field(obj, "kinds", kinds)
    return obj

  @property
  def convergence_order(self) -> int:
    """The smallest order among the steps after warm-up (a schedule mixes orders)."""
    orders = np.asarray(self.orders)
    return int(orders[min(len(orders) - 1, MAX_ORDER - 1) :].min(initial=orders[-1]))

  @property
  def steps(self) -> tuple[StepChoice, ...]:
    """The schedule as plain :class:`StepChoice` values (concrete solvers only)."""
    return tuple(
      StepChoice(int(o), PREDICTIONS[int(p)], DERIVATIVES[int(d)], bool(c))
      for o, p, d, c in zip(
        *(np.asarray(a) for a in (self.orders, self.predictions, self.derivatives, self.correctors))
      )
    )

  @property
  def num_steps(self) -> int:
    return int(np.shape(self.orders)[0])

  def check_grid(self, grid: Grid) -> None:
    if grid.num_steps != self.num_steps:
      raise ValueError(
        f"this USF schedule has {self.num_steps} steps but the grid has {grid.num_steps}; "
        "build the grid with as many steps as the schedule"
      )
    if is_traced(grid.alpha) or is_traced(self.predictions):
      return
    bad = np.flatnonzero((np.asarray(self.predictions) == 1) & (np.asarray(grid.alpha[:-1]) <= 0))
    if bad.size:
      raise ValueError(
        f"step {int(bad[0])} uses the noise prediction ('eps') from a point with alpha = 0; "
        "use prediction='x0' there"
      )

  def init(self, x, ts):
    z = jnp.zeros((MAX_ORDER,) + x.shape, x.dtype)
    return USFState(ts, z, z, jnp.zeros_like(x), jnp.zeros((), jnp.int32))

  def step(self, state, x, i, pred, key, *, stage=0):
    del key, stage
    g = state.grid
    x0 = pred.x0.astype(x.dtype)
    eps_net = noise(x, pred, g.alpha[i], g.sigma[i])  # the noise prediction at the uncorrected x_i

    # ---- UniC: correct x_i with the evaluation just made there (branch 0: no correction).
    h_c = g.lam[i] - g.lam[i - 1]

    def corrected(p, on_eps):
      def run(_):
        # UniPC's form: base - alpha_i B(-h) res (x0), base - sigma_i B(h) res (eps).
        if on_eps:
          res = _unic(g, state.hist_eps, eps_net, i, h_c, p, h_c, x)
          return state.base - g.sigma[i] * jnp.expm1(h_c) * res
        res = _unic(g, state.hist_x0, x0, i, h_c, p, -h_c, x)
        return state.base - g.alpha[i] * jnp.expm1(-h_c) * res

      return run

    updates, corrections = self.kinds
    if corrections:
      branches = [lambda _: x] + [corrected(p, e == 1) for e, p in corrections]
      x = switch(state.last, branches, x)

    # ---- the predictor from the (corrected) x_i.
    _, eps, a1, s1 = ddim_terms(g, x, i, pred)
    h = g.lam[i + 1] - g.lam[i]
    base_x0 = a1 * x0 + s1 * eps
    base_eps = (a1 / g.alpha[i]) * x - s1 * jnp.expm1(h) * eps_net
    at_x0 = lambda k: x0 if k == 0 else state.hist_x0[k - 1]
    at_eps = lambda k: eps_net if k == 0 else state.hist_eps[k - 1]

    def predicted(p, use_unipc, on_eps):
      def run(_):
        # x0: base + a1 sum_k (...)(-h); eps: base - s1 sum_k (...)(h), as in the docstring.
        base, at, scale, hh = (base_eps, at_eps, s1, h) if on_eps else (base_x0, at_x0, a1, -h)
        sign = -1.0 if on_eps else 1.0
        if p == 1:
          return base
        if use_unipc:  # UniPC's form: base - scale B(hh) res
          return base - scale * jnp.expm1(hh) * _unipc_pred(g, at, i, h, p, hh)
        return base + (sign * scale) * _taylor(g, at, i, h, p, hh)

      return run

    # Static tables from a step's decisions to its branch (positions in self.kinds).
    update_at = np.zeros((2, MAX_ORDER + 1, 2), np.int32)
    for j, (e, p, u) in enumerate(updates):
      update_at[e, p, slice(None) if p == 1 else u] = j  # order 1 has no derivative
    correction_at = np.zeros((2, MAX_ORDER + 1), np.int32)
    for j, (e, p) in enumerate(corrections):
      correction_at[e, p] = j + 1
    order = jnp.asarray(self.orders)[i]
    on_eps = jnp.asarray(self.predictions)[i]
    index = jnp.asarray(update_at)[on_eps, order, jnp.asarray(self.derivatives)[i]]
    final = s1 == 0  # a step into sigma = 0 is the first-order data step: alpha x0
    index = jnp.where(final, 0, index)
    x_new = switch(index, [predicted(p, u == 1, e == 1) for e, p, u in updates], x)

    base = jnp.where(on_eps == 1, base_eps, base_x0)
    corr = (jnp.asarray(self.correctors)[i] != 0) & ~final
    last = jnp.where(corr, jnp.asarray(correction_at)[on_eps, order], 0)
    new_state = USFState(
      g, push(state.hist_x0, x0), push(state.hist_eps, eps_net), cast(base, x), last
    )
    return cast(x_new, x), new_state


def _as_choice(i: int, c) -> StepChoice:
  if isinstance(c, dict):
    c = StepChoice(**c)
  elif not isinstance(c, StepChoice):
    c = StepChoice(*c)
  where = f"steps[{i}]"
  order = check_scalar(f"{where}.order", c.order, lo=1, hi=MAX_ORDER, integer=True, static=True)
  if order > i + 1:
    raise ValueError(
      f"{where}.order = {order} needs the predictions at {order} points but step {i} has "
      f"{i + 1}; use order <= {i + 1}"
    )
  check_choice(f"{where}.prediction", c.prediction, PREDICTIONS)
  check_choice(f"{where}.derivative", c.derivative, DERIVATIVES)
  return StepChoice(
    order, c.prediction, c.derivative, check_flag(f"{where}.corrector", c.corrector)
  )


def usf(steps: Sequence[StepChoice], *, all_branches: bool = False) -> USF:
  """The USF solver of a schedule: one :class:`StepChoice` per grid step (see :class:`USF`).

  Args:
    steps: a non-empty sequence of :class:`StepChoice` (or tuples / dicts of their
      fields), one per step of the grid it will run on.
    all_branches: compile the updates of every decision, not only those ``steps`` uses:
      then every schedule of the same length shares one compilation of
      :func:`jaxdiff.sample` (what a search wants); otherwise schedules using the same
      set of decisions share one.

  Raises:
    ValueError: an empty schedule, an order above 3 or above ``i + 1`` at step ``i``, an
      unknown prediction or derivative estimate, a corrector on the last step.

  Example:
    >>> import jax, jaxdiff
    >>> from jaxdiff import schedules, solvers
    >>> from jaxdiff.solvers import StepChoice
    >>> from jaxdiff.testing import GaussianMixture
    >>> sched = schedules.vp_linear()
    >>> den = GaussianMixture(jax.numpy.zeros((1, 2)), 0.5).denoiser(sched)
    >>> steps = solvers.usf_steps("dpmpp_2m", 4)  # DPM-Solver++(2M)'s decisions
    >>> steps[1]
    StepChoice(order=2, prediction='x0', derivative='unipc', corrector=False)
    >>> x_T = jax.random.normal(jax.random.key(0), (3, 2))
    >>> grid = schedules.timesteps(sched, 4)
    >>> a = jaxdiff.sample(den, solvers.usf(steps), x_T, grid, key=0).x
    >>> b = jaxdiff.sample(den, solvers.dpmpp_2m(), x_T, grid, key=0).x
    >>> bool(jax.numpy.allclose(a, b, rtol=0, atol=2e-6))  # the same update, rounded apart
    True
    >>> # any other schedule: e.g. a third-order noise-prediction step with UniC
    >>> mine = [StepChoice(1), StepChoice(2), StepChoice(3, "eps", "taylor", True), StepChoice(1)]
    >>> solvers.usf(mine).steps[2].prediction
    'eps'

  References:
    Liu et al., "A Unified Sampling Framework for Solver Searching of Diffusion
    Probabilistic Models", arXiv:2312.07243.
  """
  if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence):
    raise TypeError(f"steps must be a sequence of StepChoice, got {type(steps).__name__}")
  if len(steps) == 0:
    raise ValueError("steps must hold at least one StepChoice (one per grid step), got none")
  choices = [_as_choice(i, c) for i, c in enumerate(steps)]
  if choices[-1].corrector:
    raise ValueError(
      f"steps[{len(choices) - 1}].corrector must be False: no network evaluation follows "
      "the last step, so UniC has nothing to correct it with"
    )
  all_branches = check_flag("all_branches", all_branches)
  col = lambda f: np.asarray([f(c) for c in choices], np.int32)
  pred = col(lambda c: PREDICTIONS.index(c.prediction))
  deriv = col(lambda c: DERIVATIVES.index(c.derivative) if c.order > 1 else 0)
  orders, corr = col(lambda c: c.order), col(lambda c: int(c.corrector))
  if all_branches:
    kinds = (_ALL_UPDATES, _ALL_CORRECTIONS)
  else:
    used = {(int(e), int(p), int(u)) for e, p, u in zip(pred, orders, deriv)}
    fixes = {(int(e), int(p)) for e, p, c in zip(pred, orders, corr) if c}
    kinds = (
      tuple(k for k in _ALL_UPDATES if k in used or k == (0, 1, 0)),
      tuple(k for k in _ALL_CORRECTIONS if k in fixes),
    )
  return USF(orders, pred, col(lambda c: DERIVATIVES.index(c.derivative)), corr, kinds)


_LIKE = ("ddim", "dpmpp_2m", "unipc")


def usf_steps(name: str, num_steps: int, *, lower_order_final: bool = True):
  """The :class:`StepChoice` schedule that reproduces a classic solver on ``num_steps`` steps.

  ``"ddim"`` (first order, bit for bit), ``"dpmpp_2m"`` (order 2 after a first-order
  warm-up; the bh2 order-2 update equals DPM-Solver++(2M)'s to rounding) and ``"unipc"``
  (UniPC-bh2 of order 2 with UniC after every step but the last, bit for bit), each with
  the library solver's ``lower_order_final`` rule (first-order last step below 15 steps).

  Example:
    >>> from jaxdiff import solvers
    >>> [s.order for s in solvers.usf_steps("unipc", 4)], solvers.usf_steps("unipc", 4)[0].corrector
    ([1, 2, 2, 1], True)
  """
  check_choice("name", name, _LIKE)
  n = check_scalar("num_steps", num_steps, lo=1, integer=True, static=True)
  lower_order_final = check_flag("lower_order_final", lower_order_final)
  out = []
  for i in range(n):
    order = 1 if name == "ddim" else min(2, i + 1)
    if lower_order_final and n < 15:
      order = min(order, n - i)
    out.append(StepChoice(order, "x0", "unipc", name == "unipc" and i < n - 1))
  return tuple(out)
