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

# Options whose value may be a negative number that argparse would take for an option
# ("-inf", "-1e3"): ``--scale -inf`` is rewritten to ``--scale=-inf`` before parsing.
_NUMBER_OPTIONS = ("--scale",)


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


def _join_number_values(argv: Sequence[str]) -> list[str]:
  """``[..., "--scale", "-inf", ...]`` -> ``[..., "--scale=-inf", ...]`` (see _NUMBER_OPTIONS)."""
  out: list[str] = []
  it = iter(argv)
  for tok in it:
    out.append(tok)
    if tok in _NUMBER_OPTIONS:
      value = next(it, None)
      if value is None:
        break
      try:
        float(value)
      except ValueError:
        out.append(value)
      else:
        out[-1] = f"{tok}={value}"
  return out


def _unwritable(path: pathlib.Path, *, directory: bool) -> str | None:
  """Why ``path`` (an output directory or file) cannot be written, or None if it can."""
  if not directory and path.is_dir():
    return "it is a directory"
  if path.exists() and not os.access(path, os.W_OK):
    return "permission denied"
  parent = path if directory else path.parent
  parent = parent.absolute()
  while not parent.exists():  # the nearest existing ancestor is where mkdir would start
    parent = parent.parent
  if not parent.is_dir():
    return f"{parent} is not a directory"
  if not os.access(parent, os.W_OK | os.X_OK):
    return f"{parent} is not writable"
  return None


def build_parser() -> argparse.ArgumentParser:
  """The ``jaxdiff`` argument parser (sub-commands ``demo`` and ``sample``).

  The ``--guidance`` and ``--solver`` choices are the registries' names
  (:data:`jaxdiff.guidance.REGISTRY`, :data:`jaxdiff.solvers.REGISTRY`), read when the
  parser is built, plus ``"none"`` (no guidance).
  """
  from jaxdiff import solvers
  from jaxdiff.demo import demo_rules

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
      "digits (or restores them from the cache), samples every registered guidance rule "
      "with the demo's solvers at a fixed evaluation budget, and writes report.md, "
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
    "--guidance",
    choices=demo_rules(),
    default="cfg",
    help="guidance rule, 'none' for plain conditional sampling (default: cfg)",
  )
  smp.add_argument(
    "--scale",
    type=_finite_float,
    default=None,
    help="guidance scale in the rule's own convention (CFG's w: 1 = none; PAG's s: "
    "0 = none; CFG++'s lambda in [0, 1]; see the rule's docstring); default: the demo's "
    "scale for the rule (cfg: 3)",
  )
  smp.add_argument(
    "--solver",
    choices=tuple(solvers.REGISTRY),
    default="dpmpp_2m",
    help="sampler (default: dpmpp_2m)",
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

  from jaxdiff.demo import default_cache_dir

  root = default_cache_dir() if cache_dir is None else cache_dir
  jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(root).absolute() / "xla"))


def _config(args):
  from jaxdiff.demo import DemoConfig

  return DemoConfig.small() if args.small else DemoConfig.from_env()


def _cmd_demo(args) -> int:
  from jaxdiff.demo import run_demo

  run_demo(_config(args), out_dir=args.out, cache_dir=args.cache_dir, progress=not args.no_progress)
  return 0


def _cmd_sample(args) -> int:
  import numpy as np

  from jaxdiff.demo import default_cache_dir, prepare_models, sample_digits
  from jaxdiff.demo._figures import save_grid
  from jaxdiff.models import load_digits

  config = _config(args)
  scale = config.scale_of(args.guidance) if args.scale is None else args.scale
  _check_rule(args.guidance, scale, config)
  cache = default_cache_dir() if args.cache_dir is None else args.cache_dir
  models = prepare_models(
    config, load_digits(key=config.seed), cache, progress=not args.no_progress
  )
  classes = [args.digit] if args.digit is not None else list(range(10))
  labels = np.repeat(np.asarray(classes, np.int32), args.num)
  x, nfe = sample_digits(
    models,
    guidance=args.guidance,
    scale=scale,
    solver=args.solver,
    steps=args.steps,
    labels=labels,
    key=args.seed,
    config=config,
  )
  save_grid(args.out, np.clip(x, -1.0, 1.0), len(classes), args.num)
  print(f"wrote {args.out} ({len(labels)} samples, {nfe} network evaluations per sample)")
  return 0


def _check_rule(name: str, scale: float, config) -> None:
  """Builds the rule once with stand-in networks, so its factory rejects a bad ``--scale``
  (or hyperparameter) before any model is trained or loaded."""
  from jaxdiff.demo import make_rule

  stand_in = lambda x, *args, **kwargs: x  # noqa: E731
  try:
    make_rule(
      name, scale, weak_denoise=stand_in, classifier_fn=stand_in, **config.rule_kwargs.get(name, {})
    )
  except (TypeError, ValueError) as e:
    raise _UsageError(f"--scale {scale:g} does not suit --guidance {name}: {e}") from None


class _UsageError(Exception):
  """A bad argument combination found after parsing (reported like a parse error)."""


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point; returns the process exit status."""
  parser = build_parser()
  argv = sys.argv[1:] if argv is None else argv
  args = parser.parse_args(_join_number_values(argv))
  reason = _unwritable(args.out, directory=args.command == "demo")
  if reason is not None:
    parser.error(f"argument --out: cannot write {args.out}: {reason}")
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
