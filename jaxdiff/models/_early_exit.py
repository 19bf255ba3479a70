"""DeeDiff early exit for the digits DiT: per-block uncertainty estimation modules (UEMs),
exit output heads, the paper's training loss, and an exiting forward pass whose skipped
blocks are not computed under ``jit``."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff._blocks import apply_blocks
from jaxdiff._training._loss import _target
from jaxdiff._validation import as_key, check_batch, check_choice, check_output, check_scalar
from jaxdiff._wrappers import wrapper
from jaxdiff.models._nets import DigitDenoiser

Array = jax.Array

__all__ = ["EarlyExit", "ExitHeads", "ExitOutputs", "ExitThreshold", "early_exit_loss"]

_VARIANTS = ("estimated", "pseudo")


class _ExitHead(nnx.Module):
  """One exit output layer ``g_k``: the attributes :meth:`DigitDenoiser.readout` reads,
  initialised as a copy of the trained network's own final head."""

  def __init__(self, net: DigitDenoiser):
    self.image_size, self.patch = net.image_size, net.patch
    self.norm_out = net.norm_out  # parameter-free LayerNorm
    self.ada_out = nnx.clone(net.ada_out)
    self.head = nnx.clone(net.head)


class ExitHeads(nnx.Module):
  """DeeDiff's uncertainty estimation modules and exit output layers for a
  :class:`~jaxdiff.models.DigitDenoiser` of depth ``N``: one exit after each of the blocks
  ``k = 1, ..., N - 1`` (an exit after block ``N`` is the network itself).

  The UEM of exit ``k`` is the paper's timestep-aware linear layer with a sigmoid (Eq. 5),
  applied to every token and averaged over the ``T`` tokens:

  .. math::

    u_k = \\frac{1}{T} \\sum_{\\tau=1}^{T}
      \\sigma\\big(w_k^\\top [\\mathrm{LN}(h_{k,\\tau}),\\, c] + b_k\\big) \\in (0, 1),

  where ``h_k`` are the tokens after block ``k`` and ``c`` is the network's conditioning
  vector (its time embedding plus the class embedding: the paper's "timesteps" input).
  The exit output layer ``g_k`` has the network's final head's form (adaLN-modulated
  LayerNorm and a linear patch decoder, :meth:`DigitDenoiser.readout`) and starts as a copy
  of its trained weights, so fine-tuning starts from "read the intermediate tokens as if
  they were final".

  Args:
    net: the denoiser the heads attach to (its trained readout initialises ``g_k``).
    rngs: ``nnx.Rngs`` for the UEMs' initialisation.

  Raises:
    ValueError: ``net`` has fewer than 2 blocks (no block can be skipped).

  Example:
    >>> from flax import nnx
    >>> from jaxdiff.models import DigitDenoiser, ExitHeads
    >>> net = DigitDenoiser(dim=8, depth=3, num_heads=2, rngs=nnx.Rngs(0))
    >>> heads = ExitHeads(net, rngs=nnx.Rngs(1))
    >>> heads.num_exits, heads.dim
    (2, 8)

  References:
    Tang et al., "DeeDiff: Dynamic Uncertainty-Aware Early Exiting for Accelerating
    Diffusion Model Generation", arXiv:2309.17074 (Sec. 3.2, Eq. 5).
  """

  def __init__(self, net: DigitDenoiser, *, rngs: nnx.Rngs):
    if not isinstance(net, DigitDenoiser):
      raise TypeError(f"ExitHeads: net must be a DigitDenoiser, got {type(net).__name__}.")
    depth = len(net.blocks)
    if depth < 2:
      raise ValueError(f"ExitHeads: net has depth {depth}; early exit needs at least 2 blocks.")
    self.dim = net.dim
    self.num_exits = depth - 1
    self.norm = nnx.LayerNorm(net.dim, use_bias=False, use_scale=False, rngs=rngs)
    self.uem = nnx.List([nnx.Linear(2 * net.dim, 1, rngs=rngs) for _ in range(depth - 1)])
    self.exits = nnx.List([_ExitHead(net) for _ in range(depth - 1)])

  def uncertainty(self, k: int, h: Array, c: Array) -> Array:
    """``u_k (B,)`` of tokens ``h (B, T, dim)`` after block ``k + 1`` (exit index ``k``)."""
    cond = jnp.broadcast_to(c[:, None, :], h.shape)
    logits = self.uem[k](jnp.concatenate([self.norm(h), cond], axis=-1))[..., 0]
    return jnp.mean(jax.nn.sigmoid(logits), axis=1)

  def readout(self, k: int, h: Array, c: Array, valid: Array, x: Array) -> Array:
    """The exit output ``g_k(h)``, shaped like ``x`` (the network's own readout code)."""
    return DigitDenoiser.readout(self.exits[k], h, c, valid, x)


