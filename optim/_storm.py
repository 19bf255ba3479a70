"""STORM: self-taught on-the-fly meta loss rescaling for learning from noisy labels.

Heck, Geishauser, Lubis, van Niekerk, Feng, Lin, Ruppik, Vukovic & Gašić, "Learning from
Noisy Labels via Self-Taught On-the-Fly Meta Loss Rescaling", AAAI 2025, arXiv:2412.12955.
The features (Table 1), the rescaler (Eq. 6) and the meta step (Alg. 1) follow the paper
and its official code (``storm.py``, ``utils_storm.py``, ``modeling.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optim._validation import as_key, check_flag, check_labels, check_scalar

PyTree = Any

# The official Filter's constants: the std of a group of at most one value, and the floor
# of a normal's std in the overlap coefficient.
_EPS = 1e-8
# torch.nn.BatchNorm1d's default eps.
_BN_EPS = 1e-5

FEATURES = (
  "loss_mean",
  "group_loss_mean_mean",
  "group_loss_mean_std",
  "loss_std",
  "group_loss_std_mean",
  "group_loss_std_std",
  "prob_mean",
  "group_prob_mean_mean",
  "group_prob_mean_std",
  "prob_std",
  "group_prob_std_mean",
  "group_prob_std_std",
  "kl",
  "group_kl_mean",
  "group_kl_std",
  "ovl",
  "group_ovl_mean",
  "group_ovl_std",
  "agreement",
)
NUM_FEATURES = len(FEATURES)


# ----------------------------------------------------------------------------- features


def _std_over_passes(x):
  """torch's unbiased ``std(0)`` over the passes, ``nan_to_num``'d (one pass gives 0)."""
  g = x.shape[0]
  if g < 2:
    return jnp.zeros(x.shape[1:], x.dtype)
  return jnp.std(x, axis=0, ddof=1)


def _group_mean_std(values, member):
  """Per group: the mean and the unbiased std of ``values`` over its members.

  ``member``: ``(groups, B)`` 0/1. A group of at most one member gets std ``_EPS`` and an
  empty group mean NaN, as the official ``Filter`` (``torch.mean`` of nothing is NaN).
  """
  count = jnp.sum(member, axis=1)
  mean = jnp.sum(member * values, axis=1) / count
  dev = jnp.where(member > 0, values - mean[:, None], 0.0)
  var = jnp.sum(dev**2, axis=1) / jnp.where(count > 1, count - 1, 1.0)
  std = jnp.where(count > 1, jnp.sqrt(var), _EPS)
  return mean, std


def _gaussian_kl(p_mu, p_std, q_mu, q_std):
  """KL(N(p_mu, p_std^2) || N(q_mu, q_std^2)); 0 when either std is 0 (the official rule)."""
  ok = (p_std != 0) & (q_std != 0)
  ps = jnp.where(ok, p_std, 1.0)
  qs = jnp.where(ok, q_std, 1.0)
  kl = jnp.log(qs / ps) + (ps**2 + (p_mu - q_mu) ** 2) / (2 * qs**2) - 0.5
  return jnp.where(ok, kl, 0.0)


def _normal_cdf(x, mu, sigma):
  return 0.5 * (1.0 + jax.scipy.special.erf((x - mu) / (sigma * jnp.sqrt(2.0))))


def _overlap(mu1, s1, mu2, s2):
  """Overlap coefficient of two normals: Python's ``statistics.NormalDist.overlap``."""
  s1 = jnp.maximum(s1, _EPS)
  s2 = jnp.maximum(s2, _EPS)
  # X is the one with the smaller (sigma, mu), as NormalDist sorts them.
  swap = (s2 < s1) | ((s2 == s1) & (mu2 < mu1))
  xm, xs = jnp.where(swap, mu2, mu1), jnp.where(swap, s2, s1)
  ym, ys = jnp.where(swap, mu1, mu2), jnp.where(swap, s1, s2)
  xv, yv = xs**2, ys**2
  # (ys - xs)(ys + xs), not yv - xv: under jit XLA contracts the latter into an FMA, which
  # leaves a rounding residue where the two variances are equal (the equal-variance branch).
  dv = (ys - xs) * (ys + xs)
  dm = jnp.abs(ym - xm)
  equal_var = 1.0 - jax.scipy.special.erf(dm / (2.0 * xs * jnp.sqrt(2.0)))
  safe_dv = jnp.where(dv != 0, dv, 1.0)
  a = xm * yv - ym * xv
  b = xs * ys * jnp.sqrt(dm * dm + dv * jnp.log(yv / xv))
  x1 = (a + b) / safe_dv
  x2 = (a - b) / safe_dv
  general = 1.0 - (
    jnp.abs(_normal_cdf(x1, ym, ys) - _normal_cdf(x1, xm, xs))
    + jnp.abs(_normal_cdf(x2, ym, ys) - _normal_cdf(x2, xm, xs))
  )
  return jnp.where(dv != 0, general, equal_var)


