"""Training (or restoring) the demo's three networks: denoiser, weak denoiser, classifier."""

from __future__ import annotations

import functools
import pathlib
from typing import Any, NamedTuple

import numpy as np
import optax
from flax import nnx

import optim
from jaxdiff import schedules
from jaxdiff.demo._config import DemoConfig
from jaxdiff.models import (
  DigitClassifier,
  DigitDenoiser,
  Digits,
  classifier_loss,
  train,
  v_prediction_loss,
)

__all__ = ["Models", "prepare_models"]

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
  loss = v_prediction_loss(schedule)
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
