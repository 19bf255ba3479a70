"""Unnormalized models by compositional optimization (MECO) and noise-contrastive estimation.

Jiang, Qin, Wu, Chen, Yang, Zhang, "Learning Unnormalized Statistical Models via
Compositional Optimization", ICML 2023 (https://arxiv.org/abs/2306.07485). For a model
:math:`p_\\theta(x) = \\exp(-E_\\theta(x)) / Z(\\theta)` and a noise density :math:`q`
that is positive wherever the data are, the negative log-likelihood is a compositional
objective :math:`f(\\mathbb E_\\xi[g(\\theta; \\xi)])` with :math:`f = \\log`:

.. math::
  F(\\theta) = \\mathbb E_{x \\sim p_d}[E_\\theta(x)]
    + \\log \\mathbb E_{z \\sim q}\\Big[\\frac{e^{-E_\\theta(z)}}{q(z)}\\Big],

and MECO optimizes it by tracking the inner expectation with a moving average
(:func:`meco_grads`) and stepping the parameters with a moving average of the gradients
(:func:`meco`). :func:`nce_loss` is the baseline (Gutmann and Hyvarinen), with the log
partition function a learned parameter; :func:`log_partition_estimate` is the plain
importance-sampling estimate of :math:`\\log Z(\\theta)`.

Everything is computed in log space (``logsumexp`` / ``logaddexp``): the ratios
:math:`e^{-E(z)}/q(z)` overflow float32 for an untrained network, their logarithms do not.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optim._validation import (
  check_choice,
  check_learning_rate,
  check_output,
  check_scalar,
  is_traced,
)

_REF = """Jiang, Qin, Wu, Chen, Yang, Zhang, "Learning Unnormalized Statistical Models via
    Compositional Optimization", ICML 2023, https://arxiv.org/abs/2306.07485"""

VARIANTS = ("moving_average", "lagged")

EnergyFn = Callable[[Any, jax.Array], jax.Array]


class MECOState(NamedTuple):
  """The state of :func:`meco_grads`: the step count and :math:`\\log u_{t}`.

  ``log_u`` is the logarithm of the moving average :math:`u_t` of the inner function
  :math:`\\mathbb E_{z \\sim q}[e^{-E_\\theta(z)}/q(z)] = Z(\\theta)`, i.e. the running
  estimate of :math:`\\log Z(\\theta)`; it is not read at ``count == 0`` (the first
  batch's estimate initializes it).
  """

  count: jax.Array
  log_u: jax.Array


def _float_dtype(params) -> Any:
  for leaf in jax.tree.leaves(params):
    dt = jnp.result_type(leaf)
    if jnp.issubdtype(dt, jnp.floating):
      return dt
  return jnp.result_type(float)


def meco_init(params) -> MECOState:
  r"""The initial :class:`MECOState` for ``params``: count 0, :math:`\log u_0 = 0`.

  :math:`\log u_0` takes the dtype of the first floating leaf of ``params`` (the default
  float when there is none). The first call of :func:`meco_grads` replaces :math:`u_0`
  by its batch's estimate, so its value never matters.

  Args:
    params: the model's parameters (any pytree).

  Returns:
    ``MECOState(count=0, log_u=0)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim import unnormalized
    >>> unnormalized.meco_init({"mu": jnp.zeros(2)})
    MECOState(count=Array(0, dtype=int32), log_u=Array(0., dtype=float32))

  References:
    {ref}
  """
  return MECOState(jnp.zeros((), jnp.int32), jnp.zeros((), _float_dtype(params)))


def _check_samples(name: str, x, where: str) -> jax.Array:
  if not isinstance(x, (jax.Array, np.ndarray)) and not is_traced(x):
    raise TypeError(
      f"{where}: {name} must be an array of samples (batch first), got {type(x).__name__}"
    )
  dt = jnp.result_type(x)
  if not jnp.issubdtype(dt, jnp.floating):
    raise TypeError(f"{where}: {name} must be a floating array, got dtype {dt}")
  if jnp.ndim(x) < 1 or jnp.shape(x)[0] == 0:
    raise ValueError(
      f"{where}: {name} must hold at least one sample along its leading axis, got shape "
      f"{jnp.shape(x)}"
    )
  if not is_traced(x):
    arr = np.asarray(x)
    bad = np.flatnonzero(~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1))
    if bad.size:
      raise ValueError(
        f"{where}: {name} must be finite (no NaN or inf), got a non-finite "
        f"entry in sample {int(bad[0])}"
      )
  return jnp.asarray(x)