def storm_features(losses: jax.Array, probs: jax.Array, labels: jax.Array, *, num_classes: int):
  r"""STORM's 19 rescaler input features per example (Table 1), from G forward passes.

  Inputs are the per-example losses :math:`\ell_{g,i}` and class probabilities
  :math:`p_{g,i}` of :math:`G` forward passes with dropout (pass 0 is the one trained on).
  Per example, with :math:`\hat p_{g,i} = \max_c p_{g,i,c}` (the confidence),

  .. math::
    \mu^\ell_i = \operatorname{mean}_g \ell_{g,i},\quad
    \sigma^\ell_i = \operatorname{std}_g \ell_{g,i},\quad
    \mu^p_i = \operatorname{mean}_g \hat p_{g,i},\quad
    \sigma^p_i = \operatorname{std}_g \hat p_{g,i},\quad
    \mathrm{CAT}_i = \mathbb{1}[\hat y_i = \tilde y_i],

  (unbiased std over passes, 0 for :math:`G = 1`; :math:`\hat y_i = \tilde y_i` by
  majority over the passes, ties broken by pass 0). The group of example :math:`i` is
  the examples of the batch with its label :math:`\tilde y_i` and its agreement
  :math:`\mathrm{CAT}_i`; over a group :math:`\bar\cdot` is the mean and
  :math:`\tilde\cdot` the unbiased std (:math:`10^{-8}` for a group of one) of a
  per-example quantity, and

  .. math::
    \mathrm{KL}_i = D_{\mathrm{KL}}\big(\mathcal{N}(\mu^\ell_i, \sigma^\ell_i)\,\big\|\,
    \mathcal{N}(\bar\mu^\ell, \bar\sigma^\ell)\big), \qquad
    \mathrm{OVL}_i = \operatorname{overlap}\big(\mathcal{N}(\mu^\ell_i, \sigma^\ell_i),
    \mathcal{N}(\bar\mu^\ell, \bar\sigma^\ell)\big)

  (KL 0 when a std is 0; the overlap coefficient with stds floored at :math:`10^{-8}`,
  as ``statistics.NormalDist.overlap``). The feature vector (Eq. 4, the order of
  ``FEATURES`` and of the official ``call_rescaler``) is

  .. math::
    f_i = (\mu^\ell_i, \bar\mu^\ell, \tilde\mu^\ell, \sigma^\ell_i, \bar\sigma^\ell,
    \tilde\sigma^\ell, \mu^p_i, \bar\mu^p, \tilde\mu^p, \sigma^p_i, \bar\sigma^p,
    \tilde\sigma^p, \mathrm{KL}_i, \overline{\mathrm{KL}}, \widetilde{\mathrm{KL}},
    \mathrm{OVL}_i, \overline{\mathrm{OVL}}, \widetilde{\mathrm{OVL}}, \mathrm{CAT}_i).

  The statistics are over the current batch. The official code keeps them in a memory
  per class (``--stats_window 1``: the last :math:`B` examples of each class), which can
  reach back into earlier batches when a class has fewer than :math:`B` examples in this
  one; here every batch stands alone, so the features are a pure function of the batch.
  Traced labels out of range give NaN features on those rows. Use them under
  ``jax.lax.stop_gradient`` (the official code detaches them).

  Args:
    losses: ``(G, B)`` per-example losses of the :math:`G` passes.
    probs: ``(G, B, C)`` class probabilities of the same passes.
    labels: ``(B,)`` integer (noisy) labels in ``[0, num_classes)``.
    num_classes: :math:`C`, the number of classes.

  Returns:
    ``(B, 19)`` features in the dtype of ``losses`` (float32 or wider).

  Raises:
    ValueError: shapes that disagree (passes, batch, classes), concrete labels out of range.
    TypeError: non-floating losses or probabilities, non-integer labels or ``num_classes``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.losses import storm_features
    >>> losses = jnp.array([[0.1, 2.0, 0.3], [0.2, 1.8, 0.4], [0.1, 2.2, 0.2]])
    >>> probs = jnp.array([[[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]]] * 3)
    >>> f = storm_features(losses, probs, jnp.array([0, 1, 1]), num_classes=2)
    >>> f.shape, f[:, -1].tolist()  # the last feature: prediction agrees with the label
    ((3, 19), [1.0, 0.0, 1.0])

  References:
    Heck et al., "Learning from Noisy Labels via Self-Taught On-the-Fly Meta Loss
    Rescaling", AAAI 2025, arXiv:2412.12955 (Table 1, Eq. 4).
  """
  num_classes = check_scalar("num_classes", num_classes, lo=1, integer=True, static=True)
  losses, probs = jnp.asarray(losses), jnp.asarray(probs)
  for name, a in (("losses", losses), ("probs", probs)):
    if not jnp.issubdtype(a.dtype, jnp.floating):
      raise TypeError(f"storm_features: {name} must be floating point, got dtype {a.dtype}")
  if losses.ndim != 2:
    raise ValueError(
      "storm_features: losses must have shape (G, B) (passes, examples); got shape "
      f"{losses.shape}. One pass: losses[None]."
    )
  g, b = losses.shape
  if probs.shape[:2] != (g, b) or probs.ndim != 3 or probs.shape[2] != num_classes:
    raise ValueError(
      f"storm_features: probs must have shape (G, B, C) = {(g, b, num_classes)}; got {probs.shape}"
    )
  if g < 1 or b < 1:
    raise ValueError(f"storm_features: need at least one pass and one example; got {(g, b)}")
  y = jnp.asarray(labels) if not isinstance(labels, list) else jnp.asarray(labels)
  if jnp.shape(y) != (b,):
    raise ValueError(f"storm_features: labels must have shape (B,) = ({b},); got {jnp.shape(y)}")
  valid = check_labels("labels", y, num_classes)
  dt = jnp.promote_types(losses.dtype, jnp.float32)
  return _features(losses.astype(dt), probs.astype(dt), y, valid, num_classes)


