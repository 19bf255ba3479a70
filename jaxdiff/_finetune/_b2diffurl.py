"""B²-DiffuRL: backward progressive training and branch-based sampling against sparse rewards.

Hu et al., "Towards Better Alignment: Training Diffusion Models with Reinforcement Learning
Against Sparse Rewards", CVPR 2025 (https://arxiv.org/abs/2503.11240); official code
github.com/hu-zijing/B2-DiffuRL (``run_process.sh``: the stage schedule; ``run_sample.py``:
branching; ``run_select.py``: normalisation and selection; ``run_train.py``: the loss).

A stage trains only the last ``window`` steps of the stochastic sampler. Each prompt's
trajectory runs once up to the branch point ``N - window`` and then continues in
``num_branches`` independent branches; the sparse final reward of each branch, z-scored
against the recent rewards, says how much the trained steps (the only ones that differ
between branches) contributed. In each branch group the best branch is kept as a
positive example if its score passes ``pos_threshold`` and the worst as a negative one if
it is below ``neg_threshold``; the kept branches' window steps are trained with PPO's
clipped loss (:func:`optim.losses.ppo_clip_loss`). The window grows backwards stage by
stage (:func:`progressive_windows`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdiff._finetune._policy import _check_grid, _check_x, stochastic_rollout
from jaxdiff._grids import Grid
from jaxdiff._validation import as_key, check_scalar, is_traced
from optim.losses import ppo_clip_loss

Array = jax.Array


def progressive_windows(num_stages: int, *, first: int, last: int) -> tuple[int, ...]:
  r"""Backward progressive training: the number of final sampler steps trained per stage.

  Stage :math:`k = 0, \dots, K-1` trains the last

  .. math::
    w_k = w_{\text{first}} + \Big\lfloor \frac{k\,(w_{\text{last}} - w_{\text{first}} +
      1)}{K} \Big\rfloor

  steps (the official ``run_process.sh``: ``cur_split_step``), so training starts on the
  steps nearest the image and the window grows backwards to ``last`` steps in equal
  blocks of stages. The branch point of stage ``k`` is grid point ``N - w_k``.

  Args:
    num_stages: :math:`K \ge 1`.
    first: the first window, :math:`\ge 1`.
    last: the last window, :math:`\ge` ``first``.

  Returns:
    A tuple of ``num_stages`` ints, non-decreasing from ``first`` to at most ``last``.

  Example:
    >>> from jaxdiff.finetune import progressive_windows
    >>> progressive_windows(6, first=1, last=3)
    (1, 1, 2, 2, 3, 3)

  References:
    Hu et al., arXiv:2503.11240 (backward progressive training; official ``run_process.sh``,
    defaults ``SplitStepLeft=14``, ``SplitStepRight=20``, ``StageCnt=100`` of 20 steps).
  """
  k = check_scalar("progressive_windows: num_stages", num_stages, lo=1, integer=True, static=True)
  a = check_scalar("progressive_windows: first", first, lo=1, integer=True, static=True)
  b = check_scalar("progressive_windows: last", last, lo=a, integer=True, static=True)
  k, a, b = int(k), int(a), int(b)
  return tuple(a + (i * (b - a + 1)) // k for i in range(k))


class BranchRollout(NamedTuple):
  """Branched trajectories of one stage (:func:`branch_rollout`).

  Attributes:
    states: ``(B, K, window + 1, *shape)``: the shared branch-point state, then each
      branch's states (``states[:, :, -1]`` are the samples).
    log_probs: ``(B, K, window)``: the behaviour policy's log-probability of each window
      step (the loss's ``old_log_probs``).
    start: the grid point of ``states[:, :, 0]`` (``N - window``; a Python int, an array
      when the rollout is returned from ``jit``: use ``N - window`` there).
  """

  states: Array
  log_probs: Array
  start: int


def branch_rollout(
  denoise,
  grid: Grid,
  x_T: Array,
  *,
  key,
  window: int,
  num_branches: int,
  eta: float = 1.0,
  cond=None,
  reduction: str = "mean",
) -> BranchRollout:
  r"""Branch-based sampling: a shared prefix, then ``num_branches`` continuations.

  Each of the ``B`` trajectories runs the stochastic sampler (:func:`stochastic_rollout`)
  from ``x_T`` to the branch point :math:`i_0 = N - \text{window}`; the state there is
  copied ``num_branches`` times and every copy finishes the last ``window`` steps with its
  own noise. Branches of one group differ only in the trained steps, so comparing their
  final rewards credits those steps (the official ``run_sample.py``).

  Args:
    denoise: ``denoise(x, t, cond) -> x0`` (the current policy).
    grid: the sampler's grid (it must end at ``sigma > 0``).
    x_T: ``(B, *shape)`` starting noise.
    key: PRNG key.
    window: the number of final steps that branch (and are trained), in ``[1, N]``.
    num_branches: branches per trajectory, :math:`K \ge 2`.
    eta: the sampler's noise scale in ``(0, 1]`` (the official code: 1).
    cond: ``denoise``'s condition, batch first (repeated for the branches), or ``None``.
    reduction: ``"mean"`` (the official code's per-entry mean) or ``"sum"`` (the density).

  Returns:
    A :class:`BranchRollout`.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff import schedules, timesteps
    >>> from jaxdiff.finetune import branch_rollout
    >>> g = timesteps(schedules.vp_cosine(), 6)
    >>> r = branch_rollout(lambda x, t, c: 0.5 * x, g, jnp.ones((2, 3)), key=0, window=2,
    ...                    num_branches=4)
    >>> r.states.shape, r.log_probs.shape, r.start
    ((2, 4, 3, 3), (2, 4, 2), 4)

  References:
    Hu et al., arXiv:2503.11240 (branch-based sampling; official
    ``run_sample.py``).
  """
  who = "branch_rollout"
  _check_grid(grid, who)
  x_T = _check_x(x_T, who)
  n = grid.num_steps
  w = int(check_scalar(f"{who}: window", window, lo=1, hi=n, integer=True, static=True))
  k = int(check_scalar(f"{who}: num_branches", num_branches, lo=2, integer=True, static=True))
  key = as_key(key)
  b = x_T.shape[0]
  start = n - w
  x = x_T
  if start > 0:
    x = stochastic_rollout(
      denoise,
      grid,
      x_T,
      key=jax.random.fold_in(key, 0),
      eta=eta,
      cond=cond,
      stop=start,
      reduction=reduction,
    ).states[:, -1]
  rep = lambda a: None if a is None else jnp.repeat(jnp.asarray(a), k, axis=0)
  if cond is not None and jnp.ndim(cond) >= 1 and jnp.shape(cond)[0] != b:
    raise ValueError(
      f"{who}: cond must be batch first ({b} rows, as x_T), got shape {jnp.shape(cond)}"
    )
  branches = stochastic_rollout(
    denoise,
    grid,
    rep(x),
    key=jax.random.fold_in(key, 1),
    eta=eta,
    cond=rep(cond),
    start=start,
    reduction=reduction,
  )
  states = branches.states.reshape((b, k) + branches.states.shape[1:])
  return BranchRollout(states, branches.log_probs.reshape(b, k, w), start)


class BranchAdvantages(NamedTuple):
  """What :func:`branch_advantages` returns, each ``(B, K)``.

  Attributes:
    advantages: the clipped, weighted score of every kept branch (0 elsewhere).
    mask: ``True`` for the kept branches (the best one of a group above
      ``pos_threshold``, the worst one below ``neg_threshold``).
    scores: the z-scored rewards.
  """

  advantages: Array
  mask: Array
  scores: Array


def branch_advantages(
  rewards: Array,
  *,
  history: Array | None = None,
  pos_threshold: float = 0.5,
  neg_threshold: float = -0.5,
  advantage_clip: float = 5.0,
  pos_weight: float = 1.0,
  neg_weight: float = 1.0,
) -> BranchAdvantages:
  r"""Branch advantages: z-scored sparse rewards, the best and worst branch of each group.

  With :math:`r_{bk}` the reward of branch :math:`k` of group :math:`b`, and the mean
  :math:`m` and sample standard deviation :math:`s` (``ddof=1``) of the current rewards
  pooled with ``history`` (the official code keeps the last 8 epochs' rewards per prompt),

  .. math::
    z_{bk} = \frac{r_{bk} - m}{s + 10^{-8}},\qquad
    A_{bk} = \operatorname{clip}(z_{bk}, -c, c)\,\big(\beta_+ [z_{bk} > 0] +
      \beta_- [z_{bk} \le 0]\big),

  and branch :math:`k^+ = \arg\max_k z_{bk}` is kept if :math:`z_{bk^+} \ge \tau_+`,
  :math:`k^- = \arg\min_k z_{bk}` if :math:`z_{bk^-} < \tau_-` (``run_select.py``; the
  weights and clip are ``run_train.py``'s ``beta1``, ``beta2``, ``adv_clip_max``). Call it
  once per prompt (condition): the official statistics are per prompt.

  Args:
    rewards: ``(B, K)`` final rewards, one row per branch group, floating, finite.
    history: earlier rewards of the same prompt (any shape), pooled into :math:`m, s`.
    pos_threshold, neg_threshold: :math:`\tau_+ \ge \tau_-` (official script: 0.5, -0.5).
    advantage_clip: :math:`c > 0`.
    pos_weight, neg_weight: :math:`\beta_+, \beta_- \ge 0`.

  Returns:
    :class:`BranchAdvantages` (``advantages``, ``mask``, ``scores``).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff.finetune import branch_advantages
    >>> out = branch_advantages(jnp.array([[0.9, 0.1, 0.5], [0.5, 0.5, 0.6]]))
    >>> out.mask.tolist()
    [[True, True, False], [False, False, False]]

  References:
    Hu et al., arXiv:2503.11240 (official ``run_select.py``, ``run_train.py``).
  """
  who = "branch_advantages"
  r = jnp.asarray(rewards)
  if not jnp.issubdtype(r.dtype, jnp.floating):
    raise TypeError(f"{who}: rewards must be a floating-point array, got dtype {r.dtype}")
  if r.ndim != 2 or r.shape[1] < 2 or r.shape[0] < 1:
    raise ValueError(f"{who}: rewards must be (B, K) with K >= 2 branches, got shape {r.shape}")
  pool = r.ravel()
  if history is not None:
    h = jnp.asarray(history)
    if not jnp.issubdtype(h.dtype, jnp.floating):
      raise TypeError(f"{who}: history must be a floating-point array, got dtype {h.dtype}")
    pool = jnp.concatenate([h.ravel().astype(r.dtype), pool])
  if not is_traced(pool) and not bool(jnp.all(jnp.isfinite(pool))):
    raise ValueError(f"{who}: rewards and history must be finite (no NaN or inf)")
  tp = check_scalar(f"{who}: pos_threshold", pos_threshold)
  tn = check_scalar(f"{who}: neg_threshold", neg_threshold)
  if tp is not None and tn is not None and tn > tp:
    raise ValueError(f"{who}: neg_threshold must be <= pos_threshold, got {tn} > {tp}")
  check_scalar(f"{who}: advantage_clip", advantage_clip, lo=0.0, lo_open=True, allow_inf=True)
  check_scalar(f"{who}: pos_weight", pos_weight, lo=0.0)
  check_scalar(f"{who}: neg_weight", neg_weight, lo=0.0)
  z = (r - jnp.mean(pool)) / (jnp.std(pool, ddof=1) + 1e-8)
  kk = jnp.arange(r.shape[1])
  best = (kk == jnp.argmax(z, axis=1)[:, None]) & (jnp.max(z, axis=1, keepdims=True) >= tp)
  worst = (kk == jnp.argmin(z, axis=1)[:, None]) & (jnp.min(z, axis=1, keepdims=True) < tn)
  mask = best | worst
  adv = jnp.clip(z, -advantage_clip, advantage_clip) * jnp.where(z > 0, pos_weight, neg_weight)
  return BranchAdvantages(jnp.where(mask, adv, 0.0).astype(r.dtype), mask, z)


def b2diffurl_loss(
  log_probs: Array,
  old_log_probs: Array,
  advantages: Array,
  mask: Array,
  *,
  epsilon: float = 0.1,
) -> Array:
  r"""B²-DiffuRL's clipped policy loss over the kept branches' window steps.

  .. math::
    \mathcal L = \frac{1}{|\mathcal S|\,w}\sum_{(b,k)\in\mathcal S}\sum_{i}
      \max\big(-A_{bk}\,\rho_{bki},\ -A_{bk}\operatorname{clip}(\rho_{bki}, 1-\epsilon,
      1+\epsilon)\big),\qquad \rho = e^{\log\pi_\theta - \log\pi_{\text{old}}},

  over the kept branches :math:`\mathcal S` (``mask``) and the :math:`w` window steps:
  :func:`optim.losses.ppo_clip_loss` with one advantage per branch (the official
  ``run_train.py``, ``train.eps = 0.1``).

  Args:
    log_probs: ``(B, K, w)`` :func:`trajectory_log_probs` of the branches' window steps
      under the current denoiser (differentiated).
    old_log_probs: ``(B, K, w)`` the rollout's (:attr:`BranchRollout.log_probs`).
    advantages: ``(B, K)`` from :func:`branch_advantages`.
    mask: ``(B, K)`` the kept branches.
    epsilon: the clip range :math:`\epsilon \in [0, 1)`.

  Returns:
    The scalar loss (0 when no branch is kept).

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff.finetune import b2diffurl_loss
    >>> lp = jnp.zeros((1, 2, 3))
    >>> float(b2diffurl_loss(lp, lp, jnp.array([[1.0, -1.0]]), jnp.array([[True, False]])))
    -1.0

  References:
    Hu et al., arXiv:2503.11240 (official ``run_train.py``); Schulman et al.,
    "Proximal Policy Optimization Algorithms", arXiv:1707.06347 (Eq. 7).
  """
  who = "b2diffurl_loss"
  lp = jnp.asarray(log_probs)
  if lp.ndim != 3:
    raise ValueError(f"{who}: log_probs must be (B, K, w), got shape {lp.shape}")
  adv, m = jnp.asarray(advantages), jnp.asarray(mask)
  if adv.shape != lp.shape[:2]:
    raise ValueError(f"{who}: advantages must be (B, K) = {lp.shape[:2]}, got shape {adv.shape}")
  if m.shape != lp.shape[:2]:
    raise ValueError(f"{who}: mask must be (B, K) = {lp.shape[:2]}, got shape {m.shape}")
  if m.dtype != jnp.bool_:
    raise TypeError(f"{who}: mask must be a bool array, got dtype {m.dtype}")
  return ppo_clip_loss(
    lp,
    old_log_probs,
    adv[..., None],
    epsilon_low=epsilon,
    epsilon_high=epsilon,
    mask=jnp.broadcast_to(m[..., None], lp.shape),
  )
