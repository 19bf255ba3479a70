"""Federated zeroth-order optimization: FZooS and the FedZO-style two-point baseline.

FZooS (Shu, Lin, Dai and Low, "Federated Zeroth-Order Optimization using
Trajectory-Informed Surrogate Gradients", ICLR 2024, arXiv:2308.04077; Algorithm 1) runs
``num_local_steps`` local steps on every client with the gradient of a Gaussian-process
surrogate of the client's function, fitted to the client's own queries (its trajectory),
corrected by the difference between the global and the local random-feature surrogates
of the previous round (the adaptive gradient correction that reduces client drift). The
server averages the clients' points and their random-feature weight vectors (a
fixed-size message of ``num_features`` numbers).

Sources: the paper's Algorithm 1 and Sec. 4, and the official code (github.com/shuyao95/
FZooS, ``optimizers.py``: ``fzoos_opt.update``, ``RFFGP``; ``settings.py``:
``FedZoo.run_server``, ``get_rff``; ``run_exp.py``: the defaults). Facts taken from the code:
the correction weight ``gamma / (t + 1)`` with ``gamma = 1`` (t the local step from 0),
exploration queries around each new local point (radius 0.01, 5 points) and around the new
global point before the random-feature fit (radius ``mean|x - x_i| / 2``, 50 points),
10 initial exploration queries at radius 0.01, an RBF random-feature map
``sqrt(2 / M) cos(theta x + b)`` with ``theta ~ N(0, I / l^2)``, ``b ~ U[0, 2 pi)`` shared
by every client and the server, server weights scaled back by each client's value range
and averaged, clients' local optimizer re-initialized every round. Deviations (documented
on the method page): one RBF kernel with a fixed lengthscale for the local GP (the code
fits a Matern-5/2 GP with ML-II and differentiates its mean by finite differences); values
centred by their mean rather than their minimum; exploration points drawn uniformly rather
than the most uncertain of a candidate set; a ring buffer of the last ``history_size``
queries rather than the 150/500 nearest; the server's "keep the old point if the global
function went up" safeguard, which queries the global function, is left out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from optim._validation import as_key, check_choice, check_output, check_scalar, poison

__all__ = [
  "FZooSState",
  "FedZOState",
  "FederatedZOResult",
  "fedzo_init",
  "fedzo_minimize",
  "fedzo_round",
  "fzoos_init",
  "fzoos_minimize",
  "fzoos_round",
  "gp_gradient",
  "zo_gradient",
]


# ---------------------------------------------------------------------------------------
# Validation shared by the public functions.


def _check_x(x: Any, where: str, name: str = "x0") -> None:
  leaves = jax.tree.leaves(x)
  if not leaves:
    raise ValueError(f"{where}: {name} must hold at least one array, got {x!r}")
  for leaf in leaves:
    if not hasattr(leaf, "dtype") or not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      dt = getattr(leaf, "dtype", type(leaf).__name__)
      raise TypeError(f"{where}: {name} must hold real floating-point arrays, got {dt}")
    if not isinstance(leaf, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(leaf))):
      raise ValueError(f"{where}: {name} must be finite (no NaN or inf)")


def _check_f(f: Any, where: str) -> None:
  if not callable(f):
    raise TypeError(f"{where}: f must be callable f(x, client) -> scalar, got {type(f).__name__}")


def _check_optimizer(optimizer: Any, where: str) -> None:
  if not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError(
      f"{where}: optimizer must be an optax.GradientTransformation (e.g. optax.sgd(0.01)), "
      f"got {type(optimizer).__name__}"
    )


def _clients(clients: Any, where: str) -> tuple[int, Any]:
  """(number of clients, the stacked per-client argument of ``f``)."""
  if isinstance(clients, (bool, np.bool_)):
    raise TypeError(
      f"{where}: clients must be a number of clients or a stacked pytree, got a bool ({clients})"
    )
  if isinstance(clients, (int, np.integer)) and not isinstance(clients, bool):
    n = check_scalar("clients", clients, lo=1, integer=True, static=True)
    return n, jnp.arange(n, dtype=jnp.int32)
  leaves = jax.tree.leaves(clients)
  if not leaves:
    raise ValueError(
      f"{where}: clients must be a number of clients or a pytree stacked on a leading "
      f"client axis, got {clients!r}"
    )
  sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
  if None in sizes:
    raise ValueError(f"{where}: clients: every leaf must have a leading client axis, got a scalar")
  if len(sizes) != 1:
    raise ValueError(
      f"{where}: clients: every leaf must have the same leading (client) size, got sizes "
      f"{sorted(sizes)}"
    )
  (n,) = sizes
  if n < 1:
    raise ValueError(f"{where}: clients must hold at least one client, got a leading size 0")
  return n, clients


def _evaluator(f: Callable, unravel: Callable, where: str) -> Callable:
  """``value(p, c)``: ``f`` at the flat point ``p`` for client argument ``c``, checked."""

  def value(p, c):
    out = f(unravel(p), c)
    check_output(out, scalar=True, name="f(x, client)", where=where, what="value")
    return jnp.asarray(out, p.dtype)

  return value


def _constrain(tree: Any, client_sharding: Any) -> Any:
  """Places the client axis of every leaf with ``client_sharding`` (or leaves it)."""
  if client_sharding is None:
    return tree
  return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, client_sharding), tree)


def _check_sharding(client_sharding: Any, where: str) -> None:
  if client_sharding is not None and not isinstance(client_sharding, jax.sharding.Sharding):
    raise TypeError(
      f"{where}: client_sharding must be a jax.sharding.Sharding of a client-leading array "
      f"(e.g. NamedSharding(mesh, P('clients'))) or None, got {type(client_sharding).__name__}"
    )


# ---------------------------------------------------------------------------------------
# The two-point estimator (FedZO's local gradient).


def zo_gradient(
  f: Callable[[Any], jax.Array],
  x: Any,
  *,
  key: Any,
  num_directions: int = 20,
  smoothing: float = 0.01,
  probe: str = "gaussian",
  variant: str = "forward",
) -> Any:
  r"""Two-point (finite-difference) zeroth-order gradient estimate of ``f`` at ``x``.

  With :math:`q` = ``num_directions`` random directions and :math:`\mu` = ``smoothing``:

  .. math::

    \hat g = \frac{c}{q} \sum_{k=1}^{q} \frac{f(x + \mu u_k) - f(x)}{\mu}\, u_k
    \quad(\text{forward}), \qquad
    \hat g = \frac{c}{q} \sum_{k=1}^{q} \frac{f(x + \mu u_k) - f(x - \mu u_k)}{2 \mu}\, u_k
    \quad(\text{central}),

  with :math:`u_k \sim N(0, I)` and :math:`c = 1` (``probe="gaussian"``), or
  :math:`u_k` uniform on the unit sphere and :math:`c = d` (``probe="sphere"``, FedZO's
  estimator). Both are unbiased for the gradient of the Gaussian/sphere smoothing of ``f``,
  and exactly unbiased for :math:`\nabla f` on a quadratic. A forward estimate costs
  :math:`q + 1` queries, a central one :math:`2q`.

  Args:
    f: ``f(x) -> scalar``, the black box (a JAX-traceable callable).
    x: the point, a pytree of floating arrays.
    key: PRNG key (typed, raw or an int seed).
    num_directions: :math:`q \ge 1`.
    smoothing: :math:`\mu > 0`.
    probe: ``"gaussian"`` or ``"sphere"``.
    variant: ``"forward"`` or ``"central"`` differences.

  Returns:
    The estimate, a pytree like ``x``.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.zeroth_order import zo_gradient
    >>> g = zo_gradient(lambda x: jnp.sum(x**2), jnp.ones(3), key=0, num_directions=200,
    ...                 variant="central")
    >>> g.shape
    (3,)

  References:
    Nesterov and Spokoiny, "Random gradient-free minimization of convex functions" (2017);
    Fang et al., "Communication-efficient stochastic zeroth-order optimization for federated
    learning" (FedZO, IEEE TSP 2022, arXiv:2201.09531).
  """
  where = "zo_gradient"
  if not callable(f):
    raise TypeError(f"{where}: f must be callable f(x) -> scalar, got {type(f).__name__}")
  _check_x(x, where, "x")
  q = check_scalar("num_directions", num_directions, lo=1, integer=True, static=True)
  check_scalar("smoothing", smoothing, lo=0.0, lo_open=True)
  check_choice("probe", probe, ("gaussian", "sphere"))
  check_choice("variant", variant, ("forward", "central"))
  key = as_key(key)
  flat, unravel = ravel_pytree(x)

  def value(p):
    out = f(unravel(p))
    check_output(out, scalar=True, name="f(x)", where=where, what="value")
    return jnp.asarray(out, flat.dtype)

  g = _two_point(value, flat, key, q, smoothing, probe, variant)
  return unravel(g)


def _directions(key, q, d, dtype, probe):
  u = jax.random.normal(key, (q, d), dtype)
  if probe == "sphere":
    u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
  return u


def _two_point(value, flat, key, q, mu, probe, variant):
  d = flat.shape[0]
  u = _directions(key, q, d, flat.dtype, probe)
  if variant == "forward":
    f0 = value(flat)
    diff = (jax.vmap(value)(flat + mu * u) - f0) / mu
  else:
    diff = (jax.vmap(value)(flat + mu * u) - jax.vmap(value)(flat - mu * u)) / (2 * mu)
  scale = d if probe == "sphere" else 1
  return scale * (diff @ u) / q


def _two_point_queries(q: int, variant: str) -> int:
  return q + 1 if variant == "forward" else 2 * q


# ---------------------------------------------------------------------------------------
# The surrogates: GP posterior-mean gradient and its random-feature approximation.


def _normalize(ys, mask):
  """Centred, range-scaled values (zero where masked out) and the range."""
  n = jnp.maximum(jnp.sum(mask), 1)
  mean = jnp.sum(jnp.where(mask, ys, 0)) / n
  hi = jnp.max(jnp.where(mask, ys, -jnp.inf))
  lo = jnp.min(jnp.where(mask, ys, jnp.inf))
  rng = hi - lo
  scale = jnp.where(jnp.isfinite(rng) & (rng > 0), rng, jnp.ones_like(rng))
  return jnp.where(mask, (ys - mean) / scale, 0), scale


def _gp_gradient(x, xs, ys, mask, lengthscale, noise):
  """Closed-form gradient of the RBF-GP posterior mean at ``x`` (flat arrays)."""
  z = (xs - x) * mask[:, None]  # coordinates relative to x keep distances accurate
  sq = jnp.sum(z * z, -1)
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0)
  inv_l2 = 1 / lengthscale**2
  mm = mask[:, None] & mask[None, :]
  k = jnp.where(mm, jnp.exp(-0.5 * d2 * inv_l2), 0) + jnp.diag(jnp.where(mask, noise, 1.0))
  yn, scale = _normalize(ys, mask)
  alpha = jnp.linalg.solve(k, yn)
  kx = jnp.where(mask, jnp.exp(-0.5 * sq * inv_l2), 0)
  # d k(x, x_j) / dx = k(x, x_j) (x_j - x) / l^2
  return scale * inv_l2 * ((alpha * kx) @ z)


def gp_gradient(
  x: jax.Array,
  xs: jax.Array,
  ys: jax.Array,
  *,
  lengthscale: float = 1.0,
  noise: float = 1e-6,
) -> jax.Array:
  r"""Gradient of a Gaussian-process surrogate's posterior mean at ``x`` (FZooS, eq. 3).

  With the RBF kernel :math:`k(x, x') = \exp(-\|x - x'\|^2 / 2 l^2)`, the queries
  :math:`X = (x_1, \dots, x_n)` and values :math:`y` centred and scaled by their range
  :math:`s` (:math:`\tilde y = (y - \bar y) / s`):

  .. math::

    \nabla \mu(x) = s\, \nabla_x k(x, X) \,(K + \sigma^2 I)^{-1} \tilde y,
    \qquad \nabla_x k(x, x_j) = k(x, x_j)\, (x_j - x) / l^2,

  the surrogate gradient FZooS's clients step with (derived in closed form, no finite
  differences).

  Args:
    x: the point, shape ``(d,)``.
    xs: the queried points, shape ``(n, d)``.
    ys: their values, shape ``(n,)``.
    lengthscale: :math:`l > 0`.
    noise: :math:`\sigma^2 > 0`, the observation noise (jitter) on the scaled values.

  Returns:
    :math:`\nabla\mu(x)`, shape ``(d,)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from optim.zeroth_order import gp_gradient
    >>> xs = 0.1 * jax.random.normal(jax.random.key(0), (30, 2))
    >>> ys = jnp.sum(xs**2, -1) + xs[:, 0]
    >>> g = gp_gradient(jnp.zeros(2), xs, ys)
    >>> bool(jnp.allclose(g, jnp.array([1.0, 0.0]), atol=0.05))
    True

  References:
    Shu, Lin, Dai and Low, "Federated Zeroth-Order Optimization using Trajectory-Informed
    Surrogate Gradients", ICLR 2024, arXiv:2308.04077.
  """
  where = "gp_gradient"
  x, xs, ys = jnp.asarray(x), jnp.asarray(xs), jnp.asarray(ys)
  for name, a, nd in (("x", x, 1), ("xs", xs, 2), ("ys", ys, 1)):
    if not jnp.issubdtype(a.dtype, jnp.floating):
      raise TypeError(f"{where}: {name} must be a real floating-point array, got {a.dtype}")
    if a.ndim != nd:
      raise ValueError(f"{where}: {name} must have {nd} dimension(s), got shape {a.shape}")
  if xs.shape[0] < 1 or xs.shape[1:] != x.shape or ys.shape != xs.shape[:1]:
    raise ValueError(
      f"{where}: xs must have shape (n, {x.shape[0]}) with n >= 1 and ys shape (n,), got "
      f"xs {xs.shape} and ys {ys.shape}"
    )
  check_scalar("lengthscale", lengthscale, lo=0.0, lo_open=True)
  check_scalar("noise", noise, lo=0.0, lo_open=True)
  for name, a in (("x", x), ("xs", xs), ("ys", ys)):
    if not isinstance(a, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(a))):
      raise ValueError(f"{where}: {name} must be finite (no NaN or inf)")
  mask = jnp.ones(ys.shape, bool)
  return _gp_gradient(x, xs, ys, mask, lengthscale, noise)


def _rff_fit(xs, ys, mask, theta, b, noise):
  """Random-feature weights of the GP mean, scaled back to the values' units (dual form)."""
  m = theta.shape[0]
  phi = math.sqrt(2 / m) * jnp.cos(xs @ theta.T + b) * mask[:, None]
  yn, scale = _normalize(ys, mask)
  a = phi @ phi.T + noise * jnp.eye(ys.shape[0], dtype=xs.dtype)
  return scale * (phi.T @ jnp.linalg.solve(a, yn))