@functools.partial(jax.jit, static_argnums=(4,))
def _features(losses, probs, y, valid, num_classes):
  g = losses.shape[0]
  preds = jnp.argmax(probs, axis=2)  # (G, B)
  hits = preds == y[None]
  cnt = jnp.sum(hits, axis=0)
  agree = jnp.where(2 * cnt == g, hits[0], 2 * cnt >= g)
  loss_mean = jnp.mean(losses, 0)
  loss_std = _std_over_passes(losses)
  conf = jnp.max(probs, axis=2)
  prob_mean = jnp.mean(conf, 0)
  prob_std = _std_over_passes(conf)

  # Groups (class, category): category 0 = all, 1 = agree, 2 = disagree (d_cat).
  dt = losses.dtype
  onehot = jax.nn.one_hot(y, num_classes, dtype=dt).T  # (C, B)
  cats = jnp.stack([jnp.ones_like(agree), agree, ~agree]).astype(dt)  # (3, B)
  member = (onehot[:, None, :] * cats[None, :, :]).reshape(num_classes * 3, -1)
  d_cat = jnp.where(agree, 1, 2)
  own = jnp.clip(y, 0, num_classes - 1) * 3 + d_cat  # (B,) index of each example's group

  def stats(values):
    mean, std = _group_mean_std(values, member)
    return mean, std

  lm_mean, lm_std = stats(loss_mean)
  ls_mean, ls_std = stats(loss_std)
  pm_mean, pm_std = stats(prob_mean)
  ps_mean, ps_std = stats(prob_std)

  # KL / OVL of every example against each group of its class (category 0, 1, 2), so the
  # groups' own mean and std of KL/OVL are taken over their members.
  groups_of_class = jnp.clip(y, 0, num_classes - 1)[:, None] * 3 + jnp.arange(3)[None]  # (B, 3)
  q_mu, q_std = lm_mean[groups_of_class], ls_mean[groups_of_class]
  kl_bc = _gaussian_kl(loss_mean[:, None], loss_std[:, None], q_mu, q_std)
  ovl_bc = _overlap(loss_mean[:, None], loss_std[:, None], q_mu, q_std)
  # Scatter to (groups, B): example b contributes its value against group j to group j.
  scatter = jax.nn.one_hot(groups_of_class, num_classes * 3, dtype=dt)  # (B, 3, groups)
  # (A where, not an einsum: a value against an empty group is NaN and 0 * NaN is NaN.)
  kl_gb = jnp.sum(jnp.where(scatter > 0, kl_bc[..., None], 0.0), axis=1).T
  ovl_gb = jnp.sum(jnp.where(scatter > 0, ovl_bc[..., None], 0.0), axis=1).T

  def group_stats_of(v_gb):
    count = jnp.sum(member, 1)
    # Non-members carry their value against a group they are not in (NaN for an empty
    # group's statistics): masked out, not multiplied by 0.
    v_gb = jnp.where(member > 0, v_gb, 0.0)
    mean = jnp.sum(v_gb, 1) / count
    dev = jnp.where(member > 0, v_gb - mean[:, None], 0.0)
    var = jnp.sum(dev**2, 1) / jnp.where(count > 1, count - 1, 1.0)
    return mean, jnp.where(count > 1, jnp.sqrt(var), _EPS)

  kl_mean, kl_std = group_stats_of(kl_gb)
  ovl_mean, ovl_std = group_stats_of(ovl_gb)
  kl = kl_bc[jnp.arange(y.shape[0]), d_cat]
  ovl = ovl_bc[jnp.arange(y.shape[0]), d_cat]

  f = jnp.stack(
    [
      loss_mean,
      lm_mean[own],
      lm_std[own],
      loss_std,
      ls_mean[own],
      ls_std[own],
      prob_mean,
      pm_mean[own],
      pm_std[own],
      prob_std,
      ps_mean[own],
      ps_std[own],
      kl,
      kl_mean[own],
      kl_std[own],
      ovl,
      ovl_mean[own],
      ovl_std[own],
      agree.astype(dt),
    ],
    axis=1,
  )
  return jnp.where(valid[:, None], f, jnp.nan)


