"""Operators and estimators on parameters sharded over 8 virtual devices equal the unsharded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from optim import curvature


def _model(params, x):
  return jnp.tanh(x @ params["w"] + params["b"]) @ params["v"]


def _loss(params, batch):
  x, y = batch
  return jax.nn.logsumexp(_model(params, x), axis=-1).mean() - jnp.mean(
    jnp.take_along_axis(_model(params, x), y[:, None], axis=-1)
  )


@jax.jit
def _everything(params, batch):
  x, y = batch
  h = curvature.hessian_matvec(_loss, params, batch)
  ggn = curvature.ggn_matvec(
    _model, lambda z, t: jnp.mean(curvature.softmax_nll(z, t)), params, (x, y)
  )
  fisher = curvature.fisher_matvec(_model, params, (x, y), variant="true", key=jax.random.key(3))
  v = jax.tree.map(jnp.ones_like, params)
  return {
    "hvp": curvature.hvp(_loss, params, v, batch),
    "ggn": ggn(v),
    "fisher": fisher(v),
    "trace": curvature.hutchinson_trace(h, key=jax.random.key(0), num_probes=10),
    "top": curvature.top_eigenvalues(h, key=jax.random.key(1), k=2, max_iterations=30),
    "slq": curvature.slq_density(h, key=jax.random.key(2), num_iterations=8, num_points=64),
  }


@pytest.mark.integration  # heavy (3-7 s each): CI's second tier keeps make test within 5 min
def test_sharded_params_give_the_unsharded_results(x64, mesh8):
  kw, kv, kx, ky = jax.random.split(jax.random.key(0), 4)
  params = {
    "w": jax.random.normal(kw, (8, 6), jnp.float64) / 3,  # leading dim divides 8
    "b": jnp.zeros(6, jnp.float64),
    "v": jax.random.normal(kv, (6, 4), jnp.float64) / 2,
  }
  batch = (jax.random.normal(kx, (16, 8), jnp.float64), jax.random.randint(ky, (16,), 0, 4))
  sharded = dict(params, w=jax.device_put(params["w"], NamedSharding(mesh8, P("d"))))
  assert len(sharded["w"].sharding.device_set) == 8
  want = _everything(params, batch)
  got = _everything(sharded, batch)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=jax.tree_util.keystr(path))
