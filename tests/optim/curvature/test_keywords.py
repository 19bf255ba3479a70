"""The keyword vocabulary: new names, deprecated spellings that still work, and key forms."""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optim import curvature

_D = jnp.array([3.0, 1.0, 2.0, 0.5])
_OP = curvature.LinearOperator(lambda v: _D * v, jax.ShapeDtypeStruct((4,), jnp.float32))
_MODEL = lambda w, x: x @ w
_W = jnp.arange(6.0).reshape(2, 3) / 6
_BATCH = (jnp.arange(16.0).reshape(8, 2) / 8, jnp.arange(8) % 3)
_V = jnp.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])  # not constant across classes


def _fisher(**kw):
  return curvature.fisher_matvec(_MODEL, _W, _BATCH, **kw)(_V)


# (call, deprecated name, current name, a value that differs from the default) for every
# renamed keyword.
_RENAMED = {
  "hutchinson_trace(kind=)": (
    functools.partial(curvature.hutchinson_trace, _OP, key=0, num_probes=8),
    "kind",
    "probe",
    "gaussian",
  ),
  "hutchinson_trace(method=)": (
    functools.partial(curvature.hutchinson_trace, _OP, key=0, num_probes=6, probe="gaussian"),
    "method",
    "variant",
    "hutch++",
  ),
  "hutchinson_diag(kind=)": (
    functools.partial(curvature.hutchinson_diag, _OP, key=0, num_probes=4),
    "kind",
    "probe",
    "gaussian",
  ),
  "lanczos(kind=)": (
    functools.partial(curvature.lanczos, _OP, key=0, num_iterations=3),
    "kind",
    "probe",
    "rademacher",
  ),
  "slq_density(kind=)": (
    functools.partial(curvature.slq_density, _OP, key=0, num_iterations=3, num_points=16),
    "kind",
    "probe",
    "rademacher",
  ),
  "fisher_matvec(kind=)": (functools.partial(_fisher, key=0), "kind", "variant", "true"),
}


def _equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("call, old, new, value", _RENAMED.values(), ids=_RENAMED.keys())
def test_deprecated_keyword_warns_and_means_the_new_one(call, old, new, value):
  with pytest.warns(DeprecationWarning, match=f"{old}=...\\) is deprecated; use {new}="):
    got = call(**{old: value})
  assert _equal(got, call(**{new: value}))
  # The value was not dropped: it changes the result from the default's.
  assert not _equal(got, call())


def test_positional_key_of_sample_categorical_warns_and_still_works():
  logits = _MODEL(_W, _BATCH[0])
  with pytest.warns(DeprecationWarning, match="positional key is deprecated"):
    got = curvature.sample_categorical(jax.random.key(3), logits)
  np.testing.assert_array_equal(got, curvature.sample_categorical(logits, key=3))


def test_old_and_new_spelling_together_is_an_error():
  with pytest.raises(TypeError, match="got both 'kind'"):
    curvature.hutchinson_trace(_OP, key=0, kind="gaussian", probe="gaussian")


# Every public function with a key, called three ways: typed key, raw uint32 key, int seed.
_KEYED = {
  "hutchinson_trace": lambda k: curvature.hutchinson_trace(
    _OP, key=k, num_probes=4, probe="gaussian"
  ),
  "hutchinson_diag": lambda k: curvature.hutchinson_diag(
    _OP, key=k, num_probes=4, probe="gaussian"
  ),
  "top_eigenvalues": lambda k: curvature.top_eigenvalues(_OP, key=k, k=2, max_iterations=5),
  "lanczos": lambda k: curvature.lanczos(_OP, key=k, num_iterations=2),
  "slq_density": lambda k: curvature.slq_density(_OP, key=k, num_iterations=2, num_points=8),
  "fisher_matvec": lambda k: _fisher(variant="true", key=k, num_samples=2),
  "sample_categorical": lambda k: curvature.sample_categorical(jnp.zeros((16, 5)), key=k),
}


@pytest.mark.parametrize("call", _KEYED.values(), ids=_KEYED.keys())
def test_key_accepts_typed_key_raw_key_and_int_seed(call):
  typed = call(jax.random.key(7))
  assert _equal(typed, call(jax.random.PRNGKey(7))) and _equal(typed, call(7))
  # ... and the key matters (a different seed gives a different draw).
  assert not _equal(typed, call(8))


@pytest.mark.parametrize("name", [*_KEYED, "run_tour"])
def test_key_is_keyword_only_and_old_names_are_gone(name):
  params = inspect.signature(getattr(curvature, name)).parameters
  if "key" in params:
    assert params["key"].kind is inspect.Parameter.KEYWORD_ONLY
  assert not {"kind", "method", "seed", "rng"} & set(params)


def test_softmax_nll_equals_log_softmax_form_in_float64(x64):
  logits = jax.random.normal(jax.random.key(0), (32, 7), jnp.float64) * 5
  labels = jax.random.randint(jax.random.key(1), (32,), 0, 7)
  want = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]
  np.testing.assert_allclose(curvature.softmax_nll(logits, labels), want, rtol=1e-13, atol=1e-13)
  # Float label arrays are an error now (label policy), no longer cast to int32.
  with pytest.raises(TypeError, match="labels must hold integer class labels"):
    curvature.softmax_nll(logits, labels.astype(jnp.float64))
