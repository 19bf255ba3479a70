"""Hostile inputs to DIFF2, TrAct, the weight compander, AdAdaGrad's tests, the PPO/GPPO
losses and the weight EMA (one line a case; harness in tests/bad_input/harness.py)."""

import jax
import jax.numpy as jnp
import numpy as np

import optim as O
from optim.losses import gppo_loss, ppo_clip_loss
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
P = {"w": jnp.array([[0.5, -1.0, 2.0], [1.5, 0.3, -0.2]]), "b": jnp.array([0.1, -0.3, 0.2])}
G = jax.tree.map(lambda x: 0.5 * x, P)
PE = jax.tree.map(lambda g: jnp.stack([0.5 * g, 1.5 * g]), G)  # 2 examples
GF = lambda p: PE  # grad_fn
X = jnp.ones((4, 2))  # first-layer inputs fitting P["w"] (fan-in 2)
LP = jnp.log(jnp.array([0.5, 0.2, 0.3]))


def step(tx, params=P, grads=None, **extra):
  grads = G if grads is None else grads
  return tx.update(grads, tx.init(params), params, **extra)[0]


NS = {
  **{k: v for k, v in globals().items() if k.isupper() and not k.startswith("_")},
  "O": O,
  "jax": jax,
  "jnp": jnp,
  "np": np,
  "nan": nan,
  "inf": inf,
  "step": step,
  "gppo_loss": gppo_loss,
  "ppo_clip_loss": ppo_clip_loss,
}
_nan = lambda r: not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(r))
D2 = "O.scale_by_diff2(1.0, 0.1, 0.5, 3"

