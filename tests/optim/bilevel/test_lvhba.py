"""optim.bilevel.lvhba: LV-HBA (Yao, Yu, Zeng & Zhang, ICLR 2024, arXiv:2401.16164).

* a float64 NumPy transcription of Algorithm 1 (hand-written gradients) on a problem with
  two nonlinear coupled constraints, a box Y and a box C, matched over 15 iterations;
* a float64 NumPy transcription of the official code's loop
  (SUSTech-Optimization/LV-HBA, ``Toy-example/LLC/LV-HBA.py``) on the paper's toy
  example, matched over 20 iterations;
* the paper's toy example as an exact testbed (closed-form solution and multiplier);
* the runner's result (stop, error history, equality with repeated steps).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optim.bilevel import LVHBAResult, LVHBAState, lvhba, lvhba_init, lvhba_step

# ---------------------------------------------------------------------------------------
# Algorithm 1 on a small nonlinear problem, NumPy with hand-derived gradients.

_A = np.array([0.5, -1.0, 0.25])
_B = np.array([1.0, -0.5])
_Q = np.array([[2.0, 0.3, 0.0], [0.3, 1.5, 0.2], [0.0, 0.2, 1.0]])
_M = np.array([[1.0, 0.0], [0.5, -1.0], [0.0, 0.7]])
_HP = dict(alpha=0.05, beta=0.3, eta=0.1, gamma1=0.7, gamma2=0.5, c0=0.4, c_power=0.3, z_max=0.6)


def _np_problem():
  def F_x(x, y):
    return (x - _B) + np.array([np.cos(x[0]) * y[1], 0.0])

  def F_y(x, y):
    return (y - _A) + np.array([0.0, np.sin(x[0]), 0.0])

  def f_x(x, y):
    return -_M.T @ y

  def f_y(x, y):
    return _Q @ y - _M @ x

  def g(x, y):
    return np.array([y[0] + 0.5 * y[1] ** 2 + x[0] - 1.0, 0.5 * y @ y - x[1] ** 2 - 2.0])

  def jg_x(x, y):
    return np.array([[1.0, 0.0], [0.0, -2.0 * x[1]]])

  def jg_y(x, y):
    return np.array([[1.0, y[1], 0.0], y])

  return F_x, F_y, f_x, f_y, g, jg_x, jg_y


def _jax_problem():
  A, B, Q, M = (jnp.asarray(a) for a in (_A, _B, _Q, _M))

  def F(x, y):
    return 0.5 * jnp.sum((y - A) ** 2) + 0.5 * jnp.sum((x - B) ** 2) + jnp.sin(x[0]) * y[1]

  def f(x, y):
    return 0.5 * y @ (Q @ y) - y @ (M @ x)

  def g(x, y):
    return jnp.stack([y[0] + 0.5 * y[1] ** 2 + x[0] - 1.0, 0.5 * y @ y - x[1] ** 2 - 2.0])

  return F, f, g


def _np_algorithm1(x, y, theta, lam, z, num, hp):
  """Algorithm 1 of the paper, transcribed (Y = [-1.5, 1.5]^3, C = [-2, 2]^2 x Y)."""
  F_x, F_y, f_x, f_y, g, jg_x, jg_y = _np_problem()
  a, b, eta, g1, g2, c0, cp, r = (hp[k] for k in _HP)
  py = lambda v: np.clip(v, -1.5, 1.5)  # noqa: E731
  px = lambda v: np.clip(v, -2.0, 2.0)  # noqa: E731
  out = []
  for k in range(num):
    ck = c0 * (k + 1) ** cp
    d_theta = f_y(x, theta) + jg_y(x, theta).T @ lam + (theta - y) / g1
    d_lam = -g(x, theta) + (lam - z) / g2
    theta = py(theta - eta * d_theta)
    lam = np.maximum(lam - eta * d_lam, 0.0)
    d_x = F_x(x, y) / ck + f_x(x, y) - f_x(x, theta) - jg_x(x, theta).T @ lam
    d_y = F_y(x, y) / ck + f_y(x, y) - (y - theta) / g1
    x, y = px(x - a * d_x), py(y - a * d_y)
    d_z = -(lam - z) / g2
    z = np.clip(z - b * d_z, 0.0, r)
    out.append((x, y, theta, lam, z))
  return out


def test_matches_a_float64_transcription_of_algorithm_1_over_15_iterations():
  x0, y0 = np.array([0.8, -0.6]), np.array([1.2, 0.9, -0.4])
  th0, lam0, z0 = np.array([1.0, 1.1, 0.0]), np.array([0.0, 0.5]), np.array([0.2, 0.0])
  ref = _np_algorithm1(x0, y0, th0, lam0, z0, 15, _HP)
  with jax.enable_x64(True):
    F, f, g = _jax_problem()
    s = lvhba_init(
      jnp.asarray(x0),
      jnp.asarray(y0),
      g,
      theta0=jnp.asarray(th0),
      lam0=jnp.asarray(lam0),
      z0=jnp.asarray(z0),
    )
    py = lambda v: jnp.clip(v, -1.5, 1.5)  # noqa: E731
    pxy = lambda x, y: (jnp.clip(x, -2.0, 2.0), py(y))  # noqa: E731
    step = jax.jit(lambda s: lvhba_step(s, F, f, g, project_y=py, project_xy=pxy, **_HP))
    for k, (x, y, th, lam, z) in enumerate(ref):
      s = step(s)
      for got, want in ((s.x, x), (s.y, y), (s.theta, th), (s.lam, lam), (s.z, z)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13, err_msg=f"iteration {k}")
      assert int(s.count) == k + 1
  # The run exercises every branch: a positive and a clipped multiplier, z at r.
  lams, zs = np.array([r[3] for r in ref]), np.array([r[4] for r in ref])
  assert (lams > 0).any() and (lams == 0).any()
  assert (zs == _HP["z_max"]).any()


# ---------------------------------------------------------------------------------------
# The paper's toy example: x in R^n, y = (y1, y2) in R^2n,
#   min 1/2 |x - y2|^2 + 1/2 |y1 - 1|^2
#   s.t. y in argmin { 1/2 |y1|^2 - x^T y1 + 1^T y2 : -(1^T x + 1^T y) <= 0 },
# solved by x* = -0.3, y1* = x* + 1 = 0.7, y2* = -0.4 (every entry), multiplier 1.


def toy(n):
  def F(x, y):
    return 0.5 * jnp.sum((x - y[n:]) ** 2) + 0.5 * jnp.sum((y[:n] - 1.0) ** 2)

  def f(x, y):
    return 0.5 * jnp.sum(y[:n] ** 2) - x @ y[:n] + jnp.sum(y[n:])

  def g(x, y):
    return jnp.atleast_1d(-(jnp.sum(x) + jnp.sum(y)))

  def halfspace(x, y):  # P_C, C = {1^T x + 1^T y >= 0}
    shift = jnp.minimum(jnp.sum(x) + jnp.sum(y), 0.0) / (3 * n)
    return x - shift, y - shift

  def hyperplane(x, y):  # the official code's projection onto 1^T x + 1^T y = 0
    shift = (jnp.sum(x) + jnp.sum(y)) / (3 * n)
    return x - shift, y - shift

  return F, f, g, halfspace, hyperplane


def _official_loop(n, num, lam, z):
  """The official toy code's loop (``Toy-example/LLC/LV-HBA.py``), its constants, in NumPy.

  The official code writes the constraint as g = 1^T x + 1^T y with a free-sign
  multiplier clipped to [-u, u]; ``lam`` and ``z`` here are in that sign.
  """
  alpha, beta, eta, gamma1, gamma2, u = 0.008, 0.02, 0.01, 10.0, 10.0, 1000.0
  e1, e2 = np.ones(n), np.ones(2 * n)
  A = np.concatenate([np.eye(n), np.zeros((n, n))], 1)
  B = np.concatenate([np.zeros((n, n)), np.eye(n)], 1)
  F_x = lambda x, y: x - B @ y  # noqa: E731
  F_y = lambda x, y: A.T @ (A @ y - e1) - B.T @ (x - B @ y)  # noqa: E731
  f_x = lambda x, y: -A @ y  # noqa: E731
  f_y = lambda x, y: A.T @ A @ y - A.T @ x + B.T @ e1  # noqa: E731
  g = lambda x, y: e1 @ x + e2 @ y  # noqa: E731
  proj1 = lambda v, b: v - (v.sum() + b) / len(v)  # noqa: E731
  x, y = 10 * np.ones(n), 10 * np.ones(2 * n)
  x = proj1(x, y.sum())
  y = proj1(y, x.sum())
  theta = proj1(np.ones(2 * n), x.sum())
  start = (x, y, theta)
  out = []
  for k in range(num):
    ck = 0.025 * (k + 1) ** 0.3
    d40 = f_y(x, theta) + lam * e2 + (theta - y) / gamma1
    d41 = -g(x, theta) + (lam - z) / gamma2
    theta = theta - eta * d40
    lam = float(np.clip(lam - eta * d41, -u, u))
    d1 = F_x(x, y) / ck + f_x(x, y) - f_x(x, theta) - lam * e1
    d2 = F_y(x, y) / ck + f_y(x, y) - (y - theta) / gamma1
    w = np.concatenate([x - alpha * d1, y - alpha * d2])
    w = w - w.sum() / len(w)
    x, y = w[:n], w[n:]
    z = float(np.clip(z + beta * (lam - z) / gamma2, -u, u))
    out.append((x, y, theta, lam, z))
  return start, out


def test_matches_the_official_toy_code_over_20_iterations():
  # In our sign convention (g = -(1^T x + 1^T y) <= 0, lambda >= 0) the official
  # multiplier is -lambda; started at lambda = z = 30 it stays positive over the 20
  # iterations, so the paper's projection onto lambda >= 0 and the official clip to
  # [-u, u] agree (from the official lambda = 1 it changes sign at the third iteration).
  n = 5
  start, ref = _official_loop(n, 20, lam=-30.0, z=-30.0)
  with jax.enable_x64(True):
    F, f, g, _, hyperplane = toy(n)
    x0, y0, th0 = (jnp.asarray(a) for a in start)
    s = lvhba_init(x0, y0, g, theta0=th0, lam0=jnp.full(1, 30.0), z0=jnp.full(1, 30.0))
    # The toy file's constants (gamma2 and c0 differ from our defaults, see lvhba_step).
    step = jax.jit(lambda s: lvhba_step(s, F, f, g, project_xy=hyperplane, gamma2=10.0, c0=0.025))
    for k, (x, y, th, lam, z) in enumerate(ref):
      s = step(s)
      np.testing.assert_allclose(s.x, x, rtol=1e-12, atol=1e-12, err_msg=f"iteration {k}")
      np.testing.assert_allclose(s.y, y, rtol=1e-12, atol=1e-12)
      np.testing.assert_allclose(s.theta, th, rtol=1e-12, atol=1e-12)
      np.testing.assert_allclose(s.lam, [-lam], rtol=1e-12)
      np.testing.assert_allclose(s.z, [-z], rtol=1e-12)
  assert all(r[3] < 0 for r in ref)


def _toy_start(n):
  # The official start: x = y = 10, then shifted onto 1^T x + 1^T y = 0.
  x0, y0 = 10.0 * np.ones(n), 10.0 * np.ones(2 * n)
  x0 = x0 - (x0.sum() + y0.sum()) / n
  y0 = y0 - (y0.sum() + x0.sum()) / (2 * n)
  return jnp.asarray(x0), jnp.asarray(y0)


def test_converges_to_the_toy_examples_closed_form_solution_and_multiplier():
  n = 10
  with jax.enable_x64(True):
    F, f, g, halfspace, _ = toy(n)
    x0, y0 = _toy_start(n)
    kw = dict(tol=0.0, project_xy=halfspace, lam0=jnp.ones(1), z0=jnp.ones(1), c_power=0.49)
    mid = lvhba(F, f, g, x0, y0, max_iterations=10_000, **kw)
    res = lvhba(F, f, g, x0, y0, max_iterations=30_000, **kw)
  x, y = np.asarray(res.x), np.asarray(res.y)
  rel = lambda x_: np.linalg.norm(x_ + 0.3) / np.linalg.norm(0.3 * np.ones(n))  # noqa: E731
  assert rel(x) < 3e-3 < rel(np.asarray(mid.x))  # the penalty's bias shrinks as c_k grows
  np.testing.assert_allclose(y[:n], 0.7, atol=2e-3)  # y1* = x* + 1
  np.testing.assert_allclose(y[n:], -0.4, atol=2e-3)  # the optimistic choice of y2
  np.testing.assert_allclose(res.state.lam, [1.0], atol=1e-3)  # the LL multiplier
  np.testing.assert_allclose(res.state.theta, y, atol=3e-3)  # theta -> y at an LL solution
  assert x.sum() + y.sum() >= -1e-12  # (x, y) stays in C


def test_runner_stops_at_tol_and_equals_repeated_steps():
  F, f, g, halfspace, _ = toy(3)
  x0, y0 = _toy_start(3)
  x0, y0 = x0.astype(jnp.float32), y0.astype(jnp.float32)
  res = lvhba(F, f, g, x0, y0, max_iterations=3000, tol=1e-4, project_xy=halfspace)
  assert isinstance(res, LVHBAResult) and isinstance(res.state, LVHBAState)
  k = int(res.n_iters)
  assert bool(res.converged) and 0 < k < 3000 and int(res.state.count) == k
  errs = np.asarray(res.errors)
  assert np.all(np.isfinite(errs[:k])) and np.all(np.isnan(errs[k:]))
  assert errs[k - 1] < 1e-4 <= errs[k - 2]
  s = lvhba_init(x0, y0, g)
  step = jax.jit(lambda s: lvhba_step(s, F, f, g, project_xy=halfspace))
  for _ in range(k):
    s = step(s)
  for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(res.state)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  short = lvhba(F, f, g, x0, y0, max_iterations=5, tol=1e-4, project_xy=halfspace)
  assert not bool(short.converged) and int(short.n_iters) == 5


def test_stops_unconverged_when_the_iterate_blows_up():
  F, f, g, halfspace, _ = toy(3)
  x0, y0 = _toy_start(3)
  res = lvhba(F, f, g, x0, y0, max_iterations=5000, tol=1e-9, alpha=5.0, project_xy=halfspace)
  assert not bool(res.converged) and int(res.n_iters) < 5000


def test_pytree_variables_and_traced_hyperparameters():
  with jax.enable_x64(True):
    F, f, g, halfspace, _ = toy(2)
    x0, y0 = _toy_start(2)
    split = lambda y: {"y1": y[:2], "y2": y[2:]}  # noqa: E731
    cat = lambda t: jnp.concatenate([t["y1"], t["y2"]])  # noqa: E731
    Ft = lambda x, t: F(x, cat(t))  # noqa: E731
    ft = lambda x, t: f(x, cat(t))  # noqa: E731
    gt = lambda x, t: g(x, cat(t))  # noqa: E731
    pxy = lambda x, t: (lambda a, b: (a, split(b)))(*halfspace(x, cat(t)))  # noqa: E731
    s_tree = lvhba_init(x0, split(y0), gt)
    s_flat = lvhba_init(x0, y0, g)
    step = jax.jit(lambda s, a: lvhba_step(s, Ft, ft, gt, alpha=a, project_xy=pxy))
    for _ in range(12):
      s_tree = step(s_tree, 0.008)
      s_flat = lvhba_step(s_flat, F, f, g, project_xy=halfspace)
    np.testing.assert_allclose(cat(s_tree.y), s_flat.y, rtol=1e-12)
    np.testing.assert_allclose(cat(s_tree.theta), s_flat.theta, rtol=1e-12)
    np.testing.assert_allclose(s_tree.x, s_flat.x, rtol=1e-12)


def test_no_constraint_is_the_moreau_envelope_method():
  # p = 0: min (x - 1)^2 + y^2 s.t. y = argmin (y - x)^2, solved by x = y = 1/2.
  F = lambda x, y: jnp.sum((x - 1.0) ** 2 + y**2)  # noqa: E731
  f = lambda x, y: jnp.sum((y - x) ** 2)  # noqa: E731
  g = lambda x, y: jnp.zeros((0,))  # noqa: E731
  res = lvhba(
    F,
    f,
    g,
    jnp.zeros(1),
    jnp.zeros(1),
    max_iterations=20_000,
    tol=0.0,
    alpha=0.05,
    eta=0.05,
    gamma1=1.0,
    c_power=0.49,
  )
  assert res.state.lam.shape == (0,)
  np.testing.assert_allclose(res.x, [0.5], atol=2e-2)
  np.testing.assert_allclose(res.y, [0.5], atol=2e-2)


@pytest.mark.parametrize("name", ["lvhba", "lvhba_step", "lvhba_init", "LVHBAResult"])
def test_public_names(name):
  import optim.bilevel

  assert name in optim.bilevel.__all__


def test_the_whole_run_jits_and_vmaps_over_starts():
  F, f, g, halfspace, _ = toy(2)
  x0, y0 = _toy_start(2)
  x0, y0 = x0.astype(jnp.float32), y0.astype(jnp.float32)
  run = lambda x: lvhba(F, f, g, x, y0, max_iterations=50, tol=0.0, project_xy=halfspace)  # noqa: E731
  eager = run(x0)
  jitted = jax.jit(run)(x0)
  np.testing.assert_allclose(jitted.x, eager.x, rtol=1e-5, atol=1e-6)
  batched = jax.vmap(run)(jnp.stack([x0, x0 + 1.0]))
  np.testing.assert_allclose(batched.x[0], eager.x, rtol=1e-5, atol=1e-6)
  assert batched.n_iters.shape == (2,) and int(batched.n_iters[1]) == 50
