"""jaxdiff.distill's adapter guidance distillation (AGD) and guidance.agd, float64 on the
exact Gaussian mixture (closed-form conditional denoisers, so CFG is closed form).

The loss is zero for an adapter that reproduces CFG (built from the mixture's posterior
means) and matches a transcription of the official code's loss (and its gradient, over 10
SGD steps); the collected states transcribe a hand-written CFG DDIM loop; the registered
rule costs one evaluation per step and, on an exactly distilled network, gives CFG's
samples; the frozen base is bit-for-bit unchanged by training through ``freeze_base``."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxdiff
from jaxdiff import distill, guidance, schedules, solvers

STEPS = 8


def _exact_cfg(gmm, sched):
  """CFG of the mixture from its posterior means (not the denoiser the teacher uses)."""

  def student(x, t, c, *, guidance_scale):
    a, s = sched.alpha(t), sched.sigma(t)
    x_c = gmm.posterior_mean(x, a, s, c)
    x_u = gmm.posterior_mean(x, a, s, None)
    return x_u + guidance_scale[:, None] * (x_c - x_u)

  return student


def _setup(gmm, b=12):
  sched = schedules.vp_cosine()
  teacher = gmm.denoiser(sched)
  ts = jaxdiff.timesteps(sched, STEPS, spacing="logsnr")
  x_T = jax.random.normal(jax.random.key(0), (b, 2))
  cond = jnp.arange(b) % 2
  w = jnp.linspace(1.0, 6.0, b)  # one scale per trajectory, the official range
  return sched, teacher, ts, x_T, cond, w


@pytest.mark.integration  # heavy (3-7 s each): CI's second tier keeps make test within 5 min
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_loss_is_zero_for_an_adapter_that_reproduces_cfg(x64, gmm, prediction):
  sched, teacher, ts, x_T, cond, w = _setup(gmm)
  states = distill.guided_states(teacher, solvers.ddim(), x_T, ts, key=1, cond=cond, scale=w)
  exact = _exact_cfg(gmm, sched)
  assert float(distill.agd_loss(exact, states, prediction=prediction)) < 1e-24
  # ... and positive for an adapter at another scale (the loss sees the scale input)
  off = lambda x, t, c, *, guidance_scale: exact(x, t, c, guidance_scale=guidance_scale + 0.5)
  assert float(distill.agd_loss(off, states, prediction=prediction)) > 1e-4


def _transcribed_loss(student, teacher, x, t, a, s, c, w):
  """The official ``agd/dit/train.py`` (``--loss l2``): ``F.mse_loss(eps_student, eps_cfg)``
  with ``eps_cfg = eps_u + w (eps_c - eps_u)`` combined on the teacher's noise predictions."""
  eps = lambda x0: (x - a[:, None] * x0) / s[:, None]
  eps_c = eps(teacher(x, t, c))
  eps_u = eps(teacher(x, t, -jnp.ones_like(c)))
  eps_cfg = eps_u + w[:, None] * (eps_c - eps_u)
  eps_student = eps(student(x, t, c, guidance_scale=w))
  return jnp.mean((eps_student - eps_cfg) ** 2)


def test_loss_and_its_gradient_match_the_transcription_over_10_sgd_steps(x64, gmm):
  sched, teacher, ts, x_T, cond, w = _setup(gmm)
  states = distill.guided_states(teacher, solvers.ddim(), x_T, ts, key=1, cond=cond, scale=w)
  exact = _exact_cfg(gmm, sched)

  def student_of(theta):  # a parametric student: CFG plus a learnable affine error
    def student(x, t, c, *, guidance_scale):
      return exact(x, t, c, guidance_scale=guidance_scale) + theta[0] * x + theta[1]

    return student

  ours = lambda th: distill.agd_loss(student_of(th), states)
  ref = lambda th: _transcribed_loss(
    student_of(th),
    teacher,
    states.x,
    states.t,
    states.alpha,
    states.sigma,
    states.cond,
    states.scale,
  )
  th_a = th_b = jnp.array([0.3, -0.2])
  for _ in range(10):
    la, ga = jax.value_and_grad(ours)(th_a)
    lb, gb = jax.value_and_grad(ref)(th_b)
    np.testing.assert_allclose(la, lb, rtol=1e-12)
    np.testing.assert_allclose(ga, gb, rtol=1e-10, atol=1e-14)
    th_a, th_b = th_a - 1e-4 * ga, th_b - 1e-4 * gb
  assert float(ours(th_a)) < float(ours(jnp.array([0.3, -0.2])))  # the steps descend


