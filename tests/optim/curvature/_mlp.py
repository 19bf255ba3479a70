"""A small float64 MLP problem (a few hundred parameters) and its dense Hessian reference."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

SIZES = (5, 12, 10, 3)  # 235 parameters
NUM_EXAMPLES = 32


def init_mlp(key, sizes=SIZES, dtype=jnp.float64):
  params = []
  for k, (m, n) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
    kw, kb = jax.random.split(k)
    params.append(
      {
        "w": jax.random.normal(kw, (m, n), dtype) / np.sqrt(m),
        "b": 0.1 * jax.random.normal(kb, (n,), dtype),
      }
    )
  return params


def mlp(params, x):
  for layer in params[:-1]:
    x = jnp.tanh(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def cross_entropy(logits, labels):
  """Mean softmax cross-entropy over the batch."""
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def loss(params, batch):
  x, y = batch
  return cross_entropy(mlp(params, x), y)


def make_problem(seed=0, sizes=SIZES, num_examples=NUM_EXAMPLES):
  """Float64 params and a classification batch; call with x64 enabled."""
  kp, kx, ky = jax.random.split(jax.random.key(seed), 3)
  params = init_mlp(kp, sizes)
  x = jax.random.normal(kx, (num_examples, sizes[0]), jnp.float64)
  y = jax.random.randint(ky, (num_examples,), 0, sizes[-1])
  return params, (x, y)


@functools.partial(jax.jit, static_argnums=0)
def dense_hessian(f, params, *args):
  """The dense ``P x P`` Hessian of ``f(params, *args)`` in raveled coordinates."""
  flat, unravel = ravel_pytree(params)
  return jax.hessian(lambda z: f(unravel(z), *args))(flat)