def _energy(energy_fn, params, x, where: str) -> jax.Array:
  e = energy_fn(params, x)
  check_output(
    e,
    shape=(x.shape[0],),
    dtype="floating",
    name="energy_fn(params, x)",
    where=where,
    hint="one energy per sample",
  )
  return e


def _log_q(noise_log_prob, x, where: str) -> jax.Array:
  if not callable(noise_log_prob):
    raise TypeError(
      f"{where}: noise_log_prob must be callable (x -> log q(x), one value per sample), got "
      f"{type(noise_log_prob).__name__}"
    )
  lq = noise_log_prob(x)
  check_output(
    lq,
    shape=(x.shape[0],),
    dtype="floating",
    name="noise_log_prob(x)",
    where=where,
    hint="one log-density per sample",
  )
  if not is_traced(lq):
    arr = np.asarray(lq)
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
      raise ValueError(
        f"{where}: noise_log_prob(x) must be finite at every sample (q > 0 where it is "
        f"sampled and where the data are), got {float(arr[bad[0]])} at sample {int(bad[0])}"
      )
  return lq


def _check_energy_value(value, where: str) -> None:
  if is_traced(value):
    return
  if not np.isfinite(np.asarray(value)).all():
    raise ValueError(
      f"{where}: energy_fn(params, x) returned a non-finite energy; check the parameters, "
      "the samples and the learning rate"
    )


def _logmeanexp(a: jax.Array) -> jax.Array:
  return jax.nn.logsumexp(a) - jnp.log(jnp.asarray(a.shape[0], a.dtype))


def log_partition_estimate(energy_fn: EnergyFn, params, noise, noise_log_prob) -> jax.Array:
  r"""The importance-sampling estimate of :math:`\log Z(\theta)` from noise samples.

  With :math:`z_1, \dots, z_m \sim q`,

  .. math::
    \log \hat Z_m(\theta) = \log \frac1m \sum_{k=1}^m \frac{e^{-E_\theta(z_k)}}{q(z_k)},

  the log of an unbiased estimate of :math:`Z(\theta) = \mathbb E_q[e^{-E_\theta}/q]`: it
  is consistent, with a downward bias of about :math:`\mathrm{Var}_q[e^{-E}/q]/(2 m Z^2)`
  (Jensen), which is why MECO averages the inner expectation over steps instead of taking
  the log of one batch.

  Args:
    energy_fn: ``energy_fn(params, x) -> (batch,)``, the energies :math:`E_\theta` of a
      batch of samples (batch first).
    params: the model's parameters.
    noise: samples of :math:`q`, batch first.
    noise_log_prob: ``noise_log_prob(x) -> (batch,)``, :math:`\log q` at each sample.

  Returns:
    The scalar estimate, in the energies' dtype.

  Raises:
    TypeError: non-floating ``noise``, a non-callable ``noise_log_prob``, or a callable
      returning something other than one floating array per sample.
    ValueError: an empty or non-finite concrete ``noise``, outputs of the wrong shape, or
      non-finite concrete energies / log-densities.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim import unnormalized
    >>> energy = lambda p, x: 0.5 * jnp.sum(x**2, -1)  # N(0, I) unnormalized: log Z = log 2 pi
    >>> z = 2.0 * jax.random.normal(jax.random.key(0), (20000, 2))  # q = N(0, 4 I)
    >>> log_q = lambda x: -0.125 * jnp.sum(x**2, -1) - jnp.log(8 * jnp.pi)
    >>> est = unnormalized.log_partition_estimate(energy, None, z, log_q)
    >>> bool(abs(est - jnp.log(2 * jnp.pi)) < 0.02)
    True

  References:
    {ref}
  """
  where = "log_partition_estimate"
  noise = _check_samples("noise", noise, where)
  lq = _log_q(noise_log_prob, noise, where)
  out = _logmeanexp(-_energy(energy_fn, params, noise, where) - lq)
  _check_energy_value(out, where)
  return out