# ----------------------------------------------------------------------------- rescaler


def storm_rescaler_init(
  *, key: Any, num_classes: int, num_features: int = NUM_FEATURES, scale: float = 0.02
) -> dict[str, jax.Array]:
  r"""Parameters of STORM's rescaler: one two-layer MLP per target class.

  :math:`W_1^{(c)} \in \mathbb{R}^{F \times F}`, :math:`W_2^{(c)} \in \mathbb{R}^{F \times 2}`
  drawn from :math:`\mathcal{N}(0, \text{scale}^2)`, biases zero: the initialization the
  official code's linear layers get (``post_init`` of its Hugging Face model,
  ``initializer_range = 0.02``). With its batch normalizations this starts the weights
  centred on 1/2 over the batch (the paper's "uniformly distributed weights" at the start;
  each output column has unit variance over the batch, so individual weights spread).

  Args:
    key: PRNG key (typed, raw or an int seed).
    num_classes: the number of target classes (one rescaler each), ``>= 1``.
    num_features: :math:`F`, the input width (19 for :func:`storm_features`).
    scale: std of the weights, ``>= 0``.

  Returns:
    ``{"w1": (C, F, F), "b1": (C, F), "w2": (C, F, 2), "b2": (C, 2)}`` in float32.

  Raises:
    ValueError, TypeError: non-integer or non-positive sizes, a negative scale, a bad key.

  Example:
    >>> from optim.losses import storm_rescaler_init
    >>> p = storm_rescaler_init(key=0, num_classes=3)
    >>> {k: v.shape for k, v in p.items()}
    {'b1': (3, 19), 'b2': (3, 2), 'w1': (3, 19, 19), 'w2': (3, 19, 2)}

  References:
    Heck et al., arXiv:2412.12955 (Eq. 6); official ``modeling.py``.
  """
  key = as_key(key)
  c = check_scalar("num_classes", num_classes, lo=1, integer=True, static=True)
  f = check_scalar("num_features", num_features, lo=1, integer=True, static=True)
  scale = check_scalar("scale", scale, lo=0.0)
  k1, k2 = jax.random.split(key)
  return {
    "b1": jnp.zeros((c, f)),
    "b2": jnp.zeros((c, 2)),
    "w1": scale * jax.random.normal(k1, (c, f, f)),
    "w2": scale * jax.random.normal(k2, (c, f, 2)),
  }


