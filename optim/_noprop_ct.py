"""NoProp-CT and NoProp-FM (Li, Teh, Pascanu 2025): one network denoises a label embedding in
continuous time, or transports noise to it along a flow-matching vector field."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optim._noprop import _REF, _embedding
from optim._tpsgd import _check_finite, _poison_rows
from optim._validation import as_key, check_choice, check_labels, check_scalar

_SCHEDULES = ("cosine", "linear")


def _check_net_params(params, need: tuple[str, ...]) -> None:
  keys = ", ".join(f'"{k}"' for k in need)
  if not isinstance(params, dict) or any(k not in params for k in need):
    raise ValueError(f'params must be a dict with keys {keys} (and optionally "embed")')


def _alpha_bar_fn(schedule, params, alpha_bar_max: float, s: float) -> Callable:
  """``t -> alpha_bar(t)`` elementwise on ``[0, 1]``."""
  if callable(schedule):
    theta = params.get("schedule")
    return lambda t: schedule(theta, t)
  check_choice("schedule", schedule, _SCHEDULES)
  check_scalar("alpha_bar_max", alpha_bar_max, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
  check_scalar("s", s, lo=0.0)
  if schedule == "linear":
    return lambda t: alpha_bar_max * t

  def f(u):
    return jnp.cos(0.5 * math.pi * (u + s) / (1 + s)) ** 2

  return lambda t: jnp.minimum(f(1 - t) / f(0.0), alpha_bar_max)


def _fm_embedding(params, num_classes):
  """``_embedding`` with the one-hot dtype taken from the net when there is no readout."""
  return _embedding({**params, "readout": params.get("readout", params["net"])}, num_classes)


def _labels_and_embedding(params, x, labels, num_classes):
  embed, num_classes = _fm_embedding(params, num_classes)
  valid = check_labels("labels", labels, num_classes)
  batch = jnp.shape(labels)[0] if jnp.ndim(labels) == 1 else None
  if batch is None or jnp.shape(x)[:1] != (batch,):
    raise ValueError(
      f"labels must have shape (batch,) with x's batch {jnp.shape(x)[:1]}, got {jnp.shape(labels)}"
    )
  return _poison_rows(embed[labels], valid), embed, num_classes, batch


def _cross_entropy(readout, theta, z, labels, batch, num_classes):
  logits = readout(theta, z)
  if jnp.shape(logits) != (batch, num_classes):
    raise ValueError(
      f"readout must return logits of shape {(batch, num_classes)}, got {jnp.shape(logits)}"
    )
  onehot = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
  return jnp.mean(optax.softmax_cross_entropy(logits, onehot))


def _call_net(fn, name, theta, x, z, t):
  out = fn(theta, x, z, t)
  if jnp.shape(out) != z.shape:
    raise ValueError(f"{name} must return shape {z.shape} like z, got {jnp.shape(out)}")
  return out


def noprop_ct_loss(
  params: dict,
  x: jax.Array,
  labels: jax.Array,
  *,
  denoise: Callable,
  readout: Callable,
  key: Any,
  schedule: str | Callable = "cosine",
  eta: float = 1.0,
  num_classes: int | None = None,
  alpha_bar_max: float = 0.999,
  s: float = 0.008,
) -> tuple[jax.Array, dict]:
  r"""The NoProp-CT objective: one network denoises the label embedding at continuous time.

  Time runs from noise (:math:`t = 0`) to label (:math:`t = 1`):
  :math:`q(z_t \mid y) = \mathcal{N}(\sqrt{\bar\alpha(t)}\, u_y, (1 - \bar\alpha(t)) I)`,
  :math:`\mathrm{SNR}(t) = \bar\alpha(t) / (1 - \bar\alpha(t))` increasing, and one network
  :math:`\hat u_\theta(z_t, x, t)` (``denoise``) is trained on

  .. math::
    \mathcal{L} = \mathbb{E}_{q(z_1 \mid y)}\big[-\log \hat p_{\theta_{\rm out}}(y \mid z_1)
    \big] + D_{\rm KL}\big(q(z_0 \mid y) \,\Vert\, \mathcal{N}(0, I)\big)
    + \frac{\eta}{2}\, \mathbb{E}_{t \sim U[0, 1]} \mathbb{E}_{q(z_t \mid y)}
    \big[\mathrm{SNR}'(t)\, \lVert \hat u_\theta(z_t, x, t) - u_y \rVert^2\big],

  the continuous-time limit of NoProp-DT's sum (:func:`noprop_dt_loss`), with one draw of
  :math:`t` and of :math:`z_t` per example, averaged over the batch. :math:`\mathrm{SNR}'(t)`
  is the exact derivative (``jax.jvp`` of the schedule). The schedule is fixed
  (``"cosine"``: :math:`\bar\alpha(t) = \min(f(1 - t) / f(0), \bar\alpha_{\max})`,
  :math:`f(u) = \cos^2(\tfrac{\pi}{2} \tfrac{u + s}{1 + s})`; ``"linear"``:
  :math:`\bar\alpha(t) = \bar\alpha_{\max} t`, both the continuous versions of
  :func:`noprop_schedule`) or learned: a callable ``schedule(theta_s, t) -> alpha_bar(t)``
  receives ``params["schedule"]`` (``None`` when absent), so that the paper's trainable
  schedule :math:`\bar\alpha(t) = \sigma(-\gamma(t))`, :math:`\mathrm{SNR}(t) =
  e^{-\gamma(t)}`, :math:`\gamma` decreasing, is trained with the rest when
  ``params["schedule"]`` is differentiated (the caller keeps :math:`\bar\alpha` increasing).

  Args:
    params: ``{"net": theta, "readout": theta_out}``, optionally ``"embed"`` (a
      ``(num_classes, d)`` embedding) and ``"schedule"`` (for a callable ``schedule``).
    x: the batch of inputs (batch first; passed to ``denoise`` as it is).
    labels: integer class labels in ``[0, num_classes)``, shape ``(batch,)``.
    denoise: ``denoise(theta, x, z, t) -> u_hat`` with ``z``, ``u_hat`` of shape
      ``(batch, d)`` and ``t`` of shape ``(batch,)``.
    readout: ``readout(theta_out, z) -> logits`` of shape ``(batch, num_classes)``.
    key: PRNG key; ``k_t, k_z = jax.random.split(key)``, ``t = jax.random.uniform(k_t,
      (batch,))``, ``jax.random.normal(k_z, (2, batch, d))`` (row 0 for :math:`z_t`, row 1
      for :math:`z_1`).
    schedule: ``"cosine"``, ``"linear"`` or a callable (see above).
    eta: :math:`\eta > 0`, the weight of the denoising term.
    num_classes: required without ``params["embed"]`` (the embedding is then one-hot).
    alpha_bar_max: :math:`\bar\alpha_{\max}` in ``(0, 1)`` of the fixed schedules.
    s: the cosine schedule's offset :math:`s \ge 0`.

  Returns:
    ``(loss, terms)`` with ``terms = {"denoise": ..., "cross_entropy": ..., "kl": ...}``.

  Raises:
    ValueError: missing params keys, labels out of range, outputs of the wrong shape, an
      unknown ``schedule``, or (values concrete) a non-finite loss. Under ``jit`` invalid
      labels give NaN (the class-label policy).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim.local import noprop_ct_loss
    >>> den = lambda p, x, z, t: jnp.concatenate([x, z, t[:, None]], 1) @ p
    >>> params = {"net": jnp.zeros((6, 3)), "readout": jnp.eye(3)}
    >>> x, y = jnp.ones((4, 2)), jnp.array([0, 1, 2, 0])
    >>> kw = dict(denoise=den, readout=lambda p, z: z @ p, key=0, num_classes=3)
    >>> loss, terms = noprop_ct_loss(params, x, y, **kw)
    >>> grads = jax.grad(lambda p: noprop_ct_loss(p, x, y, **kw)[0])(params)
    >>> grads["net"].shape
    (6, 3)

  References:
    {ref}
  """
  check_scalar("eta", eta, lo=0.0, lo_open=True)
  _check_net_params(params, ("net", "readout"))
  u, _, num_classes, batch = _labels_and_embedding(params, x, labels, num_classes)
  ab_fn = _alpha_bar_fn(schedule, params, alpha_bar_max, s)
  d = u.shape[1]
  k_t, k_z = jax.random.split(as_key(key))
  t = jax.random.uniform(k_t, (batch,), u.dtype)
  eps = jax.random.normal(k_z, (2, batch, d), u.dtype)

  def snr(t):
    ab = ab_fn(t)
    return ab / (1 - ab)

  _, dsnr = jax.jvp(snr, (t,), (jnp.ones_like(t),))
  ab_t = ab_fn(t)[:, None]
  z_t = jnp.sqrt(ab_t) * u + jnp.sqrt(1 - ab_t) * eps[0]
  u_hat = _call_net(denoise, "denoise", params["net"], x, z_t, t)
  den = 0.5 * eta * jnp.mean(dsnr * jnp.sum((u_hat - u) ** 2, -1))
  ab_1, ab_0 = ab_fn(jnp.ones((), u.dtype)), ab_fn(jnp.zeros((), u.dtype))
  z_1 = jnp.sqrt(ab_1) * u + jnp.sqrt(1 - ab_1) * eps[1]
  ce = _cross_entropy(readout, params["readout"], z_1, labels, batch, num_classes)
  kl = 0.5 * jnp.mean(ab_0 * jnp.sum(u**2, -1) - d * ab_0 - d * jnp.log1p(-ab_0))
  loss = ce + kl + den
  _check_finite(loss, "noprop_ct_loss", "loss")
  return loss, {"denoise": den, "cross_entropy": ce, "kl": kl}


def noprop_ct_predict(
  params: dict,
  x: jax.Array,
  *,
  denoise: Callable,
  readout: Callable,
  key: Any,
  num_steps: int = 40,
  schedule: str | Callable = "cosine",
  variant: str = "ancestral",
  num_classes: int | None = None,
  alpha_bar_max: float = 0.999,
  s: float = 0.008,
) -> jax.Array:
  r"""NoProp-CT inference: denoise from :math:`z_0 \sim \mathcal{N}(0, I)` to :math:`z_1`.

  On the grid :math:`t_k = k / N` (:math:`N` = ``num_steps``), with
  :math:`\hat u_k = \hat u_\theta(z_{t_k}, x, t_k)`, :math:`\bar\alpha_k = \bar\alpha(t_k)`
  and :math:`\alpha = \bar\alpha_k / \bar\alpha_{k+1}`:

  - ``"ancestral"``: NoProp-DT's chain (:func:`noprop_coefficients`) on the grid,
    :math:`z_{t_{k+1}} = a\, \hat u_k + b\, z_{t_k} + \sqrt{c}\, \epsilon_{k+1}` with
    :math:`a = \sqrt{\bar\alpha_{k+1}} (1 - \alpha) / (1 - \bar\alpha_k)`,
    :math:`b = \sqrt{\alpha} (1 - \bar\alpha_{k+1}) / (1 - \bar\alpha_k)`,
    :math:`c = (1 - \bar\alpha_{k+1})(1 - \alpha) / (1 - \bar\alpha_k)`;
  - ``"ode"``: the deterministic (DDIM) step of the probability-flow ODE,
    :math:`z_{t_{k+1}} = \sqrt{\bar\alpha_{k+1}}\, \hat u_k + \sqrt{(1 - \bar\alpha_{k+1})
    / (1 - \bar\alpha_k)}\, (z_{t_k} - \sqrt{\bar\alpha_k}\, \hat u_k)`.

  With the exact denoiser :math:`\hat u = u_y` both land on :math:`q(z_1 \mid y)` for any
  :math:`N`. The paper does not pin the sampler down in the text we could read: both are
  offered, the ancestral chain by default (as NoProp-DT). Returns the readout's logits at
  :math:`z_1`.

  Args:
    params, denoise, readout, schedule, num_classes, alpha_bar_max, s: as for
      :func:`noprop_ct_loss`.
    x: the batch of inputs.
    key: PRNG key, ``jax.random.normal(key, (num_steps + 1, batch, d))``: row 0 is
      :math:`z_0`, row :math:`k + 1` is :math:`\epsilon_{k+1}` (unused by ``"ode"``).
    num_steps: :math:`N \ge 1`.
    variant: ``"ancestral"`` or ``"ode"``.

  Returns:
    Logits of shape ``(batch, num_classes)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.local import noprop_ct_predict
    >>> den = lambda p, x, z, t: jnp.concatenate([x, z, t[:, None]], 1) @ p
    >>> params = {"net": jnp.zeros((6, 3)), "readout": jnp.eye(3)}
    >>> noprop_ct_predict(params, jnp.ones((4, 2)), denoise=den, readout=lambda p, z: z @ p,
    ...                   key=0, num_steps=10, num_classes=3).shape
    (4, 3)

  References:
    {ref}
  """
  _check_net_params(params, ("net", "readout"))
  check_scalar("num_steps", num_steps, lo=1, integer=True, static=True)
  check_choice("variant", variant, ("ancestral", "ode"))
  embed, num_classes = _embedding(params, num_classes)
  ab_fn = _alpha_bar_fn(schedule, params, alpha_bar_max, s)
  batch, d = jnp.shape(x)[0], embed.shape[1]
  eps = jax.random.normal(as_key(key), (num_steps + 1, batch, d), embed.dtype)
  grid = jnp.linspace(0.0, 1.0, num_steps + 1, dtype=embed.dtype)
  ab = ab_fn(grid)
  z = eps[0]
  for k in range(num_steps):
    u_hat = _call_net(denoise, "denoise", params["net"], x, z, jnp.full((batch,), grid[k]))
    prev, cur = ab[k], ab[k + 1]
    if variant == "ode":
      z = jnp.sqrt(cur) * u_hat + jnp.sqrt((1 - cur) / (1 - prev)) * (z - jnp.sqrt(prev) * u_hat)
    else:
      alpha = prev / cur
      a = jnp.sqrt(cur) * (1 - alpha) / (1 - prev)
      b = jnp.sqrt(alpha) * (1 - cur) / (1 - prev)
      c = (1 - cur) * (1 - alpha) / (1 - prev)
      z = a * u_hat + b * z + jnp.sqrt(c) * eps[k + 1]
  return readout(params["readout"], z)


def noprop_fm_loss(
  params: dict,
  x: jax.Array,
  labels: jax.Array,
  *,
  vector_field: Callable,
  key: Any,
  readout: Callable | None = None,
  eta: float = 1.0,
  num_classes: int | None = None,
) -> tuple[jax.Array, dict]:
  r"""The NoProp-FM objective: flow matching from Gaussian noise to the label embedding.

  With :math:`z_0 \sim \mathcal{N}(0, I)`, :math:`z_1 = u_y`, :math:`t \sim U[0, 1]` and
  :math:`z_t = t z_1 + (1 - t) z_0`, the vector field :math:`v_\theta(z_t, x, t)`
  (``vector_field``) is trained on

  .. math::
    \mathcal{L} = \eta\, \mathbb{E}\big[\lVert v_\theta(z_t, x, t) - (z_1 - z_0) \rVert^2
    \big] \; \big[+\, \mathbb{E}\big[-\log \hat p_{\theta_{\rm out}}(y \mid \tilde z_1)\big],
    \quad \tilde z_1 = z_t + (1 - t)\, v_\theta(z_t, x, t)\big],

  one draw of :math:`t` and :math:`z_0` per example, averaged over the batch. The
  bracketed cross-entropy at the one-step extrapolation :math:`\tilde z_1` is added only
  when ``readout`` is given: it keeps a learned embedding from collapsing (the paper's
  remedy for learned embeddings, as we read it; with a fixed embedding leave it out).
  The minimiser of the first term is the conditional-expectation field
  :math:`v^*(z, x, t) = \mathbb{E}[z_1 - z_0 \mid z_t = z, x]`; when :math:`x` fixes
  :math:`y` it is :math:`(u_y - z) / (1 - t)`. Inference: :func:`noprop_fm_predict`.

  Args:
    params: ``{"net": theta}``, optionally ``"embed"`` (a ``(num_classes, d)`` embedding)
      and ``"readout"`` (required with ``readout``).
    x: the batch of inputs (batch first; passed to ``vector_field`` as it is).
    labels: integer class labels in ``[0, num_classes)``, shape ``(batch,)``.
    vector_field: ``vector_field(theta, x, z, t) -> v`` with ``z``, ``v`` of shape
      ``(batch, d)`` and ``t`` of shape ``(batch,)``.
    key: PRNG key; ``k_t, k_z = jax.random.split(key)``, ``t = jax.random.uniform(k_t,
      (batch,))``, ``z_0 = jax.random.normal(k_z, (batch, d))``.
    readout: optional ``readout(theta_out, z) -> logits`` (``(batch, num_classes)``).
    eta: :math:`\eta > 0`, the weight of the flow-matching term.
    num_classes: required without ``params["embed"]`` (the embedding is then one-hot).

  Returns:
    ``(loss, terms)`` with ``terms = {"flow_matching": ..., "cross_entropy": ...}`` (the
    latter 0 without ``readout``).

  Raises:
    ValueError: missing params keys, labels out of range, outputs of the wrong shape, or
      (values concrete) a non-finite loss. Under ``jit`` invalid labels give NaN.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim.local import noprop_fm_loss
    >>> vf = lambda p, x, z, t: jnp.concatenate([x, z, t[:, None]], 1) @ p
    >>> params = {"net": jnp.zeros((6, 3))}
    >>> x, y = jnp.ones((4, 2)), jnp.array([0, 1, 2, 0])
    >>> loss, terms = noprop_fm_loss(params, x, y, vector_field=vf, key=0, num_classes=3)
    >>> sorted(terms)
    ['cross_entropy', 'flow_matching']

  References:
    {ref}
  """
  check_scalar("eta", eta, lo=0.0, lo_open=True)
  _check_net_params(params, ("net",) if readout is None else ("net", "readout"))
  u, _, num_classes, batch = _labels_and_embedding(params, x, labels, num_classes)
  d = u.shape[1]
  k_t, k_z = jax.random.split(as_key(key))
  t = jax.random.uniform(k_t, (batch,), u.dtype)
  z_0 = jax.random.normal(k_z, (batch, d), u.dtype)
  tc = t[:, None]
  z_t = tc * u + (1 - tc) * z_0
  v = _call_net(vector_field, "vector_field", params["net"], x, z_t, t)
  fm = jnp.mean(jnp.sum((v - (u - z_0)) ** 2, -1))
  ce = jnp.zeros((), fm.dtype)
  if readout is not None:
    z_1 = z_t + (1 - tc) * v
    ce = _cross_entropy(readout, params["readout"], z_1, labels, batch, num_classes)
  loss = eta * fm + ce
  _check_finite(loss, "noprop_fm_loss", "loss")
  return loss, {"flow_matching": fm, "cross_entropy": ce}


def noprop_fm_predict(
  params: dict,
  x: jax.Array,
  *,
  vector_field: Callable,
  key: Any,
  num_steps: int = 40,
  readout: Callable | None = None,
  num_classes: int | None = None,
) -> jax.Array:
  r"""NoProp-FM inference: integrate :math:`\dot z = v_\theta(z, x, t)` from noise, classify.

  Euler steps on :math:`t_k = k / N` (:math:`N` = ``num_steps``) from
  :math:`z_0 \sim \mathcal{N}(0, I)`:
  :math:`z_{t_{k+1}} = z_{t_k} + \tfrac1N v_\theta(z_{t_k}, x, t_k)`. The class scores at
  :math:`z_1` are the readout's logits when ``readout`` is given, else the negative squared
  distances :math:`-\lVert z_1 - u_c \rVert^2` to the class embeddings (the nearest
  embedding wins). With the exact field :math:`(u_y - z) / (1 - t)` the last step lands on
  :math:`u_y` exactly, for any :math:`N`.

  Args:
    params, vector_field, readout, num_classes: as for :func:`noprop_fm_loss`.
    x: the batch of inputs.
    key: PRNG key, ``z_0 = jax.random.normal(key, (batch, d))``.
    num_steps: :math:`N \ge 1`.

  Returns:
    Scores of shape ``(batch, num_classes)``; ``argmax`` is the predicted class.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.local import noprop_fm_predict
    >>> vf = lambda p, x, z, t: jnp.concatenate([x, z, t[:, None]], 1) @ p
    >>> noprop_fm_predict({"net": jnp.zeros((6, 3))}, jnp.ones((4, 2)), vector_field=vf,
    ...                   key=0, num_classes=3).shape
    (4, 3)

  References:
    {ref}
  """
  _check_net_params(params, ("net",) if readout is None else ("net", "readout"))
  check_scalar("num_steps", num_steps, lo=1, integer=True, static=True)
  embed, num_classes = _fm_embedding(params, num_classes)
  batch, d = jnp.shape(x)[0], embed.shape[1]
  z = jax.random.normal(as_key(key), (batch, d), embed.dtype)
  h = 1.0 / num_steps
  for k in range(num_steps):
    t = jnp.full((batch,), k * h, embed.dtype)
    z = z + h * _call_net(vector_field, "vector_field", params["net"], x, z, t)
  if readout is not None:
    return readout(params["readout"], z)
  return -jnp.sum((z[:, None, :] - embed[None]) ** 2, -1)


for _f in (noprop_ct_loss, noprop_ct_predict, noprop_fm_loss, noprop_fm_predict):
  _f.__doc__ = _f.__doc__.replace("{ref}", _REF)