def _gamma_at(gamma, count, where: str):
  if callable(gamma):
    return gamma(count)
  check_scalar("gamma", gamma, lo=0.0, hi=1.0, lo_open=True)
  return gamma


def meco_grads(
  energy_fn: EnergyFn,
  params,
  state: MECOState,
  data,
  noise,
  noise_log_prob,
  *,
  gamma: float | Callable = 0.1,
  variant: str = "moving_average",
) -> tuple[tuple[jax.Array, Any], MECOState]:
  r"""The MECO gradient of the negative log-likelihood, with its moving-average state.

  One step :math:`t` of Algorithm 1 of Jiang et al. (2023), with a data batch
  :math:`x_1, \dots, x_n` and a noise batch :math:`z_1, \dots, z_m \sim q`. The inner
  function :math:`g(\theta) = \mathbb E_q[e^{-E_\theta(z)}/q(z)] = Z(\theta)` is tracked by
  the moving average

  .. math::
    u_t = (1 - \gamma_t)\, u_{t-1} + \gamma_t\, \frac1m \sum_k
      \frac{e^{-E_{\theta_t}(z_k)}}{q(z_k)}
    \qquad (u_1 = \text{the first batch's average}),

  and the gradient of :math:`F = \mathbb E_{p_d}[E_\theta] + \log g(\theta)` is estimated
  with :math:`\nabla \log g = \nabla g / g \approx \nabla \hat g / u_t`:

  .. math::
    G_t = \frac1n \sum_i \nabla E_{\theta_t}(x_i)
      - \frac{1}{u_t}\, \frac1m \sum_k \frac{e^{-E_{\theta_t}(z_k)}}{q(z_k)}\,
        \nabla E_{\theta_t}(z_k).

  The parameter step of the paper, :math:`v_t = (1 - \beta) v_{t-1} + \beta G_t`,
  :math:`\theta_{t+1} = \theta_t - \eta v_t`, is :func:`meco`; any other optax optimizer
  can step :math:`G_t` too (the paper also reports Adam). With :math:`\gamma_t = 1` the
  estimator is the plain minibatch one (the gradient of the log of one batch's estimate,
  biased); with :math:`\gamma_t = 1/t` :math:`u_t` is the running mean of all batches.

  What this transcription assumes (the official code was not found; the algorithm is
  read from the paper's description): :math:`u` is updated before the gradient and the
  gradient uses :math:`u_t` (``variant="moving_average"``, as SCGD, Wang et al. 2017);
  ``variant="lagged"`` uses :math:`u_{t-1}` instead (the first batch's estimate at
  :math:`t = 1`). All of it runs in log space: the state holds :math:`\log u_t`.

  Args:
    energy_fn: ``energy_fn(params, x) -> (batch,)``, the energy :math:`E_\theta` of each
      sample of a batch (batch first); differentiable in ``params``.
    params: the parameters :math:`\theta_t`.
    state: the :class:`MECOState` of the previous step (:func:`meco_init` at the start).
    data: the data batch :math:`x_i`, batch first.
    noise: the noise batch :math:`z_k \sim q`, batch first (any batch size).
    noise_log_prob: ``noise_log_prob(x) -> (batch,)``, :math:`\log q` at each sample.
    gamma: :math:`\gamma_t \in (0, 1]`, a number or a schedule ``count -> gamma`` (called
      with the state's count, starting at 0). A traced or scheduled ``gamma`` is not
      checked.
    variant: ``"moving_average"`` (default) or ``"lagged"`` (see above).

  Returns:
    ``((loss, grads), state)``: ``loss`` is the objective's estimate
    :math:`\frac1n\sum_i E(x_i) + \log u_t` (the NLL up to the data's entropy), ``grads``
    the pytree :math:`G_t` shaped like ``params``, ``state`` the new :class:`MECOState`.

  Raises:
    TypeError: non-floating samples, a non-callable ``noise_log_prob``, callables that do
      not return one floating array per sample.
    ValueError: a concrete ``gamma`` outside :math:`(0, 1]`, an unknown ``variant``,
      empty or non-finite concrete samples, outputs of the wrong shape, or non-finite
      concrete energies / log-densities.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from optim import unnormalized
    >>> energy = lambda p, x: 0.5 * jnp.sum((x - p) ** 2, -1)  # N(p, I), Z unknown to MECO
    >>> log_q = lambda x: -0.125 * jnp.sum(x**2, -1) - jnp.log(8 * jnp.pi)  # q = N(0, 4 I)
    >>> data = 1.0 + jax.random.normal(jax.random.key(0), (4096, 2))
    >>> params, state = jnp.zeros(2), unnormalized.meco_init(jnp.zeros(2))
    >>> tx = unnormalized.meco(0.5, beta=0.5)
    >>> opt = tx.init(params)
    >>> grads = jax.jit(lambda p, s, z: unnormalized.meco_grads(energy, p, s, data, z, log_q))
    >>> for i in range(200):
    ...   z = 2.0 * jax.random.normal(jax.random.key(i + 1), (256, 2))
    ...   (loss, g), state = grads(params, state, z)
    ...   upd, opt = tx.update(g, opt)
    ...   params = optax.apply_updates(params, upd)
    >>> bool(jnp.all(jnp.abs(params - data.mean(0)) < 0.1))  # the MLE: the data mean
    True

  References:
    {ref}; Wang, Fang, Liu, "Stochastic compositional gradient descent", Math. Prog. 2017.
  """
  where = "meco_grads"
  check_choice("variant", variant, VARIANTS)
  if not isinstance(state, MECOState):
    raise TypeError(
      f"{where}: state must be a MECOState (from meco_init), got {type(state).__name__}"
    )
  data = _check_samples("data", data, where)
  noise = _check_samples("noise", noise, where)
  lq = _log_q(noise_log_prob, noise, where)
  count = state.count
  gamma_t = _gamma_at(gamma, count, where)
  first = count == 0

  def surrogate(p):
    e_data = _energy(energy_fn, p, data, where)
    ell = -_energy(energy_fn, p, noise, where) - lq  # log of e^{-E(z)} / q(z)
    dtype = jnp.result_type(ell)
    ell_sg = jax.lax.stop_gradient(ell)
    log_g = _logmeanexp(ell_sg)
    g = jnp.asarray(gamma_t, dtype)
    log_prev = jnp.asarray(state.log_u, dtype)
    # log((1 - g) u + g ghat); at g = 1 the first term is log 0 = -inf and drops out.
    log_u = jnp.where(first, log_g, jnp.logaddexp(jnp.log1p(-g) + log_prev, jnp.log(g) + log_g))
    log_used = log_u if variant == "moving_average" else jnp.where(first, log_g, log_prev)
    mean_e = jnp.mean(e_data)
    # Its gradient is G_t: grad mean E(x) + (1 / u) (1/m) sum_k exp(ell_k) grad ell_k.
    value = mean_e + jnp.sum(jnp.exp(ell - log_used)) / ell.shape[0]
    return value, (mean_e + log_u, log_u)

  grads, (loss, log_u) = jax.grad(surrogate, has_aux=True)(params)
  _check_energy_value(loss, where)
  return (loss, grads), MECOState(count + 1, log_u.astype(jnp.result_type(state.log_u)))