def _rff_gradient(x, w, theta, b):
  m = theta.shape[0]
  return -math.sqrt(2 / m) * ((jnp.sin(theta @ x + b) * w) @ theta)


# ---------------------------------------------------------------------------------------
# FZooS.


class FZooSState(NamedTuple):
  """The state of a FZooS run (clients on the leading axis of the per-client arrays).

  Attributes:
    x: the global point (a pytree like ``x0``).
    history_x: the clients' last queries, shape ``(num_clients, history_size, d)`` (flat).
    history_y: their values, shape ``(num_clients, history_size)``.
    count: queries written per client (the ring buffer's position), int32.
    local_weights: each client's random-feature weights, ``(num_clients, num_features)``.
    global_weights: the server's average of them, ``(num_features,)``.
    corrected: whether the weights are fitted (false before the first round ends).
    theta: the random-feature frequencies, ``(num_features, d)`` (shared).
    offsets: the random-feature phases, ``(num_features,)`` (shared).
    key: the PRNG key of the next round.
    round: rounds done, int32.
    num_queries: queries of each client so far, int32 ``(num_clients,)``.
  """

  x: Any
  history_x: jax.Array
  history_y: jax.Array
  count: jax.Array
  local_weights: jax.Array
  global_weights: jax.Array
  corrected: jax.Array
  theta: jax.Array
  offsets: jax.Array
  key: jax.Array
  round: jax.Array
  num_queries: jax.Array


