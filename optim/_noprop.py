"""NoProp-DT (Li, Teh, Pascanu 2025): blocks trained independently to denoise a label embedding."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optim._tpsgd import _check_finite, _poison_rows
from optim._validation import as_key, check_choice, check_labels, check_scalar, is_traced

_REF = """Li, Teh, Pascanu, "NoProp: Training Neural Networks without Back-propagation or
    Forward-propagation", 2025, https://arxiv.org/abs/2503.24322"""


def noprop_schedule(
  num_blocks: int, *, variant: str = "cosine", alpha_bar_max: float = 0.999, s: float = 0.008
) -> np.ndarray:
  r"""The signal levels :math:`\bar\alpha_0, \dots, \bar\alpha_T` of NoProp-DT (float64).

  NoProp's time runs from noise to label: :math:`q(z_t \mid y) = \mathcal{N}(\sqrt{\bar
  \alpha_t}\, u_y, (1 - \bar\alpha_t) I)` with :math:`\bar\alpha_t` increasing from
  :math:`\bar\alpha_0 = 0` (pure noise) to :math:`\bar\alpha_T`. ``"cosine"`` is the
  cosine schedule of Nichol and Dhariwal read backwards,
  :math:`\bar\alpha_t = \min(f(T - t) / f(0), \bar\alpha_{\max})` with
  :math:`f(u) = \cos^2\big(\tfrac{\pi}{2} \tfrac{u/T + s}{1 + s}\big)`; ``"linear"`` is
  :math:`\bar\alpha_t = \bar\alpha_{\max}\, t / T`. The cap :math:`\bar\alpha_{\max} < 1`
  keeps :math:`\mathrm{SNR}(T) = \bar\alpha_T / (1 - \bar\alpha_T)`, and so the last
  block's loss weight, finite.

  Args:
    num_blocks: :math:`T`, the number of blocks (denoising steps), at least 1.
    variant: ``"cosine"`` or ``"linear"``.
    alpha_bar_max: :math:`\bar\alpha_{\max}` in ``(0, 1)``.
    s: the cosine schedule's offset :math:`s \ge 0`.

  Returns:
    A float64 NumPy array of shape ``(num_blocks + 1,)``.

  Example:
    >>> from optim.local import noprop_schedule
    >>> noprop_schedule(4, variant="linear").round(3).tolist()
    [0.0, 0.25, 0.5, 0.749, 0.999]

  References:
    {ref}
  """
  check_scalar("num_blocks", num_blocks, lo=1, integer=True, static=True)
  check_choice("variant", variant, ("cosine", "linear"))
  check_scalar("alpha_bar_max", alpha_bar_max, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
  check_scalar("s", s, lo=0.0)
  t = np.arange(num_blocks + 1, dtype=np.float64)
  if variant == "linear":
    return alpha_bar_max * t / num_blocks

  def f(u):
    return np.cos(0.5 * math.pi * (u / num_blocks + s) / (1 + s)) ** 2

  out = np.minimum(f(num_blocks - t) / f(0.0), alpha_bar_max)
  out[0] = 0.0  # f(T) = cos(pi/2)^2 is 0 up to rounding
  return out


noprop_schedule.__doc__ = noprop_schedule.__doc__.replace("{ref}", _REF)


def noprop_coefficients(alpha_bar: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""The coefficients :math:`(a_t, b_t, c_t)_{t=1}^T` of NoProp-DT's denoising chain.

  With :math:`\alpha_{t-1} = \bar\alpha_{t-1} / \bar\alpha_t` (NoProp's forward process
  :math:`q(z_{t-1} \mid z_t) = \mathcal{N}(\sqrt{\alpha_{t-1}}\, z_t, (1 - \alpha_{t-1})
  I)` from the label towards the noise), the posterior
  :math:`q(z_t \mid z_{t-1}, y) = \mathcal{N}(a_t u_y + b_t z_{t-1}, c_t I)` has

  .. math::
    a_t = \frac{\sqrt{\bar\alpha_t}\,(1 - \alpha_{t-1})}{1 - \bar\alpha_{t-1}}, \quad
    b_t = \frac{\sqrt{\alpha_{t-1}}\,(1 - \bar\alpha_t)}{1 - \bar\alpha_{t-1}}, \quad
    c_t = \frac{(1 - \bar\alpha_t)(1 - \alpha_{t-1})}{1 - \bar\alpha_{t-1}},

  and inference replaces :math:`u_y` by block :math:`t`'s prediction (paper, eq. 5 and
  appendix A). With :math:`\bar\alpha_0 = 0`, :math:`a_1 = \sqrt{\bar\alpha_1}`,
  :math:`b_1 = 0`, :math:`c_1 = 1 - \bar\alpha_1`.

  Args:
    alpha_bar: :math:`\bar\alpha_0, \dots, \bar\alpha_T`, increasing, in ``[0, 1)``
      (:func:`noprop_schedule`).

  Returns:
    ``(a, b, c)``, each of shape ``(T,)`` (entry ``t - 1`` for block ``t``).

  Example:
    >>> from optim.local import noprop_coefficients, noprop_schedule
    >>> a, b, c = noprop_coefficients(noprop_schedule(3))
    >>> a.shape, float(b[0])
    ((3,), 0.0)

  References:
    {ref}
  """
  ab = _check_alpha_bar(alpha_bar)
  prev, cur = ab[:-1], ab[1:]
  alpha_prev = prev / cur
  a = np.sqrt(cur) * (1 - alpha_prev) / (1 - prev)
  b = np.sqrt(alpha_prev) * (1 - cur) / (1 - prev)
  c = (1 - cur) * (1 - alpha_prev) / (1 - prev)
  return tuple(jnp.asarray(v, jnp.result_type(float)) for v in (a, b, c))


noprop_coefficients.__doc__ = noprop_coefficients.__doc__.replace("{ref}", _REF)


def noprop_dt_loss(
  params: dict,
  x: jax.Array,
  labels: jax.Array,
  alpha_bar: Any,
  *,
  denoise: Callable,
  readout: Callable,
  key: Any,
  eta: float = 0.1,
  num_classes: int | None = None,
) -> tuple[jax.Array, dict]:
  r"""The NoProp-DT objective (paper, eq. 8): every block denoises the label on its own.

  For :math:`T` blocks :math:`\hat u_{\theta_t}(z_{t-1}, x)` (``denoise``), the class
  embedding :math:`u_y` (row :math:`y` of ``params["embed"]``, or the one-hot vector when
  the key is absent), :math:`\mathrm{SNR}(t) = \bar\alpha_t / (1 - \bar\alpha_t)` and
  :math:`q(z_t \mid y) = \mathcal{N}(\sqrt{\bar\alpha_t}\, u_y, (1 - \bar\alpha_t) I)`,

  .. math::
    \mathcal{L} = \mathbb{E}_{q(z_T \mid y)}\big[-\log \hat p_{\theta_{\rm out}}(y \mid z_T)
    \big] + D_{\rm KL}\big(q(z_0 \mid y) \,\Vert\, \mathcal{N}(0, I)\big)
    + \frac{T}{2} \eta\, \mathbb{E}_{t \sim U\{1, T\}} \mathbb{E}_{q(z_{t-1} \mid y)}
    \big[(\mathrm{SNR}(t) - \mathrm{SNR}(t-1))\, \lVert \hat u_{\theta_t}(z_{t-1}, x)
    - u_y \rVert^2\big],

  the expectation over :math:`t` taken exactly (all :math:`T` terms, so
  :math:`\tfrac{T}{2}\eta\,\mathbb{E}_t = \tfrac{\eta}{2}\sum_t`), those over :math:`z`
  by one draw per example and block, and all of them averaged over the batch. Each
  :math:`z_{t-1}` is drawn from :math:`q(z_{t-1} \mid y)`, never produced by block
  :math:`t-1`, so block :math:`t`'s gradient comes from its own term only: no signal
  passes between blocks, in the forward or the backward direction. The KL term is
  :math:`\tfrac12(\bar\alpha_0 \lVert u_y \rVert^2 - d\,\bar\alpha_0 - d \log(1 -
  \bar\alpha_0))`, zero for :math:`\bar\alpha_0 = 0`. Differentiate with ``jax.grad``
  and step with any optax optimizer (the paper uses AdamW).

  Args:
    params: ``{"blocks": [theta_1, ..., theta_T], "readout": theta_out}`` and optionally
      ``"embed"``, a ``(num_classes, d)`` embedding (learned with the rest when it is in
      the differentiated params).
    x: the batch of inputs (batch first; passed to ``denoise`` as it is).
    labels: integer class labels in ``[0, num_classes)``, shape ``(batch,)``.
    alpha_bar: :math:`\bar\alpha_0, \dots, \bar\alpha_T` (:func:`noprop_schedule`).
    denoise: ``denoise(theta_t, x, z) -> u_hat`` with ``z`` and ``u_hat`` of shape
      ``(batch, d)``.
    readout: ``readout(theta_out, z) -> logits`` of shape ``(batch, num_classes)``.
    key: PRNG key for the noise draws (``jax.random.normal(key, (T + 1, batch, d))``:
      row ``t - 1`` for block ``t``, row ``T`` for :math:`z_T`).
    eta: :math:`\eta > 0`, the weight of the denoising terms.
    num_classes: the number of classes; required without ``params["embed"]`` (the
      embedding is then one-hot, :math:`d` = ``num_classes``).

  Returns:
    ``(loss, terms)`` with ``terms = {"denoise": (T,) weighted per-block terms,
    "cross_entropy": ..., "kl": ...}`` (scalars).

  Raises:
    ValueError: a schedule whose length is not ``len(params["blocks"]) + 1``, labels out
      of range, an embedding or block output of the wrong shape, or (values concrete) a
      non-finite loss. Under ``jit`` invalid labels give NaN (the class-label policy).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim.local import noprop_dt_loss, noprop_schedule
    >>> T, d = 3, 3
    >>> den = lambda p, x, z: jnp.concatenate([x, z], 1) @ p
    >>> params = {"blocks": [jnp.zeros((2 + d, d))] * T, "readout": jnp.eye(d)}
    >>> x, y = jnp.ones((4, 2)), jnp.array([0, 1, 2, 0])
    >>> loss, terms = noprop_dt_loss(params, x, y, noprop_schedule(T), denoise=den,
    ...                              readout=lambda p, z: z @ p, key=0, num_classes=3)
    >>> terms["denoise"].shape
    (3,)
    >>> grads = jax.grad(lambda p: noprop_dt_loss(p, x, y, noprop_schedule(T), denoise=den,
    ...                  readout=lambda p, z: z @ p, key=0, num_classes=3)[0])(params)

  References:
    {ref}
  """
  check_scalar("eta", eta, lo=0.0, lo_open=True)
  blocks = _check_params(params)
  num_blocks = len(blocks)
  ab = _check_alpha_bar(alpha_bar, num_blocks)
  embed, num_classes = _embedding(params, num_classes)
  valid = check_labels("labels", labels, num_classes)
  batch = jnp.shape(labels)[0] if jnp.ndim(labels) == 1 else None
  if batch is None or jnp.shape(x)[:1] != (batch,):
    raise ValueError(
      f"labels must have shape (batch,) with x's batch {jnp.shape(x)[:1]}, got {jnp.shape(labels)}"
    )
  u = _poison_rows(embed[labels], valid)
  d = u.shape[1]
  eps = jax.random.normal(as_key(key), (num_blocks + 1, batch, d), u.dtype)
  snr = ab / (1 - ab)  # float64 NumPy, then the embedding's dtype
  weight = 0.5 * eta * jnp.asarray(snr[1:] - snr[:-1], u.dtype)
  ab = jnp.asarray(ab, u.dtype)
  terms = []
  for t in range(1, num_blocks + 1):
    z = jnp.sqrt(ab[t - 1]) * u + jnp.sqrt(1 - ab[t - 1]) * eps[t - 1]
    u_hat = denoise(blocks[t - 1], x, z)
    if jnp.shape(u_hat) != u.shape:
      raise ValueError(f"denoise must return shape {u.shape} like z, got {jnp.shape(u_hat)}")
    terms.append(weight[t - 1] * jnp.mean(jnp.sum((u_hat - u) ** 2, -1)))
  z_T = jnp.sqrt(ab[-1]) * u + jnp.sqrt(1 - ab[-1]) * eps[-1]
  logits = readout(params["readout"], z_T)
  if jnp.shape(logits) != (batch, num_classes):
    raise ValueError(
      f"readout must return logits of shape {(batch, num_classes)}, got {jnp.shape(logits)}"
    )
  onehot = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
  ce = jnp.mean(optax.softmax_cross_entropy(logits, onehot))
  a0 = ab[0]
  kl = 0.5 * jnp.mean(a0 * jnp.sum(u**2, -1) - d * a0 - d * jnp.log1p(-a0))
  denoise_terms = jnp.stack(terms)
  loss = ce + kl + jnp.sum(denoise_terms)
  _check_finite(loss, "noprop_dt_loss", "loss")
  return loss, {"denoise": denoise_terms, "cross_entropy": ce, "kl": kl}


noprop_dt_loss.__doc__ = noprop_dt_loss.__doc__.replace("{ref}", _REF)


def noprop_predict(
  params: dict,
  x: jax.Array,
  alpha_bar: Any,
  *,
  denoise: Callable,
  readout: Callable,
  key: Any,
  num_classes: int | None = None,
) -> jax.Array:
  r"""NoProp-DT inference: the denoising chain through the blocks, then the readout.

  .. math::
    z_0 \sim \mathcal{N}(0, I), \qquad
    z_t = a_t\, \hat u_{\theta_t}(z_{t-1}, x) + b_t z_{t-1} + \sqrt{c_t}\, \epsilon_t,
    \quad \epsilon_t \sim \mathcal{N}(0, I), \quad t = 1, \dots, T,

  with :math:`(a_t, b_t, c_t)` of :func:`noprop_coefficients`; returns
  :math:`\hat p_{\theta_{\rm out}}`'s logits at :math:`z_T`. With a perfect denoiser
  (:math:`\hat u = u_y`) :math:`z_t` has exactly the law :math:`q(z_t \mid y)`.

  Args:
    params, alpha_bar, denoise, readout, num_classes: as for :func:`noprop_dt_loss`.
    x: the batch of inputs.
    key: PRNG key (``jax.random.normal(key, (T + 1, batch, d))``: row 0 is
      :math:`z_0`, row :math:`t` is :math:`\epsilon_t`).

  Returns:
    Logits of shape ``(batch, num_classes)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.local import noprop_predict, noprop_schedule
    >>> den = lambda p, x, z: jnp.concatenate([x, z], 1) @ p
    >>> params = {"blocks": [jnp.zeros((5, 3))] * 2, "readout": jnp.eye(3)}
    >>> noprop_predict(params, jnp.ones((4, 2)), noprop_schedule(2), denoise=den,
    ...                readout=lambda p, z: z @ p, key=0, num_classes=3).shape
    (4, 3)

  References:
    {ref}
  """
  blocks = _check_params(params)
  ab = _check_alpha_bar(alpha_bar, len(blocks))
  embed, num_classes = _embedding(params, num_classes)
  a, b, c = noprop_coefficients(ab)
  batch, d = jnp.shape(x)[0], embed.shape[1]
  eps = jax.random.normal(as_key(key), (len(blocks) + 1, batch, d), embed.dtype)
  z = eps[0]
  for t in range(1, len(blocks) + 1):
    u_hat = denoise(blocks[t - 1], x, z)
    z = a[t - 1] * u_hat + b[t - 1] * z + jnp.sqrt(c[t - 1]) * eps[t]
  return readout(params["readout"], z)


noprop_predict.__doc__ = noprop_predict.__doc__.replace("{ref}", _REF)


def _check_params(params) -> list:
  if not isinstance(params, dict) or "blocks" not in params or "readout" not in params:
    raise ValueError(
      'params must be a dict with keys "blocks" and "readout" (and optionally "embed")'
    )
  blocks = list(params["blocks"])
  if not blocks:
    raise ValueError('params["blocks"] must hold at least one block')
  return blocks


def _check_alpha_bar(alpha_bar, num_blocks: int | None = None) -> np.ndarray:
  if is_traced(alpha_bar):
    raise TypeError("alpha_bar sets the loss weights and must be concrete, got a tracer")
  ab = np.asarray(alpha_bar, dtype=np.float64)
  if ab.ndim != 1 or ab.size < 2:
    raise ValueError(f"alpha_bar must be a 1-D schedule of T + 1 >= 2 levels, got shape {ab.shape}")
  if num_blocks is not None and ab.size != num_blocks + 1:
    raise ValueError(
      f"alpha_bar must have len(params['blocks']) + 1 = {num_blocks + 1} entries, got {ab.size}"
    )
  if not np.all(np.isfinite(ab)) or ab[0] < 0 or ab[-1] >= 1 or np.any(np.diff(ab) <= 0):
    raise ValueError(f"alpha_bar must increase strictly within [0, 1), got {ab.tolist()}")
  return ab


def _embedding(params, num_classes) -> tuple[jax.Array, int]:
  if num_classes is not None:
    check_scalar("num_classes", num_classes, lo=1, integer=True, static=True)
  if "embed" in params:
    embed = jnp.asarray(params["embed"])
    if embed.ndim != 2 or (num_classes is not None and embed.shape[0] != num_classes):
      want = "(num_classes, d)" if num_classes is None else f"({num_classes}, d)"
      raise ValueError(f'params["embed"] must have shape {want}, got {embed.shape}')
    return embed, embed.shape[0]
  if num_classes is None:
    raise ValueError(
      'num_classes must be given when params has no "embed" (the one-hot embedding, '
      "d = num_classes)"
    )
  dtype = jnp.result_type(*jax.tree.leaves(params["readout"]), float)
  return jnp.eye(int(num_classes), dtype=dtype), int(num_classes)
