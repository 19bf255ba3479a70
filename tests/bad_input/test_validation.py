"""Hostile inputs to the shared validation API (optim._validation, re-exported by jaxdiff)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optim import _validation as V
from tests.bad_input.harness import Case, params, raises, returns, run

NS = dict(V=V, jax=jax, jnp=jnp, np=np, optax=optax)
_typed = lambda k: jax.dtypes.issubdtype(k.dtype, jax.dtypes.prng_key)

CASES = [
  # Keys: one policy for both packages.
  Case("V.as_key(0)", returns(_typed, "int seeds are keys")),
  Case("V.as_key(2**32 - 1)", returns(_typed, "the largest 32-bit seed")),
  Case("V.as_key(-1)", returns(_typed, "negative seeds as jax.random.key accepts them")),
  Case("V.as_key(np.int64(7))", returns(_typed, "numpy integers are seeds")),
  Case("V.as_key(jnp.asarray(3))", returns(_typed, "0-d integer arrays are seeds")),
  Case("V.as_key(jax.random.PRNGKey(0))", returns(_typed, "raw uint32 keys are wrapped")),
  Case("V.as_key(jax.random.key(0))", returns(_typed, "typed keys pass through")),
  Case("V.as_key(2**32)", raises(ValueError, r"key.*\[-2\*\*31, 2\*\*32\)")),
  Case("V.as_key(2**70)", raises(ValueError, "key: an int seed")),
  Case("V.as_key(-(2**40))", raises(ValueError, "key: an int seed")),
  Case("V.as_key(1.5)", raises(TypeError, "key must be an int seed")),
  Case("V.as_key('0')", raises(TypeError, "key must be an int seed")),
  Case("V.as_key(None)", raises(TypeError, "key must be an int seed")),
  Case("V.as_key(True)", raises(TypeError, "key must be an int seed.*bool")),
  Case("V.as_key(jnp.zeros(2))", raises(TypeError, "key must be an int seed")),
  Case("V.as_key(jnp.zeros(3, jnp.uint32))", raises(ValueError, "key: a raw uint32 key")),
  Case("V.as_key(0, name='seed_key')", returns(_typed, "the name only labels messages")),
  Case("V.as_key('x', name='noise_key')", raises(TypeError, "noise_key must be")),
  # Scalars.
  Case("V.check_scalar('b1', 0.9, lo=0, hi=1, hi_open=True)", returns(lambda v: v == 0.9)),
  Case(
    "V.check_scalar('b1', 1.0, lo=0, hi=1, hi_open=True)",
    raises(ValueError, r"b1 must lie in \[0, 1\)"),
  ),
  Case("V.check_scalar('b1', float('nan'))", raises(ValueError, "b1 must be a number, got NaN")),
  Case("V.check_scalar('eps', float('inf'))", raises(ValueError, "eps must be finite")),
  Case(
    "V.check_scalar('clip', float('inf'), allow_inf=True)",
    returns(lambda v: v == float("inf"), "inf where documented", nan_ok=True),
  ),
  Case("V.check_scalar('lr', None)", raises(TypeError, "lr must be a real number")),
  Case("V.check_scalar('lr', '1e-3')", raises(TypeError, "lr must be a real number")),
  Case("V.check_scalar('lr', 1j)", raises(TypeError, "lr must be a real number")),
  Case("V.check_scalar('lr', jnp.ones(2))", raises(TypeError, "lr must be a scalar")),
  Case("V.check_scalar('lr', jnp.asarray(1 + 2j))", raises(TypeError, "lr must be real")),
  Case(
    "V.check_scalar('lr', jnp.asarray(0.5))", returns(lambda v: v == 0.5, "0-d arrays are scalars")
  ),
  Case("V.check_scalar('n', 2.7, integer=True)", raises(ValueError, "n must be an integer")),
  Case("V.check_scalar('n', 3.0, integer=True)", returns(lambda v: v == 3 and isinstance(v, int))),
  Case(
    "V.check_scalar('n', 0, lo=1, integer=True)", raises(ValueError, r"n must lie in \[1, inf\)")
  ),
  Case(
    "jax.jit(lambda v: V.check_scalar('n', v, static=True))(1)",
    raises(TypeError, "n must be a concrete Python number"),
  ),
  Case(
    "jax.jit(lambda v: jnp.asarray(V.check_scalar('lr', v) is None))(1.0)",
    returns(lambda v: bool(v), "traced values are not checked"),
  ),
  Case("V.check_choice('variant', 'gnb', ('hutchinson', 'gnb'))", returns(lambda v: v == "gnb")),
  Case(
    "V.check_choice('variant', 'GNB', ('hutchinson', 'gnb'))",
    raises(ValueError, "variant must be one of"),
  ),
  Case("V.check_learning_rate(float('nan'))", raises(ValueError, "learning_rate must be a number")),
  Case("V.check_learning_rate(-1e-3)", raises(ValueError, "learning_rate must lie")),
  Case(
    "V.check_learning_rate(optax.constant_schedule(1.0))",
    returns(None, "schedules are not checked"),
  ),
  # init/update guard.
  Case(
    "V.guard(optax.sgd(0.1), 'sgd').init({'w': jnp.zeros(2, jnp.int32)})",
    raises(TypeError, r"sgd: params\['w'\] has dtype int32"),
  ),
  Case(
    "V.guard(optax.sgd(0.1), 'sgd').update({'w': jnp.ones(3)}, (optax.EmptyState(), optax.EmptyState()), {'w': jnp.ones(1)})",
    raises(ValueError, r"updates\['w'\] has shape \(3,\)"),
  ),
  Case(
    "V.guard(optax.adam(0.1), 'adam').update({'v': jnp.ones(1)}, optax.adam(0.1).init({'w': jnp.ones(1)}), {'w': jnp.ones(1)})",
    raises(ValueError, "same pytree structure"),
  ),
  Case(
    "V.guard(optax.adam(0.1), 'adam').update({'w': jnp.ones(2)}, optax.adam(0.1).init({'w': jnp.ones(3)}), {'w': jnp.ones(2)})",
    raises(ValueError, r"adam: state.*has shape \(3,\)"),
  ),
  Case(
    "V.guard(optax.adam(0.1), 'adam').update({'w': jnp.ones(2, jnp.int32)}, optax.adam(0.1).init({'w': jnp.ones(2)}))",
    raises(TypeError, "updates"),
  ),
  Case(
    "V.guard(optax.adam(0.1), 'adam').update({'w': jnp.ones(2)}, optax.adam(0.1).init({'w': jnp.ones(2)}), {'w': jnp.ones(2)})[0]",
    returns(None, "matching arguments pass"),
  ),
]


def test_the_table_is_not_trivial():
  assert len(CASES) >= 40


@params(CASES)
def test_case(case):
  run(case, NS)
