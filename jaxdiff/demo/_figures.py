"""The demo's figures, drawn with matplotlib's object-oriented API (no backend selection,
no global pyplot state): sample grids, training curves, metrics vs scale, the spectrum.

matplotlib is the ``demo`` extra's: it is imported when a figure is drawn, so importing
this module (and ``jaxdiff.demo``) works without it."""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

import numpy as np

from jaxdiff._validation import import_extra
from optim import curvature

if TYPE_CHECKING:
  from matplotlib.figure import Figure

__all__ = [
  "plot_eigenvectors",
  "plot_hessian",
  "plot_sweep",
  "plot_training",
  "save_columns",
  "save_grid",
  "save_panels",
  "tile",
]

_DPI = 110
_CALLER = "jaxdiff.demo (its figures)"


def _figure(**kwargs) -> Figure:
  """A new ``matplotlib.figure.Figure`` (matplotlib imported on first use)."""
  return import_extra("matplotlib.figure", caller=_CALLER).Figure(**kwargs)


def tile(x: np.ndarray, labels: np.ndarray, rows: int) -> np.ndarray:
  """Images ``(N, S, S)`` -> one array with a column per class and ``rows`` per class.

  Example:
    >>> tile(np.zeros((4, 8, 8)), np.array([0, 0, 1, 1]), 2).shape
    (19, 19)
    >>> tile(np.zeros((4, 16, 16)), np.array([0, 0, 1, 1]), 2).shape
    (35, 35)
  """
  classes = np.unique(labels)
  pad, s = 1, x.shape[1]
  canvas = np.full((rows * (s + pad) + pad, len(classes) * (s + pad) + pad), -1.0)
  for ci, c in enumerate(classes):
    imgs = x[labels == c][:rows]
    for r, img in enumerate(imgs):
      top, left = pad + r * (s + pad), pad + ci * (s + pad)
      canvas[top : top + s, left : left + s] = img
  return canvas


def save_grid(path: str | pathlib.Path, x: np.ndarray, rows: int, cols: int) -> None:
  """Saves images ``(rows * cols, 8, 8)`` in ``[-1, 1]`` as one PNG, each pixel 8x8."""
  pad = 1
  canvas = np.full((rows * 9 + pad, cols * 9 + pad), -1.0)
  for i, img in enumerate(x):
    r, c = divmod(i, cols)
    canvas[pad + 9 * r : pad + 9 * r + 8, pad + 9 * c : pad + 9 * c + 8] = img
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  imsave = import_extra("matplotlib.image", caller=_CALLER).imsave
  imsave(path, np.kron(canvas, np.ones((8, 8))), cmap="gray_r", vmin=-1, vmax=1)


def _save(fig: Figure, path) -> None:
  fig.tight_layout()
  fig.savefig(path, dpi=_DPI)


