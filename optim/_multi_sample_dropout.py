"""Multi-sample dropout (Inoue 2019): several dropout masks through one shared head."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from optim._validation import as_key, check_flag, check_scalar

_WHERE = "MultiSampleDropout"


class MultiSampleDropout(nnx.Module):
  r"""Dropout sampled ``num_samples`` times before one shared head, as one batched call.

  For features :math:`h` (the output of the network below the dropout) and a head
  :math:`f_\theta` (typically the final fully connected layer),

  .. math::
    z_k = f_\theta\big(m_k \odot h / (1 - p)\big), \quad m_k \sim \text{Bernoulli}(1 - p),
    \quad k = 1, \dots, K, \qquad
    \mathcal{L} = \frac{1}{K} \sum_{k=1}^{K} \ell(z_k, y),

  every head sharing the weights :math:`\theta`: the loss averaged over :math:`K` dropout
  samples, a lower-variance estimate of the dropout loss than one sample per step, which
  the paper reports trains in fewer iterations and generalizes better, at the cost of
  duplicating only the layers above the dropout. The call returns the :math:`K` outputs
  stacked on a new leading axis (the head applied with ``jax.vmap`` over the masks); the
  mask of sample :math:`k` is ``nnx.Dropout(rate)(h, rngs=keys[k])`` with
  ``keys = jax.random.split(key, K)``, so the call equals a loop over :math:`K` explicit
  heads with those keys. Average the loss over the leading axis.

  In evaluation (``deterministic``, set by ``model.eval()``) dropout is off and the
  :math:`K` outputs are equal: the head runs once and its output is broadcast to the same
  ``(K, ...)`` shape, so the training and evaluation code read alike (take ``out[0]``).

  The head must keep no running state (``nnx.BatchStat``): one set of statistics cannot
  take :math:`K` parallel updates, so such a head is refused (``TypeError``).

  Args:
    head: the shared ``nnx.Module`` applied to each dropped-out copy of the features.
    rate: the dropout probability :math:`p \in [0, 1)`.
    num_samples: :math:`K \ge 1` (the paper uses 8).
    deterministic: evaluation mode (no dropout) when true; may be given per call.
    rngs: ``nnx.Rngs`` (its ``dropout`` stream is forked) or ``None`` (then every
      training call needs ``key=``).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> from optim.layers import MultiSampleDropout
    >>> head = nnx.Linear(16, 10, rngs=nnx.Rngs(0))
    >>> msd = MultiSampleDropout(head, rate=0.5, num_samples=8, rngs=nnx.Rngs(dropout=1))
    >>> h, y = jnp.ones((4, 16)), jnp.array([0, 1, 2, 3])
    >>> logits = msd(h)
    >>> logits.shape
    (8, 4, 10)
    >>> ys = jnp.broadcast_to(y, logits.shape[:-1])  # the labels of every sample
    >>> loss = optax.softmax_cross_entropy_with_integer_labels(logits, ys).mean()  # (1/K) sum_k
    >>> msd.eval()
    >>> bool(jnp.all(msd(h)[0] == head(h)))
    True

  References:
    Inoue, "Multi-Sample Dropout for Accelerated Training and Better Generalization",
    arXiv:1905.09788 (Section 2, Figure 1).
  """

  def __init__(
    self,
    head: nnx.Module,
    *,
    rate: float,
    num_samples: int = 8,
    deterministic: bool | None = False,
    rngs: nnx.Rngs | None = None,
  ):
    if not isinstance(head, nnx.Module):
      raise TypeError(f"{_WHERE}: head must be an nnx.Module, got {type(head).__name__}")
    if jax.tree.leaves(nnx.state(head, nnx.BatchStat)):
      raise TypeError(
        f"{_WHERE}: head keeps running statistics (nnx.BatchStat, e.g. a BatchNorm): they "
        "cannot take num_samples parallel updates; normalize below the dropout instead"
      )
    self.rate = check_scalar(f"{_WHERE}: rate", rate, lo=0.0, hi=1.0, hi_open=True, static=True)
    self.num_samples = check_scalar(
      f"{_WHERE}: num_samples", num_samples, lo=1, integer=True, static=True
    )
    if deterministic is not None:
      deterministic = check_flag(f"{_WHERE}: deterministic", deterministic)
    self.deterministic = deterministic
    self.head = head
    self.dropout = nnx.Dropout(self.rate, deterministic=False)
    if isinstance(rngs, nnx.Rngs):
      self.rngs = rngs["dropout"].fork()
    elif rngs is None:
      self.rngs = nnx.data(None)
    else:
      raise TypeError(f"{_WHERE}: rngs must be an nnx.Rngs or None, got {type(rngs).__name__}")

  def set_view(self, deterministic: bool | None = None):
    """Switches evaluation mode for ``nnx.view`` (as ``nnx.Dropout.set_view``).

    Args:
      deterministic: no dropout when true; ``None`` leaves it unchanged.
    """
    if deterministic is not None:
      self.deterministic = deterministic

  def __call__(
    self, x: jax.Array, *, deterministic: bool | None = None, key: Any = None
  ) -> jax.Array:
    """The head's outputs for ``num_samples`` dropout masks, stacked on a new axis 0.

    Args:
      x: the features below the dropout.
      deterministic: overrides the module's mode for this call.
      key: the PRNG key of the masks (typed, raw or an int seed); default: the next key
        of the module's ``dropout`` stream.

    Returns:
      ``(num_samples, *head(x).shape)``.
    """
    mode = self.deterministic if deterministic is None else deterministic
    if mode is None:
      raise ValueError(
        f"{_WHERE}: deterministic is None: pass it to the constructor or the call "
        "(or use model.train() / model.eval())"
      )
    if mode or self.rate == 0.0:
      out = self.head(x)
      return jnp.broadcast_to(out[None], (self.num_samples, *out.shape))
    if key is None:
      if self.rngs is None:
        raise ValueError(f"{_WHERE}: no key: pass key= or build the module with rngs")
      key = self.rngs()
    keys = jax.random.split(as_key(key), self.num_samples)
    graphdef, state = nnx.split(self.head)
    dropout = self.dropout

    def one(k):
      return nnx.merge(graphdef, state)(dropout(x, deterministic=False, rngs=k))

    return jax.vmap(one)(keys)