def _push(hx, hy, count, px, py):
  """Writes the rows ``px``/``py`` into one client's ring buffer."""
  h = hy.shape[0]
  idx = (count + jnp.arange(py.shape[0])) % h
  return hx.at[idx].set(px), hy.at[idx].set(py), count + py.shape[0]


def _mask(count, h):
  return jnp.arange(h) < jnp.minimum(count, h)


def _explore(key, x, radius, num):
  return x + radius * jax.random.uniform(key, (num, x.shape[0]), x.dtype, -1.0, 1.0)


def fzoos_init(
  f: Callable[[Any, Any], jax.Array],
  x0: Any,
  clients: Any,
  *,
  key: Any,
  history_size: int = 200,
  num_features: int = 1000,
  lengthscale: float = 1.0,
  num_init: int = 10,
  radius: float = 0.01,
  client_sharding: Any = None,
) -> FZooSState:
  r"""Initial FZooS state: every client queries ``x0`` and ``num_init`` points near it.

  Client :math:`i` queries :math:`f_i(x_0)` and :math:`f_i(x_0 + r u_j)`,
  :math:`u_j \sim U[-1, 1]^d`, :math:`j \le` ``num_init`` (the official code's initial
  exploration); the random features :math:`\phi(x) = \sqrt{2/M} \cos(\Theta x + b)`,
  :math:`\Theta_{kl} \sim N(0, 1/l^2)`, :math:`b_k \sim U[0, 2\pi)` are drawn once and
  shared by every client and the server.

  Args:
    f: ``f(x, client) -> scalar``: the black box of one client; ``client`` is the
      client's index (when ``clients`` is an int) or its slice of the stacked ``clients``.
    x0: the initial global point (a pytree of floating arrays).
    clients: the number of clients, or a pytree stacked on a leading client axis (each
      client's data or parameters).
    key: PRNG key.
    history_size: queries each client keeps (its trajectory) for its surrogates.
    num_features: :math:`M`, the random features (the size of the vector sent to the server).
    lengthscale: :math:`l`, the RBF lengthscale of both surrogates.
    num_init: exploration queries around ``x0``.
    radius: :math:`r`, the exploration radius.
    client_sharding: a ``jax.sharding.Sharding`` for client-leading arrays (e.g.
      ``NamedSharding(mesh, P("clients"))``), or ``None``.

  Returns:
    A :class:`FZooSState`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.zeroth_order import fzoos_init
    >>> f = lambda x, i: jnp.sum((x - i) ** 2)
    >>> s = fzoos_init(f, jnp.zeros(2), 3, key=0, history_size=20, num_features=8)
    >>> s.history_x.shape, s.num_queries.tolist()
    ((3, 20, 2), [11, 11, 11])

  References:
    Shu, Lin, Dai and Low, "Federated Zeroth-Order Optimization using Trajectory-Informed
    Surrogate Gradients", ICLR 2024, arXiv:2308.04077 (Algorithm 1).
  """
  where = "fzoos_init"
  _check_f(f, where)
  _check_x(x0, where)
  n, cargs = _clients(clients, where)
  h = check_scalar("history_size", history_size, lo=1, integer=True, static=True)
  m = check_scalar("num_features", num_features, lo=1, integer=True, static=True)
  ni = check_scalar("num_init", num_init, lo=0, integer=True, static=True)
  check_scalar("lengthscale", lengthscale, lo=0.0, lo_open=True)
  check_scalar("radius", radius, lo=0.0, lo_open=True)
  _check_sharding(client_sharding, where)
  if ni + 1 > h:
    raise ValueError(f"{where}: history_size must be at least num_init + 1 = {ni + 1}, got {h}")
  key = as_key(key)
  flat, unravel = ravel_pytree(x0)
  d, dtype = flat.shape[0], flat.dtype
  value = _evaluator(f, unravel, where)
  key, kt, kb, ke = jax.random.split(key, 4)
  theta = jax.random.normal(kt, (m, d), dtype) / lengthscale
  offsets = jax.random.uniform(kb, (m,), dtype, 0.0, 2 * math.pi)

  def client(c, k):
    px = jnp.concatenate([flat[None], _explore(k, flat, radius, ni)])
    py = jax.vmap(value, (0, None))(px, c)
    hx, hy, cnt = _push(jnp.zeros((h, d), dtype), jnp.zeros((h,), dtype), 0, px, py)
    return hx, hy, jnp.asarray(cnt, jnp.int32)

  hx, hy, cnt = _constrain(jax.vmap(client)(cargs, jax.random.split(ke, n)), client_sharding)
  return FZooSState(
    x=x0,
    history_x=hx,
    history_y=hy,
    count=cnt,
    local_weights=jnp.zeros((n, m), dtype),
    global_weights=jnp.zeros((m,), dtype),
    corrected=jnp.asarray(False),
    theta=theta,
    offsets=offsets,
    key=key,
    round=jnp.asarray(0, jnp.int32),
    num_queries=jnp.full((n,), ni + 1, jnp.int32),
  )


