"""BSVRB (optim.bilevel.bsvrb_init / bsvrb_step / bsvrb), Hu et al. ICML 2023 (arXiv:2305.18730).

What is proved here:
- the step is the official code's update, transcribed in float64 NumPy on the official
  hyperparameter-optimization problem (weighted logistic lower levels, one per task), both
  variants, partial block sampling, 12 iterations from a random state;
- on an exact testbed (quadratic lower levels with closed-form y_i*(x), quadratic upper
  level with known x*) both variants converge to x* with full and with partial sampling;
- the variance reduction: on noisy draws the MSVR / STORM estimators are closer to the exact
  quantities than the plain minibatch estimates of the same draws;
- a 2-device block-sharded state gives the same numbers as one device; the solver is a
  deterministic function of its key; traced bad block indices poison x.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from optim.bilevel import bsvrb, bsvrb_init, bsvrb_step


@pytest.fixture(autouse=True)
def _float64():
  """Every test here runs in float64 (a context, not the global flag: other modules share the
  session); module-level data stays NumPy float64 until a test converts it."""
  with jax.enable_x64(True):
    yield


# --------------------------------------------------------------------------------------
# The official problem (HO/main.py): x = p, per-example weights sigmoid(p_j) of the training
# loss; block i = task i, a linear model w_i with temperature sigma_i.
#   g_i(p, w) = mean_{j in tr} sigmoid(p_j) l(w; a_j, b_j / sigma_i) + lam/2 |w|^2,
#   f_i(w)    = mean_{j in val} l(w; a_j, b_j / sigma_i),  l = log(1 + exp(-b w.[1, a])).

N_TR, N_VAL, DIM, M, LAM = 12, 10, 3, 4, 0.1


def _ho_data():
  rng = np.random.default_rng(0)
  xt = rng.normal(size=(N_TR, DIM))
  yt = np.sign(rng.normal(size=N_TR))
  xv = rng.normal(size=(N_VAL, DIM))
  yv = np.sign(rng.normal(size=N_VAL))
  sig = rng.uniform(0.5, 2.0, size=M)
  return xt, yt, xv, yv, sig


XT, YT, XV, YV, SIG = _ho_data()


def _aug(a):
  return np.concatenate([np.ones((a.shape[0], 1)), a], axis=1)


def inner_ho(p, w, b):
  a, lab = jnp.asarray(_aug(XT))[b["tr"]], jnp.asarray(YT)[b["tr"]] / b["sigma"]
  loss = jnp.log1p(jnp.exp(-lab * (a @ w)))
  return jnp.mean(jax.nn.sigmoid(p[b["tr"]]) * loss) + 0.5 * LAM * jnp.dot(w, w)


def outer_ho(p, w, b):
  a, lab = jnp.asarray(_aug(XV))[b["val"]], jnp.asarray(YV)[b["val"]] / b["sigma"]
  return jnp.mean(jnp.log1p(jnp.exp(-lab * (a @ w))))


# The official code's derivative formulas (grad_y_g, grad_y_f, hess_xy_g, hess_yy_g), in
# NumPy, with the sign of hess_yy_g corrected (the code has -e/(1+e)^2; the Hessian of
# log(1 + exp(-c w.a)) is +c^2 e/(1+e)^2 a a^T).
def _sigm(z):
  return 1.0 / (1.0 + np.exp(-z))


def np_grad_y_g(p, w, i, tr):
  out = np.zeros_like(w)
  for j in tr:
    a, c = _aug(XT)[j], YT[j] / SIG[i]
    out += -_sigm(p[j]) * (1 - _sigm(c * (w @ a))) * c * a
  return out / len(tr) + LAM * w


def np_grad_y_f(w, i, val):
  out = np.zeros_like(w)
  for j in val:
    a, c = _aug(XV)[j], YV[j] / SIG[i]
    out += -(1 - _sigm(c * (w @ a))) * c * a
  return out / len(val)


def np_hess_xy_g(p, w, i, tr):
  out = np.zeros((N_TR, w.size))
  for j in tr:
    a, c = _aug(XT)[j], YT[j] / SIG[i]
    out[j] = -_sigm(p[j]) * (1 - _sigm(p[j])) * (1 - _sigm(c * (w @ a))) * c * a
  return out / len(tr)


def np_hess_yy_g(p, w, i, tr):
  out = np.zeros((w.size, w.size))
  for j in tr:
    a, c = _aug(XT)[j], YT[j] / SIG[i]
    e = np.exp(-c * (w @ a))
    out += _sigm(p[j]) * c**2 * e / (1 + e) ** 2 * np.outer(a, a)
  return out / len(tr) + LAM * np.eye(w.size)


def np_proj_psd(h, floor):
  w, q = np.linalg.eigh(0.5 * (h + h.T))
  return (q * np.maximum(w, floor)) @ q.T


def reference(variant, st, draws, hp):
  """The official BSVRB() loop (HO/main.py), one task batch per iteration, full y updates."""
  p1, p0 = st["x"].copy(), st["x_prev"].copy()
  w1, w0 = st["y"].copy(), st["y_prev"].copy()
  s, z = st["s"].copy(), st["z"].copy()
  h1, h0 = (st["hess"].copy(), st["hess_prev"].copy()) if variant == "v1" else (None, None)
  v1, v0, u = (
    (st["v"].copy(), st["v_prev"].copy(), st["u"].copy()) if variant == "v2" else (None,) * 3
  )
  al, ga, be, tau, eta, floor = (
    hp["alpha"],
    hp["gamma"],
    hp["beta"],
    hp["tau"],
    hp["eta"],
    hp["floor"],
  )
  for tasks, tr_all, val_all in draws:
    h_new = None if h1 is None else h1.copy()
    G0, G1 = np.zeros_like(p1), np.zeros_like(p1)
    for k, i in enumerate(tasks):
      tr, val = tr_all[k], val_all[k]
      s[i] = (
        (1 - al) * s[i]
        + (al + ga) * np_grad_y_g(p1, w1[i], i, tr)
        - ga * np_grad_y_g(p0, w0[i], i, tr)
      )
      hxy1, hxy0 = np_hess_xy_g(p1, w1[i], i, tr), np_hess_xy_g(p0, w0[i], i, tr)
      if variant == "v1":
        new = (
          (1 - al) * h_new[i]
          + (al + ga) * np_hess_yy_g(p1, w1[i], i, tr)
          - ga * np_hess_yy_g(p0, w0[i], i, tr)
        )
        h_new[i] = np_proj_psd(new, floor)
        G0 += -hxy0 @ np.linalg.inv(h0[i]) @ np_grad_y_f(w0[i], i, val)
        G1 += -hxy1 @ np.linalg.inv(h1[i]) @ np_grad_y_f(w1[i], i, val)
      else:
        gam1 = np_hess_yy_g(p1, w1[i], i, tr) @ v1[i] - np_grad_y_f(w1[i], i, val)
        gam0 = np_hess_yy_g(p0, w0[i], i, tr) @ v0[i] - np_grad_y_f(w0[i], i, val)
        u[i] = (1 - al) * u[i] + (al + ga) * gam1 - ga * gam0
        G0 += -hxy0 @ v0[i]
        G1 += -hxy1 @ v1[i]
    w_new = w1 - tau * s
    if variant == "v2":
      v_new = v1 - tau * u
      v0, v1 = v1, v_new
    p0 = p1.copy()
    z = (1 - be) * (z - G0 / len(tasks)) + G1 / len(tasks)
    p1 = p1 - eta * z
    if variant == "v1":
      h0, h1 = h1, h_new
    w0, w1 = w1, w_new
  out = dict(x=p1, y=w1, s=s, z=z)
  if variant == "v1":
    out["hess"] = h1
  else:
    out.update(v=v1, u=u)
  return out


def _random_state(variant, rng):
  d = DIM + 1

  def spd():
    a = rng.normal(size=(M, d, d))
    return np.einsum("mij,mkj->mik", a, a) / d + np.eye(d)

  st = dict(
    x=rng.normal(size=N_TR), x_prev=rng.normal(size=N_TR),
    y=rng.normal(size=(M, d)), y_prev=rng.normal(size=(M, d)),
    s=rng.normal(size=(M, d)), z=rng.normal(size=N_TR),
  )  # fmt: skip
  if variant == "v1":
    st.update(hess=spd(), hess_prev=spd())
  else:
    st.update(v=rng.normal(size=(M, d)), v_prev=rng.normal(size=(M, d)), u=rng.normal(size=(M, d)))
  return st


def _draws(rng, num_steps, num_blocks, bsz):
  out = []
  for _ in range(num_steps):
    tasks = rng.choice(M, num_blocks, replace=False)
    tr = np.stack([rng.choice(N_TR, bsz, replace=False) for _ in tasks])
    val = np.stack([rng.choice(N_VAL, bsz, replace=False) for _ in tasks])
    out.append((tasks, tr, val))
  return out


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_step_matches_official_update_in_float64_over_12_iterations(variant):
  rng = np.random.default_rng(1)
  st = _random_state(variant, rng)
  draws = _draws(rng, 12, 2, 5)
  hp = dict(alpha=0.6, gamma=0.7, beta=0.5, tau=0.3, eta=0.2, floor=1e-3)
  ref = reference(variant, st, draws, hp)
  state = bsvrb_init(jnp.asarray(st["x"]), jnp.asarray(st["y"]), variant=variant)
  state = state._replace(**{k: jnp.asarray(v) for k, v in st.items()})
  step = jax.jit(
    lambda s_, blocks, batch: bsvrb_step(
      s_, blocks, batch, outer_loss=outer_ho, inner_loss=inner_ho, learning_rate=hp["eta"],
      inner_learning_rate=hp["tau"], alpha=hp["alpha"], beta=hp["beta"], gamma=hp["gamma"],
      hessian_floor=hp["floor"],
    )
  )  # fmt: skip
  for tasks, tr, val in draws:
    batch = dict(sigma=jnp.asarray(SIG[tasks]), tr=jnp.asarray(tr), val=jnp.asarray(val))
    state = step(state, jnp.asarray(tasks), batch)
  assert int(state.count) == 12
  for name, want in ref.items():
    np.testing.assert_allclose(getattr(state, name), want, rtol=1e-10, atol=1e-12, err_msg=name)
  # the run moved: the update is not the identity
  assert np.abs(ref["x"] - st["x"]).max() > 1e-2


# --------------------------------------------------------------------------------------
# Exact testbed: g_i(x, y) = y^T A_i y / 2 - y^T B_i x, so y_i*(x) = A_i^{-1} B_i x;
# f_i(x, y) = |y - t_i|^2 / 2 + rho |x|^2 / 2, so x* solves
# (mean_i M_i^T M_i + rho I) x = mean_i M_i^T t_i with M_i = A_i^{-1} B_i.

DX, DY, MB, RHO = 3, 2, 6, 0.1


def _testbed():
  rng = np.random.default_rng(2)
  q = rng.normal(size=(MB, DY, DY))
  a = np.einsum("mij,mkj->mik", q, q) / DY + np.eye(DY)
  b = rng.normal(size=(MB, DY, DX)) / np.sqrt(DX)
  t = rng.normal(size=(MB, DY))
  mm = np.linalg.solve(a, b)
  lhs = np.einsum("mji,mjk->ik", mm, mm) / MB + RHO * np.eye(DX)
  rhs = np.einsum("mji,mj->i", mm, t) / MB
  return dict(a=a, b=b, t=t), np.linalg.solve(lhs, rhs)


DATA, X_STAR = _testbed()


def inner_q(x, y, d):
  return 0.5 * y @ d["a"] @ y - y @ (d["b"] @ x + d.get("noise", 0.0))


def outer_q(x, y, d):
  return 0.5 * jnp.sum((y - d["t"] - d.get("fnoise", 0.0)) ** 2) + 0.5 * RHO * jnp.sum(x**2)


def _blocks_data(key, blocks):
  return jax.tree.map(lambda leaf: jnp.asarray(leaf)[blocks], DATA)


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_full_sampling_converges_to_the_known_minimizer(variant):
  res = bsvrb(
    outer_q, inner_q, jnp.zeros(DX), jnp.zeros((MB, DY)), _blocks_data, key=0, variant=variant,
    learning_rate=0.2, inner_learning_rate=0.3, max_iterations=3000, tol=1e-9,
  )  # fmt: skip
  assert bool(res.converged)
  np.testing.assert_allclose(res.x, X_STAR, atol=1e-7)
  y_star = np.linalg.solve(np.asarray(DATA["a"]), (np.asarray(DATA["b"]) @ X_STAR)[..., None])[
    ..., 0
  ]
  np.testing.assert_allclose(res.y, y_star, atol=1e-7)
  n = int(res.n_iters)
  assert np.all(np.isfinite(res.errors[:n])) and np.all(np.isnan(res.errors[n:]))


@pytest.mark.parametrize(("variant", "lower_update"), [("v1", "all"), ("v2", "sampled")])
def test_partial_sampling_approaches_the_known_minimizer(variant, lower_update):
  """2 of 6 blocks a step, constant steps: the run ends in a neighbourhood of x* (block
  sampling noise with constant eta, beta; the theory's steps shrink with the accuracy):
  within 5% of |x0 - x*| after 3000 steps (measured 2.5-3.0%)."""
  x0 = jnp.zeros(DX)
  res = bsvrb(
    outer_q, inner_q, x0, jnp.zeros((MB, DY)), _blocks_data, key=1, variant=variant,
    num_blocks=2, learning_rate=0.02, inner_learning_rate=0.05, alpha=0.5, beta=0.02,
    max_iterations=3000, tol=0.0, lower_update=lower_update,
  )  # fmt: skip
  assert not bool(res.converged) and int(res.n_iters) == 3000
  err = float(jnp.linalg.norm(res.x - X_STAR))
  assert err < 0.05 * float(np.linalg.norm(X_STAR)), err


def test_variance_reduced_estimators_beat_plain_minibatch_estimates_on_the_same_draws():
  """Noise in both levels' data, full block sampling. Along one run, the MSVR estimators
  s_i and the STORM estimator z are closer to the noise-free quantities at the current
  iterate than the plain one-draw estimates on the same draws (what alpha = beta = 1,
  gamma = 0 would use)."""
  kw = dict(outer_loss=outer_q, inner_loss=inner_q, learning_rate=0.02, inner_learning_rate=0.1,
            alpha=0.1, beta=0.1)  # fmt: skip
  state = bsvrb_init(jnp.zeros(DX), jnp.zeros((MB, DY)), variant="v1")
  blocks = jnp.arange(MB)
  gy = jax.jit(jax.vmap(jax.grad(inner_q, argnums=1), in_axes=(None, 0, 0)))

  @jax.jit
  def hyper(x, y, hess, fnoise):
    """mean_i G_i = rho x + B_i^T H_i^{-1} grad_y f_i (grad_xy g_i = -B_i)."""
    w = jnp.linalg.solve(hess, (y - DATA["t"] - fnoise)[..., None])[..., 0]
    return RHO * x + jnp.mean(jnp.einsum("mij,mi->mj", DATA["b"], w), axis=0)

  key = jax.random.key(3)
  errs = {"s_vr": [], "s_plain": [], "z_vr": [], "z_plain": []}
  step = jax.jit(lambda s_, b: bsvrb_step(s_, blocks, b, **kw))
  for t in range(150):
    k1, k2 = jax.random.split(jax.random.fold_in(key, t))
    noise, fnoise = 0.5 * jax.random.normal(k1, (MB, DY)), 0.5 * jax.random.normal(k2, (MB, DY))
    batch = dict(DATA, noise=noise, fnoise=fnoise)
    exact_s, plain_s = gy(state.x, state.y, DATA), gy(state.x, state.y, batch)
    exact_z = hyper(state.x, state.y, state.hess, 0.0)
    plain_z = hyper(state.x, state.y, state.hess, fnoise)
    new = step(state, batch)
    if t >= 30:  # past the warm-up from zero estimators
      errs["s_vr"].append(float(jnp.sum((new.s - exact_s) ** 2)))
      errs["s_plain"].append(float(jnp.sum((plain_s - exact_s) ** 2)))
      errs["z_vr"].append(float(jnp.sum((new.z - exact_z) ** 2)))
      errs["z_plain"].append(float(jnp.sum((plain_z - exact_z) ** 2)))
    state = new
  mse = {k: np.mean(v) for k, v in errs.items()}
  assert mse["s_vr"] < 0.3 * mse["s_plain"], mse
  assert mse["z_vr"] < 0.3 * mse["z_plain"], mse


# --------------------------------------------------------------------------------------
# Sharding, determinism, poison, the lower-level update switch.

STEP_KW = dict(outer_loss=outer_q, inner_loss=inner_q, learning_rate=0.05, inner_learning_rate=0.2)


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_two_device_block_sharded_state_gives_the_one_device_numbers(variant):
  assert len(jax.devices()) >= 2  # tests/conftest.py forces 8 host CPU devices
  mesh = Mesh(np.array(jax.devices()[:2]), ("blocks",))
  sharding = NamedSharding(mesh, P("blocks"))
  x0, y0 = jnp.ones(DX), jnp.zeros((MB, DY))
  plain = bsvrb_init(x0, y0, variant=variant)
  sharded = bsvrb_init(x0, y0, variant=variant, block_sharding=sharding)
  assert sharded.y.sharding == sharding and sharded.s.sharding == sharding
  assert len(sharded.y.addressable_shards) == 2
  step = jax.jit(lambda st, b: bsvrb_step(st, b, _blocks_data(None, b), **STEP_KW))
  rng = np.random.default_rng(5)
  for _ in range(10):
    blocks = jnp.asarray(rng.choice(MB, 3, replace=False))
    plain, sharded = step(plain, blocks), step(sharded, blocks)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(sharded)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13, atol=1e-15)
  assert len(sharded.y.sharding.device_set) == 2  # still spread over the mesh


def test_solver_is_deterministic_given_the_key():
  def run(key):
    return bsvrb(outer_q, inner_q, jnp.zeros(DX), jnp.zeros((MB, DY)), _blocks_data, key=key,
                 num_blocks=2, learning_rate=0.02, max_iterations=30, tol=0.0)  # fmt: skip

  a, b, c = run(7), run(7), run(8)
  np.testing.assert_array_equal(a.x, b.x)
  np.testing.assert_array_equal(a.errors, b.errors)
  assert not np.array_equal(a.x, c.x)


def test_traced_invalid_blocks_poison_x():
  state = bsvrb_init(jnp.zeros(DX), jnp.zeros((MB, DY)))
  step = jax.jit(
    lambda st, b: bsvrb_step(st, b, _blocks_data(None, jnp.clip(b, 0, MB - 1)), **STEP_KW)
  )
  good = step(state, jnp.array([0, 3]))
  assert np.all(np.isfinite(good.x))
  assert np.all(np.isnan(step(state, jnp.array([0, MB])).x))  # out of range
  assert np.all(np.isnan(step(state, jnp.array([2, 2])).x))  # repeated


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_sampled_lower_update_moves_only_the_sampled_blocks(variant):
  state = bsvrb_init(jnp.ones(DX), jnp.zeros((MB, DY)), variant=variant)
  state = state._replace(s=jnp.ones((MB, DY)))  # stale estimators everywhere
  blocks = jnp.array([1, 4])
  part = bsvrb_step(state, blocks, _blocks_data(None, blocks), lower_update="sampled", **STEP_KW)
  full = bsvrb_step(state, blocks, _blocks_data(None, blocks), **STEP_KW)
  others = np.setdiff1d(np.arange(MB), [1, 4])
  np.testing.assert_array_equal(part.y[others], state.y[others])
  assert np.all(full.y[others] != state.y[others])  # "all": stale estimators move them
  np.testing.assert_array_equal(part.y[blocks], full.y[blocks])
