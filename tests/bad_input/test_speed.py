"""Hostile inputs to the one-pass curvature API and the sampled coordinate clip
(one line a case; harness in tests/bad_input/harness.py)."""

import jax
import jax.numpy as jnp

import optim as O
from optim.curvature import value_grad_and_hvp
from tests.bad_input.harness import Case, params, raises, returns, run

nan = float("nan")
P = {"w": jnp.array([[0.5, -1.0], [1.5, 0.3]]), "b": jnp.array([0.1, -0.3])}
F = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 4)
HZ = jax.tree.map(jnp.ones_like, P)


def step(tx, **extra):
  return tx.update(P, tx.init(P), P, **extra)[0]


NS = {"O": O, "jnp": jnp, "P": P, "F": F, "HZ": HZ, "nan": nan, "step": step}
NS["value_grad_and_hvp"] = value_grad_and_hvp

CASES = [
  # -- optim.curvature.value_grad_and_hvp -------------------------------------------------------
  Case("value_grad_and_hvp(3, P, HZ)", raises(TypeError, "f must be callable")),
  Case("value_grad_and_hvp(lambda p: p['b'], P, HZ)", raises(TypeError, "scalar")),
  Case("value_grad_and_hvp(F, P, {'w': HZ['w']})", raises(ValueError, "v")),
  Case("value_grad_and_hvp(F, {}, {})", raises(ValueError, "params")),
  Case("value_grad_and_hvp(F, P, {'w': HZ['w'], 'b': jnp.ones(3)})", raises(ValueError, "shape")),
  # -- hvp= in place of obj_fn -----------------------------------------------------------------
  Case("step(O.adahessian(0.1), hvp={'w': HZ['w']})", raises(ValueError, "hvp")),
  Case("step(O.adahessian(0.1), hvp=jnp.ones(2))", raises(ValueError, "hvp")),
  Case("step(O.adahessian(0.1), hvp=HZ)", returns(None, "the caller's Hz replaces obj_fn")),
  Case("step(O.adahessian(0.1))", raises(ValueError, "obj_fn")),
  Case("step(O.sophia(0.1), hvp={'b': HZ['b']})", raises(ValueError, "hvp")),
  Case("step(O.sophia(0.1), hvp=HZ)", returns(None, "the caller's Hu replaces obj_fn")),
  Case(
    "step(O.sophia(0.1, variant='gnb', batch_size=2), hvp=HZ, sampled_obj_fn=lambda p, k: F(p))",
    raises(ValueError, "hvp= is the Sophia-H product"),
  ),
  Case("O.sophia(0.1).init(P)[0].probe(P, 'normal')", raises(ValueError, "probe must be one of")),
  # -- coordinate_clip(variant=) ---------------------------------------------------------------
  Case("O.coordinate_clip(fraction=0.1, variant='approx')", raises(ValueError, "variant")),
  Case("O.coordinate_clip(fraction=0.1, variant=None)", raises(ValueError, "variant")),
  Case(
    "O.coordinate_clip(fraction=0.7, variant='sample').update(jnp.array([nan, 1.0, 2.0]), ())[0]",
    returns(lambda u: u[1:].tolist() == [1.0, 1.0], "small model: the exact rule", nan_ok=True),
  ),
]


@params(CASES)
def test_bad_input(case):
  run(case, NS)