def meco(learning_rate, *, beta: float = 0.1) -> optax.GradientTransformation:
  r"""The parameter step of MECO: a moving average of the gradients, then SGD.

  .. math::
    v_t = (1 - \beta)\, v_{t-1} + \beta\, G_t,\qquad \theta_{t+1} = \theta_t - \eta_t v_t,
    \qquad v_0 = 0,

  with :math:`G_t` from :func:`meco_grads` (Algorithm 1 of Jiang et al. 2023). It is
  ``optax.chain(optax.ema(1 - beta, debias=False), optax.scale_by_learning_rate(eta))``;
  :math:`\beta = 1` is plain SGD.

  Args:
    learning_rate: :math:`\eta`, a number :math:`\ge 0` or an optax schedule.
    beta: :math:`\beta \in (0, 1]`, the weight of the new gradient. A traced ``beta`` is
      not checked.

  Returns:
    An ``optax.GradientTransformation``.

  Raises:
    ValueError: a concrete ``learning_rate`` below 0 or ``beta`` outside :math:`(0, 1]`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim import unnormalized
    >>> tx = unnormalized.meco(0.1, beta=0.5)
    >>> upd, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
    >>> upd  # -0.1 * 0.5 * 2
    Array([-0.1], dtype=float32)

  References:
    {ref}
  """
  check_learning_rate(learning_rate)
  check_scalar("beta", beta, lo=0.0, hi=1.0, lo_open=True)
  return optax.chain(
    optax.ema(1.0 - beta, debias=False), optax.scale_by_learning_rate(learning_rate)
  )


