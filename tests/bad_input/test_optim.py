"""Hostile inputs to every optimizer of ``optim`` (one line a case).

Fixtures are tiny and built once: params ``P = {"w": (2, 3), "b": (3,)}`` (float32), their
gradient ``G``, per-example gradients ``PE`` (a batch of 2) and the quadratic ``F`` (the
objective of the curvature optimizers, ``SAMPLED`` for Sophia-G). ``step(tx, params,
grads, **extra)`` runs ``init`` + one ``update``, not jitted (cheap: most cases fail while
tracing, before any compilation); ``jstep`` runs the update under ``jit`` (the state traced).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optim as O
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
P = {"w": jnp.array([[0.5, -1.0, 2.0], [1.5, 0.3, -0.2]]), "b": jnp.array([0.1, -0.3, 0.2])}
F = lambda p: 0.5 * sum(jnp.sum(x**2) for x in jax.tree.leaves(p)) + 1.0
SAMPLED = lambda p, key: F(p)
G = jax.grad(F)(P)
PE = jax.tree.map(lambda g: jnp.stack([0.5 * g, 1.5 * g]), G)  # 2 examples, mean G
Z = {"w": jnp.zeros((0, 3)), "b": jnp.array([0.5, 2.0])}  # a zero-size leaf
ZG = jax.grad(F)(Z)
ZPE = jax.tree.map(lambda g: jnp.stack([g, 2 * g]), ZG)
B1 = {"w": G["w"], "b": G["b"][:1]}  # "b" of shape (1,)
INT = jax.tree.map(lambda x: x.astype(jnp.int32), P)
GI = jax.tree.map(lambda x: x.astype(jnp.int32), G)
GC = jax.tree.map(lambda x: x.astype(jnp.complex64), G)
BF = jax.tree.map(lambda x: x.astype(jnp.bfloat16), P)
GB = jax.tree.map(lambda x: x.astype(jnp.bfloat16), G)
OTHER = {"w": P["w"], "b": jnp.ones(4)}
NANG = {"w": G["w"], "b": G["b"].at[0].set(nan)}
INFG = {"w": G["w"], "b": G["b"].at[0].set(inf)}


def step(tx, params=P, grads=None, state=None, **extra):
  """``init`` (unless ``state``) and one ``update``; returns the updates."""
  grads = G if grads is None else grads
  state = tx.init(params) if state is None else state
  return tx.update(grads, state, params, **extra)[0]


def jstep(tx, params=P, grads=None, **extra):
  """``init``, then ``update`` under ``jax.jit`` with the state as a (traced) argument.

  The functions in ``extra`` are closed over; errors here are raised while tracing.
  """
  update = jax.jit(lambda p, g, s: tx.update(g, s, p, **extra)[0])
  return update(params, G if grads is None else grads, tx.init(params))


def inject(factory, static_args=(), **kw):
  """``optax.inject_hyperparams(factory)`` with ``kw``: traced hyperparameters under jit."""
  return optax.inject_hyperparams(factory, static_args=static_args)(**kw)


NS = {
  **{k: v for k, v in globals().items() if k.isupper() and not k.startswith("_")},
  "O": O,
  "jax": jax,
  "jnp": jnp,
  "np": np,
  "optax": optax,
  "nan": nan,
  "inf": inf,
  "step": step,
  "jstep": jstep,
  "inject": inject,
}

H = {"obj_fn": F}  # the extra argument of the curvature optimizers
NS["H"] = H
PROPAGATE = "Non-finite gradients: propagate (docstring); the update is NaN, never plausible"
ZERO = "zero-size leaves work: an empty update for them, a finite one elsewhere"
_nan_somewhere = lambda r: not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(r))
_shapes_of_z = lambda r: r["w"].shape == (0, 3) and r["b"].shape == (2,)
_bf16 = lambda r: all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(r))
_equals_g = lambda r: bool(jnp.allclose(r["b"], G["b"])) and bool(jnp.allclose(r["w"], G["w"]))


def _nan_at_b0(r):
  return bool(jnp.isnan(r["b"][0])) and bool(jnp.all(jnp.isfinite(r["w"])))


CASES = [
  # -- learning rate: every alias ---------------------------------------------------------
  *[
    Case(f"O.{alias}(nan{rest})", raises(ValueError, "learning_rate must be a number"))
    for alias, rest in [
      ("diffgrad", ""),
      ("adamp", ""),
      ("sgdp", ""),
      ("normalized_gd", ""),
      ("dp_sgd", ", 1.0, 0.5"),
      ("dice_sgd", ", 1.0, 1.0, 0.5"),
      ("adahessian", ""),
      ("sophia", ""),
      ("mfac", ""),
    ]
  ],
  Case("O.diffgrad(-0.1)", raises(ValueError, r"learning_rate must lie in \[0")),
  Case("O.adamp(inf)", raises(ValueError, "learning_rate must be finite")),
  Case("O.sgdp(None)", raises(TypeError, "learning_rate must be a real number")),
  Case("O.mfac('1e-3')", raises(TypeError, "learning_rate must be a real number")),
  Case("O.sophia(jnp.ones(2))", raises(TypeError, "learning_rate must be a scalar")),
  Case("O.adahessian(1j)", raises(TypeError, "learning_rate must be a real number")),
  Case(
    "step(O.diffgrad(lambda t: jnp.nan))",
    returns(
      _nan_somewhere,
      "a schedule's values are not checked (documented): NaN in, NaN out",
      nan_ok=True,
    ),
  ),
  # -- diffgrad ------------------------------------------------------------------------------
  Case("O.diffgrad(0.1, b1=1.0)", raises(ValueError, r"b1 must lie in \[0, 1\)")),
  Case("O.diffgrad(0.1, b1=True)", raises(TypeError, "b1 must be a real number, got a bool")),
  Case("O.diffgrad(0.1, b2=nan)", raises(ValueError, "b2 must be a number")),
  Case("O.diffgrad(0.1, eps=-1e-8)", raises(ValueError, "eps must lie in")),
  Case("O.diffgrad(0.1, weight_decay=-1)", raises(ValueError, "weight_decay must lie in")),
  Case("O.diffgrad(0.1, b1=jnp.array([0.9, 0.9]))", raises(TypeError, "b1 must be a scalar")),
  Case("O.diffgrad(0.1, b1=0.9 + 0j)", raises(TypeError, "b1 must be a real number")),
  Case("O.diffgrad(0.1, mu_dtype=jnp.int8)", raises(TypeError, "mu_dtype must be a floating")),
  Case("O.diffgrad(0.1, mu_dtype='float33')", raises(TypeError, "mu_dtype must be a floating")),
  Case("step(O.diffgrad(0.1), P, B1)", raises(ValueError, r"diffgrad: updates\['b'\] has shape")),
  Case("step(O.diffgrad(0.1), INT, GI)", raises(TypeError, r"diffgrad: params\['b'\] has dtype")),
  Case("step(O.diffgrad(0.1), P, GI)", raises(TypeError, r"updates\['b'\] has dtype int32")),
  Case("step(O.diffgrad(0.1), P, GC)", raises(TypeError, r"updates\['b'\] has dtype complex64")),
  Case("step(O.diffgrad(0.1), P, {'w': G['w']})", raises(ValueError, "updates and params must")),
  Case("step(O.diffgrad(0.1), P, [G['b'], G['w']])", raises(ValueError, "pytree structure")),
  Case(
    "step(O.diffgrad(0.1), P, G, O.diffgrad(0.1).init(OTHER))",
    raises(ValueError, "state.*shape"),
  ),
  Case(
    "O.scale_by_diffgrad().update(B1, O.scale_by_diffgrad().init(P))",
    raises(ValueError, r"scale_by_diffgrad: state\.mu\['b'\] has shape \(\d,\) but init"),
  ),
  Case("step(O.diffgrad(0.1), BF, GB)", returns(_bf16, "updates follow the gradients' dtype")),
  Case("step(O.diffgrad(0.1), P, NANG)", returns(_nan_at_b0, PROPAGATE, nan_ok=True)),
  Case("step(O.diffgrad(0.1), Z, ZG)", returns(_shapes_of_z, ZERO)),
  Case("jstep(O.diffgrad(0.1), P, B1)", raises(ValueError, r"updates\['b'\] has shape")),
  # -- weight_decay_mask (every alias that has one) ------------------------------------------
  Case(
    "step(O.diffgrad(0.1, weight_decay=0.1, weight_decay_mask={'x': True}))",
    raises(ValueError, "diffgrad: weight_decay_mask must be a pytree of bools"),
  ),
  Case(
    "step(O.adamp(0.1, weight_decay=0.1, weight_decay_mask={'w': True}))",
    raises(ValueError, "scale_by_adamp: weight_decay_mask must"),
  ),
  Case(
    "step(O.sgdp(0.1, weight_decay=0.1, weight_decay_mask=lambda p: [True, False]))",
    raises(ValueError, "scale_by_sgdp: weight_decay_mask must"),
  ),
  Case(
    "step(O.adahessian(0.1, weight_decay_mask={'w': 1.5, 'b': True}), **H)",
    raises(TypeError, r"weight_decay_mask\['w'\] must be a bool"),
  ),
  Case(
    "step(O.sophia(0.1, weight_decay_mask={'b': True}), **H)",
    raises(ValueError, "sophia: weight_decay_mask must"),
  ),
  Case(
    "step(O.mfac(0.1, weight_decay_mask=(True, False)))",
    raises(ValueError, "mfac: weight_decay_mask must"),
  ),
  Case(
    "step(O.diffgrad(0.1, weight_decay=0.1, weight_decay_mask={'w': True, 'b': False}))",
    returns(None, "a mask with the params' structure (or a prefix of it) is valid"),
  ),
  Case(
    "step(O.adamp(0.1, weight_decay=0.1, weight_decay_mask=lambda p: {'w': True, 'b': False}))",
    returns(None, "a callable mask returning the params' structure is valid"),
  ),
  # -- adamp / sgdp ---------------------------------------------------------------------------
  Case(
    "step(O.adamp(0.1, channel_axis=5))",
    raises(
      ValueError, r"scale_by_adamp: channel_axis=5 is out of range for params\['w'\] of rank 2"
    ),
  ),
  Case("step(O.sgdp(0.1, channel_axis=-3))", raises(ValueError, "channel_axis=-3 is out of range")),
  Case("O.adamp(0.1, channel_axis=1.5)", raises(ValueError, "channel_axis must be an integer")),
  Case("O.adamp(0.1, channel_axis='0')", raises(TypeError, "channel_axis must be a real number")),
  Case(
    "jstep(inject(O.scale_by_adamp, channel_axis=0))",
    raises(TypeError, "channel_axis must be a concrete"),
  ),
  Case("O.adamp(0.1, nesterov=1)", raises(TypeError, "nesterov must be a bool")),
  Case("O.sgdp(0.1, nesterov=None)", raises(TypeError, "nesterov must be a bool")),
  Case("O.adamp(0.1, delta=-0.1)", raises(ValueError, "delta must lie in")),
  Case("O.adamp(0.1, wd_ratio=nan)", raises(ValueError, "wd_ratio must be a number")),
  Case("O.adamp(0.1, eps=0.0)", raises(ValueError, r"eps must lie in \(0")),
  Case("O.adamp(0.1, b2=1.5)", raises(ValueError, "b2 must lie in")),
  Case("O.sgdp(0.1, momentum=1.0)", raises(ValueError, r"momentum must lie in \[0, 1\)")),
  Case("O.sgdp(0.1, dampening=2)", raises(ValueError, "dampening must lie in")),
  Case("O.sgdp(0.1, weight_decay=inf)", raises(ValueError, "weight_decay must be finite")),
  Case("O.sgdp(0.1, mu_dtype=jnp.int32)", raises(TypeError, "mu_dtype must be a floating")),
  Case(
    "O.adamp(0.1).update(G, O.adamp(0.1).init(P))",
    raises(ValueError, "needs the current parameters"),
  ),
  Case("step(O.adamp(0.1), INT, GI)", raises(TypeError, r"scale_by_adamp: params\['b'\]")),
  Case("step(O.sgdp(0.1), P, B1)", raises(ValueError, r"scale_by_sgdp: updates\['b'\] has shape")),
  Case("step(O.adamp(0.1), P, G, O.adamp(0.1).init(OTHER))", raises(ValueError, "state")),
  Case("step(O.adamp(0.1), Z, ZG)", returns(_shapes_of_z, ZERO)),
  Case("step(O.sgdp(0.1, weight_decay=0.1, channel_axis=0), Z, ZG)", returns(_shapes_of_z, ZERO)),
  Case("step(O.adamp(0.1), BF, GB)", returns(_bf16, "updates follow the gradients' dtype")),
  Case("step(O.sgdp(0.1), P, NANG)", returns(_nan_at_b0, PROPAGATE, nan_ok=True)),
  Case("jstep(O.adamp(0.1, channel_axis=2))", raises(ValueError, "channel_axis=2 is out of range")),
  # -- perp_grad -------------------------------------------------------------------------------
  Case("O.perp_grad(0.0)", raises(ValueError, r"eps must lie in \(0")),
  Case("O.perp_grad(nan)", raises(ValueError, "eps must be a number")),
  Case("O.perp_grad('1e-30')", raises(TypeError, "eps must be a real number")),
  Case("step(O.perp_grad(), P, B1)", raises(ValueError, r"perp_grad: updates\['b'\] has shape")),
  Case(
    "step(O.perp_grad(), P, {'w': G['w'].T, 'b': G['b']})",
    raises(ValueError, r"updates\['w'\] has shape \(3, 2\) but params has \(2, 3\)"),
  ),
  Case(
    "O.perp_grad().update(G, O.perp_grad().init(P))",
    raises(ValueError, "needs the current parameters"),
  ),
  Case("step(O.perp_grad(), INT, GI)", raises(TypeError, r"perp_grad: params\['b'\]")),
  Case(
    "step(O.perp_grad(), jax.tree.map(jnp.zeros_like, P))",
    returns(_equals_g, "a zero leaf has no radial direction: the gradient passes unchanged"),
  ),
  Case("step(O.perp_grad(), P, INFG)", returns(_nan_at_b0, PROPAGATE, nan_ok=True)),
  Case("step(O.perp_grad(), Z, ZG)", returns(_shapes_of_z, ZERO)),
  # -- coordinate_clip -------------------------------------------------------------------------
  Case("O.coordinate_clip()", raises(ValueError, "exactly one of `threshold` or `fraction`")),
  Case("O.coordinate_clip(1.0, fraction=0.5)", raises(ValueError, "exactly one of `threshold`")),
  Case("O.coordinate_clip(0.0)", raises(ValueError, r"threshold must lie in \(0")),
  Case("O.coordinate_clip(-1.0)", raises(ValueError, "threshold must lie in")),
  Case("O.coordinate_clip(nan)", raises(ValueError, "threshold must be a number")),
  Case("O.coordinate_clip('1')", raises(TypeError, "threshold must be a real number")),
  Case("O.coordinate_clip(fraction=0.0)", raises(ValueError, r"fraction must lie in \(0, 1\]")),
  Case("O.coordinate_clip(fraction=1.5)", raises(ValueError, "fraction must lie in")),
  Case("O.coordinate_clip(fraction=nan)", raises(ValueError, "fraction must be a number")),
  Case(
    "jstep(inject(O.coordinate_clip, fraction=0.5))",
    raises(TypeError, "fraction must be a concrete Python number"),
  ),
  Case("step(O.coordinate_clip(inf))", returns(_equals_g, "threshold=inf means no clipping")),
  Case(
    "step(O.coordinate_clip(1.0), P, GI)", raises(TypeError, r"coordinate_clip: updates\['b'\]")
  ),
  Case("step(O.coordinate_clip(1.0), P, B1)", raises(ValueError, r"updates\['b'\] has shape")),
  Case("step(O.coordinate_clip(fraction=0.5), Z, ZG)", returns(_shapes_of_z, ZERO)),
  Case(
    "O.coordinate_clip(fraction=0.5).update({'w': jnp.zeros((0, 3))}, ())[0]['w'].shape",
    returns(lambda s: s == (0, 3), "an update with no coordinates at all passes unchanged"),
  ),
  Case(
    "step(O.coordinate_clip(0.5), P, INFG)['b'][0]",
    returns(lambda r: float(r) == 0.5, "an inf coordinate is clipped like any large one (doc)"),
  ),
  Case(
    "step(O.coordinate_clip(fraction=0.5), P, NANG)",
    returns(_nan_at_b0, "NaN coordinates propagate (documented)", nan_ok=True),
  ),
  # -- normalized_gd / scale_by_inverse_loss --------------------------------------------------
  Case("step(O.normalized_gd(0.1))", raises(ValueError, "pass it as the `value` extra argument")),
  Case(
    "step(O.normalized_gd(0.1), value=jnp.ones(2))",
    raises(ValueError, "`value` must be the scalar"),
  ),
  Case(
    "step(O.normalized_gd(0.1), value='1.0')", raises(TypeError, "`value` must be the floating")
  ),
  Case("step(O.normalized_gd(0.1), value=1)", raises(TypeError, "`value` must be the floating")),
  Case(
    "step(O.normalized_gd(0.1), value=jnp.array(1))",
    raises(TypeError, "`value` must be a floating"),
  ),
  Case(
    "step(O.normalized_gd(0.1), value=-1.0)",
    raises(ValueError, "`value` is the loss and must be >= 0"),
  ),
  Case(
    "step(O.normalized_gd(0.1), value=inf)",
    returns(
      lambda r: bool(jnp.all(jnp.isnan(r["b"]))),
      "an infinite loss gives NaN, not a zero step",
      nan_ok=True,
    ),
  ),
  Case(
    "step(O.normalized_gd(0.1), P, B1, value=1.0)", raises(ValueError, r"updates\['b'\] has shape")
  ),
  Case("step(O.scale_by_inverse_loss(), INT, GI, value=1.0)", raises(TypeError, "params")),
  Case("step(O.normalized_gd(0.1), Z, ZG, value=jnp.float32(2.0))", returns(_shapes_of_z, ZERO)),
  Case(
    "jstep(O.normalized_gd(0.1), value=jnp.ones(2))",
    raises(ValueError, "`value` must be the scalar loss"),
  ),
  # -- dp_sgd / dice_sgd ------------------------------------------------------------------------
  Case("O.dp_sgd(0.1, 0.0, 1.0)", raises(ValueError, r"l2_norm_clip must lie in \(0")),
  Case("O.dp_sgd(0.1, -1.0, 1.0)", raises(ValueError, "l2_norm_clip must lie in")),
  Case("O.dp_sgd(0.1, nan, 1.0)", raises(ValueError, "l2_norm_clip must be a number")),
  Case("O.dp_sgd(0.1, inf, 1.0)", raises(ValueError, "l2_norm_clip=inf .*sensitivity unbounded")),
  Case(
    "step(O.scale_by_dp_sgd(inf, 0.0), P, PE)",
    returns(_equals_g, "l2_norm_clip=inf with noise_multiplier=0: the plain mean gradient"),
  ),
  Case("O.dp_sgd(0.1, 1.0, -1.0)", raises(ValueError, "noise_multiplier must lie in")),
  Case("O.dp_sgd(0.1, 1.0, inf)", raises(ValueError, "noise_multiplier must be finite")),
  Case("O.dp_sgd(0.1, 1.0, 1.0, key='seed')", raises(TypeError, "key must be an int seed")),
  Case("O.dp_sgd(0.1, 1.0, 1.0, key=jnp.zeros(2))", raises(TypeError, "key must be an int seed")),
  Case("O.dp_sgd(0.1, 1.0, 1.0, key=1.5)", raises(TypeError, "key must be an int seed")),
  Case("O.dp_sgd(0.1, 1.0, 1.0, key=True)", raises(TypeError, "key must be an int seed")),
  Case(
    "O.dp_sgd(0.1, 1.0, 1.0, key=jnp.zeros(3, jnp.uint32))",
    raises(ValueError, "key: a raw uint32 key must have a trailing dimension of 2"),
  ),
  Case(
    "step(O.dp_sgd(0.1, 1.0, 1.0, key=jax.random.PRNGKey(0)), P, PE)",
    returns(None, "a raw uint32 key is accepted (the key policy)"),
  ),
  Case("step(O.dp_sgd(0.1, 1.0, 1.0), P, G)", raises(ValueError, r"updates \(per example\)")),
  Case(
    "step(O.dp_sgd(0.1, 1.0, 1.0), P, {'w': PE['w'], 'b': PE['b'][:1]})",
    raises(ValueError, "dp_sgd: per-example gradients must share one batch size"),
  ),
  Case(
    "step(O.dp_sgd(0.1, 1.0, 1.0), P, jax.tree.map(lambda g: g[:0], PE))",
    raises(ValueError, "dp_sgd: the per-example gradients have batch size 0"),
  ),
  Case(
    "step(O.dp_sgd(0.1, 1.0, 1.0), {'s': jnp.float32(1)}, {'s': jnp.float32(1)})",
    raises(ValueError, "leading batch axis"),
  ),
  Case(
    "step(O.dp_sgd(0.1, 1.0, 1.0), P, jax.tree.map(lambda g: g.astype(jnp.int32), PE))",
    raises(TypeError, r"scale_by_dp_sgd: updates\['b'\] has dtype int32"),
  ),
  Case(
    "step(O.dp_sgd(0.1, 1.0, 1.0), INT, PE)", raises(TypeError, r"params\['b'\] has dtype int32")
  ),
  Case(
    "step(O.dp_sgd(0.1, 1.0, 0.0), P, {'w': PE['w'], 'b': PE['b'].at[0, 0].set(nan)})",
    returns(
      lambda r: bool(jnp.all(jnp.isnan(r["w"]))), PROPAGATE + " (the whole update)", nan_ok=True
    ),
  ),
  Case("step(O.dp_sgd(0.1, 1.0, 0.5), Z, ZPE)", returns(_shapes_of_z, ZERO)),
  Case("step(O.dice_sgd(0.1, 1.0, 2.0, 0.5), Z, ZPE)", returns(_shapes_of_z, ZERO)),
  Case("O.dice_sgd(0.1, 1.0, 0.5, 0.0)", raises(ValueError, "clip2 >= clip1")),
  Case("O.dice_sgd(0.1, 0.0, 1.0, 0.0)", raises(ValueError, "clip1 must lie in")),
  Case("O.dice_sgd(0.1, 1.0, nan, 0.0)", raises(ValueError, "clip2 must be a number")),
  Case("O.dice_sgd(0.1, 1.0, 1.0, 0.0, mu_dtype=jnp.int32)", raises(TypeError, "mu_dtype must")),
  Case("O.dice_sgd(0.1, 1.0, 1.0, 0.0, key=jnp.ones((2, 2)))", raises(TypeError, "key must")),
  Case(
    "O.scale_by_dice_sgd(1.0, 1.0, 0.0).update(PE, O.scale_by_dice_sgd(1.0, 1.0, 0.0).init(OTHER))",
    raises(ValueError, r"dice_sgd: state\.error\['b'\] has shape \(\d,\) but init"),
  ),
  Case(
    "jstep(O.dice_sgd(0.1, 1.0, 1.0, 0.0), P, G)",
    raises(ValueError, r"updates \(per example\)"),
  ),
  # -- adahessian ------------------------------------------------------------------------------
  Case("O.adahessian(0.1, weight_decay=-1)", raises(ValueError, "weight_decay must lie in")),
  Case(
    "O.adahessian(0.1, update_interval=1.5)",
    raises(ValueError, "update_interval must be an integer"),
  ),
  Case("O.adahessian(0.1, update_interval=0)", raises(ValueError, "update_interval must lie in")),
  Case("O.adahessian(0.1, hessian_power=0.0)", raises(ValueError, "hessian_power must lie in")),
  Case("O.adahessian(0.1, hessian_power=1.5)", raises(ValueError, "hessian_power must lie in")),
  Case("O.adahessian(0.1, eps=0.0)", raises(ValueError, "eps must lie in")),
  Case("O.adahessian(0.1, spatial_axes=3)", raises(TypeError, "spatial_axes must be callable")),
  Case(
    "step(O.adahessian(0.1, spatial_axes=lambda s: (5,)), **H)",
    raises(ValueError, r"spatial_axes returned \(5,\)"),
  ),
  Case("O.adahessian(0.1, key='0')", raises(TypeError, "key must be an int seed")),
  Case("O.adahessian(0.1, key=jnp.zeros(2))", raises(TypeError, "key must be an int seed")),
  Case("O.adahessian(0.1, mu_dtype=jnp.int8)", raises(TypeError, "mu_dtype must be a floating")),
  Case("step(O.adahessian(0.1))", raises(ValueError, "adahessian needs the objective.*obj_fn")),
  Case("step(O.adahessian(0.1), obj_fn=3)", raises(TypeError, "obj_fn must be callable")),
  Case(
    "step(O.adahessian(0.1), obj_fn=lambda p: p['w'])",
    raises(TypeError, r"adahessian: obj_fn must return a real floating-point scalar.*\(2, 3\)"),
  ),
  Case(
    "step(O.adahessian(0.1), obj_fn=lambda: 1.0)", raises(TypeError, "obj_fn must be a function")
  ),
  Case(
    "O.adahessian(0.1).update(G, O.adahessian(0.1).init(P), obj_fn=F)", raises(ValueError, "params")
  ),
  Case("step(O.adahessian(0.1), P, B1, **H)", raises(ValueError, r"updates\['b'\] has shape")),
  Case("step(O.adahessian(0.1), INT, GI, **H)", raises(TypeError, r"params\['b'\] has dtype")),
  Case(
    "step(O.adahessian(0.1), P, G, O.adahessian(0.1).init(OTHER), **H)",
    raises(ValueError, "state"),
  ),
  Case("step(O.adahessian(0.1), Z, ZG, **H)", returns(_shapes_of_z, ZERO)),
  Case("step(O.adahessian(0.1), P, NANG, **H)", returns(_nan_at_b0, PROPAGATE, nan_ok=True)),
  Case(
    "jstep(inject(O.scale_by_adahessian, ('spatial_axes',), update_interval=2), **H)",
    raises(TypeError, "update_interval must be a concrete"),
  ),
  Case(
    "jstep(inject(O.scale_by_adahessian, b1=0.9), **H)",
    raises(TypeError, "list spatial_axes in static_args"),
  ),
  Case(
    "jstep(inject(O.scale_by_adahessian, ('spatial_axes', 'update_interval'), b1=0.9), **H)",
    returns(None, "traced b1 (inject_hyperparams) works; traced values are not range-checked"),
  ),
  Case("jstep(O.adahessian(0.1), obj_fn=None)", raises(ValueError, "needs the objective")),
  # -- sophia ------------------------------------------------------------------------------------
  Case("O.sophia(0.1, weight_decay=-1)", raises(ValueError, "weight_decay must lie in")),
  Case(
    "O.sophia(0.1, update_interval=2.5)", raises(ValueError, "update_interval must be an integer")
  ),
  Case("O.sophia(0.1, variant='newton')", raises(ValueError, "variant must be one of")),
  Case("O.sophia(0.1, probe='uniform')", raises(ValueError, "probe must be one of")),
  Case("O.sophia(0.1, variant='gnb')", raises(ValueError, "needs batch_size")),
  Case("O.sophia(0.1, variant='gnb', batch_size=0)", raises(ValueError, "batch_size must lie in")),
  Case("O.sophia(0.1, gamma=0.0)", raises(ValueError, "gamma must lie in")),
  Case("O.sophia(0.1, clip_threshold=0.0)", raises(ValueError, "clip_threshold must lie in")),
  Case("O.sophia(0.1, eps=nan)", raises(ValueError, "eps must be a number")),
  Case("O.sophia(0.1, key=jnp.zeros(5, jnp.uint32))", raises(ValueError, "key: a raw uint32 key")),
  Case("O.sophia(0.1, mu_dtype='int16')", raises(TypeError, "mu_dtype must be a floating")),
  Case(
    "step(O.sophia(0.1, clip_threshold=inf, weight_decay=0.0), **H)",
    returns(None, "clip_threshold=inf turns the clip off (documented)"),
  ),
  Case("step(O.sophia(0.1))", raises(ValueError, "needs the objective.*obj_fn")),
  Case("step(O.sophia(0.1), obj_fn='F')", raises(TypeError, "obj_fn must be callable")),
  Case(
    "step(O.sophia(0.1, variant='gnb', batch_size=1), **H)",
    raises(ValueError, "needs the objective.*sampled_obj_fn"),
  ),
  Case(
    "step(O.sophia(0.1, variant='gnb', batch_size=1), sampled_obj_fn=F)",
    raises(TypeError, r"sampled_obj_fn must be a function \(params, key\)"),
  ),
  Case(
    "step(O.sophia(0.1, variant='gnb', batch_size=1), sampled_obj_fn=lambda p, k: p['b'])",
    raises(TypeError, "sampled_obj_fn must return a real floating-point scalar"),
  ),
  Case("step(O.sophia(0.1), P, B1, **H)", raises(ValueError, r"scale_by_sophia: updates\['b'\]")),
  Case("step(O.sophia(0.1), INT, GI, **H)", raises(TypeError, r"params\['b'\] has dtype int32")),
  Case("step(O.sophia(0.1), P, G, O.sophia(0.1).init(OTHER), **H)", raises(ValueError, "state")),
  Case(
    "step(O.sophia(0.1, weight_decay=0.0), P, INFG, **H)['b'][0]",
    returns(
      lambda r: abs(float(r) + 0.1) < 1e-7, "an inf gradient takes the clipped step -lr * rho (doc)"
    ),
  ),
  Case(
    "step(O.sophia(0.1), P, NANG, **H)",
    returns(
      _nan_at_b0, "a NaN gradient gives a NaN update there; the state recovers (doc)", nan_ok=True
    ),
  ),
  Case("step(O.sophia(0.1), Z, ZG, **H)", returns(_shapes_of_z, ZERO)),
  Case(
    "step(O.sophia(0.1, variant='gnb', batch_size=1), Z, ZG, sampled_obj_fn=SAMPLED)",
    returns(_shapes_of_z, ZERO),
  ),
  Case(
    "jstep(inject(O.scale_by_sophia, update_interval=2), **H)",
    raises(TypeError, "update_interval must be a concrete"),
  ),
  Case("jstep(O.sophia(0.1), P, B1, **H)", raises(ValueError, r"updates\['b'\] has shape")),
  # -- mfac ----------------------------------------------------------------------------------------
  Case("O.mfac(0.1, weight_decay=-1)", raises(ValueError, "weight_decay must lie in")),
  Case("O.mfac(0.1, num_grads=0)", raises(ValueError, "num_grads must lie in")),
  Case("O.mfac(0.1, num_grads=2.5)", raises(ValueError, "num_grads must be an integer")),
  Case("O.mfac(0.1, num_grads=None)", raises(TypeError, "num_grads must be a real number")),
  Case("O.mfac(0.1, damping=0.0)", raises(ValueError, "damping must lie in")),
  Case("O.mfac(0.1, momentum=1.0)", raises(ValueError, "momentum must lie in")),
  Case("O.mfac(0.1, mu_dtype=jnp.int32)", raises(TypeError, "mu_dtype must be a floating")),
  Case(
    "jstep(inject(O.scale_by_mfac, num_grads=4))",
    raises(TypeError, "num_grads must be a concrete"),
  ),
  Case(
    "step(O.mfac(0.1, num_grads=4), P, B1)", raises(ValueError, r"mfac: updates\['b'\] has shape")
  ),
  Case(
    "O.scale_by_mfac(num_grads=4).update(B1, O.scale_by_mfac(num_grads=4).init(P))",
    raises(ValueError, r"scale_by_mfac: state\.\w+\['b'\] has shape .* but init"),
  ),
  Case("step(O.mfac(0.1, num_grads=4), INT, GI)", raises(TypeError, r"mfac: params\['b'\]")),
  Case(
    "step(O.mfac(0.1, num_grads=4), P, GI)", raises(TypeError, r"mfac: updates\['b'\] has dtype")
  ),
  Case(
    "step(O.mfac(0.1, num_grads=4), P, G, O.mfac(0.1, num_grads=4).init(OTHER))",
    raises(ValueError, "state"),
  ),
  Case(
    "step(O.mfac(0.1, num_grads=4), P, G, unknown=1, obj_fn='x')",
    returns(None, "extra arguments are ignored (documented)"),
  ),
  Case("step(O.mfac(0.1, num_grads=4), Z, ZG)", returns(_shapes_of_z, ZERO)),
  Case("step(O.mfac(0.1, num_grads=4), P, NANG)", returns(_nan_somewhere, PROPAGATE, nan_ok=True)),
  Case("jstep(O.mfac(0.1, num_grads=4), INT, GI)", raises(TypeError, r"params\['b'\] has dtype")),
]


def test_table_is_large_enough():
  assert len(CASES) >= 110, len(CASES)


@params(CASES)
def test_case(case):
  run(case, NS)
