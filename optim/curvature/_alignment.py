"""Hessian and gradient alignment across training domains (HGP and Hutchinson regularizers)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax.tree_utils as otu

from optim._tree import PROBES, tree_probe, tree_vdot
from optim._validation import as_key, check_choice, check_floating, check_scalar
from optim.curvature._operators import _check_scalar_objective, hvp

PyTree = Any

__all__ = ["AlignmentPenalty", "hessian_alignment"]

VARIANTS = ("hgp", "hutchinson")


class AlignmentPenalty(NamedTuple):
  """Result of :func:`hessian_alignment`: the two terms of the regularizer.

  Attributes:
    hessian: :math:`\\sum_e \\|h_e - \\bar h\\|^2`, the Hessian-alignment term (``h_e`` is
      :math:`H_e g_e` for HGP, the Hutchinson diagonal of :math:`H_e` otherwise).
    gradient: :math:`\\sum_e \\|g_e - \\bar g\\|^2`, the gradient-alignment term.
    loss: the ERM loss :math:`\\frac1E \\sum_e L_e` (computed on the way).
  """

  hessian: jax.Array
  gradient: jax.Array
  loss: jax.Array


def hessian_alignment(
  loss_fn: Callable[..., jax.Array],
  params: PyTree,
  domains: Any,
  *,
  variant: str = "hgp",
  key: Any = None,
  num_probes: int = 10,
  probe: str = "rademacher",
) -> AlignmentPenalty:
  """Hemati et al.'s Hessian- and gradient-alignment penalties across training domains.

  With :math:`L_e(\\theta)` the loss on domain :math:`e` (of :math:`E`),
  :math:`g_e = \\nabla L_e`, :math:`H_e = \\nabla^2 L_e`,
  :math:`\\bar g = \\frac1E \\sum_e g_e` and :math:`\\bar H = \\frac1E \\sum_e H_e` (the
  gradient and Hessian of the ERM loss), the objective is
  :math:`\\frac1E \\sum_e L_e + \\alpha\\,\\text{hessian} + \\beta\\,\\text{gradient}` with

  .. math::
    \\text{gradient} = \\sum_e \\|g_e - \\bar g\\|^2, \\qquad
    \\text{hessian} = \\begin{cases}
      \\sum_e \\|H_e g_e - \\bar H \\bar g\\|^2 & \\text{HGP} \\\\
      \\sum_e \\|D_e - \\bar D\\|^2,\\;
      D_e = \\frac1m \\sum_k z_k \\odot H_e z_k & \\text{Hutchinson}
    \\end{cases}

  HGP (Hessian-gradient product, ``variant="hgp"``) aligns :math:`H_e g_e` (Hemati et
  al., Sec. 5; their code computes it as :math:`\\|g_e\\| \\nabla\\|g_e\\|`; here it is one
  Hessian-vector product). ``variant="hutchinson"`` aligns Hutchinson estimates of the
  Hessian diagonals, all domains probed with the same :math:`m` vectors so that
  :math:`\\bar D = \\frac1E \\sum_e D_e` is exactly the estimate for :math:`\\bar H`. The
  domains are vmapped (no Python loop); the result is differentiable, so add it to a
  training loss (HGP's gradient is a third-order product). The paper aligns the
  classifier head: pass the head's parameters as ``params`` and close ``loss_fn`` over the
  features.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss on one domain's batch.
    params: the parameters to align (e.g. the classifier head).
    domains: a pytree of batches whose leaves have a leading axis of :math:`E \\ge 2`
      domains (equal batch sizes per domain).
    variant: ``"hgp"`` or ``"hutchinson"``.
    key: PRNG key of the probes (``"hutchinson"`` only; typed, raw or int seed).
    num_probes: probes :math:`m` (static, >= 1; ``"hutchinson"``).
    probe: ``"rademacher"`` or ``"gaussian"``.

  Returns:
    An :class:`AlignmentPenalty` ``(hessian, gradient, loss)`` of scalars.

  Raises:
    ValueError: fewer than two domains or domain leaves without a common leading axis;
      unknown ``variant``/``probe``; ``"hutchinson"`` without a key.
    TypeError: ``loss_fn`` not returning a real scalar; non-floating params.

  Example:
    >>> import jax.numpy as jnp
    >>> from optim.curvature import hessian_alignment
    >>> loss = lambda w, x: jnp.mean((x * w) ** 2)  # H_e = 2 mean(x^2), g_e = H_e w
    >>> domains = jnp.array([[1.0, 1.0], [2.0, 2.0]])  # two domains, two examples each
    >>> p = hessian_alignment(loss, jnp.array(1.0), domains)
    >>> float(p.gradient), float(p.hessian)  # g = (2, 8), Hg = (4, 64), H_bar g_bar = 25
    (18.0, 1962.0)

  References:
    Hemati, Zhang, Estiri & Chen, "Understanding Hessian Alignment for Domain
    Generalization", ICCV 2023, arXiv:2308.11778.
  """
  variant = check_choice("variant", variant, VARIANTS)
  check_choice("probe", probe, PROBES)
  num_probes = check_scalar("num_probes", num_probes, lo=1, integer=True, static=True)
  check_floating(params, "params", "hessian_alignment", allow_empty=False)
  leaves = jax.tree.leaves(domains)
  sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
  if not leaves or len(sizes) != 1 or None in sizes:
    raise ValueError(
      "hessian_alignment: domains must be a pytree of batches whose leaves share a leading "
      f"axis of domains; got leading sizes {sorted(s for s in sizes if s is not None)}"
    )
  num_domains = sizes.pop()
  if num_domains < 2:
    raise ValueError(f"hessian_alignment: alignment needs at least 2 domains, got {num_domains}")
  first = jax.tree.map(lambda leaf: leaf[0], domains)
  _check_scalar_objective(loss_fn, params, first, name="loss_fn", where="hessian_alignment")
  probes = None
  if variant == "hutchinson":
    if key is None:
      raise ValueError("hessian_alignment(variant='hutchinson') needs key=... for its probes")
    probes = jax.vmap(lambda k: tree_probe(k, params, probe))(
      jax.random.split(as_key(key), num_probes)
    )
  return _penalty(loss_fn, variant, params, domains, probes)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _penalty(loss_fn, variant, params, domains, probes) -> AlignmentPenalty:
  def per_domain(batch):
    loss, g = jax.value_and_grad(loss_fn)(params, batch)
    if variant == "hgp":
      h = hvp(loss_fn, params, g, batch)
    else:
      zhz = jax.vmap(lambda z: otu.tree_mul(z, hvp(loss_fn, params, z, batch)))(probes)
      h = jax.tree.map(lambda a: jnp.mean(a, axis=0), zhz)
    return loss, g, h

  losses, grads, hs = jax.vmap(per_domain)(domains)
  g_bar = jax.tree.map(lambda a: jnp.mean(a, axis=0), grads)
  if variant == "hgp":
    # H_bar g_bar: the ERM Hessian is the mean of the domains' Hessians.
    h_bar = jax.tree.map(
      lambda a: jnp.mean(a, axis=0),
      jax.vmap(lambda batch: hvp(loss_fn, params, g_bar, batch))(domains),
    )
  else:
    h_bar = jax.tree.map(lambda a: jnp.mean(a, axis=0), hs)

  def spread(stacked, mean):
    dev = jax.tree.map(lambda a, m: a - m, stacked, mean)
    return jnp.sum(jax.vmap(lambda d: tree_vdot(d, d))(dev))

  return AlignmentPenalty(spread(hs, h_bar), spread(grads, g_bar), jnp.mean(losses))
