"""Hostile inputs to optim.local's NoProp-CT and NoProp-FM: params, labels, schedule, step
counts, keys and the user networks' outputs (one line a case; harness in
tests/bad_input/harness.py)."""

import jax  # noqa: F401 - the reproducers use these names
import jax.numpy as jnp
import numpy as np

from optim.local import (  # noqa: F401
  noprop_ct_loss,
  noprop_ct_predict,
  noprop_fm_loss,
  noprop_fm_predict,
)
from tests.bad_input.harness import Case, params, raises, returns, run

nan = float("nan")
X = jnp.ones((5, 2))
Y = jnp.array([0, 1, 2, 0, 1])


def NET(p, x, z, t):
  return jnp.concatenate([x, z, t[:, None]], 1) @ p


def RO(p, z):
  return z @ p


CT = {"net": jnp.zeros((6, 3)), "readout": jnp.eye(3)}
FM = {"net": jnp.zeros((6, 3))}
KC = {"denoise": NET, "readout": RO, "key": 0, "num_classes": 3}
KF = {"vector_field": NET, "key": 0, "num_classes": 3}

CASES = [
  # NoProp-CT
  Case("noprop_ct_loss({'net': CT['net']}, X, Y, **KC)", raises(ValueError, "params")),
  Case("noprop_ct_loss(CT, X, Y.at[0].set(3), **KC)", raises(ValueError, "labels")),
  Case("noprop_ct_loss(CT, X, Y[:2], **KC)", raises(ValueError, "labels must have shape")),
  Case("noprop_ct_loss(CT, X, Y, **KC, eta=0.0)", raises(ValueError, "eta")),
  Case("noprop_ct_loss(CT, X, Y, **KC, schedule='sigmoid')", raises(ValueError, "schedule")),
  Case("noprop_ct_loss(CT, X, Y, **KC, alpha_bar_max=1.0)", raises(ValueError, "alpha_bar_max")),
  Case("noprop_ct_loss(CT, X, Y, **dict(KC, num_classes=None))", raises(ValueError, "num_classes")),
  Case(
    "noprop_ct_loss(CT, X, Y, **dict(KC, denoise=lambda p, x, z, t: z[:, :2]))",
    raises(ValueError, "denoise must return"),
  ),
  Case(
    "noprop_ct_loss(CT, X, Y, **dict(KC, readout=lambda p, z: z[:, :2]))",
    raises(ValueError, "readout must return"),
  ),
  Case("noprop_ct_loss(CT, X.at[0, 0].set(nan), Y, **KC)", raises(ValueError, "non-finite")),
  Case(
    "jax.jit(lambda y: noprop_ct_loss(CT, X, y, **KC)[0])(Y.at[0].set(9))",
    returns(lambda r: bool(np.isnan(r)), "traced invalid labels poison", nan_ok=True),
  ),
  Case("noprop_ct_predict(CT, X, **KC, num_steps=0)", raises(ValueError, "num_steps")),
  Case("noprop_ct_predict(CT, X, **KC, variant='euler')", raises(ValueError, "variant")),
  Case("noprop_ct_predict(CT, X, **dict(KC, key='a'))", raises(TypeError, "key")),
  Case("noprop_ct_predict(CT, X, **KC).shape", returns(lambda s: s == (5, 3), "valid input")),
  # NoProp-FM
  Case("noprop_fm_loss({}, X, Y, **KF)", raises(ValueError, "params")),
  Case("noprop_fm_loss(FM, X, Y, **KF, readout=RO)", raises(ValueError, "readout")),
  Case("noprop_fm_loss(FM, X, Y.at[0].set(-1), **KF)", raises(ValueError, "labels")),
  Case("noprop_fm_loss(FM, X, Y, **KF, eta=-1.0)", raises(ValueError, "eta")),
  Case(
    "noprop_fm_loss(dict(FM, embed=jnp.ones((4, 3))), X, Y, **KF)",
    raises(ValueError, "embed"),
  ),
  Case(
    "noprop_fm_loss(FM, X, Y, **dict(KF, vector_field=lambda p, x, z, t: z[:, :1]))",
    raises(ValueError, "vector_field must return"),
  ),
  Case("noprop_fm_loss(FM, X.at[1, 1].set(nan), Y, **KF)", raises(ValueError, "non-finite")),
  Case(
    "jax.jit(lambda y: noprop_fm_loss(FM, X, y, **KF)[0])(Y.at[0].set(9))",
    returns(lambda r: bool(np.isnan(r)), "traced invalid labels poison", nan_ok=True),
  ),
  Case("noprop_fm_predict(FM, X, **KF, num_steps=2.5)", raises(ValueError, "num_steps")),
  Case("noprop_fm_predict(FM, X, **dict(KF, key=1.5))", raises(TypeError, "key")),
  Case("noprop_fm_predict(FM, X, **KF).shape", returns(lambda s: s == (5, 3), "valid input")),
]


@params(CASES)
def test_noprop_ct(case):
  run(case, globals())
