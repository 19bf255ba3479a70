"""The demo's cached digits models for the bench studies: one loader instead of a copy
per script (the models train once and are reused from the demo's cache directory)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class DemoModels(NamedTuple):
  config: Any  # jaxdiff.demo DemoConfig
  data: Any  # jaxdiff.models.Digits
  models: Any  # jaxdiff.demo._training.Models
  evaluator: Any  # jaxdiff.demo._evaluation.Evaluator (FD, accuracy, saturation)


def demo_models(config=None) -> DemoModels:
  """``DemoConfig.full()`` (or ``config``), its digits, its models from the demo's cache
  (trained there on first use) and the demo's evaluator on the held-out digits."""
  from jaxdiff.demo._config import DemoConfig, default_cache_dir
  from jaxdiff.demo._evaluation import Evaluator
  from jaxdiff.demo._training import prepare_models
  from jaxdiff.models import load_digits

  config = DemoConfig.full() if config is None else config
  data = load_digits(key=config.seed)
  models = prepare_models(config, data, default_cache_dir(), progress=False)
  return DemoModels(config, data, models, Evaluator(models.classifier, data.test_x, config.seed))


def class_labels(per_class: int) -> np.ndarray:
  """``per_class`` labels of each of the 10 digits, class by class (int32)."""
  return np.repeat(np.arange(10), per_class).astype(np.int32)
