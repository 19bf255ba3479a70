"""Bad input fails at trace time with a message that says what is wrong."""

import jax
import jax.numpy as jnp
import pytest

from optim import curvature

_F = lambda p: jnp.sum(p["w"] ** 2)
_P = {"w": jnp.ones(3)}
_OP = curvature.LinearOperator(lambda v: v, jax.ShapeDtypeStruct((3,), jnp.float32))
_KEY = jax.random.key(0)


@pytest.mark.parametrize(
  "v, match",
  [({"u": jnp.ones(3)}, "same pytree structure"), ({"w": jnp.ones(4)}, "shape")],
)
def test_mismatched_direction_pytree_raises(v, match):
  with pytest.raises(ValueError, match=match):
    curvature.hvp(_F, _P, v)
  with pytest.raises(ValueError, match=match):
    curvature.directional_sharpness(_F, _P, v)
  with pytest.raises(ValueError, match=match):
    jax.jit(lambda p, v: curvature.hessian_matvec(_F, p)(v))(_P, v)


def test_non_scalar_objective_raises_at_trace_time():
  vector_loss = lambda p: p["w"] ** 2
  with pytest.raises(TypeError, match="scalar"):
    jax.jit(lambda p: curvature.hvp(vector_loss, p, p))(_P)
  with pytest.raises(TypeError, match="scalar"):
    curvature.hessian_matvec(vector_loss, _P)
  model, x, y = (lambda p, x: x * p["w"]), jnp.ones(3), jnp.zeros(3)
  with pytest.raises(TypeError, match="scalar"):
    curvature.ggn_matvec(model, lambda z, t: (z - t) ** 2, _P, (x, y))
  with pytest.raises(TypeError, match="scalar"):
    curvature.hvp(lambda p: jnp.sum(p["w"]).astype(jnp.int32), _P, _P)


@pytest.mark.parametrize(
  "call",
  [
    lambda: curvature.hutchinson_trace(_OP, key=_KEY, num_probes=0),
    lambda: curvature.hutchinson_trace(_OP, key=_KEY, num_probes=2, variant="hutch++"),
    lambda: curvature.hutchinson_trace(_OP, key=_KEY, num_probes=2.5),
    lambda: curvature.hutchinson_diag(_OP, key=_KEY, num_probes=-1),
    lambda: curvature.top_eigenvalues(_OP, key=_KEY, k=0),
    lambda: curvature.top_eigenvalues(_OP, key=_KEY, max_iterations=0),
    lambda: curvature.lanczos(_OP, key=_KEY, num_iterations=0),
    lambda: curvature.lanczos(_OP, key=_KEY, num_iterations=4),  # > dimension 3
    lambda: curvature.slq_density(_OP, key=_KEY, num_iterations=0),
    lambda: curvature.slq_density(_OP, key=_KEY, num_probes=0),
    lambda: curvature.slq_density(_OP, key=_KEY, num_points=1),
    lambda: curvature.slq_density(_OP, key=_KEY, width_fraction=0.0),
    lambda: curvature.slq_density(_OP, key=_KEY, width_fraction=float("nan")),
    lambda: curvature.top_eigenvalues(_OP, key=_KEY, tol=-1.0),
    lambda: curvature.lanczos(_OP, key=_KEY, num_iterations=2, breakdown_tol=-1.0),
    lambda: curvature.mfac_ihvp(jnp.ones((2, 3)), damping=float("inf")),
  ],
)
def test_zero_or_invalid_iteration_counts_raise(call):
  with pytest.raises(ValueError):
    call()


@pytest.mark.parametrize(
  "call, name",
  [
    (lambda: curvature.top_eigenvalues(_OP, key=_KEY, k=5), "k=5"),
    (lambda: curvature.lanczos(_OP, key=_KEY, num_iterations=4), "num_iterations=4"),
  ],
)
def test_more_orthonormal_vectors_than_the_dimension_raises_naming_both(call, name):
  # A 3-dimensional operator has at most 3 eigenpairs / Krylov vectors; asking for more
  # used to return padded, "converged" eigenvalues.
  with pytest.raises(ValueError, match=rf"{name} exceeds the dimension of the operator \(3\)"):
    call()


def test_counts_that_set_shapes_must_be_static():
  @jax.jit
  def traced(n):
    return curvature.hutchinson_trace(_OP, key=_KEY, num_probes=n).trace

  with pytest.raises(TypeError, match="num_probes must be a concrete Python number"):
    traced(4)
  with pytest.raises(TypeError, match="k must be a concrete"):
    jax.jit(lambda k: curvature.top_eigenvalues(_OP, key=_KEY, k=k).eigenvalues)(2)


def test_invalid_options_raise():
  with pytest.raises(ValueError, match="probe must be one of"):
    curvature.hutchinson_trace(_OP, key=_KEY, probe="uniform")
  with pytest.raises(ValueError, match="probe must be one of"):
    curvature.slq_density(_OP, key=_KEY, probe="uniform")
  with pytest.raises(ValueError, match="probe must be one of"):
    curvature.lanczos(_OP, key=_KEY, num_iterations=2, probe="uniform")
  with pytest.raises(ValueError, match="variant must be one of"):
    curvature.hutchinson_trace(_OP, key=_KEY, variant="hutch+")
  with pytest.raises(TypeError, match="LinearOperator"):
    curvature.hutchinson_trace(lambda v: v, key=_KEY)
  model = lambda p, x: x @ p
  batch = (jnp.ones((4, 3)), jnp.zeros(4, jnp.int32))
  with pytest.raises(ValueError, match="key"):
    curvature.fisher_matvec(model, jnp.ones((3, 2)), batch, variant="true")
  with pytest.raises(ValueError, match="variant must be one of"):
    curvature.fisher_matvec(model, jnp.ones((3, 2)), batch, variant="exact")
  with pytest.raises(ValueError, match="num_samples"):
    curvature.fisher_matvec(model, jnp.ones((3, 2)), batch, variant="true", key=_KEY, num_samples=0)
  with pytest.raises(TypeError, match=r"sample_fn\(outputs, \*, key\)"):
    old_style = lambda key, logits: jax.random.categorical(key, logits)
    curvature.fisher_matvec(
      model, jnp.ones((3, 2)), batch, variant="true", key=_KEY, sample_fn=old_style
    )
  with pytest.raises(TypeError, match="key must be an int seed or a JAX PRNG key"):
    curvature.hutchinson_trace(_OP, key="0")
  with pytest.raises(TypeError, match="inputs, targets"):
    curvature.ggn_matvec(model, lambda z, t: jnp.sum(z), jnp.ones((3, 2)), batch[0])
  with pytest.raises(ValueError, match="leading"):
    stacked = (jnp.ones((2, 4, 3)), jnp.zeros((3, 4), jnp.int32))
    curvature.hessian_matvec(
      lambda p, b: jnp.sum(b[0] @ p), jnp.ones((3, 2)), stacked, stacked=True
    )


def test_estimators_do_not_recompile_on_second_call():
  traces = []

  @jax.jit
  def run(d, key):
    traces.append(None)
    op = curvature.LinearOperator(lambda v: d * v, jax.ShapeDtypeStruct(d.shape, d.dtype))
    return curvature.hutchinson_trace(op, key=key, num_probes=4).trace

  run(jnp.arange(3.0), jax.random.key(0))
  run(jnp.arange(3.0) + 1, jax.random.key(1))
  assert len(traces) == 1
