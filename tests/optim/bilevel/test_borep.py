"""BO-REP (optim.bilevel.borep_step / borep): a float64 transcription of the official code,
a quadratic bilevel problem with a closed-form solution, and an (L0, L1)-smooth quartic
upper level where the same fixed step without normalization diverges."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optim.bilevel import BOREPResult, BOREPState, borep, borep_init, borep_step

N_X, N_Y, N_F = 3, 4, 5


def _stochastic_problem():
  """g = y'A(z)y/2 - y'B(z)x + sum(y^4)/20, f = |C(x)y - d(x)|^2/2 + sum(x^4)/4, samples drawn by
  the key (the quartic term makes the lower Hessian depend on y, so the point where the code
  takes its Hessian-vector product matters)."""
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(N_Y, N_Y)))
  a0 = q @ np.diag(np.linspace(1.0, 4.0, N_Y)) @ q.T
  b0, c0, d0 = rng.normal(size=(N_Y, N_X)), rng.normal(size=(N_F, N_Y)), rng.normal(size=N_F)

  def sample_g(key):
    k1, k2 = jax.random.split(key)
    a = a0 + jnp.diag(0.5 * jax.random.uniform(k1, (N_Y,), jnp.float64))
    b = b0 + 0.1 * jax.random.normal(k2, (N_Y, N_X), jnp.float64)
    return a, b

  def sample_f(key):
    k1, k2 = jax.random.split(key)
    c = c0 + 0.1 * jax.random.normal(k1, (N_F, N_Y), jnp.float64)
    d = d0 + 0.1 * jax.random.normal(k2, (N_F,), jnp.float64)
    return c, d

  def inner(x, y, key):
    a, b = sample_g(key)
    return 0.5 * y @ (a @ y) - y @ (b @ x) + 0.05 * jnp.sum(y**4)

  def outer(x, y, key):
    c, d = sample_f(key)
    return 0.5 * jnp.sum((c @ y - d) ** 2) + 0.25 * jnp.sum(x**4)

  return outer, inner, sample_g, sample_f


def _transcription(
  sample_g, sample_f, x, y, *, num_steps, eta, gam, nu, beta, period, n_in, variant, n_terms
):
  """The official ``bo_rep.py`` loop (data_cleaning / hyperparam_opt), in NumPy float64."""
  np_ = lambda t: np.asarray(t, np.float64)  # noqa: E731
  z, m = np.zeros(N_Y), np.zeros(N_X)
  xs = []
  for t in range(num_steps):
    ks = jax.random.split(jax.random.key(t), n_in + 2)
    a1, b1 = map(np_, sample_g(ks[0]))
    if variant == "official":
      jacob = a1 @ z + 0.6 * y**2 * z  # Hessian-vector product at the y before the inner update
    if t % period == 0:
      y = y - gam * (a1 @ y - b1 @ x + 0.2 * y**3)  # the code's step on that same batch
      for k in ks[1:n_in]:
        a, b = map(np_, sample_g(k))
        y = y - gam * (a @ y - b @ x + 0.2 * y**3)
    c, d = map(np_, sample_f(ks[n_in]))
    fy = c.T @ (c @ y - d)
    fx = x**3
    if variant == "official":
      z = z - nu * (jacob - fy)
    else:  # truncated Neumann series at the updated y
      p, total = fy.copy(), fy.copy()
      for _ in range(n_terms - 1):
        p = p - nu * (a1 @ p + 0.6 * y**2 * p)
        total = total + p
      z = nu * total
    a2, b2 = map(np_, sample_g(ks[n_in + 1]))
    grad = fx + b2.T @ z  # grad_x f - grad_xy g z, with grad_xy g z = -B' z
    m = beta * m + (1 - beta) * grad
    x = x - eta * m / (1e-10 + np.linalg.norm(m))
    xs.append((x.copy(), y.copy(), z.copy(), m.copy()))
  return xs


@pytest.mark.parametrize("variant", ["official", "neumann"])
def test_float64_transcription_of_the_official_loop_over_12_iterations(variant):
  with jax.enable_x64(True):
    outer, inner, sample_g, sample_f = _stochastic_problem()
    x0 = np.array([0.5, -1.0, 0.8])
    y0 = np.array([0.1, 0.0, -0.2, 0.3])
    opts = dict(eta=0.05, gam=0.2, nu=0.1, beta=0.9, period=3, n_in=2, variant=variant, n_terms=3)
    want = _transcription(sample_g, sample_f, x0, y0, num_steps=12, **opts)
    state = borep_init(outer, inner, jnp.asarray(x0), jnp.asarray(y0))
    step = jax.jit(
      lambda s, k: borep_step(
        outer, inner, s, key=k, learning_rate=0.05, inner_learning_rate=0.2, z_learning_rate=0.1,
        momentum=0.9, interval=3, num_inner_steps=2, variant=variant, num_neumann_terms=3,
      )
    )  # fmt: skip
    for t in range(12):
      state = step(state, jax.random.key(t))
      x, y, z, m = want[t]
      np.testing.assert_allclose(state.x, x, rtol=1e-12, atol=1e-13)
      np.testing.assert_allclose(state.y, y, rtol=1e-12, atol=1e-13)
      np.testing.assert_allclose(state.z, z, rtol=1e-12, atol=1e-13)
      np.testing.assert_allclose(state.momentum, m, rtol=1e-12, atol=1e-13)
    assert int(state.count) == 12
    # The lower level moved only at t = 0, 3, 6, 9: y differs between periods only.
    np.testing.assert_array_equal(want[4][1], want[5][1])
    assert not np.allclose(want[5][1], want[6][1])


def _quadratic(lam=0.3):
  rng = np.random.default_rng(1)
  q, _ = np.linalg.qr(rng.normal(size=(N_Y, N_Y)))
  a = q @ np.diag(np.linspace(1.0, 4.0, N_Y)) @ q.T
  b, c, d = rng.normal(size=(N_Y, N_X)), rng.normal(size=(N_F, N_Y)), rng.normal(size=N_F)
  outer = lambda x, y, key: 0.5 * jnp.sum((c @ y - d) ** 2) + 0.5 * lam * jnp.sum(x**2)  # noqa: E731
  inner = lambda x, y, key: 0.5 * y @ (a @ y) - y @ (b @ x)  # noqa: E731
  mm = c @ np.linalg.solve(a, b)
  x_star = np.linalg.solve(mm.T @ mm + lam * np.eye(N_X), mm.T @ d)
  return outer, inner, x_star, np.linalg.solve(a, b @ x_star)


@pytest.mark.parametrize("variant", ["official", "neumann", "cg"])
def test_quadratic_bilevel_problem_converges_to_the_closed_form_solution(variant):
  with jax.enable_x64(True):
    outer, inner, x_star, y_star = _quadratic()
    res = borep(
      outer, inner, jnp.zeros(N_X), jnp.zeros(N_Y), key=0, max_iterations=800, tol=0.0,
      learning_rate=lambda t: 0.3 * 0.98**t, inner_learning_rate=0.25, z_learning_rate=0.25,
      momentum=0.5, interval=2, num_inner_steps=4, num_refine_steps=20, variant=variant,
      num_neumann_terms=40,
    )  # fmt: skip
    assert isinstance(res, BOREPResult) and isinstance(res.state, BOREPState)
    assert int(res.n_iters) == 800 and not bool(res.converged)
    np.testing.assert_allclose(res.x, x_star, atol=1e-5)
    np.testing.assert_allclose(res.y, y_star, atol=1e-5)


def test_tol_stops_the_run_and_pads_errors_with_nan():
  with jax.enable_x64(True):
    outer, inner, _, _ = _quadratic()
    res = borep(
      outer, inner, jnp.zeros(N_X), jnp.zeros(N_Y), key=0, max_iterations=800, tol=1e-3,
      learning_rate=lambda t: 0.3 * 0.98**t, inner_learning_rate=0.25, z_learning_rate=0.25,
      momentum=0.5, num_refine_steps=20,
    )  # fmt: skip
    n = int(res.n_iters)
    assert bool(res.converged) and 0 < n < 800
    errors = np.asarray(res.errors)
    assert errors[n - 1] <= 1e-3 and np.all(errors[: n - 1] > 1e-3)
    assert np.all(np.isnan(errors[n:]))
    assert int(res.state.count) == n


def _quartic():
  # y*(x) = x, Phi(x) = sum(x^4) / 4: Hessian 3x^2 <= 3 + 3|x|^3, (L0, L1)-smooth, not L-smooth.
  inner = lambda x, y, key: 0.5 * jnp.sum((y - x) ** 2)  # noqa: E731
  outer = lambda x, y, key: 0.25 * jnp.sum(y**4)  # noqa: E731
  return outer, inner


def test_quartic_upper_level_normalized_momentum_converges_where_the_same_fixed_step_diverges():
  outer, inner = _quartic()
  x0 = jnp.array([10.0, -8.0])
  opts = dict(
    key=0, max_iterations=400, tol=0.0, learning_rate=0.05, inner_learning_rate=0.5,
    z_learning_rate=0.5, momentum=0.5, interval=2, num_inner_steps=4, num_refine_steps=10,
  )  # fmt: skip
  ours = borep(outer, inner, x0, x0, **opts)
  fixed = borep(outer, inner, x0, x0, normalize=False, **opts)
  assert float(jnp.max(jnp.abs(ours.x))) < 0.15
  assert np.all(np.isfinite(ours.errors))
  # The plain step with the same learning rate overflows (a diverging run is not stopped).
  assert not np.all(np.isfinite(np.asarray(fixed.x))) or float(jnp.max(jnp.abs(fixed.x))) > 1e6
  assert not bool(fixed.converged)


def test_periodic_lower_updates_and_pytree_variables():
  outer, inner = _quartic()
  x0 = {"a": jnp.array([1.0]), "b": jnp.array([[2.0, -1.0]])}
  y0 = jax.tree.map(jnp.zeros_like, x0)
  cat = lambda t: jnp.concatenate([t["a"], t["b"].ravel()])  # noqa: E731
  o = lambda x, y, key: outer(cat(x), cat(y), key)  # noqa: E731
  i = lambda x, y, key: inner(cat(x), cat(y), key)  # noqa: E731
  s = borep_init(o, i, x0, y0)
  ys = []
  for t in range(6):
    s = borep_step(
      o,
      i,
      s,
      key=t,
      learning_rate=0.1,
      inner_learning_rate=0.5,
      z_learning_rate=0.5,
      interval=3,
      num_inner_steps=1,
    )
    ys.append(cat(s.y))
  assert jax.tree.structure(s.x) == jax.tree.structure(x0)
  # The lower level moves at t = 0 and t = 3 only.
  for t in (1, 2, 4, 5):
    np.testing.assert_array_equal(ys[t], ys[t - 1])
  assert not np.array_equal(ys[3], ys[2])


def test_traced_bad_learning_rate_poisons_the_step():
  outer, inner = _quartic()
  s = borep_init(outer, inner, jnp.ones(2), jnp.ones(2))
  step = jax.jit(
    lambda s, lr: borep_step(
      outer, inner, s, key=0, learning_rate=lr, inner_learning_rate=0.5, z_learning_rate=0.5
    )
  )
  assert np.all(np.isfinite(step(s, 0.1).x))
  assert np.all(np.isnan(step(s, -0.1).x))
