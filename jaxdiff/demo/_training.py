"""Training (or restoring) the demo's networks: denoiser, weak denoiser, classifier, and the
rectified-flow model (:func:`prepare_flow_model`), all through :mod:`jaxdiff.training`."""

from __future__ import annotations

import functools
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optim
from jaxdiff import from_flow, from_v, schedules, training
from jaxdiff.demo._config import DemoConfig
from jaxdiff.models import (
  DigitClassifier,
  DigitDenoiser,
  Digits,
  classifier_loss,
  train,
)

__all__ = [
  "FlowModel",
  "HighresModel",
  "Models",
  "prepare_flow_model",
  "prepare_highres_model",
  "prepare_models",
  "upsample_digits",
]

# The fields that determine each trained model: its checkpoint directory hashes these.
_DENOISER_FIELDS = (
  "xla_opt_level",
  "seed",
  "batch_size",
  "dim",
  "depth",
  "num_heads",
  "denoiser_steps",
  "learning_rate",
  "chunk",
)
_WEAK_FIELDS = (
  "xla_opt_level",
  "seed",
  "batch_size",
  "weak_dim",
  "weak_depth",
  "num_heads",
  "weak_steps",
  "learning_rate",
  "chunk",
)
# The flow model's recipe (loss, sampler, EMA) is code, not config: its tag is part of the
# checkpoint directory name, so a change of recipe must bump it (a fresh cache entry).
_FLOW_RECIPE = "flow-v2"  # v2: bias-corrected weight EMA
_FLOW_FIELDS = (
  "xla_opt_level",
  "seed",
  "batch_size",
  "dim",
  "depth",
  "num_heads",
  "flow_steps",
  "learning_rate",
  "ema_decay",
  "chunk",
)
# The 16x16 denoiser (prepare_highres_model): its own sizes, the main model's recipe.
_HIGHRES_RECIPE = "highres16-v1"
_HIGHRES_FIELDS = (
  "xla_opt_level",
  "seed",
  "batch_size",
  "highres_dim",
  "highres_depth",
  "highres_patch",
  "num_heads",
  "highres_steps",
  "learning_rate",
  "chunk",
)
_CLASSIFIER_FIELDS = (
  "xla_opt_level",
  "seed",
  "batch_size",
  "classifier_steps",
  "classifier_lr",
  "chunk",
)


class Models(NamedTuple):
  """The trained networks and their training histories."""

  schedule: Any
  denoiser: DigitDenoiser
  weak: DigitDenoiser
  classifier: DigitClassifier
  losses: dict[str, np.ndarray]
  resumed: dict[str, int]


