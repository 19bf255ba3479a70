"""Higher resolution on the digits, and the geometry of a denoiser, as pictures.

DiffuseHigh (Kim et al., arXiv:2406.18459): 16x16 digits sampled directly by a model of
16x16 digits against :func:`jaxdiff.progressive_sample` from 8 to 16 (the demo's 8x8
denoiser samples the structure, the 16x16 one re-noises and refines it), with and without
the structure guidance (:func:`jaxdiff.guidance.diffusehigh`), at the same number of
network evaluations. And Kadkhodaie et al. (arXiv:2310.02557): the leading eigenvectors of
the 16x16 denoiser's Jacobian (:func:`jaxdiff.metrics.jacobian_spectrum`) at a held-out
digit, shown as images.

The sampling code and its settings are shared with ``bench/diffusehigh_digits.py`` (the
study with several seeds and the full-size model); the demo runs one small setting.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff import from_v, metrics, progressive_sample, sample, schedules, solvers
from jaxdiff.demo._training import HIGHRES_SIZE, HighresModel

__all__ = [
  "METHODS",
  "SOLVER",
  "HighresSampler",
  "highres_stage",
  "jacobian_eigenvectors",
  "noising_split",
  "pool2",
  "two_scale_denoiser",
]

# The solver of every stage and the run (DPM-Solver++(2M) on logSNR grids, as the demo's grid).
SOLVER = "dpmpp_2m"
# The runs at 16x16, by table label: direct sampling, progressive with structure guidance
# (the paper's settings), progressive without it (the ablation), the 8x8 base sample
# upsampled (no 16x16 stage), and progressive with the guidance but no unsharp mask on the
# reference (bench/diffusehigh_digits.py: the mask is what makes the guidance hurt here).
METHODS = (
  "direct 16x16",
  "progressive 8->16, structure guidance",
  "progressive 8->16, no guidance",
  "8x8 sample, upsampled (no 16x16 stage)",
  "progressive 8->16, structure guidance, no sharpening",
)


def noising_split(nfe: int) -> tuple[int, int, int]:
  """``(base_steps, noising_steps, guided_steps)`` of a progressive run of ``nfe``
  evaluations (one per step): the paper's proportions, 15 of 50 steps re-noised (30%) and
  the first 5 of those 15 guided (a third), at least one of each.

  Example:
    >>> noising_split(20), noising_split(4)
    ((14, 6, 2), (3, 1, 1))
  """
  n = max(1, round(0.3 * nfe))
  if nfe - n < 1:
    raise ValueError(f"nfe must be >= 2 (a base step and a re-noised one), got {nfe}")
  return nfe - n, n, max(1, round(n / 3))


def pool2(x) -> np.ndarray:
  """2x2 average pooling ``(B, 2H, 2W) -> (B, H, W)``: 16x16 samples in the 8x8 feature
  space of the demo's classifier (the Haar low band, up to a factor 2).

  Example:
    >>> pool2(np.arange(16.0).reshape(1, 4, 4))
    array([[[ 2.5,  4.5],
            [10.5, 12.5]]])
  """
  x = np.asarray(x)
  b, h, w = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


def two_scale_denoiser(base, high, base_size: int = 8):
  """One denoiser for :func:`jaxdiff.progressive_sample`: ``base`` on ``base_size`` images,
  ``high`` on every other size (the shape is static, so this is a trace-time choice)."""

  def denoise(x, t, cond):
    return base(x, t, cond) if x.shape[1] == base_size else high(x, t, cond)

  return denoise


class HighresSampler:
  """Samples labels at 16x16 by each of :data:`METHODS`; built once, so that runs with
  new keys or labels of the same size reuse the compiled samplers.

  ``base_model`` is the demo's 8x8 v-prediction network (``Models.denoiser``) on
  ``schedule``; ``high`` the 16x16 model. Direct sampling runs ``nfe`` steps of ``high``
  from 16x16 noise; the progressive runs share their base sample (``nfe - n`` steps at
  8x8, :func:`noising_split`) and the re-noising, and differ only in the structure
  guidance of the ``n`` steps at 16x16. One key draws everything: the runs are paired.
  """

  def __init__(self, base_model, schedule, high: HighresModel):
    self.schedule, self.high = schedule, high
    self.base = from_v(base_model, schedule)
    self.denoise = two_scale_denoiser(self.base, high.denoise)
    self.solver = solvers.make(SOLVER)

  def __call__(self, labels, key, *, nfe: int, methods=METHODS) -> dict[str, dict]:
    """``{label: {"x", "nfe"}}`` for each of ``methods``, ``nfe`` evaluations per sample
    (the upsampled base sample: the base stage's). The progressive runs use
    :func:`jaxdiff.progressive_sample`'s defaults (bicubic upsampling, unsharp mask of
    amount 1, one Haar level) except where their label says otherwise."""
    base_steps, n, guided = noising_split(nfe)
    y = jnp.asarray(labels, jnp.int32)
    b = y.shape[0]
    k_direct, k_prog = jax.random.split(key)
    out: dict[str, dict] = {}
    if METHODS[0] in methods:
      ts = schedules.timesteps(self.high.schedule, nfe, spacing="logsnr")
      x_T = jax.random.normal(jax.random.fold_in(k_direct, 0), (b, HIGHRES_SIZE, HIGHRES_SIZE))
      k = jax.random.fold_in(k_direct, 1)
      res = sample(self.high.denoise, self.solver, x_T, ts, key=k, cond=y)
      out[METHODS[0]] = {"x": np.asarray(res.x), "nfe": int(res.nfe)}
    ts = schedules.timesteps(self.schedule, base_steps, spacing="logsnr")
    x_T = jax.random.normal(jax.random.fold_in(k_prog, 0), (b, 8, 8))
    base_x = None
    for label, g, sharpness in (
      (METHODS[1], guided, 1.0),
      (METHODS[2], 0, 1.0),
      (METHODS[4], guided, 0.0),
    ):
      if label not in methods:
        continue
      res = progressive_sample(
        self.denoise,
        self.solver,
        x_T,
        ts,
        key=jax.random.fold_in(k_prog, 1),
        sizes=[(HIGHRES_SIZE, HIGHRES_SIZE)],
        noising_steps=n,
        cond=y,
        guided_steps=g,
        sharpness=sharpness,
      )
      out[label] = {"x": np.asarray(res.x), "nfe": int(res.nfe)}
      base_x = res.images[0]
    if METHODS[3] in methods:
      if base_x is None:  # progressive_sample's base stage: keys[0] of its key's split
        k = jax.random.split(jax.random.fold_in(k_prog, 1), 3)[0]
        base_x = sample(self.denoise, self.solver, x_T, ts, key=k, cond=y).x
      up = jax.image.resize(base_x, (b, HIGHRES_SIZE, HIGHRES_SIZE), method="cubic")
      out[METHODS[3]] = {"x": np.asarray(up), "nfe": base_steps}
    return {m: out[m] for m in METHODS if m in out}  # in the order of METHODS


def jacobian_eigenvectors(
  high: HighresModel, image, label: int, noise_levels, *, num_iterations: int, key
) -> list[dict]:
  r"""The Jacobian's eigen-analysis of the 16x16 denoiser at one clean ``image`` noised to
  each of ``noise_levels`` :math:`\sigma'` (data scale): for
  :math:`y = x + \sigma' z` and :math:`D'(y) = D(\alpha y, t)` at the time :math:`t` of
  :math:`\sigma/\alpha = \sigma'`, the leading eigenpairs of the symmetric part of
  :math:`\partial D'/\partial y` (:func:`jaxdiff.metrics.jacobian_spectrum`, Lanczos on
  ``jvp``/``vjp``), whose eigenvalues are Kadkhodaie et al.'s shrinkage factors.

  Returns one dict per level: ``sigma``, ``t``, ``noisy``, ``denoised``, ``eigenvalues``,
  ``eigenvectors`` ``(m, 16, 16)``, ``residuals``.
  """
  sched = high.schedule
  gd, params = nnx.split(high.net)
  cond = jnp.asarray([label], jnp.int32)

  @jax.jit
  def analyse(params, y, t, k):
    a = sched.alpha(t)
    net = from_v(nnx.merge(gd, params), sched)

    def den(y, tt, c):
      return net(a * y, tt, c)

    spec = metrics.jacobian_spectrum(den, y, t, cond, key=k, num_iterations=num_iterations)
    return spec, den(y[None], jnp.reshape(t, (1,)), cond)[0]

  x = jnp.asarray(image, jnp.float32)
  rows = []
  for i, s in enumerate(noise_levels):
    t = sched.t_from_logsnr(jnp.float32(-2.0 * np.log(s)))
    y = x + s * jax.random.normal(jax.random.fold_in(key, i), x.shape)
    spec, denoised = analyse(params, y, t, jax.random.fold_in(key, 100 + i))
    rows.append(
      {
        "sigma": float(s),
        "t": float(t),
        "noisy": np.asarray(y),
        "denoised": np.asarray(denoised),
        "eigenvalues": np.asarray(spec.eigenvalues),
        "eigenvectors": np.asarray(spec.eigenvectors),
        "residuals": np.asarray(spec.residuals),
      }
    )
  return rows


# The noise levels (data scale) and the number of eigenvectors of the demo's Jacobian figure.
JACOBIAN_SIGMAS = (0.2, 1.0)
JACOBIAN_SHOWN = 8


def _real_like(data16, labels) -> np.ndarray:
  """Held-out 16x16 digits laid out like ``labels`` (the i-th of class c where c is)."""
  real = np.empty((len(labels), HIGHRES_SIZE, HIGHRES_SIZE), np.float32)
  for c in np.unique(labels):
    where = labels == c
    real[where] = np.resize(data16.test_x[data16.test_y == c], (int(where.sum()), 16, 16))
  return real


def highres_stage(config, models, data, labels, key, cache_dir, out, *, progress=False):
  """The demo stage: trains (or restores) the 16x16 model, samples it by every method of
  :data:`METHODS` at ``config.highres_nfe`` evaluations from one key, scores the samples
  pooled to 8x8 (:func:`pool2`) with the demo's classifier against the pooled held-out
  16x16 digits, and draws ``out/highres_progressive.png`` and
  ``out/jacobian_eigenvectors.png``. Returns the section's results."""
  from jaxdiff.demo import _figures as fig
  from jaxdiff.demo._evaluation import Evaluator
  from jaxdiff.demo._training import prepare_highres_model, upsample_digits

  data16 = upsample_digits(data)
  high = prepare_highres_model(config, data16, cache_dir, progress=progress)
  evaluator = Evaluator(models.classifier, pool2(data16.test_x), config.seed)
  nfe = config.highres_nfe
  runs = HighresSampler(models.denoiser, models.schedule, high)(labels, key, nfe=nfe)
  rows = [
    {"method": name, "nfe": r["nfe"], **evaluator(pool2(r["x"]), labels)}
    for name, r in runs.items()
  ]
  idx = np.random.default_rng(config.seed).permutation(len(data16.train_x))[: len(labels)]
  reference = evaluator(pool2(data16.train_x[idx]), data16.train_y[idx])
  path = pathlib.Path(out)
  panels = [(name, r["x"]) for name, r in runs.items()]
  panels.append(("real 16x16 digits (held-out)", _real_like(data16, labels)))
  title = f"16x16 digits, {nfe} network evaluations per sample ({SOLVER})"
  fig.save_panels(
    path / "highres_progressive.png", panels, labels, min(4, config.samples_per_class), title
  )
  # One held-out digit (the first 3 of the held-out set) for the Jacobian.
  j = int(np.flatnonzero(data16.test_y == 3)[0])
  iters = min(config.jacobian_iters, HIGHRES_SIZE**2)
  levels = jacobian_eigenvectors(
    high,
    data16.test_x[j],
    3,
    JACOBIAN_SIGMAS,
    num_iterations=iters,
    key=jax.random.key(config.seed + 9),
  )
  shown = min(JACOBIAN_SHOWN, iters)
  fig.plot_eigenvectors(
    path / "jacobian_eigenvectors.png",
    levels,
    shown,
    f"leading eigenvectors of the 16x16 denoiser's Jacobian ({iters} Lanczos steps)",
  )
  base_steps, n, guided = noising_split(nfe)
  setting = {
    "nfe": nfe,
    "base_steps": base_steps,
    "noising_steps": n,
    "guided_steps": guided,
    "solver": SOLVER,
    "highres_steps": config.highres_steps,
    "highres_dim": config.highres_dim,
    "highres_depth": config.highres_depth,
    "highres_patch": config.highres_patch,
    "resumed_from": high.resumed_from,
    "jacobian_iters": iters,
  }
  jac = [
    {
      "sigma": lv["sigma"],
      "t": lv["t"],
      "top_eigenvalues": lv["eigenvalues"][:shown].tolist(),
      "max_residual": float(np.max(lv["residuals"][:shown])),
    }
    for lv in levels
  ]
  return {"setting": setting, "rows": rows, "reference": reference, "jacobian": jac}
