# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile input to the RL fine-tuning names of ``jaxdiff.finetune`` (B²-DiffuRL, FIND, and
the sampler-as-policy pieces): grids that end at sigma = 0, deterministic eta, bad
windows and branch counts, non-positive std, wrong shapes and dtypes, non-finite rewards,
bad policies, keys and denoisers. Concrete input raises naming the argument; a traced
non-positive std gives NaN (the documented poison).

Fixtures: ``G`` a 4-step vp_cosine grid, ``G0`` one ending at sigma = 0, ``F`` a linear
denoiser, ``X`` a (2, 3) batch, ``P`` the base noise policy of shape (3,).
"""

import jax  # noqa: F401 - used by the reproducers
import jax.numpy as jnp
import numpy as np

from jaxdiff import finetune as FT  # noqa: F401 - used by the reproducers
from jaxdiff import schedules, timesteps
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
G = timesteps(schedules.vp_cosine(), 4)
G0 = timesteps(schedules.vp_cosine(), 4, denoise_to_zero=True)
F = lambda x, t, c: 0.5 * x  # noqa: E731
X = jnp.ones((2, 3))
P = FT.noise_policy((3,))
R = jnp.array([[0.9, 0.1], [0.5, 0.4]])
NS = dict(globals())

CASES = [
  # --- the per-step log-probability
  Case("FT.gaussian_log_prob(X, 0.0, 0.0)", raises(ValueError, "std must be positive, got 0.0")),
  Case("FT.gaussian_log_prob(X, 0.0, -1.0)", raises(ValueError, "std must be positive")),
  Case("FT.gaussian_log_prob(X, jnp.zeros(2), 1.0)", raises(ValueError, r"mean of shape \(2,\) does not broadcast to x's shape \(2, 3\)")),
  Case("FT.gaussian_log_prob(X, 0.0, jnp.ones((4, 3)))", raises(ValueError, "std of shape")),
  Case("FT.gaussian_log_prob(jnp.ones((2, 3), jnp.int32), 0.0, 1.0)", raises(TypeError, "x must be a floating-point array, got dtype int32")),
  Case("FT.gaussian_log_prob(jnp.ones((0, 3)), 0.0, 1.0)", raises(ValueError, "x must be a non-empty batch")),
  Case("FT.gaussian_log_prob(X, 0.0, 1.0, reduction='max')", raises(ValueError, "reduction")),
  Case("jax.jit(lambda s: FT.gaussian_log_prob(X, 0.0, s))(-1.0)", returns(lambda v: bool(jnp.all(jnp.isnan(v))), "traced: a non-positive std poisons the rows with NaN", nan_ok=True)),
  Case("FT.ddim_transition(G, X, 0, X, eta=0.0)", raises(ValueError, r"eta must lie in \(0, 1\]")),
  Case("FT.ddim_transition(G, X, 0, X, eta=1.5)", raises(ValueError, "eta must lie in")),
  Case("FT.ddim_transition(G, X, 0, X, eta=nan)", raises(ValueError, "eta must be a number")),
  # --- rollouts
  Case("FT.stochastic_rollout(F, G0, X, key=0)", raises(ValueError, "grid must end at sigma > 0")),
  Case("FT.stochastic_rollout(F, jnp.linspace(1, 0, 5), X, key=0)", raises(TypeError, "grid must be a jaxdiff.schedules.Grid")),
  Case("FT.stochastic_rollout(3, G, X, key=0)", raises(TypeError, "denoise must be callable")),
  Case("FT.stochastic_rollout(lambda x, t, c: x[:, :2], G, X, key=0)", raises(ValueError, r"denoise\(x, t, cond\)")),
  Case("FT.stochastic_rollout(F, G, X, key='a')", raises(TypeError, "key must be an int seed or a JAX PRNG key")),
  Case("FT.stochastic_rollout(F, G, jnp.ones(3), key=0)", raises(ValueError, r"x must be a non-empty batch \(B, \*shape\)")),
  Case("FT.stochastic_rollout(F, G, jnp.ones((2, 3), jnp.int32), key=0)", raises(TypeError, "x must be a floating-point array")),
  Case("FT.stochastic_rollout(F, G, X, key=0, start=4)", raises(ValueError, r"start must lie in \[0, 3\]")),
  Case("FT.stochastic_rollout(F, G, X, key=0, start=2, stop=2)", raises(ValueError, "stop must lie in")),
  Case("FT.stochastic_rollout(F, G, X, key=0, eta=0.0)", raises(ValueError, "eta must lie in")),
  Case("FT.stochastic_rollout(F, G, X, key=0, start=1, stop=3).states.shape", returns(lambda s: s == (2, 3, 3), "a partial run records stop - start + 1 states")),
  Case("FT.trajectory_log_probs(F, G, jnp.ones((2, 1, 3)))", raises(ValueError, "states must be .B, n . 1, .shape. with n >= 1")),
  Case("FT.trajectory_log_probs(F, G, jnp.ones((2, 5, 3)), start=1)", raises(ValueError, r"start must lie in \[0, 0\]")),
  # --- B2-DiffuRL
  Case("FT.progressive_windows(0, first=1, last=2)", raises(ValueError, "num_stages must lie in")),
  Case("FT.progressive_windows(3, first=3, last=2)", raises(ValueError, "last must lie in")),
  Case("FT.progressive_windows(3, first=0, last=2)", raises(ValueError, "first must lie in")),
  Case("FT.progressive_windows(3, first=1.5, last=2)", raises(ValueError, "first must be an integer")),
  Case("FT.branch_rollout(F, G, X, key=0, window=5, num_branches=2)", raises(ValueError, r"window must lie in \[1, 4\]")),
  Case("FT.branch_rollout(F, G, X, key=0, window=2, num_branches=1)", raises(ValueError, "num_branches must lie in")),
  Case("FT.branch_rollout(F, G0, X, key=0, window=2, num_branches=2)", raises(ValueError, "grid must end at sigma > 0")),
  Case("FT.branch_rollout(F, G, X, key=0, window=2, num_branches=2, cond=jnp.zeros(3, jnp.int32))", raises(ValueError, r"cond must be batch first \(2 rows")),
  Case("FT.branch_rollout(F, G, X, key=0, window=4, num_branches=2).start", returns(lambda s: s == 0, "window = N branches at x_T: no prefix")),
  Case("FT.branch_advantages(jnp.array([0.1, 0.2]))", raises(ValueError, r"rewards must be \(B, K\) with K >= 2")),
  Case("FT.branch_advantages(jnp.array([[1, 0]]))", raises(TypeError, "rewards must be a floating-point array")),
  Case("FT.branch_advantages(jnp.array([[0.1, nan]]))", raises(ValueError, "rewards and history must be finite")),
  Case("FT.branch_advantages(R, history=jnp.array([inf]))", raises(ValueError, "must be finite")),
  Case("FT.branch_advantages(R, pos_threshold=-1.0, neg_threshold=0.0)", raises(ValueError, "neg_threshold must be <= pos_threshold")),
  Case("FT.branch_advantages(R, advantage_clip=0.0)", raises(ValueError, "advantage_clip must lie in")),
  Case("FT.branch_advantages(R, pos_weight=-1.0)", raises(ValueError, "pos_weight must lie in")),
  Case("FT.branch_advantages(jnp.ones((2, 2)))", returns(lambda o: not bool(o.mask.any()), "equal rewards: every score is 0, no branch is kept (no 0/0)")),
  Case("FT.b2diffurl_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.ones((1, 2), bool))", raises(ValueError, r"log_probs must be \(B, K, w\)")),
  Case("FT.b2diffurl_loss(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2, 3)), jnp.zeros((2,)), jnp.ones((1, 2), bool))", raises(ValueError, r"advantages must be \(B, K\)")),
  Case("FT.b2diffurl_loss(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2, 3)), jnp.zeros((1, 2)), jnp.ones((1, 2)))", raises(TypeError, "mask must be a bool array")),
  Case("FT.b2diffurl_loss(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2, 4)), jnp.zeros((1, 2)), jnp.ones((1, 2), bool))", raises(ValueError, "old_log_probs shape")),
  Case("FT.b2diffurl_loss(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2, 3)), jnp.zeros((1, 2)), jnp.ones((1, 2), bool), epsilon=1.0)", raises(ValueError, r"epsilon_low must lie in \[0, 1\)")),
  Case("FT.b2diffurl_loss(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2, 3)), jnp.ones((1, 2)), jnp.zeros((1, 2), bool))", returns(lambda v: float(v) == 0.0, "no kept branch: the loss is 0, not 0/0")),
  # --- FIND
  Case("FT.noise_policy((3,), dtype=jnp.int32)", raises(TypeError, "dtype must be a floating dtype")),
  Case("FT.find_sample((jnp.zeros(3), jnp.ones(3)), 2, key=0)", raises(TypeError, r"policy must be a NoisePolicy")),
  Case("FT.find_sample(FT.NoisePolicy(jnp.zeros(3), jnp.ones(2)), 2, key=0)", raises(ValueError, r"policy.std shape \(2,\) differs from policy.mean shape \(3,\)")),
  Case("FT.find_sample(P, 0, key=0)", raises(ValueError, "num_samples must lie in")),
  Case("FT.find_sample(P, 2, key=None)", raises(TypeError, "key must be")),
  Case("FT.find_clamp(P, min_std=0.0)", raises(ValueError, "min_std must lie in")),
  Case("FT.find_calibration(jnp.zeros(3), jnp.zeros(2))", raises(ValueError, "predicted must be a scalar or shaped like rewards")),
  Case("FT.find_calibration(0.0, jnp.zeros((2, 2)))", raises(ValueError, r"rewards must be \(B,\)")),
  Case("FT.find_calibration(jnp.array(0), jnp.zeros(2))", raises(TypeError, "predicted must be a floating-point array")),
  Case("FT.find_loss(P, P, jnp.ones((2, 4)), jnp.zeros(2))", raises(ValueError, r"x_T must be \(B, \*\(3,\)\)")),
  Case("FT.find_loss(P, P, jnp.ones((2, 3)), jnp.zeros(3))", raises(ValueError, r"advantages must be \(B,\)")),
  Case("FT.find_loss(P, P, jnp.ones((2, 3)), jnp.zeros(2), variant='trpo')", raises(ValueError, "variant")),
  Case("FT.find_loss(P, P, jnp.ones((2, 3)), jnp.zeros(2), epsilon=-0.1)", raises(ValueError, r"epsilon must lie in \[0, 1\)")),
  Case("FT.find_loss(P, P, jnp.ones((2, 3)), jnp.zeros(2), kl_weight=-1.0)", raises(ValueError, "kl_weight must lie in")),
  Case("FT.find_loss(P, FT.noise_policy((2,)), jnp.ones((2, 3)), jnp.zeros(2))", raises(ValueError, "old_policy has shape")),
  Case("FT.find_loss(P, P, jnp.ones((2, 3)), jnp.zeros(2, jnp.int32))", raises(TypeError, "advantages must be a floating-point array")),
  Case("FT.find_loss(FT.NoisePolicy(jnp.zeros(3), jnp.zeros(3)), P, jnp.ones((2, 3)), jnp.zeros(2))", raises(ValueError, "std must be positive")),
  Case("FT.find_loss(P, P, jnp.ones((2, 3)), jnp.ones(2), kl_weight=1.0)", returns(lambda v: np.isclose(float(v), -1.0), "at the base policy the ratio is 1 and the anchor 0: -mean(A)")),
]  # fmt: skip


@params(CASES)
def test_case(case):
  run(case, NS)