def _batch_norm(h):
  """``torch.nn.BatchNorm1d(affine=False)`` in training mode: batch mean, biased variance."""
  mean = jnp.mean(h, axis=0)
  var = jnp.mean((h - mean) ** 2, axis=0)
  return (h - mean) / jnp.sqrt(var + _BN_EPS)


def storm_rescaler(params: dict[str, jax.Array], features: jax.Array, labels: jax.Array):
  r"""STORM's loss weights: the per-class rescaler of Eq. 6 on a batch of features.

  For target class :math:`c`,

  .. math::
    [w_{0,i}, w_{1,i}] = \Omega^{(c)}_\omega(f_i) =
    \operatorname{softmax}\big(\mathrm{BN}_2(L_2(\operatorname{ReLU}(\mathrm{BN}_1(
    L_1(f_i))))))\big),

  with :math:`L(x) = xW + b` and :math:`\mathrm{BN}` a batch normalization without affine
  parameters in training mode (over the batch: mean, biased variance, :math:`\epsilon =
  10^{-5}`). Every class's rescaler sees the whole batch (its normalization statistics are
  the batch's), and example :math:`i` takes the output of the rescaler of its label
  :math:`\tilde y_i`. The weight is the second softmax output (the official code's
  ``[:, 1]``; the paper names the kept column :math:`w_0`, the choice is a labelling).
  The last batch normalization is what keeps the weights from collapsing to 0 (Sec.
  "Meta learning the rescaling function").

  Args:
    params: :func:`storm_rescaler_init`'s dict.
    features: ``(B, F)`` features (:func:`storm_features`), :math:`B \ge 2`.
    labels: ``(B,)`` integer labels selecting each example's rescaler.

  Returns:
    ``(B,)`` weights in :math:`(0, 1)`; NaN on rows with a traced label out of range.

  Raises:
    ValueError: features not of shape ``(B, F)`` with :math:`B \ge 2` (a batch
      normalization needs two examples) or ``F`` unlike the params, labels not ``(B,)``,
      concrete labels out of range.
    TypeError: non-floating features, non-integer labels, params missing a key.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim.losses import storm_rescaler, storm_rescaler_init
    >>> p = storm_rescaler_init(key=0, num_classes=2, num_features=3)
    >>> f = jax.random.normal(jax.random.key(1), (4, 3))
    >>> w = storm_rescaler(p, f, jnp.array([0, 1, 0, 1]))
    >>> w.shape, bool(jnp.all((w > 0) & (w < 1)))
    ((4,), True)

  References:
    Heck et al., arXiv:2412.12955 (Eq. 6); official ``modeling.py`` and
    ``storm.py::call_rescaler``.
  """
  for k in ("w1", "b1", "w2", "b2"):
    if not isinstance(params, dict) or k not in params:
      raise TypeError(f"storm_rescaler: params must be storm_rescaler_init's dict (missing {k!r})")
  features = jnp.asarray(features)
  if not jnp.issubdtype(features.dtype, jnp.floating):
    raise TypeError(f"storm_rescaler: features must be floating point, got {features.dtype}")
  c, f = params["w1"].shape[0], params["w1"].shape[1]
  if features.ndim != 2 or features.shape[1] != f:
    raise ValueError(
      f"storm_rescaler: features must have shape (B, {f}) (the params' width); got {features.shape}"
    )
  b = features.shape[0]
  if b < 2:
    raise ValueError(
      f"storm_rescaler: features need a batch of at least 2 examples (batch normalization "
      f"over one example is undefined, as in torch); got {b}"
    )
  y = jnp.asarray(labels)
  if y.shape != (b,):
    raise ValueError(f"storm_rescaler: labels must have shape (B,) = ({b},); got {y.shape}")
  valid = check_labels("labels", y, c)
  return _rescale(params, features, y, valid)