def nce_loss(energy_fn: EnergyFn, params, log_partition, data, noise, noise_log_prob) -> jax.Array:
  r"""The noise-contrastive estimation loss, with :math:`\log Z` a learned parameter.

  Gutmann and Hyvarinen's logistic loss between data :math:`x_1, \dots, x_n` and noise
  :math:`z_1, \dots, z_m \sim q`, :math:`\nu = m / n`, for the model
  :math:`\log p(x) = -E_\theta(x) - c` with :math:`c` (``log_partition``) learned with
  :math:`\theta`:

  .. math::
    G(x) = -E_\theta(x) - c - \log q(x) - \log\nu,\qquad
    J(\theta, c) = \frac1n \sum_i \mathrm{softplus}(-G(x_i))
      + \frac{\nu}{m} \sum_k \mathrm{softplus}(G(z_k)),

  the negative log-likelihood of classifying data against noise, minimized at
  :math:`p_\theta = p_d` and :math:`c = \log Z(\theta)` (Gutmann and Hyvarinen 2012,
  eq. 8, normalized by :math:`n`).

  Args:
    energy_fn: ``energy_fn(params, x) -> (batch,)``, the energies of a batch.
    params: the model's parameters :math:`\theta`.
    log_partition: :math:`c`, the learned log partition function (a scalar; differentiate
      the loss with respect to it too).
    data: the data batch, batch first.
    noise: the noise batch (samples of :math:`q`), batch first.
    noise_log_prob: ``noise_log_prob(x) -> (batch,)``, :math:`\log q` at each sample (it is
      evaluated on the data and on the noise).

  Returns:
    The scalar loss :math:`J`.

  Raises:
    TypeError: non-floating samples, a non-scalar ``log_partition``, a non-callable
      ``noise_log_prob``, callables not returning one floating array per sample.
    ValueError: empty or non-finite concrete samples, a non-finite concrete
      ``log_partition``, outputs of the wrong shape, non-finite concrete energies or
      log-densities.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim import unnormalized
    >>> energy = lambda p, x: 0.5 * jnp.sum((x - p) ** 2, -1)
    >>> log_q = lambda x: -0.5 * jnp.sum(x**2, -1) - jnp.log(2 * jnp.pi)
    >>> x = jax.random.normal(jax.random.key(0), (8, 2))
    >>> # the model is the noise (p = q, c = log 2 pi): the loss is 2 log 2
    >>> loss = unnormalized.nce_loss(energy, jnp.zeros(2), jnp.log(2 * jnp.pi), x, x, log_q)
    >>> bool(jnp.isclose(loss, 2 * jnp.log(2.0)))
    True

  References:
    Gutmann and Hyvarinen, "Noise-contrastive estimation of unnormalized statistical
    models, with applications to natural image statistics", JMLR 2012; the baseline of
    {ref}.
  """
  where = "nce_loss"
  data = _check_samples("data", data, where)
  noise = _check_samples("noise", noise, where)
  check_scalar("log_partition", log_partition)
  lq_data = _log_q(noise_log_prob, data, where)
  lq_noise = _log_q(noise_log_prob, noise, where)
  n, m = data.shape[0], noise.shape[0]
  log_nu = math.log(m / n)
  e_data = _energy(energy_fn, params, data, where)
  e_noise = _energy(energy_fn, params, noise, where)
  g_data = -e_data - log_partition - lq_data - log_nu
  g_noise = -e_noise - log_partition - lq_noise - log_nu
  out = jnp.mean(jax.nn.softplus(-g_data)) + (m / n) * jnp.mean(jax.nn.softplus(g_noise))
  _check_energy_value(out, where)
  return out


for _fn in (meco_init, log_partition_estimate, meco_grads, meco, nce_loss):
  _fn.__doc__ = _fn.__doc__.replace("{ref}", _REF)
