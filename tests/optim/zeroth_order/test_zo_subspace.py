"""optim.zeroth_order.zo_subspace_step (ZOODiP): a float64 transcription of the official
code (github.com/ignoww/ZOODiP, ``train_zoodip.py``: ``zo_step``, ``ZOAdam.update``, the
StandardScaler + PCA refresh) over 14 steps, and an exact testbed: a quadratic whose
estimate has a closed-form mean and covariance, where the projection onto the gradients'
subspace cuts the variance and keeps the mean."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optim.zeroth_order import ZOSubspaceState, zo_subspace_init, zo_subspace_step

D, N, TAU, MU, LR = 6, 2, 4, 1e-3, 1e-2


def _objective():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(5, D)), rng.normal(size=5)

  def f(x):
    r = a @ x - b
    return jnp.sum(jnp.log(jnp.cosh(r))) + 0.05 * jnp.sum(x**2) ** 2

  return f


def _draws(key):
  # The perturbations of one step, drawn as the implementation draws them.
  keys = jax.random.split(jax.random.key(key), N)
  return np.asarray(jax.vmap(lambda k: jax.random.normal(k, (D,), jnp.float64))(keys))


def _official_reference(f, x0, nu, steps):
  """The official loop in NumPy float64 (sklearn's StandardScaler and PCA as there).

  One documented difference: PCA components with zero explained variance (arbitrary unit
  vectors orthogonal to the history, which the official code would also remove) are kept.
  """
  from sklearn.decomposition import PCA
  from sklearn.preprocessing import StandardScaler

  fnp = lambda v: float(f(jnp.asarray(v)))
  x = np.array(x0, np.float64)
  m = v = np.zeros(D)
  eigen, dim, buffer, idx = None, D, [], 0
  xs, removed = [], []
  for it in range(1, steps + 1):
    z = _draws(it - 1)
    loss2 = fnp(x)
    proj = np.array([(fnp(x + MU * zi) - loss2) / MU for zi in z])
    grad = (proj[:, None] * z).sum(0) / (np.sqrt((dim + N - 1) / N) * N)
    if eigen is not None:
      grad = grad - grad @ eigen.T @ eigen
    m = 0.9 * m + 0.1 * grad
    v = 0.999 * v + 0.001 * grad**2
    x = x - LR * (m / (1 - 0.9**it)) / (np.sqrt(v / (1 - 0.999**it)) + 1e-3)
    if len(buffer) < TAU:
      buffer.append(x.copy())
    else:
      buffer[idx] = x.copy()
    idx = (idx + 1) % TAU
    xs.append(x.copy())
    if it % TAU == 0:
      pca = PCA(n_components=len(buffer))
      pca.fit(StandardScaler().fit_transform(np.stack(buffer)))
      cum = np.cumsum(pca.explained_variance_ratio_)
      i = int(np.argmax(cum > 1 - nu)) if np.any(cum > 1 - nu) else len(cum) - 1
      keep = pca.explained_variance_ > 1e-12 * pca.explained_variance_[0]
      comps = pca.components_[i + 1 :][keep[i + 1 :]]
      eigen = comps if len(comps) else None
      dim = D - len(comps)
      removed.append(len(comps))
  return np.stack(xs), removed


def _run(f, x0, nu, steps, variant="official"):
  tx = optax.adam(LR, eps=1e-3)

  @jax.jit
  def step(x, state, opt, k):
    out = zo_subspace_step(f, x, state, key=k, num_queries=N, mu=MU, nu=nu, variant=variant)
    updates, opt = tx.update(out.grads, opt)
    return optax.apply_updates(x, updates), out.state, opt, out.grads

  x = jnp.asarray(x0)
  state, opt = zo_subspace_init(x, history_size=TAU), tx.init(x)
  xs, grads, actives = [], [], []
  for k in range(steps):
    x, state, opt, g = step(x, state, opt, jax.random.key(k))
    xs.append(np.asarray(x))
    grads.append(np.asarray(g))
    actives.append(int(state.active.sum()))
  return np.stack(xs), np.stack(grads), actives


@pytest.mark.parametrize("nu", [0.02, 0.3])
def test_official_code_transcription_float64_over_14_steps(nu):
  with jax.enable_x64(True):
    f = _objective()
    x0 = np.linspace(-0.5, 0.8, D)
    ref, removed = _official_reference(f, x0, nu, 14)
    got, _, actives = _run(f, x0, nu, 14)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-11)
    # The refreshes at steps 4, 8, 12 removed directions, and the steps used them.
    assert sum(removed) >= 2 and [actives[4], actives[8], actives[12]] == removed


def test_principal_variant_transcription_float64():
  """Variant "principal": the history holds the raw estimates; every TAU steps the
  estimate is projected onto the principal (uncentred) subspace holding 1 - nu of their
  energy."""
  with jax.enable_x64(True):
    f = _objective()
    x0 = np.linspace(-0.5, 0.8, D)
    nu = 0.05
    got, grads, _ = _run(f, x0, nu, 13, variant="principal")
    x = np.array(x0)
    m = v = np.zeros(D)
    hist, basis = [], None
    for it in range(1, 14):
      z = _draws(it - 1)
      f0 = float(f(jnp.asarray(x)))
      c = np.array([(float(f(jnp.asarray(x + MU * zi))) - f0) / MU for zi in z])
      dim = D if basis is None else len(basis)
      raw = (c[:, None] * z).sum(0) / (N * np.sqrt((dim + N - 1) / N))
      grad = raw if basis is None else basis.T @ (basis @ raw)
      np.testing.assert_allclose(grads[it - 1], grad, rtol=0, atol=1e-11)
      hist.append(raw)
      m = 0.9 * m + 0.1 * grad
      v = 0.999 * v + 0.001 * grad**2
      x = x - LR * (m / (1 - 0.9**it)) / (np.sqrt(v / (1 - 0.999**it)) + 1e-3)
      if it % TAU == 0:
        _, s, vt = np.linalg.svd(np.stack(hist[-TAU:]), full_matrices=False)
        cum = np.cumsum(s**2) / np.sum(s**2)
        basis = vt[: int(np.argmax(cum > 1 - nu)) + 1]
    np.testing.assert_allclose(got[-1], x, rtol=0, atol=1e-11)


# --- exact testbed: a quadratic, where the estimate's mean and covariance are closed form


def _closed_form(a_grad, hess, mu, n, d_eff, proj):
  """Mean and covariance of P ghat for f(x) = 1/2 x'Ax + b'x, ghat the forward difference:
  (f(x + mu z) - f(x))/mu = a'z + (mu/2) z'Az, so E[ghat] = a / r and one query's second
  moment is |a|^2 I + 2 aa' + c^2 ((tr A)^2 I + 2 tr(A^2) I + 4 tr(A) A + 8 A^2), c = mu/2
  (Isserlis), r = sqrt((d_eff + n - 1)/n)."""
  d = a_grad.shape[0]
  c = mu / 2
  tr, tr2 = np.trace(hess), np.trace(hess @ hess)
  m1 = (a_grad @ a_grad) * np.eye(d) + 2 * np.outer(a_grad, a_grad)
  m1 += c**2 * ((tr**2 + 2 * tr2) * np.eye(d) + 4 * tr * hess + 8 * hess @ hess)
  r2 = (d_eff + n - 1) / n
  cov = (m1 - np.outer(a_grad, a_grad)) / (n * r2)
  return proj @ a_grad / np.sqrt(r2), proj @ cov @ proj.T


def _quadratic(d=8, k=2, seed=1):
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  u = q[:, :k]  # the gradients' subspace
  hess = u @ np.diag([3.0, 1.5][:k]) @ u.T
  b = u @ rng.normal(size=k)
  return q, u, hess, b


def _monte_carlo(f, x, state, variant, mu, n, draws=40000):
  keys = jax.random.split(jax.random.key(7), draws)
  step = lambda k: zo_subspace_step(f, x, state, key=k, num_queries=n, mu=mu, variant=variant)
  g = np.asarray(jax.jit(jax.vmap(lambda k: step(k).grads))(keys))
  return g.mean(0), np.cov(g.T), g.shape[0]


@pytest.mark.parametrize(
  "variant,n_dirs", [("none", 0), ("principal", 2), ("official", 3)], ids=str
)
def test_quadratic_mean_and_covariance_match_closed_form(variant, n_dirs):
  with jax.enable_x64(True):
    d, n, mu = 8, 3, 0.4
    q, u, hess, b = _quadratic(d)
    f = lambda x: 0.5 * x @ (hess @ x) + b @ x
    x = jnp.asarray(np.linspace(-1.0, 1.0, d))
    a_grad = hess @ np.asarray(x) + b
    tau = 4
    basis = np.zeros((tau, d))
    active = np.zeros(tau, bool)
    if variant == "principal":  # keep the gradients' subspace
      basis[:2] = u.T
      active[:2] = True
      proj, d_eff = u @ u.T, 2
    elif variant == "official":  # remove 3 directions orthogonal to the gradients
      basis[:3] = q[:, 2:5].T
      active[:3] = True
      proj, d_eff = np.eye(d) - q[:, 2:5] @ q[:, 2:5].T, d - 3
    else:
      proj, d_eff = np.eye(d), d
    # count = 1, tau = 4: no refresh in this step, the given projection applies.
    state = ZOSubspaceState(
      jnp.ones((), jnp.int32), jnp.zeros((tau, d)), jnp.asarray(basis), jnp.asarray(active)
    )
    v = "official" if variant == "none" else variant
    mean, cov, m = _monte_carlo(f, x, state, v, mu, n)
    want_mean, want_cov = _closed_form(a_grad, hess, mu, n, d_eff, proj)
    se = np.sqrt(np.maximum(np.diag(want_cov), 1e-30) / m)
    assert np.all(np.abs(mean - want_mean) <= 5 * se + 1e-12), (mean, want_mean)
    # the projection leaves the mean on the gradients' subspace unchanged
    np.testing.assert_allclose(proj @ a_grad, a_grad, atol=1e-12)
    np.testing.assert_allclose(np.trace(cov), np.trace(want_cov), rtol=0.03)
    np.testing.assert_allclose(cov, want_cov, atol=0.03 * np.trace(want_cov))


def test_projection_onto_gradient_subspace_cuts_variance_by_the_closed_form_ratio():
  """Gradients and curvature in a k = 2 subspace of R^8: projecting onto it keeps the mean
  and divides the relative variance by tr(P S P) / tr(S), S one query's covariance, which
  in scalars is ((k + 1)|a|^2 + c^2 (k T + 4 t^2 + 8 t2)) / ((d + 1)|a|^2 + c^2 (d T + 4 t^2
  + 8 t2)), t = tr A, t2 = tr A^2, T = t^2 + 2 t2 (the isotropic part shrinks by k/d)."""
  d, k, n, mu = 8, 2, 3, 0.4
  q, u, hess, b = _quadratic(d, k)
  a_grad = hess @ np.linspace(-1.0, 1.0, d) + b
  m_full, c_full = _closed_form(a_grad, hess, mu, n, d, np.eye(d))
  m_proj, c_proj = _closed_form(a_grad, hess, mu, n, k, u @ u.T)
  # the normalization changes with d_eff; compare the variance of the unit-mean estimates
  ratio = (np.trace(c_proj) / (m_proj @ m_proj)) / (np.trace(c_full) / (m_full @ m_full))
  a2, c = a_grad @ a_grad, mu / 2
  t, t2 = np.trace(hess), np.trace(hess @ hess)
  big_t = t**2 + 2 * t2
  want = ((k + 1) * a2 + c**2 * (k * big_t + 4 * t**2 + 8 * t2)) / (
    (d + 1) * a2 + c**2 * (d * big_t + 4 * t**2 + 8 * t2)
  )
  np.testing.assert_allclose(ratio, want, rtol=1e-12)
  assert ratio < 0.5
  np.testing.assert_allclose(m_proj / np.linalg.norm(m_proj), m_full / np.linalg.norm(m_full))


def test_refresh_finds_the_subspace_of_a_low_rank_history():
  """Principal: estimates in span(U) give P = UU'. Official: iterates that move along two
  directions and barely along a third lose the third."""
  with jax.enable_x64(True):
    d, tau = 8, 6
    q, u, hess, b = _quadratic(d)
    rng = np.random.default_rng(3)
    f = lambda x: jnp.sum(x**2)
    x = jnp.ones(d)
    hist = rng.normal(size=(tau, 2)) @ u.T
    state = ZOSubspaceState(
      jnp.asarray(tau, jnp.int32), jnp.asarray(hist), jnp.zeros((tau, d)), jnp.zeros(tau, bool)
    )
    out = zo_subspace_step(f, x, state, key=0, variant="principal", nu=1e-6)
    v = np.asarray(out.state.basis)[np.asarray(out.state.active)]
    np.testing.assert_allclose(v.T @ v, u @ u.T, atol=1e-10)
    # official: the pushed iterate x is the last row; build the rest around it
    coords = rng.normal(size=(tau, 3)) * np.array([1.0, 1.0, 1e-4])
    iters = np.ones(d) + coords @ q[:, :3].T
    iters[-1] = np.ones(d)  # the slot the step fills with x (count - 1 = tau - 1)
    state = state._replace(history=jnp.asarray(iters))
    out = zo_subspace_step(f, x, state, key=0, variant="official", nu=1e-3)
    assert int(out.state.active.sum()) == 1


def test_nonfinite_value_poisons_grads_and_keeps_state():
  x = jnp.zeros(3)
  state = zo_subspace_init(x, history_size=4)
  out = zo_subspace_step(lambda p: jnp.sum(p) + jnp.nan, x, state, key=0)
  assert bool(jnp.all(jnp.isnan(out.grads)))
  assert int(out.state.count) == 0
  good = zo_subspace_step(lambda p: jnp.sum(p), x, state, key=0)
  assert int(good.state.count) == 1 and bool(jnp.all(jnp.isfinite(good.grads)))


def test_pytree_params_round_trip():
  p = {"a": jnp.zeros(2), "b": jnp.ones((2, 2))}
  state = zo_subspace_init(p, history_size=3)
  out = zo_subspace_step(lambda q: jnp.sum(q["a"] ** 2) + jnp.sum(q["b"]), p, state, key=1)
  assert jax.tree.structure(out.grads) == jax.tree.structure(p)
  assert out.grads["b"].shape == (2, 2) and out.num_evals == 3


@pytest.mark.integration  # heavy (3-7 s each): CI's second tier keeps make test within 5 min
def test_nu_zero_never_drops_a_direction():
  """nu = 0 keeps every (non-null) direction of the history: a cumulative variance ratio
  rounded above 1 in float32 must not cut the last components (spread-out spectra)."""
  rng = np.random.default_rng(0)
  d = 16
  x = jnp.zeros(d)
  f = lambda p: jnp.sum(p**2)
  for _ in range(40):
    energy = np.sort(rng.uniform(0, 1, size=d) ** rng.uniform(1, 30))[::-1]
    q1, _ = np.linalg.qr(rng.normal(size=(d, d)))
    q2, _ = np.linalg.qr(rng.normal(size=(d, d)))
    hist = jnp.asarray(q1 @ np.diag(np.sqrt(energy)) @ q2.T, jnp.float32)
    state = ZOSubspaceState(
      jnp.asarray(d, jnp.int32), hist, jnp.zeros((d, d), jnp.float32), jnp.zeros(d, bool)
    )
    out = zo_subspace_step(f, x, state, key=0, nu=0.0, variant="principal")
    sv = np.asarray(jnp.linalg.svd(hist, compute_uv=False))
    real = int(np.sum(sv > sv[0] * d * np.finfo(np.float32).eps))
    assert int(out.state.active.sum()) == real