@jax.jit
def _rescale(params, features, y, valid):
  def one(w1, b1, w2, b2):
    h = jax.nn.relu(_batch_norm(features @ w1 + b1))
    return jax.nn.softmax(_batch_norm(h @ w2 + b2), axis=-1)[:, 1]

  per_class = jax.vmap(one)(params["w1"], params["b1"], params["w2"], params["b2"])  # (C, B)
  c = per_class.shape[0]
  w = per_class[jnp.clip(y, 0, c - 1), jnp.arange(y.shape[0])]
  return jnp.where(valid, w, jnp.nan)


# ----------------------------------------------------------------------------- meta step


class StormState(NamedTuple):
  """What :func:`storm_step` carries from step to step.

  Attributes:
    params: the model's parameters :math:`\\theta`.
    opt_state: the model optimizer's state (``tx.init(params)``).
    rescaler_params: the rescaler's parameters :math:`\\omega`.
    meta_opt_state: the rescaler optimizer's state (``meta_tx.init(rescaler_params)``).
  """

  params: PyTree
  opt_state: PyTree
  rescaler_params: PyTree
  meta_opt_state: PyTree


class StormMetrics(NamedTuple):
  """What one :func:`storm_step` measured.

  Attributes:
    loss: the rescaled training loss :math:`\\sum_i w_i \\ell_i(\\theta)` of the step.
    meta_loss: the (rescaled) meta loss :math:`\\sum_j w'_j \\ell_j(\\theta')` that
      the rescaler was trained on.
    weights: ``(B,)`` the loss weights :math:`w_i` the model was trained with.
  """

  loss: jax.Array
  meta_loss: jax.Array
  weights: jax.Array


def _per_example(out, where: str, batch_name: str):
  if not (isinstance(out, tuple) and len(out) == 2):
    raise TypeError(
      f"storm_step: loss_fn(params, {batch_name}) must return a pair (per-example losses "
      f"(B,), rescaler features (B, F)); got {type(out).__name__}"
    )
  losses, feats = out
  if jnp.ndim(losses) != 1:
    raise ValueError(
      f"storm_step: loss_fn(params, {batch_name}) must return per-example losses of shape "
      f"(B,), not {'a scalar (a mean loss?)' if jnp.ndim(losses) == 0 else jnp.shape(losses)}: "
      "the rescaler weighs each example's loss"
    )
  if jnp.ndim(feats) != 2 or jnp.shape(feats)[0] != jnp.shape(losses)[0]:
    raise ValueError(
      f"storm_step: the features loss_fn returns for {batch_name} must have shape (B, F) "
      f"with B = {jnp.shape(losses)[0]} (the losses' batch); got {jnp.shape(feats)}"
    )
  if not jnp.issubdtype(jnp.result_type(losses), jnp.floating):
    raise TypeError(f"storm_step: the losses of {batch_name} must be floating point")
  return losses, jax.lax.stop_gradient(feats)


def _weights(rescaler_fn, rp, feats, batch, b, batch_name):
  w = rescaler_fn(rp, feats, batch)
  if jnp.shape(w) != (b,):
    raise ValueError(
      f"storm_step: rescaler_fn(rescaler_params, features, {batch_name}) must return one "
      f"weight per example, shape ({b},); got {jnp.shape(w)}"
    )
  return w


