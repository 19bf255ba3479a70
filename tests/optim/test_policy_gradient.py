"""(N)-HARPG, N-PG-IGT and normalized-momentum policy gradient (``optim.loops.harpg_step``).

The exact testbed is a tabular MDP (2 states, 2 actions, softmax policy, horizon H): its
truncated return has the closed form J_H = rho^T (I - g P_pi)^{-1} (I - (g P_pi)^H) r_pi
and all 4^H trajectories can be enumerated, so the estimators' expectations are exact sums.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optim.loops import PolicyGradientState, harpg_step, hessian_correction, policy_gradient_init

GAMMA = 0.8
P = np.array(  # P[s, a, s']
  [[[0.9, 0.1], [0.2, 0.8]], [[0.7, 0.3], [0.05, 0.95]]]
)
R = np.array([[0.0, 0.2], [1.0, 0.5]])  # R[s, a]
RHO = np.array([0.6, 0.4])


def _pi(th):
  return jax.nn.softmax(th, axis=-1)


def exact_return(th, horizon=None):
  """rho^T (I - g P_pi)^{-1} (I - (g P_pi)^H) r_pi; infinite horizon when H is None."""
  pi = _pi(th)
  p_pi = jnp.einsum("sa,sat->st", pi, jnp.asarray(P))
  r_pi = jnp.sum(pi * jnp.asarray(R), axis=1)
  m = jnp.eye(2) - GAMMA * p_pi
  tail = jnp.eye(2)
  if horizon is not None:
    tail = tail - jnp.linalg.matrix_power(GAMMA * p_pi, horizon)
  return jnp.asarray(RHO) @ jnp.linalg.solve(m, tail @ r_pi)


def optimal_return():
  v = np.zeros(2)
  for _ in range(2000):
    v = np.max(R + GAMMA * P @ v, axis=1)
  return float(RHO @ v)


def make(horizon):
  logp_dyn = jnp.log(jnp.asarray(P))

  def sample(th, key):
    k0, k = jax.random.split(key)
    s0 = jax.random.categorical(k0, jnp.log(jnp.asarray(RHO)))

    def body(s, k):
      ka, ks = jax.random.split(k)
      a = jax.random.categorical(ka, th[s])
      return jax.random.categorical(ks, logp_dyn[s, a]), (s, a)

    _, (ss, aa) = jax.lax.scan(body, s0, jax.random.split(k, horizon))
    return ss, aa

  def log_pi(th, traj):
    ss, aa = traj
    return jax.nn.log_softmax(th, axis=-1)[ss, aa]

  def surrogate(th, traj):  # GPOMDP
    ss, aa = traj
    r = jnp.asarray(R)[ss, aa] * GAMMA ** jnp.arange(horizon)
    return jnp.sum(r * jnp.cumsum(log_pi(th, traj)))

  def log_prob(th, traj):
    return jnp.sum(log_pi(th, traj))

  return sample, surrogate, log_prob


def enumerate_trajectories(th, horizon):
  """All 4^H trajectories stacked, and their probabilities under the policy th."""
  pi = np.asarray(_pi(th))
  combos = np.array(list(itertools.product(range(2), repeat=2 * horizon)))
  ss, aa = combos[:, :horizon], combos[:, horizon:]
  p = RHO[ss[:, 0]] * np.prod(pi[ss, aa], 1) * np.prod(P[ss[:, :-1], aa[:, :-1], ss[:, 1:]], 1)
  return jnp.asarray(p), (jnp.asarray(ss), jnp.asarray(aa))


def expectation(fn, th, horizon):
  p, taus = enumerate_trajectories(th, horizon)
  vals = jax.jit(jax.vmap(fn, in_axes=(None, 0)))(jnp.asarray(th), taus)
  return jnp.tensordot(p, vals, axes=1)


TH = np.array([[0.3, -0.2], [-0.5, 0.4]])
U = np.array([[0.7, -0.1], [0.2, 0.5]])


def test_gradient_estimator_is_unbiased(x64):
  h = 3
  _, surrogate, _ = make(h)
  th = jnp.asarray(TH)
  est = expectation(jax.grad(surrogate), th, h)
  exact = jax.grad(exact_return)(th, h)
  np.testing.assert_allclose(est, exact, atol=1e-12)
  assert float(jnp.max(jnp.abs(exact))) > 1e-2


def test_hessian_correction_is_the_exact_hessian_in_expectation(x64):
  h = 3
  _, surrogate, log_prob = make(h)
  th, u = jnp.asarray(TH), jnp.asarray(U)
  est = expectation(lambda th, tau: hessian_correction(surrogate, log_prob, th, tau, u), th, h)
  exact = jax.jvp(jax.grad(lambda t: exact_return(t, h)), (th,), (u,))[1]
  np.testing.assert_allclose(est, exact, atol=1e-12)
  assert float(jnp.max(jnp.abs(exact))) > 1e-2


def test_correction_at_a_uniform_point_of_the_segment_is_the_gradient_difference(x64):
  # E_q E_tau[B(tau, theta_q)(theta_t - theta_{t-1})] = grad J(theta_t) - grad J(theta_{t-1})
  h = 2
  _, surrogate, log_prob = make(h)
  prev, cur = jnp.asarray(TH), jnp.asarray(TH + U)
  u = cur - prev
  hvp = lambda th, tau: hessian_correction(surrogate, log_prob, th, tau, u)  # noqa: E731
  nodes, weights = np.polynomial.legendre.leggauss(16)
  total = 0.0
  for x, w in zip(nodes, weights):
    q = 0.5 * (x + 1.0)
    hat = q * cur + (1 - q) * prev
    total = total + 0.5 * w * expectation(hvp, hat, h)
  g = jax.grad(exact_return)
  np.testing.assert_allclose(total, g(cur, h) - g(prev, h), atol=1e-10)


def _transcription(variant, normalize, steps, lr, eta_fn, horizon, theta0):
  """Algorithms 1-2 of the paper, flat vectors and a dense Hessian estimate B."""
  sample, surrogate, log_prob = make(horizon)
  sample = jax.jit(sample)
  shape = theta0.shape
  f = lambda v, tau: surrogate(v.reshape(shape), tau)  # noqa: E731
  lp = lambda v, tau: log_prob(v.reshape(shape), tau)  # noqa: E731
  grad_f, grad_lp, hess_f = jax.jit(jax.grad(f)), jax.jit(jax.grad(lp)), jax.jit(jax.hessian(f))
  theta, prev = theta0.reshape(-1), theta0.reshape(-1)
  d = np.zeros_like(theta)
  out = []
  for t in range(steps):
    kq, k1, k2 = jax.random.split(jax.random.key(100 + t), 3)
    eta = eta_fn(float(t))
    if variant == "harpg":
      q = float(jax.random.uniform(kq, (), dtype=jnp.float64))
      hat = q * theta + (1 - q) * prev
      tau = sample(jnp.asarray(theta).reshape(shape), k1)
      tau_hat = sample(jnp.asarray(hat).reshape(shape), k2)
      g = np.asarray(grad_f(theta, tau))
      B = np.outer(grad_f(hat, tau_hat), grad_lp(hat, tau_hat)) + np.asarray(hess_f(hat, tau_hat))
      v = B @ (theta - prev)
      d = (1 - eta) * (d + v) + eta * g
    else:
      point = theta + (1 - eta) / eta * (theta - prev) if variant == "igt" else theta
      tau = sample(jnp.asarray(point).reshape(shape), k1)
      d = (1 - eta) * d + eta * np.asarray(grad_f(point, tau))
    step = d / np.linalg.norm(d) if normalize else d
    theta, prev = theta + lr * step, theta
    out.append(theta.reshape(shape))
  return out


@pytest.mark.parametrize(
  "variant,normalize", [("harpg", True), ("harpg", False), ("igt", True), ("momentum", True)]
)
def test_matches_transcription_of_the_algorithm(x64, variant, normalize):
  h, steps, lr = 4, 12, 0.3
  eta_fn = (lambda t: 2.0 / (t + 2.0)) if variant == "harpg" else (lambda t: (2 / (t + 2)) ** 0.8)
  ref = _transcription(variant, normalize, steps, lr, eta_fn, h, TH)
  sample, surrogate, log_prob = make(h)
  state = policy_gradient_init(jnp.asarray(TH))
  for t in range(steps):
    state = harpg_step(
      surrogate,
      sample,
      state,
      key=jax.random.key(100 + t),
      learning_rate=lr,
      log_prob_fn=log_prob,
      normalize=normalize,
      variant=variant,
    )
    np.testing.assert_allclose(state.params, ref[t], atol=1e-10, rtol=0)
  assert int(state.count) == steps
  assert float(np.max(np.abs(ref[-1] - TH))) > 0.5  # it moved


def test_n_harpg_reaches_the_optimal_return(x64):
  h = 12
  sample, surrogate, log_prob = make(h)
  state = policy_gradient_init(jnp.zeros((2, 2)))
  j0, j_star = float(exact_return(state.params)), optimal_return()

  def body(state, k):
    s = harpg_step(surrogate, sample, state, key=k, learning_rate=0.2, log_prob_fn=log_prob)
    return s, None

  state, _ = jax.lax.scan(body, state, jax.random.split(jax.random.key(0), 200))
  j = float(exact_return(state.params))
  assert isinstance(state, PolicyGradientState)
  assert j_star - j < 0.05 * (j_star - j0), (j0, j, j_star)


def test_zero_direction_takes_no_step(x64):
  # a reward of zero everywhere: d = 0, and the normalized step is zero, not NaN
  sample, _, log_prob = make(2)
  state = policy_gradient_init(jnp.asarray(TH))
  state = harpg_step(
    lambda th, tau: 0.0 * log_prob(th, tau),
    sample,
    state,
    key=0,
    learning_rate=0.5,
    log_prob_fn=log_prob,
  )
  np.testing.assert_array_equal(state.params, TH)