class ExitThreshold(nnx.Variable):
  """The exit threshold of an :class:`EarlyExit`: a state leaf that is never trained and
  that jitted callers trace (a new threshold does not recompile).

  Example:
    >>> from flax import nnx
    >>> from jaxdiff.models import DigitDenoiser, EarlyExit, ExitHeads, ExitThreshold
    >>> net = DigitDenoiser(dim=8, depth=2, num_heads=2, rngs=nnx.Rngs(0))
    >>> model = EarlyExit(net, ExitHeads(net, rngs=nnx.Rngs(1)), threshold=0.3)
    >>> isinstance(model.threshold, ExitThreshold), round(float(model.threshold[...]), 6)
    (True, 0.3)
  """


class ExitOutputs(NamedTuple):
  """Every output of an :class:`EarlyExit` network at once (what its loss trains).

  Attributes:
    out: the full network's output ``(B, ...)``.
    exits: the exit outputs ``g_k(h_k)``, ``(K, B, ...)`` for the ``K = depth - 1`` exits.
    uncertainty: the UEM estimates ``u_k``, ``(K, B)``.
  """

  out: Array
  exits: Array
  uncertainty: Array


@wrapper(inner="net", blocks=False)
class EarlyExit(nnx.Module):
  """A :class:`~jaxdiff.models.DigitDenoiser` that stops after the first confident block
  (DeeDiff).

  The forward pass runs :meth:`DigitDenoiser.encode`, then the blocks in order; after block
  ``k < N`` it asks the UEM of :class:`ExitHeads` for ``u_k`` and, when every sample of the
  call is confident,

  .. math:: \\max_b u_{k,b} < \\text{threshold},

  returns the exit output ``g_k(h_k)`` and skips the blocks after ``k`` (the paper's exit
  rule, Sec. 3.2, with the batch deciding together); otherwise it runs on, and after the
  last block returns the network's own :meth:`~DigitDenoiser.readout`. Each decision is a
  ``lax.cond``, so under ``jit`` the skipped blocks are not computed; :meth:`apply` also
  returns the number of blocks evaluated. (Under an outer ``jax.vmap`` each sample decides
  alone, as in the paper, but ``cond`` becomes a ``select`` that computes every branch:
  the count is right, the time is not saved.)

  ``threshold = 0`` never exits (``u > 0``): the output is the wrapped network's,
  bit for bit. ``threshold = 1`` exits at the first exit whenever ``u < 1``. The threshold
  is a state :class:`ExitThreshold` leaf, so jitted callers (``jaxdiff.sample`` on
  ``jaxdiff.from_v(model, schedule)``) do not retrace for a new threshold. It forwards what
  ``net`` declares (``num_classes``: :func:`jaxdiff.sample` range-checks labels, also through
  a parameterization wrapper; :mod:`jaxdiff._wrappers`) but not its block interface: it runs
  the blocks itself, so a feature cache or block skipping of it is an error.

  Args:
    net: the denoiser.
    heads: :class:`ExitHeads` built for a network of ``net``'s depth and width.
    threshold: the exit threshold in ``[0, 1]`` (the paper's uncertainty threshold).
      A traced threshold is not range-checked (NaN never exits).

  Raises:
    TypeError, ValueError: a wrong ``net``/``heads`` type, heads of another depth or width,
      a threshold outside ``[0, 1]`` (naming the argument).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxdiff.models import DigitDenoiser, EarlyExit, ExitHeads
    >>> net = DigitDenoiser(dim=8, depth=2, num_heads=2, rngs=nnx.Rngs(0))
    >>> heads = ExitHeads(net, rngs=nnx.Rngs(1))
    >>> x, t, y = jnp.ones((2, 8, 8)), jnp.full((2,), 0.5), jnp.array([1, 2])
    >>> blocks = jax.jit(lambda model: model.apply(x, t, y)[1])  # one compile for all
    >>> [int(blocks(EarlyExit(net, heads, threshold=th))) for th in (0.0, 1.0)]
    [2, 1]

  References:
    Tang et al., "DeeDiff: Dynamic Uncertainty-Aware Early Exiting for Accelerating
    Diffusion Model Generation", arXiv:2309.17074.
  """

  def __init__(self, net: DigitDenoiser, heads: ExitHeads, *, threshold=0.0):
    if not isinstance(net, DigitDenoiser):
      raise TypeError(f"EarlyExit: net must be a DigitDenoiser, got {type(net).__name__}.")
    if not isinstance(heads, ExitHeads):
      raise TypeError(f"EarlyExit: heads must be ExitHeads, got {type(heads).__name__}.")
    if heads.num_exits != len(net.blocks) - 1 or heads.dim != net.dim:
      raise ValueError(
        f"EarlyExit: heads were built for a network of depth {heads.num_exits + 1} and dim "
        f"{heads.dim}; net has depth {len(net.blocks)} and dim {net.dim}."
      )
    check_scalar("EarlyExit: threshold", threshold, lo=0.0, hi=1.0)
    self.net = net
    self.heads = heads
    self.threshold = ExitThreshold(jnp.asarray(threshold, jnp.float32))

  def apply(
    self, x: Array, t: Array, cond: Array, *, perturb: Array | None = None
  ) -> tuple[Array, Array]:
    """``(output, blocks)``: the exiting forward pass and the int32 number of blocks it
    evaluated for the whole call (``1 .. depth``)."""
    net, depth = self.net, len(self.net.blocks)
    h, c, valid = net.encode(x, t, cond)
    threshold = self.threshold[...]

    def from_block(k, h):
      h = apply_blocks(net, h, c, perturb=perturb, start=k, stop=k + 1)
      if k == depth - 1:
        return net.readout(h, c, valid, x), jnp.int32(depth)
      confident = jnp.all(self.heads.uncertainty(k, h, c) < threshold)
      exit_now = lambda h: (self.heads.readout(k, h, c, valid, x), jnp.int32(k + 1))
      return jax.lax.cond(confident, exit_now, functools.partial(from_block, k + 1), h)

    return from_block(0, h)

  # What jaxdiff.sample counts per call (SampleResult.stats["blocks"]); see with_stats.
  stats_names = ("blocks",)

  def with_stats(
    self, x: Array, t: Array, cond: Array, *, perturb: Array | None = None
  ) -> tuple[Array, dict]:
    """``(output, {"blocks": n})``: :meth:`apply` in the form :func:`jaxdiff.sample` sums
    into ``SampleResult.stats["blocks"]`` (blocks evaluated, over every call)."""
    out, blocks = self.apply(x, t, cond, perturb=perturb)
    return out, {"blocks": blocks}

  def __call__(self, x: Array, t: Array, cond: Array, *, perturb: Array | None = None) -> Array:
    """The output of :meth:`apply` alone: a drop-in network ``(x, t, cond) -> output``."""
    return self.apply(x, t, cond, perturb=perturb)[0]

  def outputs(self, x: Array, t: Array, cond: Array, *, train_backbone: bool = True) -> ExitOutputs:
    """Every exit's output and uncertainty next to the full output (no exiting).

    ``train_backbone=False`` stops the gradient of the heads' terms at the backbone's
    tokens and conditioning (fine-tuning the heads of a frozen network)."""
    net = self.net
    h, c, valid = net.encode(x, t, cond)
    sg = (lambda a: a) if train_backbone else jax.lax.stop_gradient
    exits, us = [], []
    for k in range(len(net.blocks)):
      h = apply_blocks(net, h, c, start=k, stop=k + 1)
      if k < len(net.blocks) - 1:
        hk, ck = sg(h), sg(c)
        exits.append(self.heads.readout(k, hk, ck, valid, x))
        us.append(self.heads.uncertainty(k, hk, ck))
    return ExitOutputs(net.readout(h, c, valid, x), jnp.stack(exits), jnp.stack(us))