def _check_state(state: Any, cls: type, n: int, x_like: Any | None, where: str) -> None:
  if not isinstance(state, cls):
    raise TypeError(f"{where}: state must be a {cls.__name__}, got {type(state).__name__}")
  if state.num_queries.shape != (n,):
    raise ValueError(
      f"{where}: state has {state.num_queries.shape[0]} clients but clients has {n}; build the "
      "state with the same clients"
    )


def fzoos_round(
  f: Callable[[Any, Any], jax.Array],
  state: FZooSState,
  clients: Any,
  *,
  optimizer: optax.GradientTransformation,
  num_local_steps: int = 10,
  lengthscale: float = 1.0,
  noise: float = 1e-6,
  correction: float = 1.0,
  num_explore: int = 5,
  radius: float = 0.01,
  num_explore_round: int = 50,
  client_sharding: Any = None,
) -> FZooSState:
  r"""One communication round of FZooS (Algorithm 1 of the paper).

  Client :math:`i` starts at the global point, :math:`x^{(i)}_{r,0} = x_{r-1}`, and for
  :math:`t = 0, \dots, T - 1` steps with

  .. math::

    g^{(i)}_{r,t} = \nabla\mu^{(i)}_{r,t}(x^{(i)}_{r,t}) + \frac{\gamma}{t + 1}
      \big(\nabla\hat\mu_{r-1}(x^{(i)}_{r,t}) - \nabla\hat\mu^{(i)}_{r-1}(x^{(i)}_{r,t})\big),

  where :math:`\nabla\mu^{(i)}` is the closed-form gradient of the GP posterior mean fitted
  to the client's history (:func:`gp_gradient`), :math:`\hat\mu^{(i)}_{r-1}(x) =
  \phi(x)^\top w^{(i)}_{r-1}` its random-feature approximation sent at the end of the last
  round, :math:`\hat\mu_{r-1} = \phi^\top \bar w_{r-1}` the server's
  (:math:`\bar w = \frac1N \sum_i w^{(i)}`), :math:`\nabla\hat\mu(x) = -\sqrt{2/M}\,
  \Theta^\top(\sin(\Theta x + b) \odot w)`, and no correction in the first round. The
  step is ``optimizer``'s (``optax.sgd(eta)`` is the paper's
  :math:`x \leftarrow x - \eta g`; the official code uses ``optax.adam(0.01)``), re-initialized
  every round. Each new local point is queried, and ``num_explore`` points within
  ``radius`` of it (not after the last step). The server averages the clients' points,
  :math:`x_r = \frac1N \sum_i x^{(i)}_{r,T}`; each client then queries :math:`x_r` and
  ``num_explore_round`` points within :math:`\max(\text{mean}|x_r - x^{(i)}_{r,T}| / 2,
  r)` of it and fits :math:`w^{(i)}_r = s\,\Phi^\top(\Phi\Phi^\top + \sigma^2 I)^{-1}
  \tilde y` on its history. Queries per client and round:
  :math:`T + (T - 1)\,n_e + 1 + n_r`.

  A non-finite query value makes the round's point NaN (the documented poison; the values
  are traced, so no error can be raised).

  Args:
    f: ``f(x, client) -> scalar`` (see :func:`fzoos_init`).
    state: the :class:`FZooSState`.
    clients: as given to :func:`fzoos_init`.
    optimizer: the clients' local optax optimizer (its learning rate included).
    num_local_steps: :math:`T \ge 1`.
    lengthscale: :math:`l`, the local GP's RBF lengthscale (the random features keep the
      one drawn in :func:`fzoos_init`).
    noise: :math:`\sigma^2 > 0`.
    correction: :math:`\gamma \ge 0` (0 turns the correction off).
    num_explore: :math:`n_e \ge 0`, exploration queries after each local step.
    radius: :math:`r > 0`.
    num_explore_round: :math:`n_r \ge 0`, exploration queries around the new global point.
    client_sharding: a ``jax.sharding.Sharding`` for client-leading arrays, or ``None``.

  Returns:
    The next :class:`FZooSState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from optim.zeroth_order import fzoos_init, fzoos_round
    >>> f = lambda x, i: jnp.sum((x - i) ** 2)
    >>> s = fzoos_init(f, jnp.zeros(2), 3, key=0, history_size=40, num_features=64)
    >>> s = fzoos_round(f, s, 3, optimizer=optax.sgd(0.1), num_local_steps=3,
    ...                 num_explore_round=5)
    >>> int(s.round), s.num_queries.tolist()
    (1, [30, 30, 30])

  References:
    Shu, Lin, Dai and Low, "Federated Zeroth-Order Optimization using Trajectory-Informed
    Surrogate Gradients", ICLR 2024, arXiv:2308.04077 (Algorithm 1, Sec. 4);
    official code github.com/shuyao95/FZooS.
  """
  where = "fzoos_round"
  _check_f(f, where)
  n, cargs = _clients(clients, where)
  _check_state(state, FZooSState, n, None, where)
  _check_optimizer(optimizer, where)
  t_steps = check_scalar("num_local_steps", num_local_steps, lo=1, integer=True, static=True)
  ne = check_scalar("num_explore", num_explore, lo=0, integer=True, static=True)
  nr = check_scalar("num_explore_round", num_explore_round, lo=0, integer=True, static=True)
  check_scalar("lengthscale", lengthscale, lo=0.0, lo_open=True)
  check_scalar("noise", noise, lo=0.0, lo_open=True)
  check_scalar("correction", correction, lo=0.0)
  check_scalar("radius", radius, lo=0.0, lo_open=True)
  _check_sharding(client_sharding, where)
  h = state.history_y.shape[1]
  if max(ne, nr + 1) > h:
    raise ValueError(
      f"{where}: history_size ({h}) must be at least max(num_explore, num_explore_round + 1) "
      f"= {max(ne, nr + 1)}"
    )
  flat, unravel = ravel_pytree(state.x)
  value = _evaluator(f, unravel, where)
  theta, offsets = state.theta, state.offsets
  gw = state.global_weights
  use_corr = state.corrected.astype(flat.dtype)
  key, kl, kr = jax.random.split(state.key, 3)

  def local(c, hx, hy, cnt, lw, k):
    opt_state = optimizer.init(flat)

    def step(carry, inp, explore):
      x, ost, hx, hy, cnt, ok = carry
      t, ks = inp
      g = _gp_gradient(x, hx, hy, _mask(cnt, h), lengthscale, noise)
      drift = _rff_gradient(x, gw, theta, offsets) - _rff_gradient(x, lw, theta, offsets)
      g = g + use_corr * (correction / (t + 1)) * drift
      upd, ost = optimizer.update(g, ost, x)
      x = optax.apply_updates(x, upd)
      px = x[None]
      if explore:  # the official code explores after every local step but the last
        px = jnp.concatenate([px, _explore(ks, x, radius, ne)])
      py = jax.vmap(value, (0, None))(px, c)
      hx, hy, cnt = _push(hx, hy, cnt, px, py)
      return (x, ost, hx, hy, cnt, ok & jnp.all(jnp.isfinite(py))), None

    carry = (flat, opt_state, hx, hy, cnt, jnp.asarray(True))
    ks = jax.random.split(k, t_steps)
    if t_steps > 1:
      carry, _ = jax.lax.scan(
        lambda c, i: step(c, i, ne > 0), carry, (jnp.arange(t_steps - 1), ks[:-1])
      )
    carry, _ = step(carry, (jnp.asarray(t_steps - 1), ks[-1]), False)
    x, _, hx, hy, cnt, ok = carry
    return x, hx, hy, cnt, ok

  xs, hx, hy, cnt, ok = _constrain(
    jax.vmap(local)(
      cargs,
      state.history_x,
      state.history_y,
      state.count,
      state.local_weights,
      jax.random.split(kl, n),
    ),
    client_sharding,
  )
  x_new = jnp.mean(xs, axis=0)

  def refit(c, xi, hx, hy, cnt, k):
    r = jnp.maximum(jnp.mean(jnp.abs(x_new - xi)) / 2, radius)
    px = jnp.concatenate([x_new[None], _explore(k, x_new, r, nr)])
    py = jax.vmap(value, (0, None))(px, c)
    hx, hy, cnt = _push(hx, hy, cnt, px, py)
    w = _rff_fit(hx, hy, _mask(cnt, h), theta, offsets, noise)
    return hx, hy, cnt, w, jnp.all(jnp.isfinite(py))

  hx, hy, cnt, lw, ok2 = _constrain(
    jax.vmap(refit)(cargs, xs, hx, hy, cnt, jax.random.split(kr, n)), client_sharding
  )
  valid = jnp.all(ok) & jnp.all(ok2)
  x_new = poison(x_new[None], valid[None])[0]
  per_round = t_steps + (t_steps - 1) * ne + 1 + nr
  return FZooSState(
    x=unravel(x_new),
    history_x=hx,
    history_y=hy,
    count=cnt,
    local_weights=lw,
    global_weights=jnp.mean(lw, axis=0),
    corrected=jnp.asarray(True),
    theta=theta,
    offsets=offsets,
    key=key,
    round=state.round + 1,
    num_queries=state.num_queries + per_round,
  )


