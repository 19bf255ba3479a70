# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile input to adapter guidance distillation (``jaxdiff.distill``: ``guided_states``,
``noised_states``, ``agd_loss``, ``freeze_base``, ``GuidanceAdapter``) and to
``guidance.agd``: bad scales, shapes, dtypes, conditions, options, a student with the wrong
output, a denoiser that does not take the scale. Concrete input raises naming the
argument; a traced non-finite guidance scale poisons the rows that carry it (NaN).

Fixtures: ``T`` the exact two-component mixture's denoiser (teacher), ``TS`` a 4-step
grid, ``XT`` four starting points, ``Y`` their labels, ``ST`` noised states of them,
``CFG`` an exactly distilled student, ``NET`` a tiny adapter model.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax  # noqa: F401 - used by the reproducers
from flax import nnx

import jaxdiff
from jaxdiff import distill, guidance, schedules, solvers  # noqa: F401 - used by the reproducers
from jaxdiff.models import DigitDenoiser
from jaxdiff.testing import GaussianMixture
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
SCHED = schedules.vp_cosine()
T = GaussianMixture(jnp.array([[2.0], [-2.0]]), 0.1).denoiser(SCHED)
TS = jaxdiff.timesteps(SCHED, 4)
XT = jax.random.normal(jax.random.key(0), (4, 1))
Y = jnp.array([0, 1, 0, 1])
DDIM = solvers.ddim()
ST = distill.noised_states(T, XT, TS, key=0, cond=Y, scale=2.0)


def CFG(x, t, c, *, guidance_scale):
  u, k = T(x, t, -jnp.ones_like(c)), T(x, t, c)
  return u + guidance_scale[:, None] * (k - u)


NET = distill.GuidanceAdapter(
  DigitDenoiser(dim=8, depth=1, num_heads=2, rngs=nnx.Rngs(0)), hidden=4, rngs=nnx.Rngs(1)
)
X8, T8, Y8 = jnp.zeros((2, 8, 8)), jnp.full((2,), 0.5), jnp.array([1, 2])
NS = dict(globals())

