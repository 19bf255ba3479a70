"""jaxdiff.models: the demo networks (PAG flag, null label) and deterministic, resumable
training (interrupted + resumed == uninterrupted, bit for bit on CPU)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxdiff
from jaxdiff import guidance, schedules
from jaxdiff.models import (
  DigitClassifier,
  DigitDenoiser,
  batch_indices,
  classifier_loss,
  load_digits,
  train,
  v_prediction_loss,
)

B = 4


def _randomized(model, seed):
  """A copy whose parameters are all random (adaLN-Zero makes a fresh net output zeros)."""
  graphdef, params = nnx.split(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [0.3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))


@pytest.fixture(scope="module")
def net():
  return _randomized(DigitDenoiser(dim=16, depth=2, num_heads=2, rngs=nnx.Rngs(0)), 1)


@pytest.fixture(scope="module")
def inputs():
  x = jax.random.normal(jax.random.key(2), (B, 8, 8))
  t = jnp.linspace(0.2, 0.8, B)
  y = jnp.array([0, 3, -1, 9])
  return x, t, y


# Tiny shapes: compilation is all the cost, so use XLA's cheapest CPU optimisation level.
_FAST = {"xla_backend_optimization_level": 0}


@functools.partial(jax.jit, static_argnums=0, compiler_options=_FAST)
def _apply_jit(graphdef, state, x, t, y, perturb):
  return nnx.merge(graphdef, state)(x, t, y, perturb=perturb)


def _apply(model, x, t, y, perturb=None):
  """One compiled call per (architecture, shapes, perturb given or not)."""
  graphdef, state = nnx.split(model)
  return _apply_jit(graphdef, state, x, t, y, perturb)


@pytest.fixture(scope="module")
def call(net):
  return lambda x, t, y, p: _apply(net, x, t, y, p)


def test_denoiser_shape_dtype_and_fresh_net_outputs_zero(inputs):
  x, t, y = inputs
  fresh = DigitDenoiser(dim=16, depth=1, num_heads=2, rngs=nnx.Rngs(0))
  out = _apply(fresh, x, t, y)
  assert out.shape == x.shape and out.dtype == x.dtype
  np.testing.assert_array_equal(out, 0.0)  # adaLN-Zero + zero head: identity at init


def test_perturb_flag_changes_only_flagged_samples(call, inputs):
  x, t, y = inputs
  clean = call(x, t, y, jnp.zeros((B,), bool))
  flags = jnp.array([False, True, False, True])
  mixed = call(x, t, y, flags)
  np.testing.assert_array_equal(mixed[~flags], clean[~flags])
  assert np.all(np.abs(np.asarray(mixed[flags] - clean[flags])).max(axis=(1, 2)) > 1e-3)
  perturbed = call(x, t, y, jnp.ones((B,), bool))
  np.testing.assert_allclose(mixed[flags], perturbed[flags], rtol=1e-6, atol=1e-6)


def test_perturb_none_equals_all_false(net, call, inputs):
  x, t, y = inputs
  np.testing.assert_allclose(_apply(net, x, t, y), call(x, t, y, jnp.zeros((B,), bool)), atol=1e-5)


def test_null_label_is_its_own_learned_embedding(net, inputs):
  x, t, _ = inputs
  null = _apply(net, x, t, jnp.full((B,), -1))
  for label in (0, 9):
    assert float(jnp.abs(null - _apply(net, x, t, jnp.full((B,), label))).max()) > 1e-3
  # -1 selects row K of the label table: setting that row equal to row 3 gives label 3.
  graphdef, state = nnx.split(net)
  twin = nnx.merge(graphdef, state)
  table = twin.label.embedding[...]
  twin.label.embedding[...] = table.at[10].set(table[3])
  np.testing.assert_allclose(
    _apply(twin, x, t, jnp.full((B,), -1)), _apply(net, x, t, jnp.full((B,), 3)), atol=1e-6
  )


def test_samples_do_not_interact_within_a_batch(net, inputs):
  x, t, y = inputs
  whole = _apply(net, x, t, y)
  single = jnp.concatenate(
    [_apply(net, x[i : i + 1], t[i : i + 1], y[i : i + 1]) for i in range(B)]
  )
  np.testing.assert_allclose(whole, single, rtol=1e-5, atol=1e-5)


def test_pag_layers_selects_the_perturbed_blocks(inputs):
  x, t, y = inputs
  base = DigitDenoiser(dim=16, depth=2, num_heads=2, pag_layers=(), rngs=nnx.Rngs(0))
  inert = _randomized(base, 1)
  on = jnp.ones((B,), bool)
  np.testing.assert_array_equal(_apply(inert, x, t, y, on), _apply(inert, x, t, y))
  with pytest.raises(ValueError, match="pag_layers"):
    DigitDenoiser(dim=16, depth=2, num_heads=2, pag_layers=(2,), rngs=nnx.Rngs(0))


def test_pag_rule_accepts_the_denoiser_and_rejects_one_without_perturbed_layers(net, inputs):
  x, t, y = inputs
  sched = schedules.vp_cosine()
  ctx = jaxdiff.StepContext(t[0], sched.alpha(t[0]), sched.sigma(t[0]), 0, 10, None)
  rule = guidance.pag(2.0)
  step = jax.jit(
    lambda: rule.apply(jaxdiff.from_v(net, sched), x, y, ctx, ()), compiler_options=_FAST
  )
  pred, _, nfe = step()
  assert pred.x0.shape == x.shape and int(nfe) == 2
  inert = _randomized(
    DigitDenoiser(dim=16, depth=1, num_heads=2, pag_layers=(), rngs=nnx.Rngs(0)), 1
  )
  with pytest.raises(ValueError):
    jax.eval_shape(lambda: rule.apply(jaxdiff.from_v(inert, sched), x, y, ctx, ()))


@pytest.mark.parametrize(
  "args, match",
  [
    ((jnp.zeros((2, 8, 9)), jnp.zeros(2), jnp.zeros(2, int)), (ValueError, "shape")),
    ((jnp.zeros((2, 8, 8)), jnp.zeros(2), jnp.zeros(2)), (TypeError, "integer class labels")),
    ((jnp.zeros((2, 8, 8), int), jnp.zeros(2), jnp.zeros(2, int)), (TypeError, "floating")),
  ],
)
def test_denoiser_bad_input_raises(net, args, match):
  with pytest.raises(match[0], match=match[1]):
    _apply(net, *args)


def test_concrete_out_of_range_label_raises_naming_cond(net, inputs):
  x, t, _ = inputs
  with pytest.raises(ValueError, match=r"DigitDenoiser: cond: class labels must lie in \[0, 10\)"):
    net(x, t, jnp.array([0, 10, -1, 2]))
  with pytest.raises(ValueError, match="got -2"):
    net(x, t, jnp.array([0, 1, -2, 2]))


def test_traced_invalid_label_poisons_only_its_sample(net, inputs):
  x, t, y = inputs
  bad = jnp.array([0, 10, -1, -2])  # 10 would be the null embedding's row; -2 is no label
  out, ref = _apply(net, x, t, bad), _apply(net, x, t, jnp.array([0, 3, -1, 3]))
  assert np.isnan(np.asarray(out[1])).all() and np.isnan(np.asarray(out[3])).all()
  np.testing.assert_array_equal(out[0], ref[0])
  np.testing.assert_array_equal(out[2], ref[2])


@pytest.mark.parametrize(
  "kwargs, exc, match",
  [
    (dict(patch=3), ValueError, "patch"),
    (dict(dim=0), ValueError, r"DigitDenoiser: dim must lie in \[1, inf\)"),
    (dict(dim=30, num_heads=4), ValueError, "multiple of num_heads"),
    (dict(dim=9, num_heads=3), ValueError, "must be even"),
    (dict(depth=2.5), ValueError, "DigitDenoiser: depth must be an integer"),
    (dict(num_heads=True), TypeError, "DigitDenoiser: num_heads must be a real number, got a bool"),
    (dict(num_classes="10"), TypeError, "DigitDenoiser: num_classes must be a real number"),
    (dict(depth=2, pag_layers=[2]), ValueError, r"outside range\(2\)"),
    (dict(pag_layers=1), TypeError, "pag_layers must be a sequence"),
  ],
)
def test_denoiser_bad_config_raises(kwargs, exc, match):
  with pytest.raises(exc, match=match):
    DigitDenoiser(**kwargs, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
  "kwargs, exc, match",
  [
    (dict(num_classes=1), ValueError, r"DigitClassifier: num_classes must lie in \[2, inf\)"),
    (dict(hidden=0), ValueError, "DigitClassifier: hidden"),
    (dict(feature_dim=None), TypeError, "DigitClassifier: feature_dim"),
  ],
)
def test_classifier_bad_config_raises(kwargs, exc, match):
  with pytest.raises(exc, match=match):
    DigitClassifier(**kwargs, rngs=nnx.Rngs(0))


def test_classifier_shapes_and_bad_input():
  clf = DigitClassifier(rngs=nnx.Rngs(0))
  logits, feats = jax.eval_shape(lambda x: (clf(x), clf.features(x)), jnp.zeros((5, 8, 8)))
  assert logits.shape == (5, 10) and feats.shape == (5, 32)
  with pytest.raises(ValueError, match="64 input values"):
    jax.eval_shape(clf, jnp.zeros((5, 7, 7)))


def test_load_digits_range_split_and_determinism():
  d = load_digits()
  assert d.train_x.shape == (1437, 8, 8) and d.test_x.shape == (360, 8, 8)
  assert d.train_x.min() == -1.0 and d.train_x.max() == 1.0
  assert np.bincount(d.test_y).min() >= 35  # stratified: 36 +- 1 per class
  np.testing.assert_array_equal(load_digits().test_x, d.test_x)
  assert not np.array_equal(load_digits(key=1).test_y, d.test_y)
  # A JAX key (typed or raw) draws the split's random_state: deterministic as well.
  typed = load_digits(key=jax.random.key(1))
  np.testing.assert_array_equal(typed.test_y, load_digits(key=jax.random.PRNGKey(1)).test_y)
  assert not np.array_equal(typed.test_y, d.test_y)


def test_load_digits_seed_is_the_deprecated_spelling_of_key():
  with pytest.warns(DeprecationWarning, match=r"load_digits\(seed=...\) is deprecated"):
    old = load_digits(seed=1)
  np.testing.assert_array_equal(old.test_y, load_digits(key=1).test_y)


def test_batch_indices_is_a_pure_function_covering_each_epoch_once():
  key = jax.random.key(0)
  n, b = 10, 4
  eager = np.concatenate([np.asarray(batch_indices(key, s, n, b)) for s in range(5)])
  jitted = jax.jit(batch_indices, static_argnums=(2, 3))
  again = np.concatenate([np.asarray(jitted(key, jnp.int32(s), n, b)) for s in range(5)])
  np.testing.assert_array_equal(eager, again)
  assert sorted(eager[:10]) == list(range(10)) and sorted(eager[10:20]) == list(range(10))
  assert not np.array_equal(eager[:10], eager[10:20])  # a fresh shuffle per epoch
  with pytest.raises(ValueError, match="batch_size"):
    batch_indices(key, 0, 3, 4)


@pytest.fixture(scope="module")
def tiny_data():
  d = load_digits()
  return d.train_x[:64], d.train_y[:64]


# One loss and one optimizer object for every run below: `train` then reuses one compiled
# chunk across runs (its executable cache is keyed on them).
_LOSS = v_prediction_loss(schedules.vp_cosine())
_OPT = optax.adam(1e-2)


def _tiny_run(data, directory, **kw):
  if "seed" not in kw:  # the deprecated spelling's test passes seed= alone
    kw.setdefault("key", 3)
  model = DigitDenoiser(dim=8, depth=1, num_heads=2, rngs=nnx.Rngs(0))
  return train(
    model,
    _LOSS,
    _OPT,
    data,
    steps=6,
    batch_size=16,
    chunk=2,
    checkpoint_dir=directory,
    checkpoint_every=2,
    progress=False,
    compiler_options=_FAST,
    **kw,
  )


def test_interrupted_then_resumed_training_equals_uninterrupted_bit_for_bit(tiny_data, tmp_path):
  full = _tiny_run(tiny_data, tmp_path / "a")
  part = _tiny_run(tiny_data, tmp_path / "b", stop_after=4)
  assert part.steps_done == 4 and part.resumed_from == 0
  resumed = _tiny_run(tiny_data, tmp_path / "b")
  assert resumed.resumed_from == 4 and resumed.steps_done == 6
  np.testing.assert_array_equal(resumed.losses, full.losses)
  for a, b in zip(
    jax.tree.leaves(nnx.state(full.model)), jax.tree.leaves(nnx.state(resumed.model))
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # A complete checkpoint is reused as is: nothing left to train.
  again = _tiny_run(tiny_data, tmp_path / "b")
  assert again.resumed_from == 6 and again.steps_done == 6
  np.testing.assert_array_equal(again.losses, full.losses)


def test_different_seeds_train_differently_and_the_classifier_learns(tiny_data):
  a, b = _tiny_run(tiny_data, None), _tiny_run(tiny_data, None, key=4)
  assert not np.array_equal(a.losses, b.losses)
  # An int seed n means jax.random.key(n); a typed key gives the same run.
  np.testing.assert_array_equal(_tiny_run(tiny_data, None, key=jax.random.key(3)).losses, a.losses)
  with pytest.warns(DeprecationWarning, match=r"train\(seed=...\) is deprecated"):
    old = _tiny_run(tiny_data, None, seed=4)
  np.testing.assert_array_equal(old.losses, b.losses)
  clf = train(
    DigitClassifier(rngs=nnx.Rngs(0)),
    classifier_loss(),
    optax.adam(3e-3),
    tiny_data,
    steps=60,
    batch_size=32,
    chunk=30,
    progress=False,
  )
  assert clf.losses[-10:].mean() < 0.5 * clf.losses[:10].mean()


def test_train_rejects_checkpoint_interval_off_the_chunk_grid(tiny_data):
  with pytest.raises(ValueError, match="multiple of chunk"):
    train(
      DigitClassifier(rngs=nnx.Rngs(0)),
      classifier_loss(),
      optax.adam(1e-3),
      tiny_data,
      steps=10,
      batch_size=8,
      chunk=4,
      checkpoint_every=6,
      progress=False,
    )


_CLF = DigitClassifier(rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
  "kwargs, exc, match",
  [
    (dict(steps=0), ValueError, r"train: steps must lie in \[1, inf\)"),
    (dict(steps=2.5), ValueError, "train: steps must be an integer"),
    (dict(batch_size=65), ValueError, r"train: batch_size \(65\) must be <= the number"),
    (dict(batch_size=0), ValueError, "train: batch_size"),
    (dict(chunk=None), TypeError, "train: chunk"),
    (dict(key="seed"), TypeError, "key must be an int seed or a JAX PRNG key"),
    (dict(key=jnp.zeros(2)), TypeError, "key must be"),
    (dict(checkpoint_dir=3), TypeError, "train: checkpoint_dir must be a path"),
    (dict(model=lambda x: x), TypeError, "train: model must be a flax.nnx.Module"),
    (dict(loss_fn="ce"), TypeError, "train: loss_fn must be callable"),
    (dict(optimizer=0.1), TypeError, "train: optimizer must be an optax"),
    (dict(data=jnp.zeros((64, 8, 8))), TypeError, r"train: data must be a pair \(x, y\)"),
    (dict(data=(jnp.zeros((64, 8, 8)), jnp.zeros(63, int))), ValueError, "train: data"),
  ],
)
def test_train_bad_arguments_raise_naming_them(tiny_data, kwargs, exc, match):
  args = dict(model=_CLF, loss_fn=classifier_loss(), optimizer=optax.sgd(0.1), data=tiny_data)
  args.update(kwargs)
  kw = {k: args.pop(k) for k in list(args) if k not in ("model", "loss_fn", "optimizer", "data")}
  kw = {"steps": 2, "batch_size": 8, "progress": False, **kw}
  with pytest.raises(exc, match=match):
    train(args["model"], args["loss_fn"], args["optimizer"], args["data"], **kw)


def test_train_checkpoint_dir_that_is_a_file_or_holds_another_model_raises(tiny_data, tmp_path):
  file = tmp_path / "f"
  file.write_text("x")
  with pytest.raises(ValueError, match="checkpoint_dir .* is not a directory"):
    _tiny_run(tiny_data, file)
  _tiny_run(tiny_data, tmp_path / "c", stop_after=2)
  with pytest.raises(ValueError, match="does not match this model/optimizer"):
    train(
      _CLF, classifier_loss(), _OPT, tiny_data, steps=4, batch_size=8, chunk=2,
      checkpoint_dir=tmp_path / "c", progress=False,
    )  # fmt: skip


@pytest.mark.parametrize(
  "kwargs, exc, match",
  [
    (dict(test_fraction=0.0), ValueError, r"load_digits: test_fraction must lie in \(0, 1\)"),
    (dict(test_fraction=float("nan")), ValueError, "test_fraction must be a number, got NaN"),
    (dict(test_fraction="0.2"), TypeError, "test_fraction"),
    (dict(test_fraction=0.001), ValueError, "one per class"),
    (dict(key=True), TypeError, "key .*bool"),
    (dict(key=-1), ValueError, r"key \(seed\) must lie in"),
  ],
)
def test_load_digits_bad_arguments_raise_naming_them(kwargs, exc, match):
  with pytest.raises(exc, match=match):
    load_digits(**kwargs)


@pytest.mark.parametrize(
  "build, exc, match",
  [
    (
      lambda: v_prediction_loss(schedules.vp_cosine(), label_dropout=1.5),
      ValueError,
      "label_dropout",
    ),
    (lambda: v_prediction_loss(schedules.vp_cosine(), null_label=0.5), ValueError, "null_label"),
    (lambda: v_prediction_loss("cosine"), TypeError, "v_prediction_loss: schedule"),
    (lambda: classifier_loss(noise=-0.1), ValueError, "classifier_loss: noise"),
    (lambda: batch_indices(jax.random.key(0), 0, 10, 2.5), ValueError, "batch_size"),
  ],
)
def test_loss_factories_and_batch_indices_reject_bad_arguments(build, exc, match):
  with pytest.raises(exc, match=match):
    build()
