"""SSO (target-based surrogates): a float64 transcription of the official code's SGD inner
loop over 12 outer steps, the closed-form outer step on least squares, convergence on a
quadratic, and the surrogate's upper-bound property."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optim.loops import SSOStep, sso_step, sso_surrogate


def _logistic_problem(n=12, d=3, seed=0):
  rng = np.random.default_rng(seed)
  X = rng.normal(size=(n, d))
  y = (rng.uniform(size=n) < 1 / (1 + np.exp(-X @ np.linspace(1.0, -2.0, d)))).astype(float)
  return X, y


def _official_sgd_fmdopt(X, y, w0, batches, eta_c, lr, m, planted_bug=False):
  """NumPy transcription of the official SGD_FMDOpt.step with a constant schedule and plain
  SGD inner steps: surr = mean(dl/df_t * f / eta_c + (f - f_t)^2), f = X_b w, and the loss
  the mean logistic loss of the batch (so dl/df_t = (sigmoid(f_t) - y) / b)."""
  w = w0.copy()
  out = []
  for idx in batches:
    Xb, yb = X[idx], y[idx]
    ft = Xb @ w
    dl = (1 / (1 + np.exp(-ft)) - yb) / len(idx)
    for _ in range(m):
      f = Xb @ w
      sign = -1.0 if planted_bug else 1.0
      dsurr = (sign * dl / eta_c + 2 * (f - ft)) / len(idx)  # d mean(...) / d f
      w = w - lr * Xb.T @ dsurr
    out.append(w.copy())
  return np.array(out)


def test_matches_official_code_transcription_over_12_outer_steps(x64):
  X, y = _logistic_problem()
  batches = [np.arange(12).reshape(3, 4)[t % 3] for t in range(12)]
  eta_c, lr_c, m = 2.0, 0.3, 5
  ref = _official_sgd_fmdopt(X, y, np.zeros(3), batches, eta_c, lr_c, m)
  # The official surrogate is the paper's with eta = 1 / (2 eta_c), divided by eta_c * b
  # (the mean over the b outputs): the same inner iterates with lr = lr_c / (eta_c * b).
  b = 4
  w = jnp.zeros(3)
  ours = []
  for idx in batches:
    Xb, yb = jnp.asarray(X[idx]), jnp.asarray(y[idx])
    res = sso_step(
      lambda p, Xb=Xb: Xb @ p,
      lambda z, yb=yb: jnp.mean(jnp.logaddexp(0.0, z) - yb * z),
      w,
      optimizer=optax.sgd(lr_c / (eta_c * b)),
      num_inner_steps=m,
      eta=1 / (2 * eta_c),
    )
    w = res.params
    ours.append(np.asarray(w))
  np.testing.assert_allclose(np.array(ours), ref, rtol=1e-12, atol=1e-13)
  # A planted bug (the sign of the linearised term) is caught by the same comparison.
  bad = _official_sgd_fmdopt(X, y, np.zeros(3), batches, eta_c, lr_c, m, planted_bug=True)
  assert np.max(np.abs(np.array(ours) - bad)) > 1e-3


def test_least_squares_outer_step_equals_closed_form(x64):
  # z = X w, l(z) = 0.5 ||z - y||^2: g_t is quadratic with Hessian X^T X / eta, so m
  # gradient steps of size a give w_t - (I - (I - a X^T X / eta)^m) eta (X^T X)^{-1} X^T r.
  rng = np.random.default_rng(1)
  X, y, w0 = rng.normal(size=(6, 3)), rng.normal(size=6), rng.normal(size=3)
  eta, a, m = 0.7, 0.05, 7
  H = X.T @ X
  step = eta * np.linalg.solve(H, X.T @ (X @ w0 - y))
  expected = w0 - (np.eye(3) - np.linalg.matrix_power(np.eye(3) - a * H / eta, m)) @ step
  res = sso_step(
    lambda w: jnp.asarray(X) @ w,
    lambda z: 0.5 * jnp.sum((z - jnp.asarray(y)) ** 2),
    jnp.asarray(w0),
    optimizer=optax.sgd(a),
    num_inner_steps=m,
    eta=eta,
  )
  assert isinstance(res, SSOStep)
  np.testing.assert_allclose(res.params, expected, rtol=1e-11)
  assert res.surrogate_values.shape == (m + 1,)
  np.testing.assert_allclose(res.surrogate_values[0], res.loss, rtol=1e-14)
  assert np.all(np.diff(np.asarray(res.surrogate_values)) < 0)


def test_converges_on_a_quadratic_with_regularizer(x64):
  # Ridge regression: the fixed point of SSO with an exact inner solve is the ridge solution.
  rng = np.random.default_rng(2)
  X, y = rng.normal(size=(8, 3)), rng.normal(size=8)
  lam = 0.3
  ridge = np.linalg.solve(X.T @ X + 2 * lam * np.eye(3), X.T @ y)
  w = jnp.zeros(3)
  step = jax.jit(
    lambda w: (
      sso_step(
        lambda p: jnp.asarray(X) @ p,
        lambda z: 0.5 * jnp.sum((z - jnp.asarray(y)) ** 2),
        w,
        optimizer=optax.sgd(0.02),
        num_inner_steps=20,
        eta=0.5,
        regularizer=lambda p: lam * jnp.sum(p**2),
      ).params
    )
  )
  for _ in range(60):
    w = step(w)
  np.testing.assert_allclose(w, ridge, atol=1e-8)


def test_surrogate_is_an_upper_bound_that_touches_at_the_anchor(x64):
  # Logistic loss is 1/4-smooth in each output: eta <= 4 makes g_t a global upper bound.
  X, y = _logistic_problem(n=6, d=2)
  loss = lambda z: jnp.sum(jnp.logaddexp(0.0, z) - y * z)  # noqa: E731
  model = lambda w: jnp.asarray(X) @ w  # noqa: E731
  w0 = jnp.array([0.3, -0.2])
  g = sso_surrogate(model, loss, w0, eta=4.0)
  np.testing.assert_allclose(g(w0), loss(model(w0)), rtol=1e-14)
  for w in np.random.default_rng(3).normal(size=(20, 2)) * 3:
    assert g(jnp.asarray(w)) >= loss(model(jnp.asarray(w))) - 1e-12
  # The given outputs replace the forward pass.
  g2 = sso_surrogate(model, loss, w0, eta=4.0, outputs=model(w0) + 1.0)
  assert not np.isclose(g2(w0), g(w0))


@pytest.mark.parametrize("m", [1, 3])
def test_one_inner_step_of_sgd_is_a_gradient_step(x64, m):
  # With m = 1 the surrogate's gradient at w_t is the loss gradient: one SGD step.
  X, y = _logistic_problem(n=6, d=2)
  loss = lambda z: jnp.mean(jnp.logaddexp(0.0, z) - y * z)  # noqa: E731
  model = lambda w: jnp.asarray(X) @ w  # noqa: E731
  w0 = jnp.array([0.3, -0.2])
  res = sso_step(model, loss, w0, optimizer=optax.sgd(0.1), num_inner_steps=m, eta=1.0)
  sgd = w0 - 0.1 * jax.grad(lambda w: loss(model(w)))(w0)
  if m == 1:
    np.testing.assert_allclose(res.params, sgd, rtol=1e-13)
  else:
    assert not np.allclose(res.params, sgd)