# ---------------------------------------------------------------------------------------
# The FedZO-style baseline.


class FedZOState(NamedTuple):
  """The state of a FedZO-style run.

  Attributes:
    x: the global point (a pytree like ``x0``).
    key: the PRNG key of the next round.
    round: rounds done, int32.
    num_queries: queries of each client so far, int32 ``(num_clients,)``.
  """

  x: Any
  key: jax.Array
  round: jax.Array
  num_queries: jax.Array


def fedzo_init(x0: Any, clients: Any, *, key: Any) -> FedZOState:
  r"""Initial state of the FedZO-style baseline (no queries yet).

  Args:
    x0: the initial global point (a pytree of floating arrays).
    clients: the number of clients, or a pytree stacked on a leading client axis.
    key: PRNG key.

  Returns:
    A :class:`FedZOState`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.zeroth_order import fedzo_init
    >>> fedzo_init(jnp.zeros(2), 4, key=0).num_queries.tolist()
    [0, 0, 0, 0]

  References:
    Fang et al., "Communication-efficient stochastic zeroth-order optimization for federated
    learning" (FedZO, IEEE TSP 2022, arXiv:2201.09531); the baseline of arXiv:2308.04077.
  """
  where = "fedzo_init"
  _check_x(x0, where)
  n, _ = _clients(clients, where)
  return FedZOState(
    x=x0,
    key=as_key(key),
    round=jnp.asarray(0, jnp.int32),
    num_queries=jnp.zeros((n,), jnp.int32),
  )


