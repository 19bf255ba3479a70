"""Weight compander: float64 transcription of the reparameterized training, the inverse,
the slope at zero, masks, and the flax nnx helper."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import optim


def _f(w, a, b):
  return np.sign(w) * ((np.abs(w) + b) ** a - b**a)


def _df(w, a, b):
  return a * (np.abs(w) + b) ** (a - 1)


def test_sgd_through_compander_matches_float64_chain_rule_over_20_steps(x64):
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(16, 5)), rng.normal(size=16)
  w0 = rng.normal(size=(5, 1)) * 0.3
  a, b, lr = 0.5, 0.1, 0.05
  loss = lambda p: jnp.mean(
    (x @ optim.compander.compand_weights(p, alpha=a, beta=b)["w"] - y[:, None]) ** 2
  )
  step = jax.jit(lambda p: jax.tree.map(lambda q, g: q - lr * g, p, jax.grad(loss)(p)))
  p, ref = {"w": jnp.asarray(w0)}, w0.copy()
  for _ in range(20):
    grad_hat = 2 * x.T @ (x @ _f(ref, a, b) - y[:, None]) / len(y)
    ref = ref - lr * grad_hat * _df(ref, a, b)
    p = step(p)
  np.testing.assert_allclose(np.asarray(p["w"]), ref, rtol=1e-6)


def test_slope_at_zero_inverse_and_default_mask(x64):
  a, b = 0.4, 0.05
  g0 = jax.grad(lambda w: optim.compander.compand_weights({"k": w}, alpha=a, beta=b)["k"].sum())(
    jnp.zeros((1, 1))
  )
  np.testing.assert_allclose(float(g0[0, 0]), a * b ** (a - 1), rtol=1e-12)  # > 1: push
  w = {"k": jnp.linspace(-3, 3, 13).reshape(13, 1), "bias": jnp.array([2.0])}
  c = optim.compander.compand_weights(w, alpha=a, beta=b)
  np.testing.assert_allclose(c["k"], _f(np.asarray(w["k"]), a, b), rtol=1e-12)
  assert float(c["bias"][0]) == 2.0  # 1-D leaves are left alone by default
  back = optim.compander.expand_weights(c, alpha=a, beta=b)
  np.testing.assert_allclose(back["k"], w["k"], atol=1e-12)
  masked = optim.compander.compand_weights(w, alpha=a, beta=b, mask={"k": False, "bias": True})
  np.testing.assert_allclose(masked["bias"], _f(np.array([2.0]), a, b), rtol=1e-12)


def test_nnx_helper_trains_raw_weights_through_the_compander():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  x = jnp.ones((4, 3))
  loss = lambda m: jnp.sum(optim.compander.nnx_companded(m)(x) ** 2)
  grads = nnx.grad(loss)(model)
  _, params = nnx.split(model, nnx.Param)
  direct = jax.grad(
    lambda p: jnp.sum((x @ optim.compander.compand_weights(p)["kernel"] + p["bias"]) ** 2)
  )({"kernel": params["kernel"][...], "bias": params["bias"][...]})
  np.testing.assert_allclose(grads["kernel"][...], direct["kernel"], rtol=1e-5)
  assert isinstance(optim.compander.nnx_companded(model), nnx.Linear)