def save_panels(path, panels: list[tuple[str, np.ndarray]], labels: np.ndarray, rows: int, title):
  """Titled sample grids (:func:`tile`), four to a row, in one PNG."""
  cols = min(4, len(panels))
  nrows = -(-len(panels) // cols)
  fig = _figure(figsize=(3.6 * cols, 3.0 * nrows + 0.4))
  axes = fig.subplots(nrows, cols, squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, (name, x) in zip(axes.flat, panels):
    ax.imshow(tile(np.clip(x, -1, 1), labels, rows), cmap="gray_r", vmin=-1, vmax=1)
    ax.set_title(name, fontsize=9)
  fig.suptitle(title, fontsize=11)
  _save(fig, path)


def plot_training(path, losses: dict[str, np.ndarray]):
  """One log-scale loss curve per model, with a moving mean."""
  fig = _figure(figsize=(4.2 * len(losses), 3.2))
  axes = fig.subplots(1, len(losses))
  for ax, (name, curve) in zip(np.atleast_1d(axes), losses.items()):
    steps = np.arange(1, len(curve) + 1)
    ax.plot(steps, curve, lw=0.5, alpha=0.35, color="C0")
    if len(curve) >= 20:
      w = max(5, len(curve) // 50)
      smooth = np.convolve(curve, np.ones(w) / w, mode="valid")
      ax.plot(steps[w - 1 :], smooth, lw=1.5, color="C0", label=f"moving mean ({w})")
      ax.legend(fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(f"{name} training loss", fontsize=10)
  _save(fig, path)


def plot_sweep(path, sweep: list[dict], labels: dict[str, str], solver_label: str):
  """Accuracy, FD and saturation vs ``w``, one line per rule (``labels``: rule -> label)."""
  keys = [
    ("accuracy", "class accuracy"),
    ("fd", "Frechet distance (clf features)"),
    ("saturation", "saturation (mean excess beyond [-1, 1])"),
  ]
  fig = _figure(figsize=(14, 3.8))
  axes = fig.subplots(1, 3)
  rules = list(dict.fromkeys(r["rule"] for r in sweep))
  for ax, (k, label) in zip(axes, keys):
    for i, rule in enumerate(rules):
      rows = sorted((r for r in sweep if r["rule"] == rule), key=lambda r: r["w"])
      ax.plot([r["w"] for r in rows], [r[k] for r in rows], "o-", color=f"C{i}", label=labels[rule])
    ax.set_xlabel("guidance scale w (CFG convention; PAG: w = 1 + s)")
    ax.set_title(label, fontsize=10)
    if k == "fd":
      ax.set_yscale("log")
  axes[0].legend(fontsize=8)
  fig.suptitle(f"metrics vs guidance scale ({solver_label})", fontsize=11)
  _save(fig, path)


def plot_hessian(path, density, eigenvalues: np.ndarray, num_params: int, slq_iters: int):
  """The SLQ density on a log axis with the top eigenvalues as vertical lines."""
  fig = _figure(figsize=(6, 3.8))
  ax = fig.subplots()
  curvature.plot_density(density, ax, label=f"SLQ ({slq_iters} Lanczos steps)")
  for i, e in enumerate(eigenvalues):
    ax.axvline(e, color="C3", lw=0.6, alpha=0.6, label="top eigenvalues" if i == 0 else None)
  ax.set_xlabel("eigenvalue")
  ax.set_ylabel("density (log)")
  ax.set_title(f"Hessian spectrum of the digit classifier ({num_params} params)", fontsize=10)
  ax.legend(fontsize=8)
  _save(fig, path)


def save_columns(path, grids: dict[str, dict[str, np.ndarray]], rows: int = 6) -> None:
  """One block per entry of ``grids`` (a problem), one titled column of ``rows`` images
  ``(8, 8)`` per method (the first block's column names, in order)."""
  names = list(next(iter(grids.values())))
  fig = _figure(figsize=(1.3 * len(names), 1.35 * rows * len(grids) + 0.6))
  axes = fig.subplots(len(grids), len(names), squeeze=False)
  for r, (pname, panels) in enumerate(grids.items()):
    for c, name in enumerate(names):
      canvas = np.full((rows * 9 + 1, 9), -1.0)
      for i, img in enumerate(np.clip(panels[name][:rows], -1, 1)):
        canvas[1 + 9 * i : 9 + 9 * i, :8] = img
      ax = axes[r, c]
      ax.imshow(canvas, cmap="gray_r", vmin=-1, vmax=1)
      ax.axis("off")
      ax.set_title(name if r == 0 else "", fontsize=6)
    axes[r, 0].text(-3, rows * 4.5, pname, rotation=90, va="center", ha="right", fontsize=7)
  fig.savefig(path, dpi=130, bbox_inches="tight")


def plot_eigenvectors(path, levels: list[dict], shown: int, title: str) -> None:
  """One row per noise level: the noisy input, the denoised image and the ``shown``
  leading Jacobian eigenvectors (signed, each scaled to its largest magnitude) with their
  eigenvalues; ``levels`` as :func:`jaxdiff.demo._highres.jacobian_eigenvectors` returns."""
  cols = 2 + shown
  fig = _figure(figsize=(1.25 * cols, 1.45 * len(levels) + 0.5))
  axes = fig.subplots(len(levels), cols, squeeze=False)
  for r, lv in enumerate(levels):
    panels = [(f"noisy, sigma={lv['sigma']:g}", lv["noisy"], "gray_r", 1.0)]
    panels.append(("denoised", lv["denoised"], "gray_r", 1.0))
    for k in range(shown):
      v = lv["eigenvectors"][k]
      m = float(np.max(np.abs(v))) or 1.0
      panels.append((f"e{k + 1}: {lv['eigenvalues'][k]:.2f}", v / m, "RdBu_r", 1.0))
    for ax, (name, img, cmap, lim) in zip(axes[r], panels):
      ax.imshow(np.clip(img, -lim, lim), cmap=cmap, vmin=-lim, vmax=lim)
      ax.set_title(name, fontsize=6)
      ax.axis("off")
  fig.suptitle(title, fontsize=9)
  fig.savefig(path, dpi=130, bbox_inches="tight")
