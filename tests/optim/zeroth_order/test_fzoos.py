"""FZooS and the FedZO-style baseline (optim.zeroth_order): a float64 NumPy transcription of
Algorithm 1 over 12 rounds, heterogeneous quadratic clients with a known global minimizer,
the GP surrogate gradient against the true gradient as the history grows, the two-point
estimators' mean and variance against their closed forms, query counts, pytrees, and a
2-device client mesh giving the numbers of one device."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from optim.zeroth_order import (
  FederatedZOResult,
  FedZOState,
  FZooSState,
  fedzo_init,
  fedzo_minimize,
  fedzo_round,
  fzoos_init,
  fzoos_minimize,
  fzoos_round,
  gp_gradient,
  zo_gradient,
)

D, N = 3, 2
# client i: f_i(x) = 0.5 sum(a_i x^2) + b_i . x; the global F = mean_i f_i is minimized at
# x* = -sum(b_i) / sum(a_i) (coordinate-wise)
A = np.array([[1.0, 2.0, 1.5], [3.0, 1.0, 0.5]])
B = np.array([[0.5, -1.0, 0.2], [-1.5, 0.4, 0.6]])
X_STAR = -B.sum(0) / A.sum(0)


def _f(x, i):
  a, b = jnp.asarray(A)[i], jnp.asarray(B)[i]
  return 0.5 * jnp.sum(a * x**2) + jnp.sum(b * x)


def _f_np(x, i):
  return 0.5 * np.sum(A[i] * x**2) + np.sum(B[i] * x)


# ---------------------------------------------------------------------------------------
# The float64 transcription: NumPy loops over clients and steps, Python lists of queries.


def _norm_np(ys):
  rng = ys.max() - ys.min()
  scale = rng if rng > 0 else 1.0
  return (ys - ys.mean()) / scale, scale


def _gp_grad_np(x, xs, ys, ell, noise):
  diff = xs[:, None, :] - xs[None, :, :]
  k = np.exp(-0.5 * np.sum(diff**2, -1) / ell**2) + noise * np.eye(len(ys))
  yn, scale = _norm_np(ys)
  alpha = np.linalg.solve(k, yn)
  kx = np.exp(-0.5 * np.sum((xs - x) ** 2, -1) / ell**2)
  return scale * np.sum((alpha * kx)[:, None] * (xs - x), 0) / ell**2


def _rff_fit_np(xs, ys, theta, b, noise):
  m = theta.shape[0]
  phi = np.sqrt(2 / m) * np.cos(xs @ theta.T + b)
  yn, scale = _norm_np(ys)
  return scale * phi.T @ np.linalg.solve(phi @ phi.T + noise * np.eye(len(ys)), yn)


def _rff_grad_np(x, w, theta, b):
  m = theta.shape[0]
  return -np.sqrt(2 / m) * (np.sin(theta @ x + b) * w) @ theta


def _reference(x0, rounds, *, key, h, m, ell, noise, lr, t_steps, ne, nr, ni, r0, gamma):
  """Algorithm 1 of arXiv:2308.04077 with the official code's constants, in NumPy float64;
  the random draws are jax.random's with the implementation's key schedule."""
  key = jax.random.key(key)
  key, kt, kb, ke = jax.random.split(key, 4)
  theta = np.asarray(jax.random.normal(kt, (m, D), jnp.float64)) / ell
  offs = np.asarray(jax.random.uniform(kb, (m,), jnp.float64, 0.0, 2 * math.pi))
  hist = []
  for i, k in enumerate(jax.random.split(ke, N)):
    u = np.asarray(jax.random.uniform(k, (ni, D), jnp.float64, -1.0, 1.0))
    pts = [x0] + list(x0 + r0 * u)
    hist.append([(p, _f_np(p, i)) for p in pts])
  w_loc, w_glob, corrected, x = np.zeros((N, m)), np.zeros(m), False, np.array(x0)
  xs_rounds = []
  for _ in range(rounds):
    key, kl, kr = jax.random.split(key, 3)
    finals = []
    for i, k in enumerate(jax.random.split(kl, N)):
      ks = jax.random.split(k, t_steps)
      xi = x.copy()
      for t in range(t_steps):
        px, py = (np.array([q[0] for q in hist[i][-h:]]), np.array([q[1] for q in hist[i][-h:]]))
        g = _gp_grad_np(xi, px, py, ell, noise)
        if corrected:
          drift = _rff_grad_np(xi, w_glob, theta, offs) - _rff_grad_np(xi, w_loc[i], theta, offs)
          g = g + gamma / (t + 1) * drift
        xi = xi - lr * g
        hist[i].append((xi, _f_np(xi, i)))
        if t < t_steps - 1:
          u = np.asarray(jax.random.uniform(ks[t], (ne, D), jnp.float64, -1.0, 1.0))
          hist[i] += [(p, _f_np(p, i)) for p in xi + r0 * u]
      finals.append(xi)
    x = np.mean(finals, 0)
    for i, k in enumerate(jax.random.split(kr, N)):
      r = max(np.mean(np.abs(x - finals[i])) / 2, r0)
      u = np.asarray(jax.random.uniform(k, (nr, D), jnp.float64, -1.0, 1.0))
      hist[i] += [(p, _f_np(p, i)) for p in [x] + list(x + r * u)]
      px, py = (np.array([q[0] for q in hist[i][-h:]]), np.array([q[1] for q in hist[i][-h:]]))
      w_loc[i] = _rff_fit_np(px, py, theta, offs, noise)
    w_glob, corrected = w_loc.mean(0), True
    xs_rounds.append(x)
  return np.array(xs_rounds), w_glob


CFG = dict(h=30, m=20, ell=1.0, noise=1e-6, lr=0.1, t_steps=5, ne=2, nr=4, ni=3, r0=0.05)


@functools.lru_cache
def _round_fn(client_sharding):
  """One jitted round for CFG's static sizes; the learning rate and correction are traced
  (one compilation serves every test)."""

  def one(s, lr, correction):
    return fzoos_round(
      _f,
      s,
      N,
      optimizer=optax.sgd(lr),
      num_local_steps=CFG["t_steps"],
      lengthscale=CFG["ell"],
      noise=CFG["noise"],
      correction=correction,
      num_explore=CFG["ne"],
      radius=CFG["r0"],
      num_explore_round=CFG["nr"],
      client_sharding=client_sharding,
    )

  return jax.jit(one)


def _jax_rounds(x0, rounds, key, lr=CFG["lr"], correction=1.0, client_sharding=None):
  s = fzoos_init(
    _f,
    jnp.asarray(x0),
    N,
    key=key,
    history_size=CFG["h"],
    num_features=CFG["m"],
    lengthscale=CFG["ell"],
    num_init=CFG["ni"],
    radius=CFG["r0"],
    client_sharding=client_sharding,
  )
  one = _round_fn(client_sharding)
  xs = []
  for _ in range(rounds):
    s = one(s, lr, correction)
    xs.append(s.x)
  return np.array(xs), s


def test_fzoos_matches_float64_transcription_of_algorithm_1_over_12_rounds(x64):
  x0 = np.array([1.0, -0.5, 0.8])
  ref, w_ref = _reference(x0, 12, key=3, gamma=1.0, **CFG)
  got, s = _jax_rounds(x0, 12, 3)
  # the ring buffer (30 slots) wraps after the second round: its order differs from the
  # list's, so equality is up to the rounding of the GP solves
  np.testing.assert_allclose(got, ref, rtol=1e-7, atol=1e-9)
  np.testing.assert_allclose(s.global_weights, w_ref, rtol=1e-6, atol=1e-8)
  assert int(s.round) == 12
  # queries: num_init + 1, then T + (T - 1) n_e + 1 + n_r per round
  assert s.num_queries.tolist() == [4 + 12 * (5 + 4 * 2 + 1 + 4)] * N


def _fedavg_fixed_point(lr, t_steps, rounds=200):
  """FedAvg with exact gradients and the same local steps (its biased fixed point)."""
  x = np.zeros(D)
  for _ in range(rounds):
    finals = []
    for i in range(N):
      xi = x.copy()
      for _ in range(t_steps):
        xi = xi - lr * (A[i] * xi + B[i])
      finals.append(xi)
    x = np.mean(finals, 0)
  return x


def test_fzoos_on_heterogeneous_quadratics_with_a_known_minimizer(x64):
  x0 = np.array([1.0, -0.5, 0.8])
  fedavg = _fedavg_fixed_point(0.3, 5)
  drift = np.linalg.norm(fedavg - X_STAR)  # 0.265: what client drift costs
  plain, _ = _jax_rounds(x0, 12, 0, lr=0.3, correction=0.0)
  corrected, _ = _jax_rounds(x0, 12, 0, lr=0.3)
  # without the correction the surrogate gradients are accurate enough that FZooS lands on
  # exact-gradient FedAvg's fixed point; the correction (weight 1/(t+1), the official
  # schedule) removes 60% of the drift (measured: 0.105 from x* against 0.265)
  assert np.linalg.norm(plain[-1] - fedavg) < 0.03 * drift
  err = np.linalg.norm(corrected[-4:] - X_STAR, axis=1)
  assert np.all(err < 0.5 * drift), (err, drift)


def test_gp_surrogate_gradient_approaches_the_true_gradient_as_the_history_grows(x64):
  d = 4
  a, b = np.linspace(1.0, 3.0, d), np.linspace(-1.0, 1.0, d)
  x = np.full(d, 0.3)
  true = a * x + b
  pts = x + 0.2 * np.asarray(jax.random.uniform(jax.random.key(1), (160, d), jnp.float64, -1, 1))
  ys = 0.5 * np.sum(a * pts**2, -1) + pts @ b
  grad = jax.jit(gp_gradient)
  errs = [
    float(np.linalg.norm(grad(jnp.asarray(x), jnp.asarray(pts[:n]), jnp.asarray(ys[:n])) - true))
    / np.linalg.norm(true)
    for n in (5, 10, 20, 40, 80, 160)
  ]
  # measured relative errors: 0.14, 0.023, 0.020, 0.0060, 0.0023, 0.0012 (5 to 160 queries)
  assert all(e1 > e2 for e1, e2 in zip(errs, errs[1:])), errs
  assert errs[0] > 0.1 and errs[-1] < 2e-3, errs


def _closed_form(probe, variant, q, mu, g, a):
  """Mean and total variance (trace of the covariance) of the estimate on
  f(x) = 0.5 x'Ax + b'x at a point where the gradient is g (A diagonal)."""
  d, ng2 = len(g), float(g @ g)
  t1, t2 = float(np.sum(a)) ** 2, float(np.sum(a**2))
  if probe == "gaussian":
    var = (d + 1) * ng2 + (mu**2 / 4 * (d + 4) * (t1 + 2 * t2) if variant == "forward" else 0)
  else:
    var = (d - 1) * ng2 + (d * mu**2 / 4 * (t1 + 2 * t2) / (d + 2) if variant == "forward" else 0)
  return g, var / q


@pytest.mark.parametrize("probe", ["gaussian", "sphere"])
@pytest.mark.parametrize("variant", ["forward", "central"])
def test_two_point_estimator_mean_and_variance_match_the_closed_form(x64, probe, variant):
  q, mu, reps = 3, 0.5, 20000
  a, b = np.array([1.0, 2.0, 0.5, 3.0]), np.array([0.3, -0.2, 0.1, 0.4])
  x = np.array([0.5, -1.0, 0.2, 0.7])
  f = lambda z: 0.5 * jnp.sum(jnp.asarray(a) * z**2) + jnp.sum(jnp.asarray(b) * z)  # noqa: E731
  est = jax.jit(
    jax.vmap(
      lambda k: zo_gradient(
        f, jnp.asarray(x), key=k, num_directions=q, smoothing=mu, probe=probe, variant=variant
      )
    )
  )(jax.random.split(jax.random.key(0), reps))
  mean, var = _closed_form(probe, variant, q, mu, a * x + b, a)
  est = np.asarray(est)
  se = np.sqrt(var / reps)
  assert np.all(np.abs(est.mean(0) - mean) < 5 * se), (est.mean(0), mean)  # unbiased
  tot = float(np.sum(est.var(0)))
  assert abs(tot / var - 1) < 0.06, (tot, var)  # 20000 draws: the ratio's s.e. is ~1-3%


def test_zo_gradient_takes_a_pytree(x64):
  x = {"w": jnp.ones((2, 2)), "b": jnp.zeros(3)}
  f = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"])  # noqa: E731
  g = zo_gradient(f, x, key=0, num_directions=50, variant="central")
  assert jax.tree.structure(g) == jax.tree.structure(x)


def test_fedzo_round_counts_queries_and_averages_clients(x64):
  s = fedzo_init(jnp.ones(D), N, key=0)
  s = fedzo_round(_f, s, N, optimizer=optax.sgd(0.1), num_local_steps=2, num_directions=3)
  assert isinstance(s, FedZOState) and s.num_queries.tolist() == [8, 8]
  s = fedzo_round(
    _f, s, N, optimizer=optax.sgd(0.1), num_local_steps=2, num_directions=3, variant="central"
  )
  assert s.num_queries.tolist() == [20, 20] and int(s.round) == 2


def test_runners_record_history_and_stop_at_max_iterations(x64):
  kw = dict(optimizer=optax.sgd(0.1), key=0, max_iterations=4, num_local_steps=3)
  res = fzoos_minimize(
    _f,
    jnp.ones(D),
    N,
    history_size=40,
    num_features=20,
    num_explore=2,
    num_explore_round=4,
    radius=0.05,
    **kw,
  )
  assert isinstance(res, FederatedZOResult) and isinstance(res.state, FZooSState)
  assert int(res.n_iters) == 4 and not bool(res.converged)
  assert np.all(np.diff(np.asarray(res.errors)) < 0)
  per_round = 3 + 2 * 2 + 1 + 4
  assert res.num_queries.tolist() == [N * (11 + per_round * r) for r in range(1, 5)]
  base = fedzo_minimize(_f, jnp.ones(D), N, tol=1e30, **kw)
  # the first round's change is below tol: converged after one round, NaN afterwards
  assert bool(base.converged) and int(base.n_iters) == 1
  assert np.isnan(base.errors[1:]).all() and base.num_queries.tolist() == [N * 63] * 4


def test_zero_rounds_return_x0_untouched(x64):
  res = fedzo_minimize(_f, jnp.ones(D), N, optimizer=optax.sgd(0.1), key=0, max_iterations=0)
  assert int(res.n_iters) == 0 and np.all(res.x == 1.0) and res.errors.shape == (0,)


@pytest.mark.integration  # heavy (3-7 s each): CI's second tier keeps make test within 5 min
def test_stacked_client_pytree_and_pytree_point(x64):
  clients = {"a": jnp.asarray(A), "b": jnp.asarray(B)}

  def f(p, c):
    x = jnp.concatenate([p["u"], p["v"]])
    return 0.5 * jnp.sum(c["a"] * x**2) + jnp.sum(c["b"] * x)

  x0 = {"u": jnp.ones(2), "v": jnp.ones(1)}
  s = fzoos_init(f, x0, clients, key=0, history_size=40, num_features=20, radius=0.05)
  s = fzoos_round(f, s, clients, optimizer=optax.sgd(0.1), num_local_steps=2, num_explore_round=4)
  ref = fzoos_init(_f, jnp.ones(3), N, key=0, history_size=40, num_features=20, radius=0.05)
  ref = fzoos_round(_f, ref, N, optimizer=optax.sgd(0.1), num_local_steps=2, num_explore_round=4)
  np.testing.assert_allclose(jnp.concatenate([s.x["u"], s.x["v"]]), ref.x, rtol=1e-12)


def test_client_axis_sharded_over_two_devices_gives_the_numbers_of_one(x64):
  if len(jax.devices()) < 2:
    pytest.skip("needs 2 devices (tests/conftest.py forces 8 host devices)")
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("clients",))
  sharding = NamedSharding(mesh, P("clients"))
  x0 = np.array([1.0, -0.5, 0.8])
  one, s1 = _jax_rounds(x0, 3, 5)
  two, s2 = _jax_rounds(x0, 3, 5, client_sharding=sharding)
  assert s2.history_x.sharding.is_equivalent_to(sharding, 3)
  # equal up to the rounding of the GP solves (a partitioned program orders sums its own way;
  # measured: 7e-12 relative)
  np.testing.assert_allclose(two, one, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(s2.local_weights, s1.local_weights, rtol=1e-7, atol=1e-9)