CASES = [
  # --- guidance scales
  Case("distill.guided_states(T, DDIM, XT, TS, key=0, cond=Y, scale=nan)", raises(ValueError, r"scale must be finite|scale.*NaN")),
  Case("distill.guided_states(T, DDIM, XT, TS, key=0, cond=Y, scale=jnp.array([1.0, inf, 2.0, 3.0]))", raises(ValueError, "scale")),
  Case("distill.guided_states(T, DDIM, XT, TS, key=0, cond=Y, scale=jnp.ones(3))", raises(ValueError, r"scale must be a scalar or of shape \(4,\), got shape \(3,\)")),
  Case("distill.guided_states(T, DDIM, XT, TS, key=0, cond=Y, scale='3')", raises(TypeError, "scale must be a number")),
  Case("distill.guided_states(T, DDIM, XT, TS, key=0, cond=Y, scale=True)", raises(TypeError, "scale must be a number")),
  Case("distill.guided_states(T, DDIM, XT, TS, key=0, cond=Y, scale=jnp.ones(4, complex))", raises(TypeError, "scale must be real")),
  Case("distill.guided_states(T, DDIM, XT, TS, key=0, cond=Y, scale=3).scale.dtype == XT.dtype", returns(bool, "an integer scale is a float scale")),
  Case("distill.noised_states(T, XT, TS, key=0, cond=Y, scale=jnp.full((4,), nan))", raises(ValueError, "scale")),
  # --- states, conditions, keys
  Case("distill.guided_states(T, DDIM, jnp.zeros((0, 1)), TS, key=0, cond=Y[:0], scale=2.0)", raises(ValueError, r"x_T must be batch-first \(B, ...\) with B >= 1")),
  Case("distill.guided_states(T, DDIM, jnp.zeros(4), TS, key=0, cond=Y, scale=2.0)", raises(ValueError, "x_T must be batch-first")),
  Case("distill.guided_states(T, DDIM, jnp.zeros((4, 1), int), TS, key=0, cond=Y, scale=2.0)", raises(TypeError, "x_T must be a floating array")),
  Case("distill.guided_states(T, DDIM, XT.at[0, 0].set(nan), TS, key=0, cond=Y, scale=2.0)", raises(ValueError, "x_T must be finite")),
  Case("distill.guided_states(T, DDIM, XT, TS, key=0, cond=None, scale=2.0)", raises(ValueError, "cond must be given")),
  Case("distill.guided_states(T, DDIM, XT, TS, key=0, cond=Y[:3], scale=2.0)", raises(ValueError, r"cond must be batch-first with the batch of x \(4\)")),
  Case("distill.guided_states(T, DDIM, XT, TS, key=0, cond=Y, scale=2.0, null_cond=-1.5)", raises(TypeError, "null_cond")),
  Case("distill.guided_states(T, DDIM, XT, TS, key='a', cond=Y, scale=2.0)", raises(TypeError, "key must be an int seed or a JAX PRNG key")),
  Case("distill.noised_states(T, [[1.0]], TS, key=0, cond=Y[:1], scale=2.0)", raises(TypeError, "x0 must be a floating array")),
  Case("distill.noised_states(T, XT, TS, key=0, cond=Y.astype(float), scale=2.0)", raises(TypeError, "cond must hold integer class labels")),
  Case("distill.noised_states(lambda x, t, c: x[:, :0], XT, TS, key=0, cond=Y, scale=2.0)", raises(ValueError, r"teacher\(x, t, cond\) must return")),
  # --- the loss
  Case("distill.agd_loss(CFG, ST)", returns(lambda v: float(v) < 1e-10, "an exactly distilled student has zero loss")),
  Case("distill.agd_loss(CFG, ST, prediction='score')", raises(ValueError, r"prediction must be one of")),
  Case("distill.agd_loss(CFG, tuple(ST))", raises(TypeError, "states must be GuidanceStates")),
  Case("distill.agd_loss(3.0, ST)", raises(TypeError, "student must be callable")),
  Case("distill.agd_loss(lambda x, t, c: x, ST)", raises(TypeError, "guidance_scale")),
  Case("distill.agd_loss(lambda x, t, c, guidance_scale: x[:, 0], ST)", raises(ValueError, r"student\(x, t, cond, guidance_scale=w\) must return")),
  Case("distill.agd_loss(lambda x, t, c, guidance_scale: x.astype(int), ST)", raises(TypeError, r"student\(x, t, cond, guidance_scale=w\)")),
  Case("distill.agd_loss(CFG, ST._replace(sigma=ST.sigma.at[0].set(0.0)))", raises(ValueError, "states.sigma must be > 0 for prediction='eps'")),
  Case("distill.agd_loss(CFG, ST._replace(sigma=ST.sigma.at[0].set(0.0)), prediction='x0')", returns(lambda v: np.isfinite(v), "sigma = 0 is fine for the data prediction")),
  # --- freeze_base
  Case("distill.freeze_base(0.1)", raises(TypeError, "optimizer must be an optax GradientTransformation")),
  Case("distill.freeze_base(optax.adam(0.1), trainable='')", raises(TypeError, "trainable must be a non-empty string")),
  # --- the adapter network
  Case("distill.GuidanceAdapter(T, rngs=nnx.Rngs(0))", raises(TypeError, "base must be a jaxdiff.models.DigitDenoiser")),
  Case("distill.GuidanceAdapter(NET.base, hidden=0, rngs=nnx.Rngs(0))", raises(ValueError, "hidden")),
  Case("distill.GuidanceAdapter(NET.base, scale_multiplier=0.0, rngs=nnx.Rngs(0))", raises(ValueError, "scale_multiplier")),
  Case("distill.GuidanceAdapter(NET.base, use_timestep='yes', rngs=nnx.Rngs(0))", raises(TypeError, "use_timestep")),
  Case("distill.GuidanceAdapter(NET.base, variant='attention', rngs=nnx.Rngs(0))", raises(ValueError, "variant must be one of")),
  Case("NET(X8, T8, Y8, guidance_scale=nan)", raises(ValueError, "guidance_scale")),
  Case("NET(X8, T8, Y8, guidance_scale=None)", raises(TypeError, "guidance_scale must be a number")),
  Case("NET(X8, T8, Y8, guidance_scale=jnp.ones(3))", raises(ValueError, r"guidance_scale must be a scalar or of shape \(2,\)")),
  Case("NET(X8, T8, jnp.array([1, 12]), guidance_scale=2.0)", raises(ValueError, "cond")),
  Case("jax.jit(lambda w: NET(X8, T8, Y8, guidance_scale=w))(jnp.array([2.0, nan]))", returns(lambda o: np.isfinite(o[0]).all() and np.isnan(o[1]).all(), "traced: the row with a NaN scale is NaN, the other untouched", nan_ok=True)),
  # --- the rule
  Case("guidance.agd(nan)", raises(ValueError, "agd: scale")),
  Case("guidance.agd('3')", raises(TypeError, "agd: scale")),
  Case("jaxdiff.sample(T, DDIM, XT, TS, key=0, cond=Y, guidance=guidance.agd(3.0))", raises(TypeError, "does not accept the keyword argument `guidance_scale`")),
  Case("jaxdiff.sample(jaxdiff.from_x0(lambda x, t, c: x, SCHED), DDIM, XT, TS, key=0, cond=Y, guidance=guidance.agd(3.0))", raises(TypeError, "guidance_scale")),
  Case("int(jaxdiff.sample(CFG, DDIM, XT, TS, key=0, cond=Y, guidance=guidance.agd(3.0)).nfe)", returns(lambda n: n == 4, "one evaluation per step")),
  Case("jax.jit(lambda w: jaxdiff.sample(CFG, DDIM, XT, TS, key=0, cond=Y, guidance=guidance.agd(w)).x)(nan)", returns(lambda x: np.isnan(x).all(), "a traced NaN scale poisons the sample", nan_ok=True)),
]  # fmt: skip


@params(CASES)
def test_case(case):
  run(case, NS)
