"""optim.mask_sparsity (MaskSparsity, Jiang et al.): the L1 subgradient on the masked
normalization scales only, a float64 transcription of the official training step over 12
steps, its composition with HESSO's group families, and optim.pruning.smallest_groups."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim
from optim.pruning import hesso_structure, smallest_groups

PARAMS = {
  "conv": {"kernel": jnp.array([[0.3, -0.2, 0.5, 0.1], [0.4, 0.2, -0.6, 0.7]])},
  "bn": {"scale": jnp.array([0.8, -0.05, 0.3, 0.02]), "bias": jnp.array([0.1, 0.0, -0.2, 0.3])},
  "bn2": {"scale": jnp.array([0.5, 0.0, -0.4])},
}
GROUPS = [{"bn/scale": 0}, {"bn2/scale": 0}]
MASK = [jnp.array([False, True, False, True]), jnp.array([True, True, False])]


def test_known_mask_adds_the_signed_strength_on_the_masked_scales_only():
  tx = optim.mask_sparsity(0.01, GROUPS, MASK)
  g = jax.tree.map(lambda x: jnp.full_like(x, 0.5), PARAMS)
  u, state = tx.update(g, tx.init(PARAMS), PARAMS)
  assert state == optax.EmptyState()
  np.testing.assert_allclose(u["bn"]["scale"], [0.5, 0.5 - 0.01, 0.5, 0.5 + 0.01], rtol=1e-7)
  # sign(0) = 0: a scale already at zero takes no push.
  np.testing.assert_allclose(u["bn2"]["scale"], [0.5 + 0.01, 0.5, 0.5], rtol=1e-7)
  for path in (("conv", "kernel"), ("bn", "bias")):
    np.testing.assert_array_equal(u[path[0]][path[1]], g[path[0]][path[1]])


def _quadratic(params, target):
  return 0.5 * sum(
    jnp.sum((p - t) ** 2) for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(target))
  )


def _official_step(w, buf, target, s, mask, lr, momentum, wd, first):
  """pycls train_epoch with update_bn_by_names_dict(regular_method='L1') and torch's SGD
  (weight decay added to the gradient, then momentum, dampening 0), in NumPy float64."""
  out_w, out_buf = {}, {}
  for name in w:
    grad = w[name] - target[name]  # loss.backward() of the quadratic
    if name in mask:
      grad = grad + s * np.sign(w[name]) * mask[name]  # m.weight.grad.data.add_(add_grad)
    d_p = grad + wd * w[name]
    out_buf[name] = d_p.copy() if first else momentum * buf[name] + d_p
    out_w[name] = w[name] - lr * out_buf[name]
  return out_w, out_buf


def test_float64_transcription_of_the_official_step_over_12_steps(x64):
  rng = np.random.default_rng(0)
  w = {"kernel": rng.normal(size=(3, 4)), "scale": rng.normal(size=4), "bias": rng.normal(size=4)}
  target = {k: rng.normal(size=v.shape) for k, v in w.items()}
  mask = np.array([True, False, True, False])
  s, lr, momentum, wd = 0.05, 0.1, 0.9, 1e-3
  tx = optax.chain(
    optim.mask_sparsity(s, [{"scale": 0}], [mask]),
    optax.add_decayed_weights(wd),
    optax.sgd(lr, momentum=momentum),
  )
  params = jax.tree.map(jnp.asarray, w)
  jt = jax.tree.map(jnp.asarray, target)
  state = tx.init(params)
  step = jax.jit(lambda p, st: tx.update(jax.grad(_quadratic)(p, jt), st, p))
  ref, buf = {k: v.copy() for k, v in w.items()}, None
  for t in range(12):
    u, state = step(params, state)
    params = optax.apply_updates(params, u)
    ref, buf = _official_step(ref, buf, target, s, {"scale": mask}, lr, momentum, wd, t == 0)
    for k in ref:
      assert params[k].dtype == jnp.float64
      np.testing.assert_allclose(np.asarray(params[k]), ref[k], rtol=1e-12, atol=1e-13)


def test_masked_scales_are_driven_to_zero_and_the_others_are_free():
  target = jax.tree.map(lambda x: 0.2 * jnp.ones_like(x), PARAMS)
  tx = optax.chain(optim.mask_sparsity(0.5, GROUPS, MASK), optax.sgd(0.05))

  @jax.jit
  def run(p):
    def body(carry, _):
      p, s = carry
      u, s = tx.update(jax.grad(_quadratic)(p, target), s, p)
      return (optax.apply_updates(p, u), s), None

    return jax.lax.scan(body, (p, tx.init(p)), None, length=400)[0][0]

  p = run(PARAMS)
  # Masked scales: |target| = 0.2 < strength 0.5, so the L1 minimum is 0 (within one step).
  assert float(jnp.abs(p["bn"]["scale"][jnp.array([1, 3])]).max()) <= 0.05 * 0.5 + 1e-6
  assert float(jnp.abs(p["bn2"]["scale"][:2]).max()) <= 0.05 * 0.5 + 1e-6
  # Unmasked scales and every other leaf reach the unpenalized optimum.
  np.testing.assert_allclose(p["bn"]["scale"][jnp.array([0, 2])], 0.2, rtol=1e-4)
  np.testing.assert_allclose(p["conv"]["kernel"], 0.2, rtol=1e-4)


def test_composes_with_a_hesso_run_through_its_group_families():
  p = {"w": jnp.array([[1.0, 0.1, 2.0, 0.2]]), "scale": jnp.array([1.0, 0.9, 1.1, 0.8])}
  groups = [{"w": 1, "scale": 0}]
  opt = optim.hesso(0.1, groups, target_group_sparsity=0.5, pruning_steps=4)
  state = opt.init(p)
  q = p
  for _ in range(5):
    u, state = opt.update(jax.grad(lambda q: jnp.sum(q["w"] ** 2))(q), state, q)
    q = optax.apply_updates(q, u)
  kept = hesso_structure(state)[0]
  pruned = ~np.isin(np.arange(4), kept)
  tx = optim.mask_sparsity(0.1, [{"scale": 0}], [pruned])
  u, _ = tx.update({"w": jnp.zeros((1, 4)), "scale": jnp.zeros(4)}, tx.init(p), p)
  np.testing.assert_allclose(u["scale"], 0.1 * pruned, rtol=1e-7)
  np.testing.assert_array_equal(u["w"], 0.0)


def test_callable_mask_from_smallest_groups_under_jit_and_inject_hyperparams():
  mask = lambda p: smallest_groups(p, GROUPS, 0.5)
  tx = optax.inject_hyperparams(optim.mask_sparsity, static_args=("groups", "mask"))(
    strength=0.01, groups=GROUPS, mask=mask
  )
  g = jax.tree.map(jnp.zeros_like, PARAMS)
  u, state = jax.jit(lambda g, s, p: tx.update(g, s, p))(g, tx.init(PARAMS), PARAMS)
  # The 3 smallest |scale| of 7: bn2 0.0, bn 0.02, bn -0.05.
  np.testing.assert_allclose(u["bn"]["scale"], [0, -0.01, 0, 0.01], rtol=1e-6)
  np.testing.assert_array_equal(u["bn2"]["scale"], 0.0)  # sign(0) = 0
  state.hyperparams["strength"] = jnp.asarray(0.02)
  u, _ = tx.update(g, state, PARAMS)
  np.testing.assert_allclose(u["bn"]["scale"], [0, -0.02, 0, 0.02], rtol=1e-6)


def test_smallest_groups_ranks_globally_by_group_norm():
  p = {"a": jnp.array([[3.0, 0.1], [4.0, 0.1]]), "b": jnp.array([0.5, 0.05, 2.0])}
  # Family 0: the columns of "a" (norms 5 and 0.14); family 1: the entries of "b".
  masks = smallest_groups(p, [{"a": 1}, {"b": 0}], 0.4)
  assert [m.tolist() for m in masks] == [[False, True], [False, True, False]]
  assert [m.tolist() for m in smallest_groups(p, [{"a": 1}, {"b": 0}], 0.0)] == [
    [False, False],
    [False, False, False],
  ]
  assert all(bool(m.all()) for m in smallest_groups(p, [{"a": 1}, {"b": 0}], 1.0))
  # Ties broken by position.
  assert smallest_groups({"c": jnp.ones(4)}, [{"c": 0}], 0.5)[0].tolist() == [
    True,
    True,
    False,
    False,
  ]


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_update_keeps_the_gradient_dtype(dtype):
  p = jax.tree.map(lambda x: x.astype(dtype), PARAMS)
  tx = optim.mask_sparsity(0.01, GROUPS, MASK)
  u, _ = tx.update(jax.tree.map(jnp.ones_like, p), tx.init(p), p)
  assert all(x.dtype == dtype for x in jax.tree.leaves(u))
