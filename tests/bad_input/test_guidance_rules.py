"""The bad-input policy of every guidance rule: labels, null conditions, traced hyperparameters.

Property tests over the guidance testbed (tests/jaxdiff/guidance/testbed.py), with its
float64 batch and unguided reference trajectories (as its conftest's fixtures); the
one-line reproducers of the guidance rules are in test_guidance.py here.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdiff
from jaxdiff import guidance, solvers
from tests.jaxdiff.guidance.testbed import (
  NUM_STEPS,
  class_logits,
  clean_logits,
  ctx,
  gmm_denoise,
  grid,
  make_batch,
  run,
  step,
  unguided_refs,
)


@pytest.fixture(scope="module")
def batch():
  return make_batch()


@pytest.fixture(scope="module")
def refs(batch):
  return unguided_refs(batch)


CLASSIFIER_RULES = {
  "noisy": lambda: guidance.classifier(class_logits, 3, 2.0, variant="noisy"),
  "elucd": lambda: guidance.classifier(clean_logits, 3, 2.0, schedule_amplitude=0.3),
  "gfcg": lambda: guidance.gfcg(clean_logits, 3, 2.0),
  "gfcg-cfg": lambda: guidance.gfcg(clean_logits, 3, 2.0, cfg_scale=2.0),
}


@pytest.mark.parametrize("name", sorted(CLASSIFIER_RULES))
def test_null_label_gets_no_classifier_term_so_its_sample_is_unconditional(x64, name, batch, refs):
  # Before the fix, label -1 indexed the LAST class's logit and steered the sample there.
  x_T, _ = batch
  null = -jnp.ones((x_T.shape[0],), jnp.int32)
  x, _ = run(CLASSIFIER_RULES[name](), (x_T, null))
  np.testing.assert_allclose(x, refs[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", sorted(CLASSIFIER_RULES))
def test_traced_invalid_labels_poison_only_their_samples(x64, name, batch):
  x_T, cond = batch
  bad = cond.at[1].set(3).at[4].set(-2)  # out of range and below the null label
  rule = CLASSIFIER_RULES[name]()
  # Concrete labels are range-checked by sample before compiling (the rule declares
  # num_classes); under an outer jit they are traced and only their rows are poisoned.
  with pytest.raises(ValueError, match=r"cond: class labels must lie in \[0, 3\)"):
    run(rule, (x_T, bad))
  ts = grid(NUM_STEPS)  # a concrete grid: only the labels are traced
  traced = jax.jit(
    lambda c: jaxdiff.sample(gmm_denoise, solvers.ddim(), x_T, ts, key=0, cond=c, guidance=rule).x
  )
  x_bad, x_ok = traced(bad), traced(cond)
  poisoned = np.isnan(np.asarray(x_bad)).any(axis=1)
  assert poisoned.tolist() == [i in (1, 4) for i in range(len(cond))]
  np.testing.assert_array_equal(np.delete(x_bad, [1, 4], 0), np.delete(x_ok, [1, 4], 0))


@pytest.mark.parametrize("name", sorted(CLASSIFIER_RULES))
def test_concrete_invalid_labels_raise_naming_cond_and_the_value(name):
  rule = CLASSIFIER_RULES[name]()
  x = jnp.zeros((3, 2))
  with pytest.raises(ValueError, match=r"cond: class labels must lie in \[0, 3\) .*got 3"):
    rule.apply(gmm_denoise, x, jnp.array([0, 3, 1]), ctx(), ())
  with pytest.raises(TypeError, match="cond must be an integer label array"):
    rule.apply(gmm_denoise, x, jnp.array([0.0, 1.0, 1.0]), ctx(), ())


@pytest.mark.parametrize(
  "make",
  [
    lambda f: guidance.classifier(f, 3, 1.0),
    lambda f: guidance.gfcg(f, 3, 1.0),
  ],
)
def test_classifier_fn_must_be_callable(make):
  with pytest.raises(TypeError, match="classifier_fn must be callable"):
    make("clf")


NULL_RULES = {
  "cfg": lambda n: guidance.cfg(2.0, null_cond=n),
  "apg": lambda n: guidance.apg(2.0, null_cond=n),
  "cfgpp": lambda n: guidance.cfgpp(0.5, null_cond=n),
  "adaptive": lambda n: guidance.adaptive(2.0, 0.99, null_cond=n),
  "classifier": lambda n: guidance.classifier(clean_logits, 3, 1.0, null_cond=n),
  "gfcg": lambda n: guidance.gfcg(clean_logits, 3, 1.0, cfg_scale=2.0, null_cond=n),
  "rcfg": lambda n: guidance.rcfg(2.0, variant="onetime", null_cond=n),
}


@pytest.mark.parametrize("name", sorted(NULL_RULES))
def test_bad_null_cond_raises_naming_it(name):
  make = NULL_RULES[name]
  for bad in (None, "null", [object()]):
    with pytest.raises(TypeError, match=f"{name}: null_cond"):
      make(bad)
  x, cond = jnp.zeros((3, 2)), jnp.array([0, 1, 2])
  state = make(-1).init(x, cond)
  apply = lambda n: make(n).apply(gmm_denoise, x, cond, ctx(), state)
  with pytest.raises(TypeError, match=f"{name}: null_cond of dtype float.* without truncation"):
    apply(-1.5)
  with pytest.raises(ValueError, match=f"{name}: null_cond of shape \\(2,\\) does not broadcast"):
    apply(jnp.array([-1, -1]))
  with pytest.raises(ValueError, match=rf"{name}: null_cond\(cond\) must have the structure"):
    apply(lambda c: (c, c))
  with pytest.raises(ValueError, match=rf"{name}: null_cond\(cond\) is float32\(3,\)"):
    apply(lambda c: jnp.zeros(3))


def test_a_null_of_the_right_kind_is_accepted(x64, batch, refs):
  x_T, cond = batch
  a, _ = run(guidance.cfg(3.0, null_cond=np.int64(-1)), batch)
  b, _ = run(guidance.cfg(3.0, null_cond=lambda c: jnp.full_like(c, -1)), batch)
  c, _ = run(guidance.cfg(3.0), batch)
  np.testing.assert_array_equal(a, c)
  np.testing.assert_array_equal(b, c)


# Traced hyperparameters cannot raise: out of range or NaN poisons the output.
TRACED = {
  "cfg: rescale": (lambda v: guidance.cfg(2.0, rescale=v), 0.5, 1.5),
  "apg: momentum": (lambda v: guidance.apg(2.0, momentum=v), -0.5, 0.5),
  "apg: norm_threshold": (lambda v: guidance.apg(2.0, norm_threshold=v), math.inf, -1.0),
  "cfgpp: scale": (lambda v: guidance.cfgpp(v), 0.5, 1.5),
  "adaptive: threshold": (lambda v: guidance.adaptive(2.0, v), 0.9, math.nan),
  "pag: scale": (lambda v: guidance.pag(v), 1.0, -1.0),
  "classifier: joint_temperature": (
    lambda v: guidance.classifier(clean_logits, 3, 1.0, joint_temperature=v),
    1.0,
    0.0,
  ),
  "gfcg: scale": (lambda v: guidance.gfcg(clean_logits, 3, v), 1.0, -1.0),
  "rcfg: delta": (lambda v: guidance.rcfg(2.0, variant="onetime", delta=v), 0.5, -1.0),
  "autoguidance: scale": (lambda v: guidance.autoguidance(gmm_denoise, v), 2.0, math.nan),
}


def _pag_or_plain(x, t, c, *, perturb=None):
  out = gmm_denoise(x, t, c)
  return out if perturb is None else jnp.where(perturb[:, None], 0.5 * out, out)


@pytest.mark.parametrize("arg", sorted(TRACED))
def test_traced_hyperparameter_out_of_range_or_nan_poisons_the_output(arg):
  make, good, bad = TRACED[arg]
  x, cond = jnp.ones((2, 2)), jnp.array([0, 1])
  with pytest.raises((ValueError, TypeError), match=arg):
    make(bad)  # concrete: an error naming it

  @jax.jit
  def guided(v):
    rule = make(v)
    return rule.apply(_pag_or_plain, x, cond, ctx(), rule.init(x, cond))[0].x0

  assert np.isfinite(np.asarray(guided(good))).all()
  assert np.isnan(np.asarray(guided(bad))).all()


@pytest.mark.parametrize(
  "build",
  [
    lambda: guidance.cfg(True),
    lambda: guidance.apg(2.0, eta=np.bool_(False)),
    lambda: guidance.adaptive(2.0, jnp.array(True)),
  ],
)
def test_bool_hyperparameters_are_rejected(build):
  with pytest.raises(TypeError, match="must be a real number, got a bool"):
    build()


def test_traced_non_scalar_hyperparameter_is_rejected():
  with pytest.raises(TypeError, match="cfg: scale must be a scalar, got a traced array"):
    jax.jit(lambda w: guidance.cfg(w))(jnp.ones(3))


def test_weak_denoise_must_be_callable_and_predict_the_batch_shape(x64, batch):
  with pytest.raises(TypeError, match="autoguidance: weak_denoise must be a denoiser callable"):
    guidance.autoguidance(None, 2.0)
  with pytest.raises(ValueError, match="guidance rule 'autoguidance' needs weak_denoise"):
    guidance.make("autoguidance", weak_denoise=None)
  weak = lambda x, t, c: gmm_denoise(x, t, c)[:, :1]  # would broadcast silently
  x, cond = batch
  for rule, name in (
    (guidance.autoguidance(weak, 2.0), "autoguidance"),
    (guidance.gfcg(clean_logits, 3, 1.0, cfg_scale=2.0, weak_denoise=weak), "gfcg"),
  ):
    with pytest.raises(ValueError, match=rf"{name}: weak_denoise\(x, t, cond\) must return"):
      step(rule, gmm_denoise, x, cond, ctx())


def test_linear_ag_on_a_grid_of_another_length_raises_and_a_traced_count_is_poisoned(x64, batch):
  rule = guidance.linear_ag(2.0, jnp.zeros((3, 3)), jnp.zeros(3, bool))
  # sample() knows the grid's length before compiling (a shape): it raises.
  with pytest.raises(ValueError, match="linear_ag: the coefficients were fitted for 3 steps"):
    run(rule, batch)  # a 12-step grid
  # A step count traced by the caller (apply inside jit) cannot raise: the output is NaN.
  x_T, cond = batch
  state = rule.init(x_T, cond)
  apply = jax.jit(lambda n: rule.apply(gmm_denoise, x_T, cond, ctx(num_steps=n), state)[0].x0)
  assert np.isnan(np.asarray(apply(12))).all()


def test_linear_ag_rejects_bad_coefficients_and_estimate():
  ok = jnp.zeros(3, bool)
  with pytest.raises(TypeError, match="linear_ag: coefficients must be an array"):
    guidance.linear_ag(2.0, None, ok)
  with pytest.raises(ValueError, match="num_steps >= 1"):
    guidance.linear_ag(2.0, jnp.zeros((0, 3)), jnp.zeros(0, bool))
  with pytest.raises(TypeError, match="linear_ag: coefficients must be real"):
    guidance.linear_ag(2.0, jnp.zeros((3, 3), bool), ok)
  with pytest.raises(ValueError, match="one flag per step"):
    guidance.linear_ag(2.0, jnp.zeros((3, 3)), jnp.zeros(4, bool))
  traced = jax.jit(
    lambda e: (
      guidance.linear_ag(2.0, jnp.zeros((3, 3)), e)
      .apply(
        gmm_denoise,
        jnp.ones((2, 2)),
        jnp.array([0, 1]),
        ctx(num_steps=3),
        guidance.linear_ag(2.0, jnp.zeros((3, 3)), ok).init(jnp.ones((2, 2)), None),
      )[0]
      .x0
    )
  )
  assert np.isnan(np.asarray(traced(jnp.array([True, False, False])))).all()
  assert np.isfinite(np.asarray(traced(ok))).all()


def test_rcfg_reference_errors_name_reference():
  with pytest.raises(ValueError, match="rcfg: reference is used only by variant='self'"):
    guidance.rcfg(2.0, variant="onetime", reference=jnp.zeros((2, 2)))
  with pytest.raises(ValueError, match="rcfg: the self-negative variant needs `reference`"):
    guidance.rcfg(2.0)
  with pytest.raises(ValueError, match="rcfg: variant must be one of"):
    guidance.rcfg(2.0, variant="twice")
  with pytest.raises(ValueError, match="rcfg: reference must be finite"):
    guidance.rcfg(2.0, reference=jnp.full((2, 2), jnp.nan))
  with pytest.raises(TypeError, match="rcfg: reference must be a floating latent"):
    guidance.rcfg(2.0, reference=jnp.zeros((2, 2), int))
  with pytest.raises(TypeError, match="rcfg: reference must be an array"):
    guidance.rcfg(2.0, reference="x0")
  rule = guidance.rcfg(2.0, reference=lambda c: jnp.zeros((3, 2)))
  with pytest.raises(ValueError, match=r"rcfg: reference has shape \(3, 2\)"):
    rule.init(jnp.zeros((2, 2)), jnp.array([0, 1]))
