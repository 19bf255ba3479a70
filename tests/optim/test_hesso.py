"""HESSO (Chen et al., arXiv:2409.09085) vs a float64 NumPy transcription of the official
Only-Train-Once ``HESSO.step`` (SGD and Adam variants, several pruning periods)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim

STEPS = 20
GROUPS = [{"l1/w": 1, "l1/b": 0, "l2/w": 0}, {"l2/b": 0}]


def _problem(rng):
  params = {
    "l1": {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=4)},
    "l2": {"w": rng.normal(size=(4, 2)), "b": rng.normal(size=2)},
  }
  target = jax.tree.map(lambda p: rng.normal(size=p.shape), params)
  scale = jax.tree.map(lambda p: rng.uniform(0.5, 2.0, size=p.shape), params)
  loss = lambda p, xp=jnp: sum(
    xp.sum(0.5 * s * (a - t) ** 2)
    for a, t, s in zip(jax.tree.leaves(p), jax.tree.leaves(target), jax.tree.leaves(scale))
  )
  grad = lambda p: jax.tree.map(lambda a, t, s: s * (a - t), p, target, scale)
  return params, loss, grad


def _views(p):
  """Per family, the (num_groups, -1) rows of each member leaf (the official transform)."""
  return [
    [p["l1"]["w"].T, p["l1"]["b"][:, None], p["l2"]["w"]],
    [p["l2"]["b"][:, None]],
  ]


def _transcription(params, grad, steps, lr, variant, start, pruning_steps, periods, target):
  """The official step, float64 NumPy, group_divisible = 1, default criteria weights."""
  x = jax.tree.map(np.array, params)
  total = 6
  k_target = int(total * target)
  per = [k_target // periods] * (periods - 1) + [k_target - (k_target // periods) * (periods - 1)]
  dur = pruning_steps // periods
  pruned, active, period = [], [], 0
  m = jax.tree.map(np.zeros_like, x)
  v = jax.tree.map(np.zeros_like, x)
  b1, b2, eps = 0.9, 0.999, 1e-8
  out = []
  for s in range(1, steps + 1):
    g = grad(x)
    if variant == "sgd":
      d = g
    else:
      m = jax.tree.map(lambda a, b: b1 * a + (1 - b1) * b, m, g)
      v = jax.tree.map(lambda a, b: b2 * a + (1 - b2) * b * b, v, g)
      d = jax.tree.map(lambda a, b: (a / (1 - b1**s)) / (np.sqrt(b / (1 - b2**s)) + eps), m, v)
    if s >= start and period < periods and (s - start - 1) % dur == 0:
      pruned += active
      active = []
      raw = {c: [] for c in optim._hesso.CRITERIA}
      for xs, ds in zip(_views(x), _views(d)):
        sq = sum((a**2).sum(1) for a in xs)
        xd = sum((a * b).sum(1) for a, b in zip(xs, ds))
        dd = sum((b**2).sum(1) for b in ds)
        numel = sum(a.shape[1] for a in xs)
        raw["magnitude"].append(np.sqrt(sq))
        raw["avg_magnitude"].append(np.sqrt(sq) / (numel + 1e-6))
        raw["cosine_similarity"].append(xd / (np.sqrt(sq) + 1e-8) / (np.sqrt(dd) + 1e-8) + 1)
        raw["taylor_first_order"].append(np.abs(xd))
        raw["taylor_second_order"].append(0.5 * xd**2)
      score = 0.0
      for parts in raw.values():
        sc = np.concatenate(parts)
        score = score + sc * 0.2 / (np.sqrt(1e-8 + (sc**2).sum()) + 1e-8)
      order = [i for i in np.argsort(score, kind="stable") if i not in pruned]
      active = order[: per[period]]
      period += 1
    t = (s - start) % dur
    x = jax.tree.map(lambda a, b: a - lr * b, x, d)
    fac = (dur - t - 1.0) / (dur - t)
    for gi in range(6):
      f = 0.0 if gi in pruned else fac if gi in active else 1.0
      if gi < 4:
        x["l1"]["w"][:, gi] *= f
        x["l1"]["b"][gi] *= f
        x["l2"]["w"][gi] *= f
      else:
        x["l2"]["b"][gi - 4] *= f
    if s >= start and t == dur - 1:
      pruned += active
      active = []
    out.append(jax.tree.map(np.copy, x))
  return out, sorted(pruned + active)


@pytest.mark.parametrize(
  "variant,start,pruning_steps,periods,target",
  [
    ("sgd", 3, 9, 3, 0.6),
    pytest.param("adam", 0, 4, 1, 0.4, marks=pytest.mark.slow),
    pytest.param("sgd", 2, 2, 2, 0.8, marks=pytest.mark.slow),
  ],
)
def test_matches_float64_transcription_of_the_official_step(
  x64, variant, start, pruning_steps, periods, target
):
  rng = np.random.default_rng(0)
  params, _, grad = _problem(rng)
  lr = 0.05
  want, pruned = _transcription(
    params, grad, STEPS, lr, variant, start, pruning_steps, periods, target
  )
  opt = optim.hesso(lr, GROUPS, target, start, pruning_steps, periods, variant=variant)
  p = jax.tree.map(jnp.asarray, params)
  state = opt.init(p)
  step = jax.jit(lambda p, s: opt.update(grad(p), s, p))
  for k in range(STEPS):
    u, state = step(p, state)
    p = optax.apply_updates(p, u)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(want[k])):
      np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6, atol=1e-12)
  kept = optim.pruning.hesso_structure(state)
  all_kept = list(kept[0]) + [4 + i for i in kept[1]]
  assert sorted(set(range(6)) - set(all_kept)) == pruned
  assert len(pruned) == int(6 * target)
  assert step._cache_size() == 1


@pytest.mark.slow
def test_prune_groups_slices_the_zero_groups_and_keeps_outputs(x64):
  rng = np.random.default_rng(1)
  params, _, grad = _problem(rng)
  opt = optim.hesso(0.05, GROUPS[:1], 0.5, 0, 4, 2)
  p = jax.tree.map(jnp.asarray, params)
  state = opt.init(p)
  step = jax.jit(lambda p, s: opt.update(grad(p), s, p))
  for _ in range(6):
    u, state = step(p, state)
    p = optax.apply_updates(p, u)
  small = optim.pruning.prune_groups(p, GROUPS[:1], state)
  assert small["l1"]["w"].shape == (3, 2) and small["l2"]["w"].shape == (2, 2)
  x = jnp.asarray(rng.normal(size=(5, 3)))
  net = lambda q: jnp.tanh(x @ q["l1"]["w"] + q["l1"]["b"]) @ q["l2"]["w"] + q["l2"]["b"]
  np.testing.assert_allclose(np.asarray(net(small)), np.asarray(net(p)), atol=1e-12)