def test_guided_states_transcribe_a_cfg_ddim_loop(x64, gmm):
  sched, teacher, ts, x_T, cond, w = _setup(gmm)
  states = distill.guided_states(teacher, solvers.ddim(), x_T, ts, key=1, cond=cond, scale=w)
  b = x_T.shape[0]
  x = x_T
  null = -jnp.ones_like(cond)
  for i in range(STEPS):  # DDIM: x_{i+1} = a_{i+1} D + s_{i+1} (x_i - a_i D) / s_i
    t = jnp.full((b,), ts.t[i])
    d_c, d_u = teacher(x, t, cond), teacher(x, t, null)
    d = d_u + w[:, None] * (d_c - d_u)
    rows = slice(i * b, (i + 1) * b)
    np.testing.assert_allclose(states.x[rows], x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(states.target[rows], d, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(states.t[rows], t)
    np.testing.assert_array_equal(states.sigma[rows], jnp.full((b,), ts.sigma[i]))
    np.testing.assert_array_equal(states.scale[rows], w)
    np.testing.assert_array_equal(states.cond[rows], cond)
    x = ts.alpha[i + 1] * d + ts.sigma[i + 1] * (x - ts.alpha[i] * d) / ts.sigma[i]
  assert states.x.shape == (STEPS * b, 2)


def test_noised_states_noise_data_at_the_grid_times(x64, gmm):
  sched, teacher, ts, _, cond, w = _setup(gmm)
  x0 = gmm.sample(jax.random.key(5), 12, cond).astype(jnp.float64)
  s = distill.noised_states(teacher, x0, ts, key=3, cond=cond, scale=w)
  k_t, k_eps = jax.random.split(jax.random.key(3))
  idx = jax.random.randint(k_t, (12,), 0, STEPS)
  eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
  np.testing.assert_array_equal(s.t, ts.t[idx])
  np.testing.assert_allclose(s.x, ts.alpha[idx, None] * x0 + ts.sigma[idx, None] * eps, atol=1e-14)
  d_c, d_u = teacher(s.x, s.t, cond), teacher(s.x, s.t, -jnp.ones_like(cond))
  np.testing.assert_allclose(s.target, d_u + w[:, None] * (d_c - d_u), atol=1e-12)


def test_registered_rule_makes_one_evaluation_and_gives_cfg_samples(x64, gmm):
  sched, teacher, ts, x_T, cond, _ = _setup(gmm)
  exact = _exact_cfg(gmm, sched)
  run = lambda den, rule: jaxdiff.sample(
    den, solvers.make("dpmpp_2m"), x_T, ts, key=1, cond=cond, guidance=rule
  )
  one = run(exact, guidance.make("agd", 3.0))
  two = run(teacher, guidance.cfg(3.0))
  assert int(one.nfe) == STEPS and int(two.nfe) == 2 * STEPS
  assert guidance.REGISTRY["agd"].evals() == 1 and guidance.agd(3.0).calls == (1,)
  np.testing.assert_allclose(one.x, two.x, rtol=0, atol=1e-10)


def test_the_rule_needs_a_denoiser_that_takes_the_scale(gmm):
  sched, teacher, ts, x_T, cond, _ = _setup(gmm)
  with pytest.raises(TypeError, match="guidance_scale"):
    jaxdiff.sample(teacher, solvers.ddim(), x_T, ts, key=1, cond=cond, guidance=guidance.agd(3.0))


def test_the_demo_leaves_out_rules_that_need_a_distilled_network():
  from jaxdiff.demo._config import demo_rules

  assert "agd" not in demo_rules() and "cfg" in demo_rules()
  assert guidance.REGISTRY["agd"].keyword == "guidance_scale"


def _tiny_adapter(seed=0, variant="additive"):
  from flax import nnx

  from jaxdiff.models import DigitDenoiser

  base = DigitDenoiser(dim=8, depth=1, num_heads=2, mlp_ratio=1, rngs=nnx.Rngs(seed))
  # a base whose zero-initialised heads were trained a little: non-trivial outputs
  for leaf in (base.head.kernel, base.ada_out.kernel, base.blocks[0].ada.kernel):
    leaf[...] = 0.1 * jax.random.normal(jax.random.key(seed + 1), leaf.shape)
  return distill.GuidanceAdapter(
    base, hidden=4, mlp_ratio=1, variant=variant, rngs=nnx.Rngs(seed + 2)
  )


def _train(model, tx, steps=3):
  from flax import nnx

  sched = schedules.vp_cosine()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  k = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k[0], (6, 8, 8))
  t = jax.random.uniform(k[1], (6,), minval=0.2, maxval=0.9)
  states = distill.GuidanceStates(
    x, t, sched.alpha(t), sched.sigma(t), jnp.arange(6) % 3, jnp.linspace(1.0, 6.0, 6),
    jax.random.normal(k[2], (6, 8, 8)),
  )  # fmt: skip

  def loss(p):
    return distill.agd_loss(jaxdiff.from_v(nnx.merge(graphdef, p, rest), sched), states)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return nnx.merge(graphdef, params, rest)


def test_freeze_base_leaves_the_base_bit_for_bit_and_trains_the_adapters():
  from flax import nnx

  model = _tiny_adapter()
  base0 = jax.tree.map(jnp.copy, nnx.state(model.base, nnx.Param))
  ad0 = jax.tree.map(jnp.copy, nnx.state(model.adapters, nnx.Param))
  trained = _train(model, distill.freeze_base(optax.adam(1e-2)))
  base1 = nnx.state(trained.base, nnx.Param)
  ad1 = nnx.state(trained.adapters, nnx.Param)
  for a, b in zip(jax.tree.leaves(base0), jax.tree.leaves(base1)):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ad0), jax.tree.leaves(ad1)))


@pytest.mark.slow
def test_without_freeze_base_the_same_steps_move_the_base():
  # what makes the bit-for-bit check above able to fail
  from flax import nnx

  base0 = jax.tree.map(jnp.copy, nnx.state(_tiny_adapter().base, nnx.Param))
  moved = _train(_tiny_adapter(), optax.adam(1e-2))
  assert any(
    not np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(base0), jax.tree.leaves(nnx.state(moved.base, nnx.Param)))
  )


@pytest.mark.parametrize("variant", ["additive", "mlp_gate"])
def test_untrained_adapter_is_the_base_and_trained_one_depends_on_the_scale(variant):
  model = _tiny_adapter(variant=variant)
  x, t, y = jnp.ones((2, 8, 8)), jnp.full((2,), 0.5), jnp.array([1, -1])
  np.testing.assert_array_equal(model(x, t, y, guidance_scale=4.0), model.base(x, t, y))
  trained = _train(model, distill.freeze_base(optax.adam(1e-2)))
  assert not np.allclose(trained(x, t, y, guidance_scale=1.0), trained(x, t, y, guidance_scale=6.0))
  assert trained.num_classes == 10
