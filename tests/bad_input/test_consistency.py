# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile input to the consistency-training names of ``jaxdiff.distill`` and to
``jaxdiff.models.NonScalingLayerNorm``: grid sizes and curricula out of range, bad scales
``c``, data that is not a finite floating batch, mismatched shapes, user callables with a
wrong output, bad sampling levels and keys. Concrete input raises naming the argument; a
traced ``c`` out of range poisons the result with NaN.

Fixtures: ``X`` eight 2-D data points, ``F`` a consistency function, ``ZF`` a consistency
function of a zero network.
"""

import jax  # noqa: F401 - used by the reproducers
import jax.numpy as jnp
import numpy as np

from jaxdiff import distill as D  # noqa: F401 - used by the reproducers
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
X = jnp.linspace(-1.0, 1.0, 16).reshape(8, 2)
F = D.consistency_function(lambda x, s: jnp.tanh(x))
ZF = D.consistency_function(lambda x, s: jnp.zeros_like(x))
NS = dict(globals())

CASES = [
  # --- schedules
  Case("D.ict_num_scales(-1, total_steps=10)", raises(ValueError, r"step must lie in \[0, inf\), got -1")),
  Case("D.ict_num_scales(0, total_steps=0)", raises(ValueError, r"total_steps must lie in \[1, inf\)")),
  Case("D.ict_num_scales(0, total_steps=10, s0=20, s1=10)", raises(ValueError, "s1 must be >= s0 = 20, got 10")),
  Case("D.ict_num_scales(2.5, total_steps=10)", raises(ValueError, "step must be an integer")),
  Case("D.ict_num_scales(10**9, total_steps=10)", returns(lambda n: n == 1281, "past the last stage N stays at s1 + 1")),
  Case("D.karras_sigmas(1)", raises(ValueError, r"num_scales must lie in \[2, inf\), got 1")),
  Case("D.karras_sigmas(11, sigma_min=1.0, sigma_max=0.5)", raises(ValueError, "sigma_min must be below sigma_max")),
  Case("D.karras_sigmas(11, sigma_min=0.0)", raises(ValueError, r"sigma_min must lie in \(0, inf\)")),
  Case("D.ict_timestep_probs(11, p_std=0.0)", raises(ValueError, r"p_std must lie in \(0, inf\)")),
  Case("D.adaptive_c(1)", raises(ValueError, r"num_scales must lie in \[2, inf\), got 1")),
  Case("D.adaptive_c(True)", raises(TypeError, "num_scales must be a real number, got a bool")),
  Case("D.consistency_scalings(0.001)", raises(ValueError, r"sigma must be >= sigma_min = 0.002, got 0.001")),
  Case("D.consistency_scalings(nan)", raises(ValueError, "sigma must be finite")),
  Case("D.consistency_scalings(1.0, sigma_data=0.0)", raises(ValueError, r"sigma_data must lie in \(0, inf\)")),
  # --- premetrics
  Case("D.cauchy_premetric(X, X, c=0.0)", raises(ValueError, r"c must lie in \(0, inf\), got 0.0")),
  Case("D.pseudo_huber_premetric(X, X, c=-1.0)", raises(ValueError, r"c must lie in \(0, inf\)")),
  Case("D.cauchy_premetric(X, X[:, :1], c=1.0)", raises(ValueError, r"y must have x's shape \(8, 2\), got \(8, 1\)")),
  Case("D.cauchy_premetric(X, X.at[0, 0].set(nan), c=1.0)", raises(ValueError, r"y must be finite")),
  Case("D.cauchy_premetric(jnp.arange(4), jnp.arange(4), c=1.0)", raises(TypeError, "x must be a floating array, got dtype int")),
  Case("jax.jit(lambda c: D.cauchy_premetric(X, X + 1.0, c=c))(-1.0)", returns(lambda v: bool(jnp.isnan(v).all()), "traced c <= 0: every example is NaN (poison)", nan_ok=True)),
  Case("jax.jit(lambda c: D.cauchy_premetric(X, X + 1.0, c=c))(0.5)", returns(lambda v: bool(jnp.allclose(v, np.log(3.0))), "a traced c in range (an adaptive schedule) is accepted")),
  # --- OT pairing
  Case("D.ot_pairing(X, X[:4])", raises(ValueError, r"noise must have x's shape \(8, 2\), got \(4, 2\)")),
  Case("D.ot_pairing(X, X.at[1, 1].set(inf))", raises(ValueError, "noise must be finite")),
  Case("D.ot_pairing([[0.0]], [[1.0]])", raises(TypeError, "x must be an array, got list")),
  Case("D.ot_pairing(X[:1], X[:1] + 1.0)", returns(lambda z: bool(jnp.all(z == X[:1] + 1.0)), "a batch of one pairs with itself")),
  # --- the loss
  Case("D.consistency_training_loss(F, X, key=0, num_scales=1, c=0.1)", raises(ValueError, r"num_scales must lie in \[2, inf\), got 1")),
  Case("D.consistency_training_loss(F, X, key=0, num_scales=11, c=0.0)", raises(ValueError, r"c must lie in \(0, inf\), got 0.0")),
  Case("D.consistency_training_loss(F, X, key=0, num_scales=11, c=0.1, premetric='huber')", raises(ValueError, "premetric")),
  Case("D.consistency_training_loss(F, X, key=0, num_scales=11, c=0.1, diffusion_weight=-1.0)", raises(ValueError, r"diffusion_weight must lie in \[0, inf\)")),
  Case("D.consistency_training_loss(F, X, key=0, num_scales=11, c=0.1, diffusion_fraction=1.5)", raises(ValueError, r"diffusion_fraction must lie in \[0, 1\]")),
  Case("D.consistency_training_loss(F, X, key=0, num_scales=11, c=0.1, pair_noise=1)", raises(TypeError, "pair_noise must be a bool, got int")),
  Case("D.consistency_training_loss(F, X, key='a', num_scales=11, c=0.1)", raises(TypeError, "key must be an int seed or a JAX PRNG key")),
  Case("D.consistency_training_loss(F, X.at[0, 0].set(nan), key=0, num_scales=11, c=0.1)", raises(ValueError, "x must be finite")),
  Case("D.consistency_training_loss(F, jnp.zeros((0, 2)), key=0, num_scales=11, c=0.1)", raises(ValueError, r"x must be batch first with at least one example, got shape \(0, 2\)")),
  Case("D.consistency_training_loss(lambda x, s: x[:, :1], X, key=0, num_scales=11, c=0.1)", raises(ValueError, r"fn must return x's shape and dtype \(8, 2\)")),
  Case("D.consistency_training_loss(F, X, key=0, num_scales=11, c=0.1, teacher=lambda x, s: x[:1])", raises(ValueError, r"teacher must return x's shape and dtype")),
  Case("D.consistency_training_loss(F, X, key=0, num_scales=11, c=0.1, teacher=3)", raises(TypeError, "teacher must be None or a callable denoiser, got int")),
  Case("D.consistency_training_loss(3, X, key=0, num_scales=11, c=0.1)", raises(TypeError, "fn must be callable, got int")),
  Case("jax.jit(lambda x: D.consistency_training_loss(F, x, key=0, num_scales=11, c=0.1, pair_noise=True))(X)", returns(lambda v: bool(jnp.isfinite(v)), "jit-able with the host OT pairing")),
  Case("jax.jit(lambda c: D.consistency_training_loss(F, X, key=0, num_scales=11, c=c))(-0.1)", returns(lambda v: bool(jnp.isnan(v)), "traced c <= 0: the loss is NaN (poison)", nan_ok=True)),
  Case("jax.jit(lambda n: D.consistency_training_loss(F, X, key=0, num_scales=n, c=0.1))(11)", returns(lambda v: bool(jnp.isfinite(v)), "a traced num_scales (the curriculum inside one compiled step) is accepted")),
  Case("D.consistency_training_loss(F, X, key=0, num_scales=11, c=0.1, p_std=0.0)", raises(ValueError, r"p_std must lie in \(0, inf\)")),
  Case("D.consistency_training_loss(F, X, key=0, num_scales=11, c=0.1, sigma_min=1.0, sigma_max=0.5)", raises(ValueError, "sigma_min must be below sigma_max")),
  # --- sampling
  Case("D.consistency_sample(F, X, sigmas=(80.0, 0.8))", raises(TypeError, "key is needed for more than one step")),
  Case("D.consistency_sample(F, X, sigmas=(0.8, 80.0), key=0)", raises(ValueError, r"sigmas must be strictly decreasing, got \(0.8, 80.0\)")),
  Case("D.consistency_sample(F, X, sigmas=())", raises(TypeError, "sigmas must be a non-empty sequence")),
  Case("D.consistency_sample(F, X, sigmas=80.0)", raises(TypeError, "sigmas must be a non-empty sequence")),
  Case("D.consistency_sample(F, X, sigmas=(0.001,))", raises(ValueError, r"sigmas\[0\] must lie in \(0.002, inf\)")),
  Case("D.consistency_sample(lambda x, s: x.sum(1), X)", raises(ValueError, "fn must return noise's shape and dtype")),
  Case("D.consistency_sample(ZF, X, sigmas=(80.0,)).shape", returns(lambda s: s == (8, 2), "one step: one evaluation at sigma_max")),
  Case("D.consistency_function(3)", raises(TypeError, "network must be callable, got int")),
  Case("D.consistency_function(lambda x, s: x[:, :1])(X, 1.0)", raises(ValueError, "network must return x's shape")),
  # --- the layer
  Case("__import__('jaxdiff.models', fromlist=['x']).NonScalingLayerNorm(0)", raises(ValueError, r"num_features must lie in \[1, inf\)")),
  Case("__import__('jaxdiff.models', fromlist=['x']).NonScalingLayerNorm(4, epsilon=0.0)", raises(ValueError, r"epsilon must lie in \(0, inf\)")),
  Case("__import__('jaxdiff.models', fromlist=['x']).NonScalingLayerNorm(4, use_bias=1)", raises(TypeError, "use_bias must be a bool, got int")),
  Case("__import__('jaxdiff.models', fromlist=['x']).NonScalingLayerNorm(4)(jnp.ones((2, 3)))", raises(ValueError, r"x must end in num_features = 4, got shape \(2, 3\)")),
]  # fmt: skip


@params(CASES)
def test_case(case):
  run(case, NS)