def storm_step(
  loss_fn: Callable[[PyTree, Any], tuple[jax.Array, jax.Array]],
  rescaler_fn: Callable[[PyTree, jax.Array, Any], jax.Array],
  tx: optax.GradientTransformation,
  meta_tx: optax.GradientTransformation,
  state: StormState,
  batch: Any,
  meta_batch: Any,
  *,
  meta_loss_rescaling: bool = True,
) -> tuple[StormState, StormMetrics]:
  r"""One STORM step: a one-step-lookahead meta update of the rescaler, and the model step.

  With per-example losses :math:`\ell_i(\theta)` and detached features :math:`f_i(\theta)`
  of the training batch :math:`B`, the rescaler's weights :math:`w_i(\omega) =
  \Omega_\omega(f_i)` and the model optimizer ``tx`` (any optax transformation),

  .. math::
    \theta'(\omega) &= \theta + \mathrm{tx}\Big(\nabla_\theta \sum_{i \in B}
                       w_i(\omega)\,\ell_i(\theta)\Big)
                       \quad (\text{optax.apply\_updates}(\theta, \text{tx.update}(\dots))), \\
    L_{\mathrm{meta}}(\omega) &= \sum_{j \in B_{\mathrm{val}}} w'_j(\omega)\,
                       \ell_j\big(\theta'(\omega)\big), \qquad
                       w'_j(\omega) = \Omega_\omega\big(f_j(\theta')\big),

  where the validation batch :math:`B_{\mathrm{val}}` is drawn from the same noisy training
  set (STORM is *self-taught*: no clean data) and its losses are rescaled by the same
  :math:`\Omega` (*meta loss rescaling*, Eq. 5; ``meta_loss_rescaling=False`` gives
  :math:`w'_j = 1`, the classic clean-validation meta update). The meta-gradient
  :math:`\nabla_\omega L_{\mathrm{meta}}` flows through the unrolled optax step
  (:math:`\nabla^{\mathrm{meta}}_\omega`, second order) and through :math:`w'`
  (:math:`\nabla^{\mathrm{outer}}_\omega`); ``meta_tx`` applies it to :math:`\omega`. The
  model moves to :math:`\theta'(\omega_{\text{old}})`, the lookahead point itself, as the
  official code loads the inner loop's weights back into the model (Alg. 1). Losses are
  summed over the batch, as in the official code. Cost: about three times a plain step
  (a second-order backward pass through one step).

  Differences to the official code: its inner Adam is ``higher``'s differentiable copy of
  a fresh ``torch.optim.Adam`` every step (its state is never written back, so every step
  is Adam's first step, :math:`\approx \eta\,\mathrm{sign}(g)`); here ``opt_state`` is
  carried, as an optax step does. The features are a function of the current batch
  (:func:`storm_features`).

  Non-finite losses: propagate into ``params`` and the rescaler (as an optax step does);
  skip such a batch in the training loop (``jnp.isfinite`` on the losses).

  Differentiating through Adam: where a gradient coordinate is exactly zero (a dead ReLU
  unit, an unused class), ``optax.adam``'s :math:`\sqrt{\hat v}` is differentiated at 0 and
  the meta-gradient is NaN. Use ``optax.adam(lr, eps_root=1e-12)`` (optax's option for
  differentiating through Adam); the official code's ``higher`` zeroes those coordinates'
  gradients instead. Other optimizers (``optax.sgd``) have no such point.

  Args:
    loss_fn: ``loss_fn(params, batch) -> (losses, features)``: per-example losses ``(B,)``
      (differentiable) and the rescaler's features ``(B, F)`` (gradients stopped here),
      e.g. :func:`storm_features` of the model's forward passes.
    rescaler_fn: ``rescaler_fn(rescaler_params, features, batch) -> (B,)`` weights, e.g.
      ``lambda p, f, b: storm_rescaler(p, f, b[1])``.
    tx: the model's optax transformation (differentiated through; Adam with
      ``eps_root > 0``, see above).
    meta_tx: the rescaler's optax transformation.
    state: the :class:`StormState`.
    batch: the training batch (anything ``loss_fn`` takes).
    meta_batch: the validation batch, drawn from the noisy training set.
    meta_loss_rescaling: rescale the meta loss with :math:`\Omega` (the paper's method).

  Returns:
    ``(new_state, metrics)``: the next :class:`StormState` and :class:`StormMetrics`.

  Raises:
    TypeError: non-callable ``loss_fn``/``rescaler_fn``, ``tx``/``meta_tx`` without
      ``init``/``update``, a ``loss_fn`` that does not return a pair.
    ValueError: a scalar (mean) loss where per-example losses go, features whose batch
      differs from the losses', weights not of shape ``(B,)``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optim.loops import StormState, storm_step
    >>> from optim.losses import storm_rescaler, storm_rescaler_init
    >>> x = jax.random.normal(jax.random.key(0), (8, 3)); y = jnp.array([0, 1] * 4)
    >>> def loss_fn(w, b):
    ...   logits = b[0] @ w
    ...   losses = optax.softmax_cross_entropy_with_integer_labels(logits, b[1])
    ...   return losses, jnp.stack([losses, jnp.max(jax.nn.softmax(logits), 1)], 1)
    >>> rescale = lambda p, f, b: storm_rescaler(p, f, b[1])
    >>> tx, meta_tx = optax.sgd(0.1), optax.adam(1e-2)
    >>> w, rp = jnp.zeros((3, 2)), storm_rescaler_init(key=1, num_classes=2, num_features=2)
    >>> state = StormState(w, tx.init(w), rp, meta_tx.init(rp))
    >>> state, m = storm_step(loss_fn, rescale, tx, meta_tx, state, (x, y), (x, y))
    >>> m.weights.shape, bool(m.meta_loss < 8 * jnp.log(2.0))
    ((8,), True)

  References:
    Heck et al., "Learning from Noisy Labels via Self-Taught On-the-Fly Meta Loss
    Rescaling", AAAI 2025, arXiv:2412.12955 (Eqs. 1, 5; Alg. 1).
  """
  for name, fn in (("loss_fn", loss_fn), ("rescaler_fn", rescaler_fn)):
    if not callable(fn):
      raise TypeError(f"storm_step: {name} must be callable, got {type(fn).__name__}")
  for name, t in (("tx", tx), ("meta_tx", meta_tx)):
    if not (hasattr(t, "init") and hasattr(t, "update")):
      raise TypeError(f"storm_step: {name} must be an optax transformation, got {type(t).__name__}")
  if not isinstance(state, StormState):
    raise TypeError(f"storm_step: state must be a StormState, got {type(state).__name__}")
  meta_loss_rescaling = check_flag("meta_loss_rescaling", meta_loss_rescaling)
  try:
    hash((loss_fn, rescaler_fn, tx, meta_tx))
  except TypeError:  # unhashable callables: trace eagerly (the caller may jit the loop)
    return _step(loss_fn, rescaler_fn, tx, meta_tx, meta_loss_rescaling, state, batch, meta_batch)
  return _step_jit(loss_fn, rescaler_fn, tx, meta_tx, meta_loss_rescaling, state, batch, meta_batch)