CASES = [
  # -- DIFF2 ----------------------------------------------------------------------------------
  Case("O.diff2(nan, 1.0, 0.1, 0.5, 3)", raises(ValueError, "learning_rate must be a number")),
  Case(
    "O.scale_by_diff2(1.0, 0.1, -0.5, 3)", raises(ValueError, r"noise_multiplier must lie in \[0")
  ),
  Case("O.scale_by_diff2(1.0, 0.1, nan, 3)", raises(ValueError, "noise_multiplier must be")),
  Case("O.scale_by_diff2(0.0, 0.1, 0.5, 3)", raises(ValueError, "l2_norm_clip must lie")),
  Case("O.scale_by_diff2(1.0, -1.0, 0.5, 3)", raises(ValueError, "diff_clip must lie")),
  Case("O.scale_by_diff2(1.0, inf, 0.5, 3)", raises(ValueError, "diff_clip=inf")),
  Case("O.scale_by_diff2(1.0, 0.1, 0.5, 0)", raises(ValueError, "restart_every must lie")),
  Case("O.scale_by_diff2(1.0, 0.1, 0.5, 2.5)", raises(ValueError, "restart_every must be an int")),
  Case(f"{D2}, num_clients=0)", raises(ValueError, "num_clients must lie")),
  Case(f"{D2}, key='a')", raises(TypeError, "key")),
  Case(f"{D2}, mu_dtype=jnp.int32)", raises(TypeError, "mu_dtype")),
  Case(f"step({D2}), P, PE)", raises(ValueError, "grad_fn")),
  Case(f"step({D2}), P, PE, grad_fn=3)", raises(TypeError, "grad_fn must be callable")),
  Case(f"step({D2}, num_clients=3), P, PE, grad_fn=GF)", raises(ValueError, "num_clients=3")),
  Case(f"{D2}).update(PE, {D2}).init(P), grad_fn=GF)", raises(ValueError, "params")),
  Case(f"step({D2}), P, G, grad_fn=GF)", raises(ValueError, "per.example")),
  Case(f"step({D2}), {{}}, {{}}, grad_fn=GF)", raises(ValueError, "empty gradient pytree")),
  Case(f"step({D2}, num_clients=2), P, PE, grad_fn=GF)", returns(None, "one example a client")),
  Case(
    f"step({D2}), P, jax.tree.map(lambda g: g.at[0].set(nan), PE), grad_fn=GF)",
    returns(_nan, "Non-finite gradients: propagate (docstring)", nan_ok=True),
  ),
  # -- TrAct ----------------------------------------------------------------------------------
  Case("O.scale_by_tract(0.0)", raises(ValueError, r"lam must lie in \(0")),
  Case("O.scale_by_tract(-1.0)", raises(ValueError, "lam must lie")),
  Case("O.scale_by_tract(nan)", raises(ValueError, "lam must be a number")),
  Case("O.scale_by_tract('0.1')", raises(TypeError, "lam must be a real number")),
  Case("step(O.scale_by_tract())", raises(TypeError, "first_layer_inputs=x")),
  Case(
    "step(O.scale_by_tract(), first_layer_inputs=jnp.ones((4, 3)))",
    raises(ValueError, r"first_layer_inputs of shape \(4, 3\) does not fit a kernel of shape"),
  ),
  Case(
    "step(O.scale_by_tract(), first_layer_inputs=jnp.ones(2))",
    raises(ValueError, "first_layer_inputs of shape"),
  ),
  Case(
    "step(O.scale_by_tract(), first_layer_inputs=jnp.ones((0, 2)))",
    raises(ValueError, "first_layer_inputs has no rows"),
  ),
  Case(
    "step(O.scale_by_tract(), first_layer_inputs=jnp.ones((4, 2), jnp.int32))",
    raises(TypeError, "first_layer_inputs must be floating point"),
  ),
  Case(
    "step(O.scale_by_tract(), jax.tree.map(lambda x: x.astype(jnp.int32), P))",
    raises(TypeError, "params"),
  ),
  Case(
    "step(O.scale_by_tract(), first_layer_inputs=jnp.zeros((4, 2)))",
    returns(None, "lam > 0 keeps the system positive definite for any inputs (docstring)"),
  ),
  Case(
    "step(O.scale_by_tract(), first_layer_inputs=X.at[0, 0].set(nan))",
    returns(_nan, "non-finite inputs make the update NaN (docstring)", nan_ok=True),
  ),
  Case("step(O.scale_by_tract(), {}, {}, first_layer_inputs=X)", returns(None, "empty tree")),
  # -- weight compander ------------------------------------------------------------------------
  Case(
    "O.compander.compand_weights(P, alpha=0.0)", raises(ValueError, r"alpha must lie in \(0, 1\]")
  ),
  Case("O.compander.compand_weights(P, alpha=1.5)", raises(ValueError, "alpha must lie")),
  Case("O.compander.compand_weights(P, beta=0.0)", raises(ValueError, r"beta must lie in \(0")),
  Case("O.compander.expand_weights(P, beta=-1.0)", raises(ValueError, "beta must lie")),
  Case(
    "O.compander.compand_weights(P, alpha=True)", raises(TypeError, "alpha must be a real number")
  ),
  Case(
    "O.compander.compand_weights(jax.tree.map(lambda x: x.astype(jnp.int32), P))",
    raises(TypeError, "params"),
  ),
  Case(
    "O.compander.compand_weights(P, mask={'w': True})", raises(ValueError, "mask must be a pytree")
  ),
  Case(
    "O.compander.compand_weights(P, mask={'w': 1, 'b': 0})",
    raises(TypeError, r"mask\['b'\] must be"),
  ),
  Case("O.compander.compand_weights({})", returns(None, "an empty tree is returned as it is")),
  Case(
    "O.compander.compand_weights(P, alpha=jnp.asarray(0.5), beta=jnp.asarray(0.1))",
    returns(None, "array hyperparameters (learned, as the paper's extension) are accepted"),
  ),
  # -- AdAdaGrad tests -------------------------------------------------------------------------
  Case("O.loops.norm_test({'w': jnp.ones((1, 3))})", raises(ValueError, "at least 2 per-example")),
  Case("O.loops.norm_test({})", raises(ValueError, "empty gradient pytree")),
  Case("O.loops.norm_test(PE, eta=0.0)", raises(ValueError, r"eta must lie in \(0")),
  Case(
    "O.loops.augmented_inner_product_test(PE, theta=-1.0)", raises(ValueError, "theta must lie")
  ),
  Case(
    "O.loops.augmented_inner_product_test(PE, nu=nan)", raises(ValueError, "nu must be a number")
  ),
  Case(
    "O.loops.norm_test({'w': jnp.ones((2, 3), jnp.int32)})",
    raises(TypeError, "per_example_grads"),
  ),
  Case("O.loops.norm_test({'w': jnp.ones(())})", raises(ValueError, "leading batch axis")),
  Case(
    "O.loops.adaptive_batch_train(lambda w, e: w @ e, jnp.ones(2), X, O.diff2, 0.1, num_steps=1,"
    " initial_batch_size=2, variant='bad')",
    raises(ValueError, "variant"),
  ),
  Case(
    "O.loops.adaptive_batch_train(lambda w, e: w @ e, jnp.ones(2), X, O.diff2, 0.1, num_steps=1,"
    " initial_batch_size=1)",
    raises(ValueError, "initial_batch_size must lie"),
  ),
  Case(
    "O.loops.adaptive_batch_train(lambda w, e: w @ e, jnp.ones(2), X, O.diff2, 0.1, num_steps=1,"
    " initial_batch_size=8)",
    raises(ValueError, "initial_batch_size=8 exceeds the number of examples"),
  ),
  # -- PPO / GPPO -----------------------------------------------------------------------------
  Case("gppo_loss(LP, LP, 1.0, epsilon_low=1.0)", raises(ValueError, "epsilon_low must lie")),
  Case("gppo_loss(LP, LP, 1.0, epsilon_high=-0.1)", raises(ValueError, "epsilon_high must lie")),
  Case("ppo_clip_loss(LP, LP, 1.0, epsilon_low=nan)", raises(ValueError, "epsilon_low must be")),
  Case("gppo_loss(LP, LP[:2], 1.0)", raises(ValueError, "old_log_probs shape")),
  Case("gppo_loss(LP, LP, jnp.ones(2))", raises(ValueError, "advantages of shape")),
  Case("gppo_loss(LP, LP, 1.0, mask=jnp.ones(2))", raises(ValueError, "mask shape")),
  Case("gppo_loss(jnp.array([1, 2]), LP[:2], 1.0)", raises(TypeError, "log_probs must be a")),
  Case("ppo_clip_loss(LP[:0], LP[:0], 1.0)", raises(ValueError, "log_probs is empty")),
  Case("gppo_loss(LP, LP, -1.0, dual_clip=1.0)", raises(ValueError, r"dual_clip must lie in \(1")),
  Case("gppo_loss(LP, LP, -1.0, dual_clip=nan)", raises(ValueError, "dual_clip must be a number")),
  Case("gppo_loss(LP, LP, -1.0, dual_clip='3')", raises(TypeError, "dual_clip must be a real")),
  Case(
    "gppo_loss(LP + jnp.log(4.0), LP, -1.0, dual_clip=inf)",
    returns(lambda r: abs(float(r) - 4.0) < 1e-5, "dual_clip=inf: no dual clip (loss 4, not 3)"),
  ),
  Case(
    "gppo_loss(LP.at[0].set(nan), LP, 1.0)",
    returns(_nan, "a NaN log-probability propagates to the loss", nan_ok=True),
  ),
  Case(
    "jax.grad(lambda x: gppo_loss(x, LP, -1.0))(LP - 300.0)",
    returns(None, "an underflowing ratio keeps a finite, bounded gradient (docstring)"),
  ),
  Case(
    "jax.grad(lambda x: gppo_loss(x, LP, -1.0))(LP + 300.0)",
    returns(lambda g: bool(jnp.all(g == 0.0)), "an overflowing ratio is dual-clipped: zero grad"),
  ),
  # -- weight EMA ----------------------------------------------------------------------------
  Case("O.weight_ema(1.0)", raises(ValueError, "weight_ema: decay")),
  Case("O.weight_ema(-0.1)", raises(ValueError, "weight_ema: decay")),
  Case("O.weight_ema(nan)", raises(ValueError, "weight_ema: decay")),
  Case("O.weight_ema(True)", raises(TypeError, "weight_ema: decay")),
  Case("O.ema_params({})", raises(ValueError, "exactly one weight_ema")),
  Case(
    "O.weight_ema(0.9).update(G, O.weight_ema(0.9).init(P))",
    raises(ValueError, "weight_ema: update needs params"),
  ),
  Case("O.weight_ema(0.9).init({'w': jnp.ones(2, int)})", raises(TypeError, "params")),
  Case(
    "step(O.weight_ema(0.9), grads={'w': G['w'], 'b': G['b'][:2]})",
    raises(ValueError, "updates"),
  ),
]


@params(CASES)
def test_case(case):
  run(case, NS)