def fedzo_round(
  f: Callable[[Any, Any], jax.Array],
  state: FedZOState,
  clients: Any,
  *,
  optimizer: optax.GradientTransformation,
  num_local_steps: int = 10,
  num_directions: int = 20,
  smoothing: float = 0.01,
  probe: str = "gaussian",
  variant: str = "forward",
  client_sharding: Any = None,
) -> FedZOState:
  r"""One round of federated ZO with two-point gradient estimates (FedZO-style baseline).

  Every client runs :math:`T` local steps of ``optimizer`` with :func:`zo_gradient`'s
  estimate :math:`\hat g^{(i)}_{r,t}` of :math:`\nabla f_i(x^{(i)}_{r,t})` from
  :math:`x^{(i)}_{r,0} = x_{r-1}`; the server averages,
  :math:`x_r = \frac1N \sum_i x^{(i)}_{r,T}`. Queries per client and round:
  :math:`T (q + 1)` (forward) or :math:`2 T q` (central).

  Args:
    f: ``f(x, client) -> scalar`` (see :func:`fzoos_init`).
    state: the :class:`FedZOState`.
    clients: the number of clients, or a pytree stacked on a leading client axis.
    optimizer: the clients' local optax optimizer, re-initialized every round.
    num_local_steps: :math:`T \ge 1`.
    num_directions, smoothing, probe, variant: as in :func:`zo_gradient`.
    client_sharding: a ``jax.sharding.Sharding`` for client-leading arrays, or ``None``.

  Returns:
    The next :class:`FedZOState`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from optim.zeroth_order import fedzo_init, fedzo_round
    >>> f = lambda x, i: jnp.sum((x - i) ** 2)
    >>> s = fedzo_round(f, fedzo_init(jnp.zeros(2), 3, key=0), 3, optimizer=optax.sgd(0.1),
    ...                 num_local_steps=2, num_directions=4)
    >>> s.num_queries.tolist()
    [10, 10, 10]

  References:
    Fang et al., "Communication-efficient stochastic zeroth-order optimization for federated
    learning" (FedZO, IEEE TSP 2022, arXiv:2201.09531); the baseline of arXiv:2308.04077.
  """
  where = "fedzo_round"
  _check_f(f, where)
  n, cargs = _clients(clients, where)
  _check_state(state, FedZOState, n, None, where)
  _check_optimizer(optimizer, where)
  t_steps = check_scalar("num_local_steps", num_local_steps, lo=1, integer=True, static=True)
  q = check_scalar("num_directions", num_directions, lo=1, integer=True, static=True)
  check_scalar("smoothing", smoothing, lo=0.0, lo_open=True)
  check_choice("probe", probe, ("gaussian", "sphere"))
  check_choice("variant", variant, ("forward", "central"))
  _check_sharding(client_sharding, where)
  flat, unravel = ravel_pytree(state.x)
  value = _evaluator(f, unravel, where)
  key, kl = jax.random.split(state.key)

  def local(c, k):
    val = lambda p: value(p, c)  # noqa: E731

    def step(carry, ks):
      x, ost = carry
      g = _two_point(val, x, ks, q, smoothing, probe, variant)
      upd, ost = optimizer.update(g, ost, x)
      return (optax.apply_updates(x, upd), ost), None

    (x, _), _ = jax.lax.scan(step, (flat, optimizer.init(flat)), jax.random.split(k, t_steps))
    return x

  xs = _constrain(jax.vmap(local)(cargs, jax.random.split(kl, n)), client_sharding)
  per_round = t_steps * _two_point_queries(q, variant)
  return FedZOState(
    x=unravel(jnp.mean(xs, axis=0)),
    key=key,
    round=state.round + 1,
    num_queries=state.num_queries + per_round,
  )