def _step(loss_fn, rescaler_fn, tx, meta_tx, meta_loss_rescaling, state, batch, meta_batch):
  params, opt_state, rp, meta_state = state

  def lookahead(rp):
    def weighted(p):
      losses, feats = _per_example(loss_fn(p, batch), "storm_step", "batch")
      w = _weights(rescaler_fn, rp, feats, batch, losses.shape[0], "batch")
      total = jnp.sum(w * losses)
      return total, (w, total)

    grads, (w, loss) = jax.grad(weighted, has_aux=True)(params)
    updates, new_opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    m_losses, m_feats = _per_example(loss_fn(new_params, meta_batch), "storm_step", "meta_batch")
    if meta_loss_rescaling:
      wm = _weights(rescaler_fn, rp, m_feats, meta_batch, m_losses.shape[0], "meta_batch")
    else:
      wm = jnp.ones_like(m_losses)
    meta_loss = jnp.sum(wm * m_losses)
    return meta_loss, (new_params, new_opt_state, jax.lax.stop_gradient(w), loss)

  (meta_loss, (new_params, new_opt_state, w, loss)), meta_grads = jax.value_and_grad(
    lookahead, has_aux=True
  )(rp)
  meta_updates, new_meta_state = meta_tx.update(meta_grads, meta_state, rp)
  new_rp = optax.apply_updates(rp, meta_updates)
  return (
    StormState(new_params, new_opt_state, new_rp, new_meta_state),
    StormMetrics(jax.lax.stop_gradient(loss), meta_loss, w),
  )


# One compilation per (loss_fn, rescaler_fn, tx, meta_tx) and shapes: a Python loop over
# batches reuses it; inside a caller's jit the inner jit is inlined.
_step_jit = jax.jit(_step, static_argnums=(0, 1, 2, 3, 4))
