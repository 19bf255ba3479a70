"""DiffuseHigh's progressive sampling: sample, upsample, re-noise, sample again with
structure guidance, scale by scale. Each stage is one :func:`jaxdiff.sample` call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxdiff._grids import Grid
from jaxdiff._sampling import sample
from jaxdiff._types import Conditional, GuidanceRule
from jaxdiff._validation import as_key, check_choice, check_scalar
from jaxdiff.guidance._diffusehigh import _check_rule, diffusehigh

Array = jax.Array

# jax.image.resize's names for the interpolations (the official code: bicubic on SDXL,
# bilinear on SD 2.1).
UPSAMPLING = ("cubic", "linear", "nearest", "lanczos3")


class ProgressiveResult(NamedTuple):
  """What :func:`progressive_sample` returns.

  Attributes:
    x: the sample at the last (largest) size.
    nfe: network evaluations per sample, all stages together (int32).
    images: the sample of every stage, the base size first (``images[-1] is x``).
  """

  x: Array
  nfe: Array
  images: tuple[Array, ...]


def sharpen(x: Array, amount, sigma) -> Array:
  """Unsharp masking over axes (1, 2): ``(1 + amount) x - amount blur(x)``, a 3 x 3
  Gaussian blur with reflected borders (torchvision's ``GaussianBlur(3, sigma)``)."""
  k = jnp.exp(-0.5 * (jnp.arange(-1.0, 2.0) / sigma) ** 2).astype(x.dtype)
  k = k / jnp.sum(k)
  pad = [(0, 0)] * x.ndim
  pad[1] = pad[2] = (1, 1)
  xp = jnp.pad(x, pad, mode="reflect")
  h, w = x.shape[1], x.shape[2]
  rows = sum(k[i] * xp[:, i : i + h] for i in range(3))
  blur = sum(k[j] * rows[:, :, j : j + w] for j in range(3))
  amount = jnp.asarray(amount, x.dtype)
  return (1 + amount) * x - amount * blur


def _check_sizes(sizes, x_T, levels: int) -> list[tuple[int, int]]:
  if not isinstance(sizes, Sequence) or isinstance(sizes, (str, bytes)) or not sizes:
    raise TypeError(f"progressive_sample: sizes must be a non-empty list of (H, W), got {sizes!r}")
  prev = tuple(x_T.shape[1:3])
  out = []
  for i, size in enumerate(sizes):
    if not isinstance(size, Sequence) or len(size) != 2:
      raise TypeError(f"progressive_sample: sizes[{i}] must be a pair (H, W), got {size!r}")
    hw = tuple(
      check_scalar(f"progressive_sample: sizes[{i}]", v, lo=1, integer=True, static=True)
      for v in size
    )
    if hw[0] < prev[0] or hw[1] < prev[1]:
      raise ValueError(f"progressive_sample: sizes must not shrink: sizes[{i}] = {hw} after {prev}")
    if hw[0] % 2**levels or hw[1] % 2**levels:
      raise ValueError(
        f"progressive_sample: sizes[{i}] = {hw} must be divisible by 2**levels = {2**levels}"
      )
    out.append(hw)
    prev = hw
  return out


def progressive_sample(
  denoise,
  solver,
  x_T: Array,
  ts: Grid,
  *,
  key: Any,
  sizes: Sequence[tuple[int, int]],
  noising_steps: int,
  cond: Any = None,
  guidance: GuidanceRule | None = None,
  guided_steps: int = 5,
  levels: int = 1,
  sharpness: float = 1.0,
  sharpen_sigma: float = 1.0,
  upsample: str = "cubic",
) -> ProgressiveResult:
  r"""DiffuseHigh's progressive high-resolution sampling, scale by scale.

  Stage 0 samples ``x_T`` at the base size on the whole grid ``ts``. Each later stage
  ``s`` (one per entry of ``sizes``) upsamples the previous sample to ``sizes[s]``,
  sharpens it into the reference, re-noises it to the grid point
  :math:`t_{N-n}` that leaves ``noising_steps`` :math:`= n` steps, and samples those
  steps with structure guidance (:func:`jaxdiff.guidance.diffusehigh`) around
  ``guidance``:

  .. math::
    x_{\text{ref}} = (1 + a)\,U(x^{(s-1)}) - a\,G_\sigma * U(x^{(s-1)}),\qquad
    x_{t_{N-n}} = \alpha_{t_{N-n}} x_{\text{ref}} + \sigma_{t_{N-n}}\,\epsilon,

  with :math:`U` the upsampling (``upsample``), :math:`G_\sigma` a :math:`3 \times 3`
  Gaussian blur (reflected borders) and :math:`a` = ``sharpness``; the first
  ``guided_steps`` of the :math:`n` steps take the low Haar band of :math:`\hat x_0` from
  :math:`x_{\text{ref}}`. The denoiser must accept every size (the paper's premise: a
  model trained at the base size, used training-free at larger ones).

  Defaults follow the official code: 5 guided steps of the re-noised ones, one wavelet
  level, bicubic upsampling and unsharp masking with :math:`a = 1` (the SDXL pipeline;
  it draws the blur's :math:`\sigma` from :math:`U(0.1, 2)` at every stage, here it is
  fixed). It re-noises to the 15th-last of 50 steps: ``noising_steps=15`` on a 50-step
  grid.

  Args:
    denoise: the denoiser ``denoise(x, t, cond) -> x0_hat`` at every size.
    solver: a :mod:`jaxdiff.solvers` solver, used at every stage.
    x_T: the base-size starting noise ``(B, H, W, ...)`` (spatial axes 1 and 2).
    ts: the base grid (:func:`jaxdiff.timesteps`); the later stages run its last
      ``noising_steps`` steps.
    key: PRNG key (typed key, raw key or int seed): the samplers' keys and the re-noising.
    sizes: the target sizes ``[(H_1, W_1), ...]``, non-decreasing, each divisible by
      ``2**levels``.
    noising_steps: :math:`n`, steps of each later stage, ``1 <= n <= ts.num_steps``.
    cond: the condition (as for :func:`jaxdiff.sample`), the same at every stage.
    guidance: the rule at every stage (default the plain conditional call); the later
      stages wrap it in :func:`~jaxdiff.guidance.diffusehigh`.
    guided_steps, levels: of :func:`~jaxdiff.guidance.diffusehigh`.
    sharpness: :math:`a \ge 0` (0: no sharpening).
    sharpen_sigma: the blur's :math:`\sigma > 0`.
    upsample: ``"cubic"`` (default), ``"linear"``, ``"nearest"`` or ``"lanczos3"``
      (``jax.image.resize``; its cubic is Keys' with :math:`a = -0.5`, PyTorch's bicubic
      uses :math:`-0.75`).

  Returns:
    A :class:`ProgressiveResult` ``(x, nfe, images)``.

  Raises:
    TypeError, ValueError: a bad size list, step count, hyperparameter or rule, naming
      the argument; :func:`jaxdiff.sample`'s own errors for the rest.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import jaxdiff
    >>> from jaxdiff import schedules, solvers
    >>> sched = schedules.vp_cosine()
    >>> ts = jaxdiff.timesteps(sched, 10, spacing="logsnr")
    >>> den = lambda x, t, c: 0.5 * x  # any denoiser that accepts every size
    >>> x_T = jax.random.normal(jax.random.key(0), (2, 4, 4))
    >>> out = jaxdiff.progressive_sample(den, solvers.ddim(), x_T, ts, key=1,
    ...                                  sizes=[(8, 8), (16, 16)], noising_steps=4)
    >>> [im.shape for im in out.images], int(out.nfe)
    ([(2, 4, 4), (2, 8, 8), (2, 16, 16)], 18)

  References:
    Kim et al., "DiffuseHigh: Training-free Progressive High-Resolution Image Synthesis
    through Structure Guidance", arXiv:2406.18459 (progressive pipeline; the official
    ``pipeline_diffusehigh_sdxl.py``).
  """
  guidance = Conditional() if guidance is None else guidance
  _check_rule(guidance, "progressive_sample: guidance")
  if not isinstance(ts, Grid):
    raise TypeError(
      f"progressive_sample: ts must be a jaxdiff Grid (jaxdiff.timesteps), got {type(ts).__name__}"
    )
  if not hasattr(x_T, "shape") or jnp.ndim(x_T) < 3:
    raise ValueError(
      "progressive_sample: x_T must be batch-first images (B, H, W, ...), got shape "
      f"{getattr(x_T, 'shape', None)}"
    )
  levels = check_scalar("progressive_sample: levels", levels, lo=1, integer=True, static=True)
  check_scalar("progressive_sample: guided_steps", guided_steps, lo=0, integer=True, static=True)
  n = check_scalar(
    "progressive_sample: noising_steps",
    noising_steps,
    lo=1,
    hi=ts.num_steps,
    integer=True,
    static=True,
  )
  check_scalar("progressive_sample: sharpness", sharpness, lo=0.0)
  check_scalar("progressive_sample: sharpen_sigma", sharpen_sigma, lo=0.0, lo_open=True)
  check_choice("progressive_sample: upsample", upsample, UPSAMPLING)
  sizes = _check_sizes(sizes, x_T, levels)
  keys = jax.random.split(as_key(key), 1 + 2 * len(sizes))
  out = sample(denoise, solver, x_T, ts, key=keys[0], cond=cond, guidance=guidance)
  images, nfe, x = [out.x], out.nfe, out.x
  tail = Grid(*(a[ts.num_steps - n :] for a in ts))
  for s, size in enumerate(sizes):
    shape = (x.shape[0], *size, *x.shape[3:])
    ref = jax.image.resize(x, shape, method=upsample)
    if sharpness != 0:
      ref = sharpen(ref, sharpness, sharpen_sigma)
    noise = jax.random.normal(keys[1 + 2 * s], shape, x.dtype)
    start = (tail.alpha[0] * ref + tail.sigma[0] * noise).astype(x.dtype)
    rule = diffusehigh(ref, rule=guidance, guided_steps=guided_steps, levels=levels)
    out = sample(denoise, solver, start, tail, key=keys[2 + 2 * s], cond=cond, guidance=rule)
    x = out.x
    images.append(x)
    nfe = nfe + out.nfe
  return ProgressiveResult(x, nfe, tuple(images))
