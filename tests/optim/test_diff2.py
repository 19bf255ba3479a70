"""DIFF2: float64 transcription of Algorithm 1 (restarts, clipped differences, clients),
the noise scale, and clients on a mesh axis."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optim

X = np.random.default_rng(0).normal(size=(8, 3))
Y = np.sin(X @ np.array([1.0, -2.0, 0.5]))


def _example_loss(w, x, y):
  return (jnp.tanh(x @ w["a"]) + x @ w["b"] - y) ** 2  # nonconvex, two leaves


def _grad_fn(w):
  return jax.vmap(jax.grad(_example_loss), in_axes=(None, 0, 0))(w, X, Y)


def _clip(v, c):
  return v * min(1.0, c / max(np.linalg.norm(v), 1e-300))


def _reference(w0, steps, lr, c1, c2, t, clients):
  """Algorithm 1 of Murata & Suzuki with the GD subroutine, sigma = 0, in float64 numpy."""
  flat = lambda g: np.concatenate([np.asarray(g["a"]).reshape(8, -1), np.asarray(g["b"])], 1)
  w = np.concatenate([w0["a"], w0["b"]])
  unflat = lambda v: {"a": jnp.asarray(v[:3]), "b": jnp.asarray(v[3:])}
  prev, v, out = None, None, []
  for r in range(steps):
    g = flat(_grad_fn(unflat(w)))
    rows = np.split(np.arange(8), clients)
    if r % t == 0:
      v = np.mean([np.mean([_clip(g[i], c1) for i in rs], 0) for rs in rows], 0)
    else:
      d = g - flat(_grad_fn(unflat(prev)))
      v = v + np.mean([np.mean([_clip(d[i], c2) for i in rs], 0) for rs in rows], 0)
    prev, w = w, w - lr * v
    out.append(w)
  return np.array(out)


def test_matches_float64_transcription_over_20_steps(x64):
  w0 = {"a": np.array([0.3, -0.2, 0.1]), "b": np.array([0.0, 0.1, -0.1])}
  tx = optim.diff2(0.1, 0.5, 0.05, noise_multiplier=0.0, restart_every=6, num_clients=2)
  step = jax.jit(lambda w, s: tx.update(_grad_fn(w), s, w, grad_fn=_grad_fn))
  w = jax.tree.map(jnp.asarray, w0)
  s, got = tx.init(w), []
  for _ in range(20):
    u, s = step(w, s)
    w = optax.apply_updates(w, u)
    got.append(np.concatenate([w["a"], w["b"]]))
  ref = _reference(w0, 20, 0.1, 0.5, 0.05, 6, 2)
  np.testing.assert_allclose(np.array(got), ref, rtol=1e-6, atol=1e-12)
  # Both clips were active (the transcription would not notice a missing clip otherwise).
  g = np.concatenate(
    [
      np.asarray(_grad_fn(jax.tree.map(jnp.asarray, w0))["a"]),
      np.asarray(_grad_fn(jax.tree.map(jnp.asarray, w0))["b"]),
    ],
    1,
  )
  assert np.linalg.norm(g, axis=1).max() > 0.5


def test_noise_std_is_sigma_clip_over_n_sqrt_clients():
  d, n, clients, sigma, c1, c2 = 4000, 4, 2, 2.0, 0.5, 0.01
  w = {"w": jnp.zeros(d)}
  zero = lambda p: {"w": jnp.zeros((n * clients, d))}
  tx = optim.scale_by_diff2(c1, c2, sigma, restart_every=2, num_clients=clients, key=1)
  s = tx.init(w)
  v0, s = tx.update(zero(w), s, w, grad_fn=zero)  # restart
  v1, s = tx.update(zero(w), s, w, grad_fn=zero)  # difference step: v0 + new noise
  want0 = sigma * c1 / n / np.sqrt(clients)
  np.testing.assert_allclose(float(jnp.std(v0["w"])), want0, rtol=0.05)
  want1 = sigma * c2 / n / np.sqrt(clients)
  np.testing.assert_allclose(float(jnp.std(v1["w"] - v0["w"])), want1, rtol=0.05)


def test_clients_on_a_mesh_axis_give_the_single_device_result(mesh8):
  w = {"a": jnp.array([0.3, -0.2, 0.1]), "b": jnp.array([0.0, 0.1, -0.1])}
  tx = optim.scale_by_diff2(0.5, 0.05, 0.3, restart_every=3, num_clients=8, key=0)

  @jax.jit
  def two_steps(g):
    s = tx.init(w)
    v, s = tx.update(g, s, w, grad_fn=lambda p: g)
    w2 = jax.tree.map(lambda a, b: a - 0.1 * b, w, v)
    return tx.update(jax.tree.map(lambda x: 1.1 * x, g), s, w2, grad_fn=lambda p: g)[0]

  g = _grad_fn(w)
  sharded = jax.device_put(g, NamedSharding(mesh8, P("d")))  # one client per device
  assert len(sharded["a"].sharding.device_set) == 8
  for a, b in zip(jax.tree.leaves(two_steps(g)), jax.tree.leaves(two_steps(sharded))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
