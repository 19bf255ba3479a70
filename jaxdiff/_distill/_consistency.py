"""Consistency training with robust premetrics (iCT and its latent-space improvements).

Dao, Doan, Liu, Le & Metaxas, "Improved Training Technique for Latent Consistency Models",
ICLR 2025 (https://arxiv.org/abs/2502.01441); official code github.com/quandao10/LCT
(``models/karras_diffusion.py``, ``models/script_util.py``, ``train_cm_latent.py``,
``models/network_dit.py``). The baseline is iCT: Song & Dhariwal, "Improved Techniques for
Training Consistency Models", ICLR 2024 (https://arxiv.org/abs/2310.14189).

The pieces, each a pure function:

* the consistency-model parameterization :func:`consistency_scalings` /
  :func:`consistency_function` (``c_skip``, ``c_out``, ``c_in`` with the ``sigma_min``
  offset that makes ``f(x, sigma_min) = x`` exact);
* iCT's discretisation curriculum :func:`ict_num_scales` (``N(k)``), the Karras grid and the
  discretised log-normal noise distribution :func:`ict_timestep_probs`;
* the premetrics :func:`cauchy_premetric` (the paper's) and :func:`pseudo_huber_premetric`
  (iCT's), and the paper's adaptive scaling :func:`adaptive_c` ``c(N)``;
* minibatch optimal-transport pairing of noise and data :func:`ot_pairing` (an exact
  assignment);
* the training loss :func:`consistency_training_loss` (consistency term plus the diffusion
  loss at the low-noise end of the grid);
* one- and few-step sampling :func:`consistency_sample`.

Distances follow the official code: the squared distance of one example is the *mean* over
its entries (``mean_flat``), so ``c`` is on the scale of one entry. For the Cauchy premetric
this equals the paper's ``log(1 + ||x - y||^2 / (2 c'^2))`` with ``c' = c sqrt(d)``; the
pseudo-Huber premetric is iCT's ``sqrt(||x - y||^2 + c'^2) - c'`` divided by ``sqrt(d)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff._validation import (
  as_key,
  check_choice,
  check_finite,
  check_output,
  check_scalar,
  is_traced,
  poison,
)

Array = jax.Array

PREMETRICS = ("cauchy", "pseudo_huber")


# --------------------------------------------------------------------------- validation


def _check_data(name: str, x, where: str) -> Array:
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise TypeError(f"{where}: {name} must be an array, got {type(x).__name__}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{where}: {name} must be a floating array, got dtype {x.dtype}")
  if x.ndim < 1 or x.shape[0] < 1:
    raise ValueError(
      f"{where}: {name} must be batch first with at least one example, got shape {x.shape}"
    )
  check_finite(f"{where}: {name}", x)
  return jnp.asarray(x)


def _check_sigma_range(where: str, sigma_min, sigma_max, rho) -> tuple[float, float, float]:
  smin = check_scalar(f"{where}: sigma_min", sigma_min, lo=0.0, lo_open=True)
  smax = check_scalar(f"{where}: sigma_max", sigma_max, lo=0.0, lo_open=True)
  r = check_scalar(f"{where}: rho", rho, lo=0.0, lo_open=True)
  if smin is None or smax is None or r is None:
    raise TypeError(f"{where}: sigma_min, sigma_max and rho must be concrete numbers")
  if not smin < smax:
    raise ValueError(f"{where}: sigma_min must be below sigma_max, got {smin} >= {smax}")
  return smin, smax, r


def _mean_flat(a: Array) -> Array:
  return jnp.mean(a.reshape(a.shape[0], -1), axis=1)


def _bcast(v: Array, like: Array) -> Array:
  return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


# --------------------------------------------------------------------------- parameterization


def consistency_scalings(sigma, *, sigma_data=0.5, sigma_min=0.002) -> tuple[Array, Array, Array]:
  r"""The consistency-model skip, output and input scalings at noise level ``sigma``.

  iCT's parameterization (Song et al. 2023, Sec. 3.3; the official code of Dao et al. 2025,
  ``get_scalings_for_boundary_condition``):

  .. math::
    c_{\text{skip}}(\sigma) = \frac{\sigma_d^2}{(\sigma - \sigma_{\min})^2 + \sigma_d^2},\quad
    c_{\text{out}}(\sigma) = \frac{(\sigma - \sigma_{\min})\,\sigma_d}{\sqrt{\sigma^2 +
    \sigma_d^2}},\quad c_{\text{in}}(\sigma) = \frac{1}{\sqrt{\sigma^2 + \sigma_d^2}},

  so that :math:`f_\theta(x, \sigma) = c_{\text{skip}} x + c_{\text{out}}
  F_\theta(c_{\text{in}} x, \sigma)` meets the boundary condition
  :math:`f_\theta(x, \sigma_{\min}) = x` exactly.

  Args:
    sigma: the noise level(s), any shape, :math:`\ge \sigma_{\min}`.
    sigma_data: the data standard deviation :math:`\sigma_d > 0`.
    sigma_min: the smallest noise level :math:`\sigma_{\min} \ge 0`.

  Returns:
    ``(c_skip, c_out, c_in)`` shaped like ``sigma``.

  Example:
    >>> from jaxdiff.distill import consistency_scalings
    >>> [float(c) for c in consistency_scalings(0.002)][:2]  # the boundary condition
    [1.0, 0.0]

  References:
    Song, Dhariwal, Chen & Sutskever, "Consistency Models", arXiv:2303.01469; Dao et al.,
    "Improved Training Technique for Latent Consistency Models", arXiv:2502.01441.
  """
  check_scalar("consistency_scalings: sigma_data", sigma_data, lo=0.0, lo_open=True)
  check_scalar("consistency_scalings: sigma_min", sigma_min, lo=0.0)
  sigma = jnp.asarray(sigma)
  if not jnp.issubdtype(sigma.dtype, jnp.floating):
    sigma = sigma.astype(jnp.result_type(float))
  check_finite("consistency_scalings: sigma", sigma)
  if not is_traced(sigma) and bool(jnp.any(sigma < sigma_min)):
    raise ValueError(
      f"consistency_scalings: sigma must be >= sigma_min = {sigma_min}, got {float(jnp.min(sigma))}"
    )
  s = sigma - sigma_min
  c_skip = sigma_data**2 / (s**2 + sigma_data**2)
  c_out = s * sigma_data / jnp.sqrt(sigma**2 + sigma_data**2)
  c_in = 1.0 / jnp.sqrt(sigma**2 + sigma_data**2)
  return c_skip, c_out, c_in


def consistency_function(network: Callable, *, sigma_data=0.5, sigma_min=0.002) -> Callable:
  r"""The consistency function :math:`f(x, \sigma)` of a raw network :math:`F(x, \sigma)`.

  .. math::
    f(x, \sigma) = c_{\text{skip}}(\sigma)\, x + c_{\text{out}}(\sigma)\,
    F(c_{\text{in}}(\sigma)\, x, \sigma)

  with the scalings of :func:`consistency_scalings`. ``network`` receives the scaled input
  and the noise level itself (shape ``(batch,)``; it chooses its own embedding, e.g. the
  official code's ``250 log sigma``).

  Args:
    network: ``network(x_in, sigma, *args) -> out`` shaped like ``x_in``.
    sigma_data: :math:`\sigma_d > 0`.
    sigma_min: :math:`\sigma_{\min} \ge 0`.

  Returns:
    ``f(x, sigma, *args) -> x0`` with ``sigma`` a scalar or shape ``(batch,)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff.distill import consistency_function
    >>> f = consistency_function(lambda x, s: jnp.ones_like(x))
    >>> x = jnp.full((2, 3), 5.0)
    >>> bool(jnp.all(f(x, 0.002) == x))  # f(x, sigma_min) = x whatever the network says
    True

  References:
    Song et al., arXiv:2303.01469, Sec. 3.1; Dao et al., arXiv:2502.01441.
  """
  if not callable(network):
    raise TypeError(f"consistency_function: network must be callable, got {type(network).__name__}")
  check_scalar("consistency_function: sigma_data", sigma_data, lo=0.0, lo_open=True)
  check_scalar("consistency_function: sigma_min", sigma_min, lo=0.0)

  def f(x, sigma, *args):
    sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape[:1])
    c_skip, c_out, c_in = consistency_scalings(sigma, sigma_data=sigma_data, sigma_min=sigma_min)
    out = network(_bcast(c_in, x) * x, sigma, *args)
    check_output(out, like=x, name="network", where="consistency_function")
    return _bcast(c_skip, x) * x + _bcast(c_out, x) * out

  return f


# --------------------------------------------------------------------------- schedules


def ict_num_scales(step, *, total_steps, s0=10, s1=1280) -> int:
  r"""iCT's discretisation curriculum: the number of grid points :math:`N(k)` at step ``k``.

  Song & Dhariwal 2024, Eq. (5) (the official code of Dao et al., ``improve_scale_fn``):

  .. math::
    N(k) = \min\bigl(s_0\, 2^{\lfloor k / K' \rfloor},\, s_1\bigr) + 1,\qquad
    K' = \Bigl\lfloor \frac{K}{\log_2 \lfloor s_1 / s_0 \rfloor + 1} \Bigr\rfloor .

  Args:
    step: the training step :math:`k \ge 0` (a Python int: ``N`` sizes the grid).
    total_steps: :math:`K \ge 1`.
    s0: the initial number of intervals (:math:`\ge 1`).
    s1: the final number of intervals (:math:`\ge s_0`).

  Returns:
    :math:`N(k)`, a Python int (the grid has ``N(k)`` points, ``N(k) - 1`` intervals).

  Example:
    >>> from jaxdiff.distill import ict_num_scales
    >>> [ict_num_scales(k, total_steps=400_000) for k in (0, 50_000, 399_999)]
    [11, 21, 1281]

  References:
    Song & Dhariwal, "Improved Techniques for Training Consistency Models",
    arXiv:2310.14189, Sec. 3.4.
  """
  k = check_scalar("ict_num_scales: step", step, lo=0, integer=True, static=True)
  big_k = check_scalar("ict_num_scales: total_steps", total_steps, lo=1, integer=True, static=True)
  a = check_scalar("ict_num_scales: s0", s0, lo=1, integer=True, static=True)
  b = check_scalar("ict_num_scales: s1", s1, lo=1, integer=True, static=True)
  if b < a:
    raise ValueError(f"ict_num_scales: s1 must be >= s0 = {a}, got {b}")
  k_prime = max(math.floor(big_k / (math.log2(math.floor(b / a)) + 1)), 1)
  # The exponent is capped where a * 2**e already exceeds s1 (same value; a huge step would
  # otherwise build a Python int of step / K' bits).
  e = min(math.floor(k / k_prime), int(b).bit_length())
  return int(min(a * 2**e, b)) + 1


def karras_sigmas(num_scales, *, sigma_min=0.002, sigma_max=80.0, rho=7.0) -> np.ndarray:
  r"""The Karras grid of ``num_scales`` noise levels, from :math:`\sigma_{\max}` down.

  .. math::
    \sigma_i = \Bigl(\sigma_{\max}^{1/\rho} + \tfrac{i}{N - 1}\bigl(\sigma_{\min}^{1/\rho}
    - \sigma_{\max}^{1/\rho}\bigr)\Bigr)^{\rho},\quad i = 0, \dots, N - 1

  (descending, as in the official code; iCT's paper writes the same grid ascending).

  Args:
    num_scales: :math:`N \ge 2`, a Python int.
    sigma_min, sigma_max: the ends, :math:`0 < \sigma_{\min} < \sigma_{\max}`.
    rho: :math:`\rho > 0`.

  Returns:
    A float64 NumPy array of shape ``(N,)``.

  Example:
    >>> from jaxdiff.distill import karras_sigmas
    >>> [round(float(s), 3) for s in karras_sigmas(3)]
    [80.0, 2.515, 0.002]

  References:
    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models",
    arXiv:2206.00364, Eq. (5); Song & Dhariwal, arXiv:2310.14189.
  """
  n = check_scalar("karras_sigmas: num_scales", num_scales, lo=2, integer=True, static=True)
  smin, smax, r = _check_sigma_range("karras_sigmas", sigma_min, sigma_max, rho)
  i = np.arange(n, dtype=np.float64)
  return (smax ** (1 / r) + i / (n - 1) * (smin ** (1 / r) - smax ** (1 / r))) ** r


def ict_timestep_probs(
  num_scales, *, sigma_min=0.002, sigma_max=80.0, rho=7.0, p_mean=-1.1, p_std=2.0
) -> np.ndarray:
  r"""iCT's discretised log-normal distribution over the grid's intervals.

  Song & Dhariwal 2024, Sec. 3.5 (the official code's ``icm_dist``): interval :math:`i`
  (from :math:`\sigma_i` down to :math:`\sigma_{i+1}` of :func:`karras_sigmas`) has

  .. math::
    p(i) \propto \operatorname{erf}\Bigl(\frac{\log \sigma_i - P_{\text{mean}}}{\sqrt 2
    P_{\text{std}}}\Bigr) - \operatorname{erf}\Bigl(\frac{\log \sigma_{i+1} -
    P_{\text{mean}}}{\sqrt 2 P_{\text{std}}}\Bigr).

  Args:
    num_scales: :math:`N \ge 2` grid points (``N - 1`` intervals), a Python int.
    sigma_min, sigma_max, rho: the grid (:func:`karras_sigmas`).
    p_mean: :math:`P_{\text{mean}}` of the log-normal.
    p_std: :math:`P_{\text{std}} > 0`.

  Returns:
    A float64 NumPy array of shape ``(N - 1,)`` summing to one.

  Example:
    >>> from jaxdiff.distill import ict_timestep_probs
    >>> p = ict_timestep_probs(11)
    >>> p.shape, round(float(p.sum()), 12)
    ((10,), 1.0)

  References:
    Song & Dhariwal, arXiv:2310.14189, Sec. 3.5.
  """
  import scipy.special

  sig = karras_sigmas(num_scales, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
  check_scalar("ict_timestep_probs: p_mean", p_mean)
  check_scalar("ict_timestep_probs: p_std", p_std, lo=0.0, lo_open=True)
  e = scipy.special.erf((np.log(sig) - p_mean) / (math.sqrt(2.0) * p_std))
  p = e[:-1] - e[1:]
  return p / p.sum()


def adaptive_c(num_scales) -> float:
  r"""The paper's adaptive scaling :math:`c` of the premetric for a grid of ``N`` points.

  Dao et al. 2025, Sec. 4 (the official code's ``--c-by-loss-std``, used from the second
  stage of the curriculum on, i.e. when :math:`N > s_0 + 1`; the first stage keeps the
  initial :math:`c_0`, iCT's :math:`0.00054 \sqrt d`):

  .. math::
    c(N) = \exp\bigl(-1.15 \log(N - 1) - 0.85\bigr) = e^{-0.85}\,(N - 1)^{-1.15},

  a fit of the standard deviation of the consistency residual against the number of
  intervals: finer grids give smaller residuals, so a smaller ``c`` keeps the premetric
  robust to the same fraction of them.

  Args:
    num_scales: :math:`N \ge 2` (a Python int or a traced integer).

  Returns:
    ``c`` (a Python float for a concrete ``N``, else a traced scalar).

  Example:
    >>> from jaxdiff.distill import adaptive_c
    >>> round(adaptive_c(21), 6)
    0.013635

  References:
    Dao et al., "Improved Training Technique for Latent Consistency Models",
    arXiv:2502.01441.
  """
  n = check_scalar("adaptive_c: num_scales", num_scales, lo=2, integer=True)
  if n is None:
    return jnp.exp(-1.15 * jnp.log(jnp.asarray(num_scales, float) - 1.0) - 0.85)
  return math.exp(-1.15 * math.log(n - 1) - 0.85)


# --------------------------------------------------------------------------- premetrics


def _premetric_operands(where: str, x, y, c) -> tuple[Array, Array, Array]:
  x = _check_data("x", x, where)
  y = _check_data("y", y, where)
  if x.shape != y.shape:
    raise ValueError(f"{where}: y must have x's shape {x.shape}, got {y.shape}")
  check_scalar(f"{where}: c", c, lo=0.0, lo_open=True)
  return x, y, jnp.asarray(c, jnp.result_type(x, y))


def pseudo_huber_premetric(x, y, *, c) -> Array:
  r"""iCT's pseudo-Huber premetric between two batches, one value per example.

  .. math::
    d(x, y) = \sqrt{\overline{(x - y)^2} + c^2} - c

  where :math:`\overline{(\cdot)}` is the mean over the entries of one example (the
  official code's ``mean_flat``; iCT's sum form with :math:`c' = c \sqrt d` is
  :math:`\sqrt d\, d(x, y)`). Quadratic, :math:`\approx \overline{(x-y)^2} / 2c`, for small
  residuals and linear for large ones.

  Args:
    x, y: batch-first floating arrays of one shape, finite where concrete.
    c: the scale :math:`c > 0` (a traced ``c`` is not checked; a non-positive one gives NaN).

  Returns:
    Shape ``(batch,)``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff.distill import pseudo_huber_premetric
    >>> v = pseudo_huber_premetric(jnp.zeros((1, 4)), jnp.full((1, 4), 3.0), c=4.0)
    >>> round(float(v[0]), 6)  # sqrt(9 + 16) - 4
    1.0

  References:
    Song & Dhariwal, arXiv:2310.14189, Sec. 3.3.
  """
  x, y, c = _premetric_operands("pseudo_huber_premetric", x, y, c)
  d2 = _mean_flat((x - y) ** 2)
  out = jnp.sqrt(d2 + c**2) - c
  return poison(out, c > 0) if is_traced(c) else out


def cauchy_premetric(x, y, *, c) -> Array:
  r"""The Cauchy (Lorentzian) premetric of Dao et al. 2025, one value per example.

  .. math::
    d(x, y) = \log\Bigl(1 + \frac{\overline{(x - y)^2}}{2 c^2}\Bigr)

  where :math:`\overline{(\cdot)}` is the mean over the entries of one example (the
  official code's ``log(0.5 mean_flat + c^2) - 2 log c``, computed here with ``log1p``).
  It grows only logarithmically in the residual, so impulsive outliers (the paper's
  latent-space finding) pull far less than under pseudo-Huber's linear growth.

  Args:
    x, y: batch-first floating arrays of one shape, finite where concrete.
    c: the scale :math:`c > 0` (a traced ``c`` is not checked; a non-positive one gives NaN).

  Returns:
    Shape ``(batch,)``.

  Example:
    >>> import math, jax.numpy as jnp
    >>> from jaxdiff.distill import cauchy_premetric
    >>> v = cauchy_premetric(jnp.zeros((1, 4)), jnp.full((1, 4), 2.0), c=1.0)
    >>> round(float(v[0]), 6) == round(math.log(3.0), 6)
    True

  References:
    Dao et al., "Improved Training Technique for Latent Consistency Models",
    arXiv:2502.01441, Sec. 4.
  """
  x, y, c = _premetric_operands("cauchy_premetric", x, y, c)
  d2 = _mean_flat((x - y) ** 2)
  out = jnp.log1p(d2 / (2.0 * c**2))
  return poison(out, c > 0) if is_traced(c) else out


_PREMETRIC_FNS = {"cauchy": cauchy_premetric, "pseudo_huber": pseudo_huber_premetric}


# --------------------------------------------------------------------------- OT pairing


def _assignment_host(cost: np.ndarray) -> np.ndarray:
  import scipy.optimize

  _, cols = scipy.optimize.linear_sum_assignment(np.asarray(cost, np.float64))
  return cols.astype(np.int32)


def ot_pairing(x, noise) -> Array:
  r"""``noise`` reordered by the exact minibatch optimal-transport assignment to ``x``.

  With uniform weights on two batches of equal size, the optimal coupling for the squared
  Euclidean cost is a permutation (Birkhoff); the official code samples it from POT's exact
  plan without replacement. Here it is solved exactly by
  ``scipy.optimize.linear_sum_assignment`` on the host (``jax.pure_callback``: jit-able,
  no gradient, one host round trip per call):

  .. math::
    \pi^\star = \arg\min_{\pi \in S_B} \sum_{i=1}^{B} \lVert x_i - z_{\pi(i)} \rVert^2,
    \qquad \text{returns } (z_{\pi^\star(1)}, \dots, z_{\pi^\star(B)}).

  Args:
    x: the data batch, batch first, floating, finite where concrete.
    noise: the noise batch, the same shape.

  Returns:
    ``noise[perm]``, shaped like ``noise``: ``x[i]`` is paired with the ``i``-th row.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff.distill import ot_pairing
    >>> x = jnp.array([[0.0], [10.0]]); z = jnp.array([[9.0], [1.0]])
    >>> ot_pairing(x, z).ravel().tolist()
    [1.0, 9.0]

  References:
    Dao et al., arXiv:2502.01441, Sec. 4 (OT coupling); Pooladian et al., "Multisample Flow
    Matching", arXiv:2304.14772; Tong et al., "Improving and Generalizing Flow-Based
    Generative Models with Minibatch Optimal Transport", arXiv:2302.00482.
  """
  x = _check_data("x", x, "ot_pairing")
  noise = _check_data("noise", noise, "ot_pairing")
  if x.shape != noise.shape:
    raise ValueError(f"ot_pairing: noise must have x's shape {x.shape}, got {noise.shape}")
  b = x.shape[0]
  xf = x.reshape(b, -1)
  zf = noise.reshape(b, -1)
  cost = jnp.sum((xf[:, None, :] - zf[None, :, :]) ** 2, axis=-1)
  perm = jax.pure_callback(
    _assignment_host, jax.ShapeDtypeStruct((b,), jnp.int32), jax.lax.stop_gradient(cost)
  )
  return noise[perm]


# --------------------------------------------------------------------------- the loss


def _grid_sigma(i, num_scales, smin, smax, rho, dtype) -> Array:
  """:math:`\\sigma_i` of :func:`karras_sigmas` for integer ``i``; ``num_scales`` may be traced."""
  n = jnp.asarray(num_scales, dtype)
  a, b = smax ** (1 / rho), smin ** (1 / rho)
  # clipped to the ends: in float32 the formula can land a rounding error below sigma_min
  return jnp.clip((a + i.astype(dtype) / (n - 1) * (b - a)) ** rho, smin, smax)


def _sample_intervals(key, batch, num_scales, smin, smax, rho, p_mean, p_std, dtype) -> Array:
  """Interval indices with the probabilities of :func:`ict_timestep_probs`.

  Drawn by inversion rather than from a table, so that ``num_scales`` may be traced: log sigma
  from the log-normal truncated to the grid's range, then the index of the interval holding
  it. Interval ``i`` gets the truncated log-normal's mass on ``(sigma_{i+1}, sigma_i]``, which
  is :func:`ict_timestep_probs`' ``erf`` difference over its sum, exactly.
  """
  lo = (math.log(smin) - p_mean) / p_std
  hi = (math.log(smax) - p_mean) / p_std
  u = jax.random.truncated_normal(key, lo, hi, (batch,), dtype)
  sigma = jnp.exp(p_mean + p_std * u)
  a, b = smax ** (1 / rho), smin ** (1 / rho)
  n = jnp.asarray(num_scales, dtype)
  pos = (a - sigma ** (1 / rho)) / (a - b) * (n - 1)
  return jnp.clip(jnp.floor(pos), 0, n - 2).astype(jnp.int32)


def consistency_training_loss(
  fn: Callable,
  x,
  *,
  key,
  num_scales,
  c,
  premetric: str = "cauchy",
  diffusion_weight=5.0,
  diffusion_fraction=0.25,
  pair_noise: bool = False,
  teacher: Callable | None = None,
  sigma_min=0.002,
  sigma_max=80.0,
  rho=7.0,
  sigma_data=0.5,
  p_mean=-1.1,
  p_std=2.0,
) -> Array:
  r"""The consistency-training loss of Dao et al. 2025 (iCT with a robust premetric).

  With the Karras grid :math:`\sigma_0 > \dots > \sigma_{N-1}` (:func:`karras_sigmas`), an
  interval :math:`i \sim p(i)` (:func:`ict_timestep_probs`), :math:`z \sim \mathcal N(0, I)`
  (reordered by :func:`ot_pairing` when ``pair_noise``), :math:`x_t = x + \sigma_i z` and
  :math:`x_{t'} = x + \sigma_{i+1} z` (the CT estimator: one Euler step of the probability
  flow with :math:`x` in place of the denoiser; a Heun step of ``teacher`` instead gives
  consistency distillation),

  .. math::
    \mathcal L = \mathbb E\Bigl[\frac{d\bigl(f_\theta(x_t, \sigma_i),\
    \operatorname{sg}[f_\theta(x_{t'}, \sigma_{i+1})]\bigr)}{\sigma_i - \sigma_{i+1}}\Bigr]
    + \lambda_{\text{diff}}\,
    \mathbb E\Bigl[\Bigl(\frac{1}{\sigma_i^2} + \frac{1}{\sigma_d^2}\Bigr)
    \overline{\bigl(f_\theta(x_t, \sigma_i) - x\bigr)^2} \Bigm| i \ge \lfloor (1 - q) N
    \rfloor\Bigr],

  :math:`d` the Cauchy or pseudo-Huber premetric (the mean over entries, see the module
  note), :math:`\operatorname{sg}` the stop-gradient (iCT's target network is the online one,
  EMA 0). The second term is the paper's diffusion loss at early (low-noise) timesteps: the
  plain EDM-weighted denoising loss on the batch entries whose interval lies in the last
  fraction :math:`q` (``diffusion_fraction``) of the grid, averaged over those entries
  (official code: indices :math:`\ge` ``int(0.75 N)``, :math:`\lambda_{\text{diff}} = 5`).

  Args:
    fn: the consistency function ``fn(x, sigma) -> x0`` (``sigma`` shape ``(batch,)``),
      e.g. :func:`consistency_function` of a network closed over its parameters.
    x: the data batch, batch first, floating, finite where concrete.
    key: PRNG key or int seed (interval and noise draws).
    num_scales: the grid size :math:`N \ge 2` (:func:`ict_num_scales`); may be traced (a
      curriculum inside one compiled step). The interval is drawn by inversion of the
      truncated log-normal, which gives :func:`ict_timestep_probs` exactly.
    c: the premetric's scale :math:`c > 0` (:func:`adaptive_c`); may be traced.
    premetric: ``"cauchy"`` (the paper) or ``"pseudo_huber"`` (iCT).
    diffusion_weight: :math:`\lambda_{\text{diff}} \ge 0`; 0 switches the term off.
    diffusion_fraction: :math:`q \in [0, 1]`, the low-noise fraction of the grid.
    pair_noise: pair noise and data by the exact minibatch OT assignment.
    teacher: ``None`` (consistency training) or a denoiser ``teacher(x, sigma) -> x0``
      whose Heun step makes :math:`x_{t'}` (consistency distillation, as the official code).
    sigma_min, sigma_max, rho: the grid.
    sigma_data: :math:`\sigma_d` of the diffusion-loss weight.
    p_mean, p_std: the log-normal of :func:`ict_timestep_probs`.

  Returns:
    The scalar loss.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdiff.distill import consistency_function, consistency_training_loss
    >>> f = consistency_function(lambda x, s: jnp.zeros_like(x))
    >>> x = jax.random.normal(jax.random.key(0), (8, 2))
    >>> loss = consistency_training_loss(f, x, key=1, num_scales=11, c=0.03)
    >>> bool(jnp.isfinite(loss) and loss > 0)
    True

  References:
    Dao et al., "Improved Training Technique for Latent Consistency Models",
    arXiv:2502.01441; Song & Dhariwal, arXiv:2310.14189.
  """
  where = "consistency_training_loss"
  if not callable(fn):
    raise TypeError(f"{where}: fn must be callable, got {type(fn).__name__}")
  if teacher is not None and not callable(teacher):
    raise TypeError(
      f"{where}: teacher must be None or a callable denoiser, got {type(teacher).__name__}"
    )
  x = _check_data("x", x, where)
  key = as_key(key)
  check_scalar(f"{where}: num_scales", num_scales, lo=2, integer=True)
  cv = check_scalar(f"{where}: c", c, lo=0.0, lo_open=True)
  check_choice(f"{where}: premetric", premetric, PREMETRICS)
  lam = check_scalar(f"{where}: diffusion_weight", diffusion_weight, lo=0.0)
  q = check_scalar(f"{where}: diffusion_fraction", diffusion_fraction, lo=0.0, hi=1.0, static=True)
  if not isinstance(pair_noise, (bool, np.bool_)):
    raise TypeError(f"{where}: pair_noise must be a bool, got {type(pair_noise).__name__}")
  check_scalar(f"{where}: sigma_data", sigma_data, lo=0.0, lo_open=True)
  smin, smax, r = _check_sigma_range(where, sigma_min, sigma_max, rho)
  check_scalar(f"{where}: p_mean", p_mean)
  check_scalar(f"{where}: p_std", p_std, lo=0.0, lo_open=True)
  dtype = x.dtype
  k_idx, k_noise = jax.random.split(key)
  idx = _sample_intervals(k_idx, x.shape[0], num_scales, smin, smax, r, p_mean, p_std, dtype)
  z = jax.random.normal(k_noise, x.shape, dtype)
  if pair_noise:
    z = ot_pairing(x, z)
  t = _grid_sigma(idx, num_scales, smin, smax, r, dtype)
  t2 = _grid_sigma(idx + 1, num_scales, smin, smax, r, dtype)
  x_t = x + _bcast(t, x) * z
  if teacher is None:
    x_t2 = x + _bcast(t2, x) * z
  else:
    d0 = teacher(x_t, t)
    check_output(d0, like=x, name="teacher", where=where)
    d = (x_t - d0) / _bcast(t, x)
    x_e = x_t + d * _bcast(t2 - t, x)
    d1 = teacher(x_e, t2)
    d_next = (x_e - d1) / _bcast(t2, x)
    x_t2 = jax.lax.stop_gradient(x_t + (d + d_next) * _bcast((t2 - t) / 2, x))
  out = fn(x_t, t)
  check_output(out, like=x, name="fn", where=where)
  target = jax.lax.stop_gradient(fn(x_t2, t2))
  c = jnp.asarray(c, dtype)
  dist = _PREMETRIC_FNS[premetric]
  cm = dist(out, target, c=c) / (t - t2)
  loss = jnp.mean(cm)
  if lam is None or lam > 0:
    mask = (idx >= jnp.floor((1.0 - q) * jnp.asarray(num_scales, dtype))).astype(dtype)
    w = 1.0 / t**2 + 1.0 / sigma_data**2
    per = _mean_flat((out - x) ** 2) * w
    diff = jnp.sum(mask * per) / jnp.maximum(jnp.sum(mask), 1.0)
    loss = loss + jnp.asarray(diffusion_weight, dtype) * diff
  if cv is None:
    loss = poison(loss[None], (c > 0)[None])[0]
  return loss


# --------------------------------------------------------------------------- sampling


def consistency_sample(
  fn: Callable, noise, *, sigmas: Sequence[float] = (80.0,), key=None, sigma_min=0.002
) -> Array:
  r"""One- or few-step sampling from a consistency function (pure, jit-able).

  Song et al. 2023, Algorithm 1: with :math:`\tau_1 > \tau_2 > \dots` the entries of
  ``sigmas``,

  .. math::
    x \leftarrow f(\tau_1 z, \tau_1),\qquad x \leftarrow f\bigl(x + \sqrt{\tau_j^2 -
    \sigma_{\min}^2}\, z_j,\ \tau_j\bigr),\ j = 2, 3, \dots

  One step is ``sigmas=(sigma_max,)``; the paper's two-step sampler adds one intermediate
  level (e.g. ``(80.0, 0.8)``).

  Args:
    fn: the consistency function ``fn(x, sigma) -> x0``.
    noise: standard normal :math:`z`, batch first.
    sigmas: the decreasing noise levels :math:`\tau_j > \sigma_{\min}` (a Python sequence:
      its length is the number of evaluations).
    key: PRNG key or int seed for the fresh noise of steps 2, 3, ...; needed when
      ``len(sigmas) > 1``.
    sigma_min: :math:`\sigma_{\min} \ge 0`.

  Returns:
    The samples, shaped like ``noise``.

  Example:
    >>> import jax.numpy as jnp
    >>> from jaxdiff.distill import consistency_sample
    >>> f = lambda x, s: x / jnp.sqrt(1.0 + s[:, None] ** 2)  # the map of N(0, I) data
    >>> x = consistency_sample(f, jnp.ones((2, 3)), sigmas=(80.0, 0.8), key=0)
    >>> x.shape
    (2, 3)

  References:
    Song, Dhariwal, Chen & Sutskever, "Consistency Models", arXiv:2303.01469, Algorithm 1;
    Dao et al., arXiv:2502.01441 (one- and two-step FID).
  """
  where = "consistency_sample"
  if not callable(fn):
    raise TypeError(f"{where}: fn must be callable, got {type(fn).__name__}")
  noise = _check_data("noise", noise, where)
  smin = check_scalar(f"{where}: sigma_min", sigma_min, lo=0.0)
  if isinstance(sigmas, (str, bytes)) or not isinstance(sigmas, Sequence) or len(sigmas) < 1:
    raise TypeError(f"{where}: sigmas must be a non-empty sequence of noise levels, got {sigmas!r}")
  taus = [
    check_scalar(f"{where}: sigmas[{j}]", s, lo=smin, lo_open=True) for j, s in enumerate(sigmas)
  ]
  if any(v is None for v in taus):
    raise TypeError(f"{where}: sigmas must be concrete numbers")
  if any(b >= a for a, b in zip(taus, taus[1:])):
    raise ValueError(f"{where}: sigmas must be strictly decreasing, got {tuple(taus)}")
  if len(taus) > 1:
    if key is None:
      raise TypeError(f"{where}: key is needed for more than one step (fresh noise)")
    key = as_key(key)
  b = noise.shape[0]
  dtype = noise.dtype
  x = fn(taus[0] * noise, jnp.full((b,), taus[0], dtype))
  check_output(x, like=noise, name="fn", where=where, like_name="noise")
  for tau in taus[1:]:
    key, sub = jax.random.split(key)
    zj = jax.random.normal(sub, noise.shape, dtype)
    x = fn(x + math.sqrt(tau**2 - smin**2) * zj, jnp.full((b,), tau, dtype))
  return x
