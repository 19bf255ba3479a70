"""A GPT-2-style byte-level decoder in plain JAX, and its corpus (used by ``sophia_gpt.py``).

The model follows the configuration of the Sophia paper's GPT-2 runs (nanoGPT's ``model.py``
with ``bias=False``): pre-LN blocks, learned positions, a GELU MLP of width ``4 d``, the
output projection tied to the token embedding, no biases, weights drawn from
:math:`N(0, 0.02^2)` and the two residual projections of each block from
:math:`N(0, (0.02 / \\sqrt{2 L})^2)` (Radford et al., 2019). The blocks' weights are
stacked along a leading layer axis and applied with ``lax.scan``, so compile time does not
grow with depth.

The corpus is the Python standard library's own sources (every ``*.py`` under the stdlib
directory outside ``site-packages``, sorted by path, read as UTF-8 bytes; vocabulary 256):
text that ships with every Python, so the study runs offline. Every 20th file is held out
for validation, so the validation text comes from files the model never trained on.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sysconfig

import jax
import jax.numpy as jnp
import numpy as np
import optax

VOCAB = 256


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """Width ``d_model``, depth ``layers``, ``heads`` attention heads, ``context`` tokens."""

  d_model: int
  layers: int
  heads: int
  context: int

  @property
  def n_params(self) -> int:
    d = self.d_model
    return VOCAB * d + self.context * d + self.layers * (12 * d * d + 2 * d) + d


def load_corpus(max_bytes: int = 24_000_000, val_every: int = 20):
  """``(train, val)`` uint8 arrays of stdlib source bytes; every ``val_every``-th file to val."""
  stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
  files = sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts)
  train, val, size = [], [], 0
  for i, path in enumerate(files):
    data = path.read_bytes()
    (val if i % val_every == val_every - 1 else train).append(data)
    size += len(data)
    if size >= max_bytes:
      break
  as_array = lambda chunks: np.frombuffer(b"".join(chunks), np.uint8)
  return as_array(train), as_array(val)


def init_params(config: GPTConfig, key) -> dict:
  """GPT-2 initialization; block weights stacked on a leading axis of size ``layers``."""
  d, n = config.d_model, config.layers
  k = jax.random.split(key, 6)
  normal = lambda key, shape, std=0.02: std * jax.random.normal(key, shape, jnp.float32)
  resid_std = 0.02 / np.sqrt(2 * n)
  return {
    "wte": normal(k[0], (VOCAB, d)),
    "wpe": normal(k[1], (config.context, d)),
    "blocks": {
      "ln1": jnp.ones((n, d)),
      "qkv": normal(k[2], (n, d, 3 * d)),
      "attn_proj": normal(k[3], (n, d, d), resid_std),
      "ln2": jnp.ones((n, d)),
      "fc": normal(k[4], (n, d, 4 * d)),
      "mlp_proj": normal(k[5], (n, 4 * d, d), resid_std),
    },
    "ln_f": jnp.ones((d,)),
  }


def decay_mask(params: dict) -> dict:
  """nanoGPT's grouping: the linear layers' weights decay; layer norms and the (tied)
  embeddings do not."""
  matrices = ("qkv", "attn_proj", "fc", "mlp_proj")
  return {
    "wte": False,
    "wpe": False,
    "blocks": {name: name in matrices for name in params["blocks"]},
    "ln_f": False,
  }


def _layer_norm(x, scale, eps=1e-5):
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * scale


def _causal_attention(q, k, v):
  # Written out: on CPU its gradient is ~2.5x faster than jax.nn.dot_product_attention's.
  scores = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
  causal = jnp.tril(jnp.ones(scores.shape[-2:], bool))
  weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
  return jnp.einsum("bhts,bshd->bthd", weights, v)


def logits_fn(params: dict, tokens: jax.Array, config: GPTConfig) -> jax.Array:
  """``tokens`` ``[batch, T]`` (``T <= context``) -> next-byte logits ``[batch, T, 256]``."""
  b, t = tokens.shape
  h, hd = config.heads, config.d_model // config.heads
  x = params["wte"][tokens] + params["wpe"][:t]

  def block(x, w):
    q, k, v = jnp.split(_layer_norm(x, w["ln1"]) @ w["qkv"], 3, axis=-1)
    heads = lambda z: z.reshape(b, t, h, hd)
    y = _causal_attention(heads(q), heads(k), heads(v))
    x = x + y.reshape(b, t, -1) @ w["attn_proj"]
    x = x + jax.nn.gelu(_layer_norm(x, w["ln2"]) @ w["fc"]) @ w["mlp_proj"]
    return x, None

  x, _ = jax.lax.scan(block, x, params["blocks"])
  return _layer_norm(x, params["ln_f"]) @ params["wte"].T


def loss_fn(params, x, y, config: GPTConfig):
  """Mean next-byte cross-entropy (nats)."""
  logits = logits_fn(params, x, config)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def sampled_loss_fn(params, key, x, config: GPTConfig):
  """The loss at labels drawn from the model's own predictive distribution (Sophia-G's
  Gauss-Newton-Bartlett estimator differentiates this)."""
  logits = logits_fn(params, x, config)
  y = jax.random.categorical(key, jax.lax.stop_gradient(logits))
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def windows(data: jax.Array, starts: jax.Array, context: int):
  """Inputs and next-byte targets of the windows starting at ``starts``."""
  seq = data[starts[:, None] + jnp.arange(context + 1)].astype(jnp.int32)
  return seq[:, :-1], seq[:, 1:]
