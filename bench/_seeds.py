"""Statistics over seeds shared by the studies: per-metric summaries and paired differences."""

from __future__ import annotations

import numpy as np


def summary(per_seed: dict) -> dict:
  """mean / std over seeds of each metric, and the per-seed values."""
  out = {}
  for k, v in per_seed.items():
    v = np.asarray(v, np.float64)
    out[k] = {
      "mean": float(v.mean()),
      "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
      "seeds": v.tolist(),
    }
  return out


def paired(a, b) -> dict:
  """b - a per seed: mean and standard error (the runs of a seed share data order and init)."""
  d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
  se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
  return {"mean": float(d.mean()), "se": se, "n": int(d.size)}
