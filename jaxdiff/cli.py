"""Command line: ``python -m jaxdiff demo`` and ``python -m jaxdiff sample``.

Examples::

  python -m jaxdiff demo                      # train (or reuse), sample, measure -> out/
  python -m jaxdiff sample --guidance apg --scale 5 --solver dpmpp_2m --steps 10 \\
      --class 3 --out grid.png

Bad arguments print one line ``jaxdiff: error: ...`` to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

_GUIDANCE = ("none", "cfg", "apg", "cfgpp", "adaptive", "pag", "autoguidance", "classifier")
_SOLVERS = ("ddim", "dpmpp_2m", "unipc")


class _OneLineParser(argparse.ArgumentParser):
  """argparse that reports errors as a single line (no usage block) and exits 2."""

  def error(self, message: str):
    self.exit(2, f"jaxdiff: error: {message}\n")


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
  return value


def _digit_class(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a digit class 0-9, got {text!r}") from None
  if not 0 <= value <= 9:
    raise argparse.ArgumentTypeError(f"expected a digit class 0-9, got {value}")
  return value


def _finite_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
  if value != value or value in (float("inf"), float("-inf")):
    raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
  return value


def _png_path(text: str) -> pathlib.Path:
  path = pathlib.Path(text)
  if path.suffix.lower() != ".png":
    raise argparse.ArgumentTypeError(f"--out must name a .png file, got {text!r}")
  return path


def build_parser() -> argparse.ArgumentParser:
  """The ``jaxdiff`` argument parser (sub-commands ``demo`` and ``sample``)."""
  parser = _OneLineParser(
    prog="jaxdiff",
    description="Diffusion guidance and solvers on sklearn's 8x8 digits.",
  )
  sub = parser.add_subparsers(dest="command", metavar="{demo,sample}", parser_class=_OneLineParser)
  sub.required = True
  cache_help = (
    "directory of the trained-model checkpoints (default: $JAXDIFF_CACHE_DIR or "
    ".cache/jaxdiff-demo); a second run reuses them, an interrupted run resumes"
  )
  small_help = "tiny models and sample counts (smoke test); same as JAXDIFF_DEMO_SMALL=1"

  demo = sub.add_parser(
    "demo",
    help="train, sample a grid of guidance rules x solvers, measure, write a report",
    description=(
      "Trains a class-conditional denoiser, a weak denoiser and a classifier on the "
      "digits (or restores them from the cache), samples every guidance rule with DDIM, "
      "DPM-Solver++(2M) and UniPC at a fixed evaluation budget, and writes report.md, "
      "metrics.json and PNG figures."
    ),
  )
  demo.add_argument(
    "--out",
    type=pathlib.Path,
    default=pathlib.Path("out"),
    help="output directory for the report and figures (default: out)",
  )
  demo.add_argument("--cache-dir", type=pathlib.Path, default=None, help=cache_help)
  demo.add_argument("--small", action="store_true", help=small_help)
  demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")

  smp = sub.add_parser(
    "sample",
    help="sample a grid of one digit class with one guidance rule and solver",
    description=(
      "Samples digits of one class from the cached demo model (training it first if the "
      "cache is empty) and saves them as a PNG grid."
    ),
  )
  smp.add_argument(
    "--guidance", choices=_GUIDANCE, default="cfg", help="guidance rule (default: cfg)"
  )
  smp.add_argument(
    "--scale",
    type=_finite_float,
    default=3.0,
    help="guidance scale in the rule's convention: w for cfg/apg/adaptive/"
    "autoguidance (1 = none), s for pag and classifier, lambda in [0, 1] for "
    "cfgpp (default: 3)",
  )
  smp.add_argument(
    "--solver", choices=_SOLVERS, default="dpmpp_2m", help="sampler (default: dpmpp_2m)"
  )
  smp.add_argument(
    "--steps", type=_positive_int, default=10, help="number of solver steps (default: 10)"
  )
  smp.add_argument(
    "--class",
    dest="digit",
    type=_digit_class,
    default=None,
    help="digit class 0-9 to sample (default: one row per class)",
  )
  smp.add_argument("--num", type=_positive_int, default=16, help="samples per class (default: 16)")
  smp.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
  smp.add_argument(
    "--out",
    type=_png_path,
    default=pathlib.Path("grid.png"),
    help="output PNG path (default: grid.png)",
  )
  smp.add_argument("--cache-dir", type=pathlib.Path, default=None, help=cache_help)
  smp.add_argument("--small", action="store_true", help=small_help)
  smp.add_argument("--no-progress", action="store_true", help="hide the progress bars")
  return parser


def _use_compilation_cache(cache_dir) -> None:
  """Persists XLA executables next to the checkpoints: a second run skips compilation."""
  import jax

  from jaxdiff._demo import default_cache_dir

  root = default_cache_dir() if cache_dir is None else cache_dir
  jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(root).absolute() / "xla"))


def _config(args):
  from jaxdiff._demo import DemoConfig

  return DemoConfig.small() if args.small else DemoConfig.from_env()


def _cmd_demo(args) -> int:
  from jaxdiff._demo import run_demo

  run_demo(_config(args), out_dir=args.out, cache_dir=args.cache_dir, progress=not args.no_progress)
  return 0


def _cmd_sample(args) -> int:
  import numpy as np

  from jaxdiff._demo import default_cache_dir, prepare_models, sample_digits
  from jaxdiff.models import load_digits

  if args.guidance == "cfgpp" and not 0.0 <= args.scale <= 1.0:
    raise _UsageError(f"--scale for cfgpp is lambda in [0, 1], got {args.scale:g}")
  if args.guidance in ("pag", "classifier") and args.scale < 0:
    raise _UsageError(f"--scale for {args.guidance} must be >= 0, got {args.scale:g}")
  config = _config(args)
  cache = default_cache_dir() if args.cache_dir is None else args.cache_dir
  models = prepare_models(
    config, load_digits(seed=config.seed), cache, progress=not args.no_progress
  )
  classes = [args.digit] if args.digit is not None else list(range(10))
  labels = np.repeat(np.asarray(classes, np.int32), args.num)
  x, nfe = sample_digits(
    models,
    guidance=args.guidance,
    scale=args.scale,
    solver=args.solver,
    steps=args.steps,
    labels=labels,
    seed=args.seed,
    compiler_options=config.compiler_options,
  )
  _save_grid(args.out, np.clip(x, -1.0, 1.0), len(classes), args.num)
  print(f"wrote {args.out} ({len(labels)} samples, {nfe} network evaluations per sample)")
  return 0


def _save_grid(path: pathlib.Path, x, rows: int, cols: int) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  pad = 1
  canvas = np.full((rows * 9 + pad, cols * 9 + pad), -1.0)
  for i, img in enumerate(x):
    r, c = divmod(i, cols)
    canvas[pad + 9 * r : pad + 9 * r + 8, pad + 9 * c : pad + 9 * c + 8] = img
  path.parent.mkdir(parents=True, exist_ok=True)
  plt.imsave(path, np.kron(canvas, np.ones((8, 8))), cmap="gray_r", vmin=-1, vmax=1)


class _UsageError(Exception):
  """A bad argument combination found after parsing (reported like a parse error)."""


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point; returns the process exit status."""
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.small:
    os.environ["JAXDIFF_DEMO_SMALL"] = "1"
  try:
    _use_compilation_cache(args.cache_dir)
    if args.command == "demo":
      return _cmd_demo(args)
    return _cmd_sample(args)
  except _UsageError as e:
    print(f"jaxdiff: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("jaxdiff: interrupted (checkpoints kept; rerun to resume)", file=sys.stderr)
    return 130