# ---------------------------------------------------------------------------------------
# The runners.


class FederatedZOResult(NamedTuple):
  """What :func:`fzoos_minimize` and :func:`fedzo_minimize` return.

  Attributes:
    x: the last global point.
    converged: whether the global objective changed by at most ``tol`` in a round.
    n_iters: rounds run.
    errors: the global objective :math:`F(x_r)` after each round (NaN after the stop).
    num_queries: cumulative queries of all clients after each round (int32; the final
      count repeated after the stop); the monitoring evaluations of :math:`F` not included.
    state: the final :class:`FZooSState` or :class:`FedZOState`.
  """

  x: Any
  converged: jax.Array
  n_iters: jax.Array
  errors: jax.Array
  num_queries: jax.Array
  state: Any


def _objective(f, objective, cargs, where):
  if objective is not None:
    if not callable(objective):
      raise TypeError(
        f"{where}: objective must be callable objective(x) -> scalar or None, got "
        f"{type(objective).__name__}"
      )
    return objective

  def mean_f(x):
    return jnp.mean(jax.vmap(lambda c: f(x, c))(cargs))

  return mean_f


def _run(round_fn, state, objective, max_iterations, tol, dtype):
  errors0 = jnp.full((max_iterations,), jnp.nan, dtype)
  queries0 = jnp.zeros((max_iterations,), jnp.int32)
  if max_iterations == 0:
    none = jnp.asarray(False)
    return FederatedZOResult(state.x, none, jnp.asarray(0, jnp.int32), errors0, queries0, state)
  f0 = jnp.asarray(objective(state.x), dtype)

  def cond(c):
    _, r, _, _, _, done = c
    return (r < max_iterations) & ~done

  def body(c):
    s, r, prev, errs, qs, _ = c
    s = round_fn(s)
    val = jnp.asarray(objective(s.x), dtype)
    errs = errs.at[r].set(val)
    qs = qs.at[r].set(jnp.sum(s.num_queries).astype(jnp.int32))
    done = (jnp.abs(prev - val) <= tol) | ~jnp.isfinite(val)
    return s, r + 1, val, errs, qs, done

  init = (state, jnp.asarray(0, jnp.int32), f0, errors0, queries0, jnp.asarray(False))
  s, r, last, errs, qs, done = jax.lax.while_loop(cond, body, init)
  qs = jnp.where(jnp.arange(max_iterations) < r, qs, jnp.sum(s.num_queries).astype(jnp.int32))
  converged = done & jnp.isfinite(last)
  return FederatedZOResult(s.x, converged, r, errs, qs, s)


def _runner_checks(where, f, x0, clients, max_iterations, tol):
  _check_f(f, where)
  _check_x(x0, where)
  n, cargs = _clients(clients, where)
  it = check_scalar("max_iterations", max_iterations, lo=0, integer=True, static=True)
  check_scalar("tol", tol, lo=0.0)
  return n, cargs, it


