"""Opposing signals: the selection rule against a NumPy transcription, and the two-layer
linear toy whose dynamics are exact in closed form (float64, GD with optax.sgd):
a_o follows a_o <- (1 - eta p alpha^2 b^2) a_o, the groups' losses differ by 2 alpha u r,
the sharpness is the top eigenvalue of the closed-form 3x3 Hessian, and once eta * lambda
passes 2 the selection rule returns the two opposing groups, alternating."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optim.curvature import opposing_groups, opposing_signals
from optim.curvature._opposing import toy_data, toy_hessian, toy_losses


def _np_groups(losses, k):
  change = np.diff(losses, axis=0)
  inc, dec = np.zeros(change.shape, bool), np.zeros(change.shape, bool)
  for t, d in enumerate(change):
    top = np.argsort(-np.abs(d), kind="stable")[:k]  # ties: the lower index first
    inc[t, top[d[top] > 0]] = True
    dec[t, top[d[top] < 0]] = True
  return inc, dec, change


@pytest.mark.parametrize("k", [1, 3, 7])
def test_groups_are_the_k_largest_changes_split_by_sign(x64, k):
  hist = jax.random.normal(jax.random.key(k), (6, 7), jnp.float64)
  g = opposing_groups(hist, k=k)
  inc, dec, change = _np_groups(np.asarray(hist), k)
  np.testing.assert_array_equal(g.increased, inc)
  np.testing.assert_array_equal(g.decreased, dec)
  np.testing.assert_allclose(g.change, change, rtol=1e-15)
  assert np.all(np.sum(inc | dec, axis=1) == k)


# ----------------------------------------------------------------------------- the toy

N, P, ALPHA, BETA, ETA = 40, 0.1, 6.0, 0.25, 0.25
A_O, S0, STEPS = 1e-3, 1.4, 30


@pytest.fixture
def toy_run(x64):
  x, y, m = toy_data(N, P, ALPHA, BETA)
  batch = (jnp.asarray(x), jnp.asarray(y))
  params = {"a": jnp.array([A_O, S0]), "b": jnp.array(S0)}
  tx = optax.sgd(ETA)
  state = tx.init(params)
  mean = lambda q: jnp.mean(toy_losses(q, batch))
  snaps = []
  for _ in range(STEPS):
    snaps.append(params)
    u, state = tx.update(jax.grad(mean)(params), state, params)
    params = optax.apply_updates(params, u)
  history = jax.tree.map(lambda *a: jnp.stack(a), *snaps)
  return batch, m, snaps, history


def test_toy_loss_is_the_closed_form_decomposition(toy_run):
  batch, m, snaps, _ = toy_run
  assert 2 * m / N == P
  for q in snaps:
    (ao, ac), b = np.asarray(q["a"]), float(q["b"])
    u, r = b * ao, BETA * b * ac - 1.0
    losses = np.asarray(toy_losses(q, batch))
    np.testing.assert_allclose(losses.mean(), 0.5 * P * ALPHA**2 * u**2 + 0.5 * r**2, rtol=1e-12)
    # The two opposing groups: L_+ - L_- = 2 alpha u r exactly.
    diff = losses[:m].mean() - losses[m : 2 * m].mean()
    np.testing.assert_allclose(diff, 2 * ALPHA * u * r, rtol=1e-9, atol=1e-13)


def test_toy_opposing_weight_follows_the_exact_multiplier_every_step(toy_run):
  _, _, snaps, _ = toy_run
  ao = np.array([float(q["a"][0]) for q in snaps])
  b = np.array([float(q["b"]) for q in snaps])
  mult = 1.0 - ETA * P * ALPHA**2 * b[:-1] ** 2
  np.testing.assert_allclose(ao[1:], mult * ao[:-1], rtol=1e-10)
  # ...so over the whole run it is the product of the multipliers (STEPS >= 10 steps).
  np.testing.assert_allclose(ao, A_O * np.concatenate([[1.0], np.cumprod(mult)]), rtol=1e-9)
  # Progressive sharpening: eta * p alpha^2 b^2 crosses 2 (a_o's multiplier below -1).
  assert mult[0] > -1.0 and np.any(mult < -1.0)


def test_toy_sharpness_tracked_is_the_closed_form_top_eigenvalue(toy_run):
  batch, m, snaps, history = toy_run
  r = opposing_signals(toy_losses, history, batch, k=2 * m, key=0)
  for t, q in enumerate(snaps):
    ev = np.linalg.eigvalsh(toy_hessian(jax.tree.map(np.asarray, q), P, ALPHA, BETA))
    # Three parameters: three Lanczos steps give the spectrum exactly.
    np.testing.assert_allclose(float(r.sharpness[t]), ev[-1], rtol=1e-10)
  np.testing.assert_allclose(r.losses, jnp.stack([toy_losses(q, batch) for q in snaps]), rtol=1e-14)


def test_toy_selection_returns_the_two_opposing_groups_in_antiphase(toy_run):
  batch, m, snaps, history = toy_run
  r = opposing_signals(toy_losses, history, batch, k=2 * m, key=0)
  plus, minus = np.zeros(N, bool), np.zeros(N, bool)
  plus[:m], minus[m : 2 * m] = True, True
  inc, dec = np.asarray(r.groups.increased), np.asarray(r.groups.decreased)
  window = range(8, 13)  # after eta * lambda > 2, while |alpha u| < |r|: exact antiphase
  for t in window:
    assert ETA * float(r.sharpness[t]) > 2.0
    up = plus if t % 2 == 0 else minus
    np.testing.assert_array_equal(inc[t], up)
    np.testing.assert_array_equal(dec[t], ~up & (plus | minus))
  # Then both groups blow up together: the loss spike.
  assert np.all(inc[13] == (plus | minus)) and not dec[13].any()
