"""optim.xla.compiler_options: same numbers, fewer copies (diffGrad's donated prev_grad)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim
import optim.xla


def _step(opt):
  def step(p, s, g):
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  return step


def test_options_per_backend():
  assert optim.xla.compiler_options("cpu") == {"xla_cpu_copy_insertion_use_region_analysis": True}
  assert optim.xla.compiler_options("gpu") == {}
  opts = optim.xla.compiler_options("cpu")
  opts["x"] = 1  # a fresh dict each call: the module's own stays untouched
  assert "x" not in optim.xla.compiler_options("cpu")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU option")
def test_diffgrad_same_values_and_no_saved_prev_grad():
  opt = optim.diffgrad(1e-2)
  p0 = jnp.linspace(-1.0, 1.0, 4096)
  grads = [jnp.sin((k + 1) * 3.0 * p0) for k in range(4)]
  runs, copies = [], []
  for options in (None, optim.xla.compiler_options()):
    f = jax.jit(_step(opt), donate_argnums=(0, 1), compiler_options=options)
    p = jnp.copy(p0)
    s = opt.init(p)
    text = f.lower(p, s, grads[0]).compile().as_text()
    copies.append(len(re.findall(r"f32\[4096\]\{0\} copy\(", text)))
    for g in grads:
      p, s = f(p, s, g)
    runs.append((p, s))
  for a, b in zip(jax.tree.leaves(runs[0]), jax.tree.leaves(runs[1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Without the option XLA saves the old prev_grad and copies g in; with it, only the copy of g.
  assert copies == [2, 1], copies
