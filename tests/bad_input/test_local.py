"""Hostile inputs to optim.local: tpSGD's layers, projections and labels; NoProp-DT's
schedule, params, labels and outputs (one line a case; harness in tests/bad_input/harness.py)."""

import jax  # noqa: F401 - the reproducers use these names
import jax.numpy as jnp
import numpy as np

from optim.local import (  # noqa: F401
  mlp_init,
  noprop_coefficients,
  noprop_dt_loss,
  noprop_predict,
  noprop_schedule,
  tpsgd_grads,
  tpsgd_projections,
)
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
SIZES = [4, 6, 3]
MLP = mlp_init(SIZES, key=0)
PROJ = tpsgd_projections(SIZES, key=1)
X = jnp.ones((5, 4))
Y = jnp.array([0, 1, 2, 0, 1])
AB = noprop_schedule(2)


def DEN(p, x, z):
  return jnp.concatenate([x, z], 1) @ p


def RO(p, z):
  return z @ p


NP = {"blocks": [jnp.zeros((7, 3))] * 2, "readout": jnp.eye(3)}
KW = {"denoise": DEN, "readout": RO, "key": 0, "num_classes": 3}

CASES = [
  # tpSGD
  Case("tpsgd_projections([4], key=0)", raises(ValueError, "sizes")),
  Case("tpsgd_projections([4, 0, 3], key=0)", raises(ValueError, r"sizes\[1\]")),
  Case("tpsgd_projections(SIZES, key=0, scale=0.0)", raises(ValueError, "scale")),
  Case("mlp_init([4, 2.5, 3], key=0)", raises((TypeError, ValueError), r"sizes\[1\]")),
  Case("tpsgd_grads(MLP, [], X, Y)", raises(ValueError, "projections")),
  Case("tpsgd_grads(MLP, [jnp.ones((3, 5))], X, Y)", raises(ValueError, r"projections\[0\]")),
  Case("tpsgd_grads(MLP, [jnp.ones((6, 3))], X, Y)", raises(ValueError, r"projections\[0\]")),
  Case("tpsgd_grads(MLP, PROJ, jnp.ones((5, 7)), Y)", raises(ValueError, "x must have shape")),
  Case("tpsgd_grads(MLP, PROJ, jnp.ones((5, 4), int), Y)", raises(TypeError, "x must be float")),
  Case("tpsgd_grads(MLP, PROJ, X, Y.at[1].set(3))", raises(ValueError, "labels.*3")),
  Case("tpsgd_grads(MLP, PROJ, X, Y.at[1].set(-1))", raises(ValueError, "labels")),
  Case("tpsgd_grads(MLP, PROJ, X, Y.astype(float))", raises(TypeError, "labels")),
  Case("tpsgd_grads(MLP, PROJ, X, Y[:3])", raises(ValueError, "labels must have shape")),
  Case("tpsgd_grads(MLP, PROJ, X, Y, variant='l3')", raises(ValueError, "variant")),
  Case("tpsgd_grads([MLP[1], MLP[0]], PROJ, X, Y)", raises(ValueError, r"params")),
  Case(
    "tpsgd_grads([{'w': MLP[0]['w']}] + MLP[1:], PROJ, X, Y)", raises(ValueError, r"params\[0\]")
  ),
  Case("tpsgd_grads(MLP, PROJ, X.at[0, 0].set(nan), Y)", raises(ValueError, "non-finite")),
  Case("tpsgd_grads(MLP, PROJ, X.at[0, 0].set(inf), Y)", raises(ValueError, "non-finite")),
  Case(
    "jax.jit(lambda y: tpsgd_grads(MLP, PROJ, X, y)[1])(Y.at[0].set(7))",
    returns(
      lambda r: bool(np.isnan(r).all()), "traced invalid labels poison (label policy)", nan_ok=True
    ),
  ),
  Case("tpsgd_grads(MLP, PROJ, X[:0], Y[:0])", raises(ValueError, "x must hold at least one")),
  # NoProp
  Case("noprop_schedule(0)", raises(ValueError, "num_blocks")),
  Case("noprop_schedule(3, variant='sigmoid')", raises(ValueError, "variant")),
  Case("noprop_schedule(3, alpha_bar_max=1.0)", raises(ValueError, "alpha_bar_max")),
  Case("noprop_schedule(3, alpha_bar_max=nan)", raises(ValueError, "alpha_bar_max")),
  Case("noprop_coefficients([0.0, 0.5, 0.4])", raises(ValueError, "alpha_bar")),
  Case("noprop_coefficients([0.0, 0.5, 1.0])", raises(ValueError, "alpha_bar")),
  Case("noprop_coefficients([[0.0, 0.5]])", raises(ValueError, "alpha_bar")),
  Case("noprop_dt_loss(NP, X, Y, noprop_schedule(3), **KW)", raises(ValueError, "alpha_bar")),
  Case("noprop_dt_loss({'blocks': []}, X, Y, AB, **KW)", raises(ValueError, "params")),
  Case("noprop_dt_loss(NP, X, Y.at[0].set(3), AB, **KW)", raises(ValueError, "labels")),
  Case("noprop_dt_loss(NP, X, Y[:2], AB, **KW)", raises(ValueError, "labels must have shape")),
  Case("noprop_dt_loss(NP, X, Y, AB, **KW, eta=0.0)", raises(ValueError, "eta")),
  Case(
    "noprop_dt_loss(NP, X, Y, AB, **dict(KW, num_classes=None))",
    raises(ValueError, "num_classes"),
  ),
  Case(
    "noprop_dt_loss(dict(NP, embed=jnp.ones((4, 3))), X, Y, AB, **KW)",
    raises(ValueError, "embed"),
  ),
  Case(
    "noprop_dt_loss(NP, X, Y, AB, **dict(KW, denoise=lambda p, x, z: z[:, :2]))",
    raises(ValueError, "denoise"),
  ),
  Case(
    "noprop_dt_loss(NP, X, Y, AB, **dict(KW, readout=lambda p, z: z[:, :2]))",
    raises(ValueError, "readout"),
  ),
  Case("noprop_dt_loss(NP, X.at[0, 0].set(nan), Y, AB, **KW)", raises(ValueError, "non-finite")),
  Case("noprop_coefficients(noprop_schedule(3))[0].shape", returns(lambda s: s == (3,), "valid")),
  Case(
    "jax.jit(lambda y: noprop_dt_loss(NP, X, y, AB, **KW)[0])(Y.at[0].set(9))",
    returns(
      lambda r: bool(np.isnan(r)), "traced invalid labels poison (label policy)", nan_ok=True
    ),
  ),
  Case("noprop_predict(NP, X, AB, **dict(KW, key='a'))", raises(TypeError, "key")),
  Case("noprop_predict(NP, X, AB, **KW).shape", returns(lambda s: s == (5, 3), "valid input")),
]


@params(CASES)
def test_local(case):
  run(case, globals())
