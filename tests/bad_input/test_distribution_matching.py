# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile input to ``jaxdiff.distill``'s distribution-matching functions: unknown
divergences and weightings, missing noise scales or density ratios, shapes that would
broadcast, non-finite or non-floating data, bad ratio bounds, scales, keys, schedules and
fake-score callables. Concrete input raises naming the argument; traced non-finite input
gives NaN in the rows that depend on it, never a finite gradient.

Fixtures: ``X`` a (4, 3) batch of generator outputs, ``R`` and ``F`` teacher and fake
predictions shaped like it, ``L`` four log ratios.
"""

import jax  # noqa: F401 - used by the reproducers
import jax.numpy as jnp
import numpy as np

from jaxdiff import distill as D  # noqa: F401 - used by the reproducers
from jaxdiff import schedules  # noqa: F401 - used by the reproducers
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
X = jnp.zeros((4, 3))
R = jnp.ones((4, 3))
F = jnp.full((4, 3), 0.5)
L = jnp.array([-1.0, 0.0, 1.0, 2.0])
FLOW = schedules.flow()
ORACLE = lambda xt, t, c: jnp.zeros_like(xt)  # noqa: E731
NS = dict(globals())

CASES = [
  # --- options
  Case("D.f_divergence_weight(L, divergence='kl')", raises(ValueError, "divergence must be one of 'reverse_kl'")),
  Case("D.distribution_matching_grad(X, R, F, weighting='snr')", raises(ValueError, "weighting must be one of 'dmd', 'score'")),
  Case("D.decoupled_timesteps((4,), key=0, variant='coupled')", raises(ValueError, "variant must be one of 'hybrid'")),
  Case("D.f_divergence_weight(L, normalize=1)", raises(TypeError, "normalize must be a bool")),
  # --- what a divergence or weighting needs
  Case("D.distribution_matching_grad(X, R, F, divergence='jensen_shannon')", raises(ValueError, r"divergence='jensen_shannon' needs log_ratio")),
  Case("D.distribution_matching_grad(X, R, F, weighting='score', sigma=0.5)", raises(ValueError, "alpha is required here")),
  Case("D.distribution_matching_grad(X, R, F, weighting='score', alpha=0.5, sigma=0.0)", raises(ValueError, "sigma must be positive, got 0.0")),
  Case("D.cfg_augmentation_grad(X, R, F, scale=2.0, weighting='score', alpha=0.5, sigma=-1.0)", raises(ValueError, "sigma must be positive")),
  Case("jax.jit(lambda s: D.distribution_matching_grad(X, R, F, weighting='score', alpha=0.5, sigma=s))(jnp.array([0.5, 0.0, 0.5, 0.5]))", returns(lambda g: np.isnan(g[1]).all() and np.isfinite(np.asarray(g)[[0, 2, 3]]).all(), "traced sigma <= 0: its row is NaN (poison), the others untouched", nan_ok=True)),
  Case("D.distribution_matching_grad(X, R, F, weighting='score', alpha=jnp.ones(3), sigma=0.5)", raises(ValueError, r"alpha must be a scalar or shaped \(4,\), got \(3,\)")),
  Case("D.distribution_matching_grad(X, R, F, weighting='score', alpha=True, sigma=0.5)", raises(TypeError, "alpha must be a real scalar")),
  # --- shapes that would broadcast
  Case("D.distribution_matching_grad(X, R[:, :1], F)", raises(ValueError, r"x0_real must have the shape of x \(4, 3\), got \(4, 1\)")),
  Case("D.distribution_matching_grad(X, R, F[:2])", raises(ValueError, "x0_fake must have the shape of x")),
  Case("D.distribution_matching_grad(X, R, F, divergence='forward_kl', log_ratio=L[:2])", raises(ValueError, r"log_ratio must be shaped \(4,\), got \(2,\)")),
  Case("D.f_divergence_weight(jnp.zeros((4, 1)))", raises(ValueError, r"log_ratio must be one value per example \(B,\)")),
  Case("D.cfg_augmentation_grad(X, R, F[None], scale=2.0)", raises(ValueError, "x0_uncond must have the shape of x")),
  Case("D.generator_loss(X, R[:, :2])", raises(ValueError, "grad must have the shape of x")),
  Case("D.distribution_matching_grad(jnp.zeros((0, 3)), jnp.zeros((0, 3)), jnp.zeros((0, 3)))", raises(ValueError, r"x must be a non-empty batch")),
  # --- dtypes and non-finite data
  Case("D.distribution_matching_grad(jnp.zeros((4, 3), int), R, F)", raises(TypeError, "x must be a floating array, got dtype int")),
  Case("D.distribution_matching_grad(X, R.astype(jnp.complex64), F)", raises(TypeError, "x0_real must be a floating array")),
  Case("D.distribution_matching_grad(X, R.at[1, 2].set(nan), F)", raises(ValueError, r"x0_real must be finite \(no NaN or inf\), got nan at index \(1, 2\)")),
  Case("D.f_divergence_weight(L.at[0].set(inf), divergence='forward_kl')", raises(ValueError, "log_ratio must be finite")),
  Case("jax.jit(lambda f: D.distribution_matching_grad(X, R, f))(F.at[2, 0].set(nan))", returns(lambda g: np.isnan(g[2]).any() and np.isfinite(np.asarray(g)[[0, 1, 3]]).all(), "traced: a NaN prediction makes its row NaN, the others untouched", nan_ok=True)),
  Case("jax.jit(lambda l: D.f_divergence_weight(l, divergence='forward_kl'))(L.at[0].set(nan))", returns(lambda h: np.isnan(h).all(), "traced NaN ratio: the batch-normalised weights are all NaN (never a finite weight)", nan_ok=True)),
  Case("D.ratio_discriminator_loss(jnp.array([0.0, nan]), L)", raises(ValueError, "real_logits must be finite")),
  Case("D.ratio_discriminator_loss(L, jnp.arange(3))", raises(TypeError, "fake_logits must be a floating array")),
  # --- ratio bounds and scale
  Case("D.f_divergence_weight(L, ratio_bounds=(0.0, 20.0))", raises(ValueError, r"ratio_bounds\[0\] must lie in \(0, inf\)")),
  Case("D.f_divergence_weight(L, ratio_bounds=(5.0, 2.0))", raises(ValueError, "ratio_bounds must satisfy lo < hi, got")),
  Case("D.f_divergence_weight(L, ratio_bounds=0.1)", raises(TypeError, r"ratio_bounds must be a pair \(lo, hi\) or None")),
  Case("D.f_divergence_weight(L, divergence='forward_kl', ratio_bounds=(0.1, inf), normalize=False)", returns(lambda h: np.allclose(h, np.exp(L)), "hi = inf: no upper clip")),
  Case("D.f_divergence_weight(jnp.full(4, -800.0), divergence='forward_kl', ratio_bounds=None)", returns(lambda h: np.isfinite(h).all(), "an underflowing ratio: the batch mean is floored, never 0/0")),
  Case("D.cfg_augmentation_grad(X, R, F, scale=nan)", raises(ValueError, "scale must be a number, got NaN")),
  Case("D.cfg_augmentation_grad(X, R, F, scale=True)", raises(TypeError, "scale must be a real number, got a bool")),
  Case("D.cfg_augmentation_grad(X, R, F, scale=1.0)", returns(lambda g: np.all(g == 0), "scale 1: no CFG augmentation")),
  Case("D.distribution_matching_grad(X, X, X)", returns(lambda g: np.all(g == 0), "x equal to the teacher's prediction: DMD's normaliser is floored, a zero direction (not 0/0)")),
  # --- times, keys, schedules and the fake score
  Case("D.decoupled_timesteps((4,), key=0, t_min=0.5, t_max=0.5)", raises(ValueError, "t_min must be below t_max")),
  Case("D.decoupled_timesteps((4,), key=0, t_max=1.5)", raises(ValueError, r"t_max must lie in \[0, 1\]")),
  Case("D.decoupled_timesteps((4,), key=0, t_input=0.01)", raises(ValueError, "t_input must exceed t_min=0.02")),
  Case("D.decoupled_timesteps((4,), key=0, t_input=nan)", raises(ValueError, "t_input must be finite")),
  Case("jax.jit(lambda t: D.decoupled_timesteps((4,), key=0, t_input=t))(0.01)[1]", returns(lambda t: np.isnan(t).all(), "traced t_input <= t_min: tau_ca is NaN (poison), never below t_min", nan_ok=True)),
  Case("D.decoupled_timesteps((4,), key='a')", raises(TypeError, "key must be an int seed or a JAX PRNG key")),
  Case("D.fake_score_loss(ORACLE, X, 0.5, schedule=FLOW, key=2**40)", raises(ValueError, "key: an int seed must lie in")),
  Case("D.fake_score_loss(ORACLE, X, 0.5, schedule='flow', key=0)", raises(TypeError, "schedule must be a jaxdiff schedule")),
  Case("D.fake_score_loss(3, X, 0.5, schedule=FLOW, key=0)", raises(TypeError, "denoise must be callable")),
  Case("D.fake_score_loss(lambda xt, t, c: xt[:, :1], X, 0.5, schedule=FLOW, key=0)", raises(ValueError, r"denoise\(x_t, t, cond\) must return x's shape")),
  Case("D.fake_score_loss(ORACLE, X, jnp.ones(3) * 0.5, schedule=FLOW, key=0)", raises(ValueError, r"t must be a scalar or shaped \(4,\)")),
  Case("float(D.fake_score_loss(ORACLE, X, 0.5, schedule=FLOW, key=0))", returns(lambda v: v == 0.0, "the exact denoiser of a point mass has zero loss")),
]  # fmt: skip


@params(CASES)
def test_case(case):
  run(case, NS)