def _lr(peak: float, steps: int) -> optax.Schedule:
  warmup = max(1, min(100, steps // 10))
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(steps, warmup + 1), peak / 100)


def prepare_models(
  config: DemoConfig,
  data: Digits,
  cache_dir: str | pathlib.Path,
  *,
  progress: bool = True,
  stop_after: int | None = None,
) -> Models:
  """Trains (or restores from ``cache_dir``) the denoiser, the weak denoiser, the classifier.

  Each model checkpoints under ``cache_dir/<name>-<hash of its config>``; a completed
  checkpoint is restored without training, an incomplete one resumes bit-for-bit. The
  denoisers minimise the v-prediction loss on ``schedules.vp_cosine()`` with
  :func:`optim.adamp`, the classifier the cross-entropy with :func:`optim.diffgrad`.
  """
  cache_dir = pathlib.Path(cache_dir)
  schedule = schedules.vp_cosine()
  xy = (data.train_x, data.train_y)
  c = config

  def fit(name, model, loss, tx, steps, fields, seed_offset):
    return train(
      model,
      loss,
      tx,
      xy,
      steps=steps,
      batch_size=c.batch_size,
      key=c.seed + seed_offset,
      chunk=c.chunk,
      checkpoint_dir=cache_dir / f"{name}-{c.key_of(*fields)}",
      checkpoint_every=c.checkpoint_every,
      stop_after=stop_after,
      progress=name if progress else False,
      compiler_options=c.compiler_options,
    )

  # One optimizer object per distinct setting: `train` keys its compiled chunk on it, so
  # models of equal architecture and schedule (the smoke configuration) share one compile.
  adamp = functools.lru_cache(maxsize=None)(lambda steps: optim.adamp(_lr(c.learning_rate, steps)))
  net = DigitDenoiser(dim=c.dim, depth=c.depth, num_heads=c.num_heads, rngs=nnx.Rngs(c.seed))
  weak = DigitDenoiser(
    dim=c.weak_dim, depth=c.weak_depth, num_heads=c.num_heads, rngs=nnx.Rngs(c.seed + 1)
  )
  clf = DigitClassifier(rngs=nnx.Rngs(c.seed + 2))
  # v prediction, uniform t, squared error, 10% label dropout: the weights are bit-identical
  # to the hand-written loss this replaced (same cache key, same checkpoints).
  loss = training.denoising_loss(schedule, prediction="v", label_dropout=0.1)
  r_clf = fit(
    "classifier",
    clf,
    classifier_loss(),
    optim.diffgrad(_lr(c.classifier_lr, c.classifier_steps), weight_decay=1e-4),
    c.classifier_steps,
    _CLASSIFIER_FIELDS,
    2,
  )
  r_net = fit("denoiser", net, loss, adamp(c.denoiser_steps), c.denoiser_steps, _DENOISER_FIELDS, 0)
  r_weak = fit("weak-denoiser", weak, loss, adamp(c.weak_steps), c.weak_steps, _WEAK_FIELDS, 1)
  return Models(
    schedule,
    r_net.model,
    r_weak.model,
    r_clf.model,
    {"denoiser": r_net.losses, "weak denoiser": r_weak.losses, "classifier": r_clf.losses},
    {
      "denoiser": r_net.resumed_from,
      "weak denoiser": r_weak.resumed_from,
      "classifier": r_clf.resumed_from,
    },
  )


class FlowModel(NamedTuple):
  """The demo's rectified-flow model of the digits (see :func:`prepare_flow_model`).

  Attributes:
    schedule: ``jaxdiff.schedules.flow()``.
    net: the velocity network ``net(x, t, y) -> u`` with the EMA weights (a
      :class:`~jaxdiff.models.DigitDenoiser`).
    denoise: ``jaxdiff.from_flow(net, schedule)``, the denoiser ``(x, t, y) -> x0``.
    losses: per-step training losses.
    resumed_from: the checkpoint step training resumed from (0 fresh; ``flow_steps``
      when restored complete).
  """

  schedule: Any
  net: DigitDenoiser
  denoise: Any
  losses: np.ndarray
  resumed_from: int


def prepare_flow_model(
  config: DemoConfig,
  data: Digits,
  cache_dir: str | pathlib.Path,
  *,
  progress: bool = True,
  stop_after: int | None = None,
) -> FlowModel:
  """Trains (or restores) the demo's class-conditional rectified flow of the digits.

  The model for flow-based methods (FlowChef, reflow): the main denoiser's architecture
  (``config.dim``, ``depth``, ``num_heads``) trained for ``config.flow_steps`` steps on
  ``schedules.flow()`` (``x_t = (1 - t) x0 + t eps``) to predict the velocity
  ``u = eps - x0`` (:func:`jaxdiff.training.denoising_loss` with ``prediction="velocity"``,
  uniform ``t``, squared error, 10% label dropout so that ``-1`` is the unconditional
  model), with :func:`optim.adamp` and an EMA of the weights
  (:func:`optim.weight_ema`, decay ``config.ema_decay``); the EMA weights are
  returned. Sample it with any solver on a ``schedules.flow()`` grid, e.g.
  ``jaxdiff.sample(fm.denoise, solvers.euler(), x_T, timesteps(fm.schedule, 20), key=0,
  cond=labels)``.

  Cached like the other models under ``cache_dir/flow-v2-<hash of its config fields>``
  (restored bit for bit; an interrupted run resumes exactly). It is not part of
  :func:`prepare_models`: callers that need it call this.
  """
  cache_dir = pathlib.Path(cache_dir)
  c = config
  schedule = schedules.flow()
  net = DigitDenoiser(dim=c.dim, depth=c.depth, num_heads=c.num_heads, rngs=nnx.Rngs(c.seed + 3))
  loss = training.denoising_loss(schedule, prediction="velocity", label_dropout=0.1)
  tx = optax.chain(optim.adamp(_lr(c.learning_rate, c.flow_steps)), optim.weight_ema(c.ema_decay))
  r = train(
    net,
    loss,
    tx,
    (data.train_x, data.train_y),
    steps=c.flow_steps,
    batch_size=c.batch_size,
    key=c.seed + 3,
    chunk=c.chunk,
    checkpoint_dir=cache_dir / f"{_FLOW_RECIPE}-{c.key_of(*_FLOW_FIELDS)}",
    checkpoint_every=c.checkpoint_every,
    stop_after=stop_after,
    progress="flow" if progress else False,
    compiler_options=c.compiler_options,
  )
  graphdef, _, rest = nnx.split(r.model, nnx.Param, ...)
  ema_net = nnx.merge(graphdef, optim.ema_params(r.opt_state), rest)
  return FlowModel(schedule, ema_net, from_flow(ema_net, schedule), r.losses, r.resumed_from)


# The larger size of the high-resolution stage: 2x the digits' 8x8.
HIGHRES_SIZE = 16


def upsample_digits(data: Digits, size: int = HIGHRES_SIZE) -> Digits:
  """The digits at ``size x size``: every image resized by ``jax.image.resize`` (bicubic,
  Keys' a = -0.5, the upsampling of :func:`jaxdiff.progressive_sample`) and clipped to the
  data range ``[-1, 1]`` (the bicubic overshoot leaves it by up to 0.33); labels unchanged.

  The data of the demo's high-resolution model and of ``bench/diffusehigh_digits.py``:
  8x8 digits carry no detail finer than 8x8, so the larger images are smooth
  interpolations of them.
  """

  def up(x):
    x = jax.image.resize(jnp.asarray(x), (x.shape[0], size, size), method="cubic")
    return np.asarray(jnp.clip(x, -1.0, 1.0), np.float32)

  return Digits(up(data.train_x), data.train_y, up(data.test_x), data.test_y)


class HighresModel(NamedTuple):
  """The demo's class-conditional denoiser of 16x16 digits (:func:`prepare_highres_model`).

  Attributes:
    schedule: ``jaxdiff.schedules.vp_cosine()``.
    net: the v-prediction network (a :class:`~jaxdiff.models.DigitDenoiser` with
      ``image_size=16``).
    denoise: ``jaxdiff.from_v(net, schedule)``, the denoiser ``(x, t, y) -> x0``.
    losses: per-step training losses.
    resumed_from: the checkpoint step training resumed from (0 fresh; ``highres_steps``
      when restored complete).
  """

  schedule: Any
  net: DigitDenoiser
  denoise: Any
  losses: np.ndarray
  resumed_from: int


def prepare_highres_model(
  config: DemoConfig,
  data16: Digits,
  cache_dir: str | pathlib.Path,
  *,
  progress: bool = True,
  stop_after: int | None = None,
) -> HighresModel:
  """Trains (or restores) a class-conditional denoiser of the 16x16 digits ``data16``
  (:func:`upsample_digits`).

  The main denoiser's recipe (v prediction on ``schedules.vp_cosine()``, 10% label
  dropout, :func:`optim.adamp` with warmup + cosine) on a
  :class:`~jaxdiff.models.DigitDenoiser` of ``image_size=16`` with ``config.highres_patch``
  patches, ``highres_dim`` / ``highres_depth``, for ``config.highres_steps`` steps. With
  4x4 patches it has the 16 tokens of the 8x8 model's 2x2 patches, so one evaluation costs
  about the same at either size. Cached like the other models under
  ``cache_dir/highres16-v1-<hash of its config fields>``.
  """
  if config.highres_steps < 1:
    raise ValueError(
      f"prepare_highres_model: config.highres_steps must be >= 1, got {config.highres_steps}"
    )
  c = config
  schedule = schedules.vp_cosine()
  net = DigitDenoiser(
    image_size=HIGHRES_SIZE,
    patch=c.highres_patch,
    dim=c.highres_dim,
    depth=c.highres_depth,
    num_heads=c.num_heads,
    rngs=nnx.Rngs(c.seed + 4),
  )
  loss = training.denoising_loss(schedule, prediction="v", label_dropout=0.1)
  r = train(
    net,
    loss,
    optim.adamp(_lr(c.learning_rate, c.highres_steps)),
    (data16.train_x, data16.train_y),
    steps=c.highres_steps,
    batch_size=c.batch_size,
    key=c.seed + 4,
    chunk=c.chunk,
    checkpoint_dir=pathlib.Path(cache_dir) / f"{_HIGHRES_RECIPE}-{c.key_of(*_HIGHRES_FIELDS)}",
    checkpoint_every=c.checkpoint_every,
    stop_after=stop_after,
    progress="denoiser 16x16" if progress else False,
    compiler_options=c.compiler_options,
  )
  return HighresModel(schedule, r.model, from_v(r.model, schedule), r.losses, r.resumed_from)