def fzoos_minimize(
  f: Callable[[Any, Any], jax.Array],
  x0: Any,
  clients: Any,
  *,
  optimizer: optax.GradientTransformation,
  key: Any,
  max_iterations: int = 50,
  tol: float = 0.0,
  objective: Callable[[Any], jax.Array] | None = None,
  num_local_steps: int = 10,
  history_size: int = 200,
  num_features: int = 1000,
  lengthscale: float = 1.0,
  noise: float = 1e-6,
  correction: float = 1.0,
  num_init: int = 10,
  num_explore: int = 5,
  radius: float = 0.01,
  num_explore_round: int = 50,
  client_sharding: Any = None,
) -> FederatedZOResult:
  r"""Runs FZooS for up to ``max_iterations`` communication rounds.

  :func:`fzoos_init` then :func:`fzoos_round` in a ``lax.while_loop``; after round
  :math:`r` it records :math:`F(x_r)` (``objective``, by default
  :math:`\frac1N \sum_i f_i`, evaluated for monitoring and not counted as queries) and
  stops once :math:`|F(x_r) - F(x_{r-1})| \le` ``tol`` or :math:`F` is not finite.

  Args:
    f, x0, clients, key: as in :func:`fzoos_init`.
    optimizer, num_local_steps, noise, correction, num_explore, radius,
      num_explore_round: as in :func:`fzoos_round`.
    max_iterations: the most rounds (0 returns ``x0`` untouched).
    tol: the stopping tolerance on the change of the global objective.
    objective: ``objective(x) -> scalar`` for the history, or ``None``.
    history_size, num_features, lengthscale, num_init: as in :func:`fzoos_init`.
    client_sharding: a ``jax.sharding.Sharding`` for client-leading arrays, or ``None``.

  Returns:
    A :class:`FederatedZOResult`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from optim.zeroth_order import fzoos_minimize
    >>> f = lambda x, i: jnp.sum((x - i) ** 2)
    >>> res = fzoos_minimize(f, jnp.zeros(2), 3, optimizer=optax.sgd(0.1), key=0,
    ...                      max_iterations=5, num_local_steps=3, history_size=40,
    ...                      num_features=64, num_explore_round=5)
    >>> bool(res.errors[4] < res.errors[0]), int(res.n_iters)
    (True, 5)

  References:
    Shu, Lin, Dai and Low, "Federated Zeroth-Order Optimization using Trajectory-Informed
    Surrogate Gradients", ICLR 2024, arXiv:2308.04077.
  """
  where = "fzoos_minimize"
  n, cargs, it = _runner_checks(where, f, x0, clients, max_iterations, tol)
  state = fzoos_init(
    f,
    x0,
    clients,
    key=key,
    history_size=history_size,
    num_features=num_features,
    lengthscale=lengthscale,
    num_init=num_init,
    radius=radius,
    client_sharding=client_sharding,
  )
  flat, _ = ravel_pytree(x0)
  obj = _objective(f, objective, cargs, where)

  def round_fn(s):
    return fzoos_round(
      f,
      s,
      clients,
      optimizer=optimizer,
      num_local_steps=num_local_steps,
      lengthscale=lengthscale,
      noise=noise,
      correction=correction,
      num_explore=num_explore,
      radius=radius,
      num_explore_round=num_explore_round,
      client_sharding=client_sharding,
    )

  jax.eval_shape(round_fn, state)  # validates the round's arguments before the loop
  return _run(round_fn, state, obj, it, tol, flat.dtype)


def fedzo_minimize(
  f: Callable[[Any, Any], jax.Array],
  x0: Any,
  clients: Any,
  *,
  optimizer: optax.GradientTransformation,
  key: Any,
  max_iterations: int = 50,
  tol: float = 0.0,
  objective: Callable[[Any], jax.Array] | None = None,
  num_local_steps: int = 10,
  num_directions: int = 20,
  smoothing: float = 0.01,
  probe: str = "gaussian",
  variant: str = "forward",
  client_sharding: Any = None,
) -> FederatedZOResult:
  r"""Runs the FedZO-style baseline for up to ``max_iterations`` rounds.

  :func:`fedzo_init` then :func:`fedzo_round` in a ``lax.while_loop``, with the history and
  stopping rule of :func:`fzoos_minimize`.

  Args:
    f, x0, clients, key: as in :func:`fedzo_round` and :func:`fedzo_init`.
    optimizer, num_local_steps, num_directions, smoothing, probe, variant: as in
      :func:`fedzo_round`.
    max_iterations: the most rounds (0 returns ``x0`` untouched).
    tol: the stopping tolerance on the change of the global objective.
    objective: ``objective(x) -> scalar`` for the history, or ``None``.
    client_sharding: a ``jax.sharding.Sharding`` for client-leading arrays, or ``None``.

  Returns:
    A :class:`FederatedZOResult`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from optim.zeroth_order import fedzo_minimize
    >>> f = lambda x, i: jnp.sum((x - i) ** 2)
    >>> res = fedzo_minimize(f, jnp.zeros(2), 3, optimizer=optax.sgd(0.05), key=0,
    ...                      max_iterations=5, num_directions=4)
    >>> int(res.num_queries[-1])
    750

  References:
    Fang et al., "Communication-efficient stochastic zeroth-order optimization for federated
    learning" (FedZO, IEEE TSP 2022, arXiv:2201.09531).
  """
  where = "fedzo_minimize"
  n, cargs, it = _runner_checks(where, f, x0, clients, max_iterations, tol)
  state = fedzo_init(x0, clients, key=key)
  flat, _ = ravel_pytree(x0)
  obj = _objective(f, objective, cargs, where)

  def round_fn(s):
    return fedzo_round(
      f,
      s,
      clients,
      optimizer=optimizer,
      num_local_steps=num_local_steps,
      num_directions=num_directions,
      smoothing=smoothing,
      probe=probe,
      variant=variant,
      client_sharding=client_sharding,
    )

  jax.eval_shape(round_fn, state)  # validates the round's arguments before the loop
  return _run(round_fn, state, obj, it, tol, flat.dtype)