def _check_outputs(o, target: Array) -> ExitOutputs:
  """``model.outputs``: the full output shaped like the target, ``K`` exits and ``(K, B)``
  uncertainties (trace time; no broadcasting into the loss)."""
  name, where = "model.outputs(x, t, cond)", "early_exit_loss"
  if not isinstance(o, tuple) or len(o) != 3:
    raise TypeError(
      f"{where}: {name} must return ExitOutputs(out, exits, uncertainty), got {type(o).__name__}"
    )
  o = ExitOutputs(*o)
  check_output(o.out, like=target, dtype="floating", name=f"{name}.out", where=where)
  k = jnp.shape(o.exits)[0] if jnp.ndim(o.exits) else 0
  check_output(
    o.exits, shape=(k, *target.shape), dtype="floating", name=f"{name}.exits", where=where
  )
  check_output(
    o.uncertainty,
    shape=(k, target.shape[0]),
    dtype="floating",
    name=f"{name}.uncertainty",
    where=where,
  )
  return o


def early_exit_loss(
  schedule,
  *,
  prediction: str = "v",
  uncertainty_weight: float = 1.0,
  layer_weight: float = 1.0,
  train_backbone: bool = False,
  label_dropout: float = 0.1,
  variant: str = "estimated",
):
  """DeeDiff's training loss for an :class:`EarlyExit` model, as a
  ``loss(model, x0, y, key) -> scalar`` for :func:`jaxdiff.models.train`.

  With ``x_t = alpha_t x0 + sigma_t eps`` (``t`` uniform, labels dropped to ``-1`` with
  probability ``label_dropout``), target ``y_t`` of ``prediction`` and the exit outputs
  ``g_k(h_k)`` with uncertainties ``u_k`` (:meth:`EarlyExit.outputs`; means over pixels
  and the batch):

  .. math::

    \\hat u_k = \\operatorname{mean}\\tanh|g_k(h_k) - y_t| \\quad \\text{(Eq. 6, a label:
      no gradient)}, \\qquad
    \\mathcal L_u = \\sum_k (u_k - \\hat u_k)^2 \\quad \\text{(Eq. 7)},

    \\mathcal L_{UAL} = \\sum_k (1 - w_k)\\, \\| g_k(h_k) - y_t \\|^2 \\quad \\text{(Eq. 8)},
    \\qquad
    \\mathcal L = [\\mathcal L_{simple}] + \\lambda \\mathcal L_u + \\beta \\mathcal L_{UAL}
    \\quad \\text{(Eq. 9)},

  with ``lambda = uncertainty_weight``, ``beta = layer_weight`` (the paper's 1 and 1) and
  ``L_simple`` the network's own denoising loss, included when ``train_backbone`` (the
  paper trains everything jointly). The default ``train_backbone=False`` fine-tunes only
  the heads of an already trained network: the network is unchanged, so ``threshold = 0``
  is still the trained network bit for bit.

  ``variant`` picks the UAL weight ``w_k``, which the paper writes as the estimated
  ``u_k`` without saying whether gradients flow through it: ``"estimated"`` (default)
  uses ``stop_gradient(u_k)`` (the UEM is trained by ``L_u`` alone); ``"pseudo"`` uses the
  pseudo label ``hat u_k``, as the public reproduction (Gallo et al. 2024) does.

  The loss checks when it is traced that ``y`` holds one label per example of ``x0`` (a
  single label for the batch raises: it would broadcast) and that ``model.outputs`` returns
  the output, ``K`` exits and ``(K, B)`` uncertainties of the target's shape (errors name
  the output at fault).

  Args:
    schedule: the noise schedule the network was trained on.
    prediction: what the network predicts (``"x0"``, ``"eps"``, ``"v"``, ``"velocity"``).
    uncertainty_weight: ``lambda >= 0``.
    layer_weight: ``beta >= 0``.
    train_backbone: also train the network (adds ``L_simple``).
    label_dropout: probability in ``[0, 1)`` of the null label (classifier-free guidance).
    variant: ``"estimated"`` or ``"pseudo"``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from jaxdiff import schedules
    >>> from jaxdiff.models import DigitDenoiser, EarlyExit, ExitHeads, early_exit_loss
    >>> net = DigitDenoiser(dim=8, depth=2, num_heads=2, rngs=nnx.Rngs(0))
    >>> model = EarlyExit(net, ExitHeads(net, rngs=nnx.Rngs(1)))
    >>> loss = early_exit_loss(schedules.vp_cosine())
    >>> float(jax.jit(loss)(model, jnp.zeros((4, 8, 8)), jnp.arange(4), 0)) > 0
    True

  References:
    Tang et al., "DeeDiff: Dynamic Uncertainty-Aware Early Exiting for Accelerating
    Diffusion Model Generation", arXiv:2309.17074 (Eqs. 6-9).
  """
  check_choice("prediction", prediction, ("x0", "eps", "v", "velocity"))
  check_scalar("uncertainty_weight", uncertainty_weight, lo=0.0)
  check_scalar("layer_weight", layer_weight, lo=0.0)
  check_scalar("label_dropout", label_dropout, lo=0.0, hi=1.0, hi_open=True)
  check_choice("variant", variant, _VARIANTS)
  if not isinstance(train_backbone, bool):
    raise TypeError(f"train_backbone must be a bool, got {train_backbone!r}")
  t_min, t_max = float(schedule.t_min), float(schedule.t_max)

  def loss(model: EarlyExit, x0: Array, y: Array, key) -> Array:
    if not callable(getattr(model, "outputs", None)):
      raise TypeError(
        "early_exit_loss: model must be an EarlyExit (with outputs(x, t, cond)), got "
        f"{type(model).__name__}"
      )
    if not hasattr(x0, "dtype") or jnp.ndim(x0) < 1 or not jnp.issubdtype(x0.dtype, jnp.floating):
      raise TypeError(f"early_exit_loss: x0 must be a floating (B, ...) array, got {x0!r}")
    kt, ke, kd = jax.random.split(as_key(key), 3)
    b, ndim = x0.shape[0], x0.ndim
    check_batch(y, b, name="y", like_name="x0 (one label per example)", where="early_exit_loss")
    t = jax.random.uniform(kt, (b,), minval=t_min, maxval=t_max)
    eps = jax.random.normal(ke, x0.shape, x0.dtype)
    if label_dropout:
      y = jnp.where(jax.random.bernoulli(kd, label_dropout, (b,)), -1, y)
    expand = (slice(None),) + (None,) * (ndim - 1)
    a, s = schedule.alpha(t)[expand], schedule.sigma(t)[expand]
    target = _target(x0, eps, a, s, prediction)
    o = _check_outputs(model.outputs(a * x0 + s * eps, t, y, train_backbone=train_backbone), target)
    pixels = tuple(range(2, o.exits.ndim))
    err = o.exits - target[None]
    u_hat = jax.lax.stop_gradient(jnp.mean(jnp.tanh(jnp.abs(err)), axis=pixels))  # (K, B)
    mse = jnp.mean(jnp.square(err), axis=pixels)  # (K, B)
    w = u_hat if variant == "pseudo" else jax.lax.stop_gradient(o.uncertainty)
    l_u = jnp.sum(jnp.mean(jnp.square(o.uncertainty - u_hat), axis=1))
    l_ual = jnp.sum(jnp.mean((1.0 - w) * mse, axis=1))
    total = uncertainty_weight * l_u + layer_weight * l_ual
    if train_backbone:
      total = total + jnp.mean(jnp.square(o.out - target))
    return total

  return loss
