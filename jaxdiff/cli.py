"""Command line: ``python -m jaxdiff demo`` and ``python -m jaxdiff sample``.

Examples::

  python -m jaxdiff demo                      # train (or reuse), sample, measure -> out/
  python -m jaxdiff sample --guidance apg --scale 5 --solver dpmpp_2m --steps 10 \\
      --class 3 --out grid.png

Bad arguments (and bad ``JAXDIFF_DEMO_SMALL`` / ``JAXDIFF_CACHE_DIR`` values) print one
line ``jaxdiff: error: ...`` to stderr and exit with status 2, before any model is loaded or
trained: the option values, the scale against the rule's own factory, and that ``--out``
and the cache directory can be written (by creating and removing them). A failure while
working (a full disk, a non-finite sample) is one line too, with status 1.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys
import tempfile
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

# Options whose value may be a negative number that argparse would take for an option
# ("-inf", "-1e3"): ``--scale -inf`` is rewritten to ``--scale=-inf`` before parsing.
_NUMBER_OPTIONS = ("--scale",)


class _OneLineParser(argparse.ArgumentParser):
  """argparse that reports errors as a single line (no usage block) and exits 2."""

  def error(self, message: str):
    self.exit(2, f"jaxdiff: error: {message}\n")


# Upper bounds: a typo ("--steps 10000000000") is an error, not a MemoryError after
# training. 1000 steps is DDPM's full chain; 100 samples per class is a 7200-pixel-wide grid.
_MAX_STEPS = 1000
_MAX_NUM = 100
# Seeds beyond 32 bits alias smaller ones (jax.random.key keeps the low 32 bits without x64).
_MAX_SEED = 2**32 - 1


def _int_option(lo: int, hi: int, expected: str):
  """An argparse ``type``: an integer in ``[lo, hi]``, else ``expected ..., got ...``."""

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not lo <= value <= hi:
      raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value

  return parse


_steps = _int_option(1, _MAX_STEPS, f"a positive integer at most {_MAX_STEPS}")
_num = _int_option(1, _MAX_NUM, f"a positive integer at most {_MAX_NUM}")
_digit_class = _int_option(0, 9, "a digit class 0-9")
_seed = _int_option(0, _MAX_SEED, f"an integer seed in [0, {_MAX_SEED}]")
_FLOAT32_MAX = 3.4028234663852886e38


def _finite_float(text: str) -> float:
  """A number that stays finite in float32 (the sampler's dtype): 1e39 would become inf."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
  if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
    raise argparse.ArgumentTypeError(f"expected a finite number (float32 range), got {text!r}")
  return value


def _path(text: str) -> pathlib.Path:
  if not text:
    raise argparse.ArgumentTypeError("expected a path, got ''")
  if "\x00" in text:
    raise argparse.ArgumentTypeError(f"expected a path, got {text!r} (NUL character)")
  return pathlib.Path(text)


def _png_path(text: str) -> pathlib.Path:
  path = _path(text)
  if path.suffix.lower() != ".png":
    raise argparse.ArgumentTypeError(f"expected a .png file name, got {text!r}")
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
  """Why ``path`` (an output directory or file) cannot be written, or None if it can.

  Probes by doing it: creates the missing directories and the file (or a temporary file in
  an existing directory), then removes what it created. Permission bits alone would not
  do (root ignores them; a read-only mount or a too-long name does not show in them).
  """
  try:
    return _probe(path.absolute(), directory)
  except (OSError, ValueError) as e:
    return getattr(e, "strerror", None) or str(e)


def _probe(path: pathlib.Path, directory: bool) -> str | None:
  if not directory and path.is_dir():
    return "it is a directory"
  missing = []  # the directories mkdir(parents=True) would create, innermost first
  folder = path if directory else path.parent
  while not folder.exists():
    missing.append(folder)
    folder = folder.parent
  if not folder.is_dir():
    return f"{folder} is not a directory"
  created = []
  try:
    for d in reversed(missing):
      d.mkdir()
      created.append(d)
    if directory:
      tempfile.TemporaryFile(dir=path).close()
    elif path.exists():
      open(path, "ab").close()  # appends nothing: the file is left as it is
    else:
      os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
      path.unlink()
  finally:
    for d in reversed(created):
      d.rmdir()
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
    type=_path,
    default=pathlib.Path("out"),
    help="output directory for the report and figures (default: out)",
  )
  demo.add_argument("--cache-dir", type=_path, default=None, help=cache_help)
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
    "scale for the rule (cfg: 3); not with --guidance none",
  )
  smp.add_argument(
    "--solver",
    choices=tuple(solvers.REGISTRY),
    default="dpmpp_2m",
    help="sampler (default: dpmpp_2m)",
  )
  smp.add_argument(
    "--steps",
    type=_steps,
    default=10,
    help=f"number of solver steps, 1-{_MAX_STEPS} (default: 10)",
  )
  smp.add_argument(
    "--class",
    dest="digit",
    type=_digit_class,
    default=None,
    help="digit class 0-9 to sample (default: one row per class)",
  )
  smp.add_argument(
    "--num", type=_num, default=16, help=f"samples per class, 1-{_MAX_NUM} (default: 16)"
  )
  smp.add_argument("--seed", type=_seed, default=0, help=f"random seed, 0-{_MAX_SEED} (default: 0)")
  smp.add_argument(
    "--out",
    type=_png_path,
    default=pathlib.Path("grid.png"),
    help="output PNG path (default: grid.png)",
  )
  smp.add_argument("--cache-dir", type=_path, default=None, help=cache_help)
  smp.add_argument("--small", action="store_true", help=small_help)
  smp.add_argument("--no-progress", action="store_true", help="hide the progress bars")
  return parser


def _use_compilation_cache(cache: pathlib.Path) -> None:
  """Persists XLA executables next to the checkpoints: a second run skips compilation."""
  import jax

  jax.config.update("jax_compilation_cache_dir", str(cache.absolute() / "xla"))


class _UsageError(Exception):
  """A bad argument, combination or environment variable found after parsing (exit 2)."""


def _check(args) -> tuple[object, pathlib.Path]:
  """Every check that needs more than one option: returns ``(config, cache directory)``.

  Raises :class:`_UsageError` naming the option (or environment variable) at fault.
  """
  from jaxdiff.demo import NO_GUIDANCE, DemoConfig, check_rule, default_cache_dir

  try:
    config = DemoConfig.small() if args.small else DemoConfig.from_env()
  except ValueError as e:  # JAXDIFF_DEMO_SMALL
    raise _UsageError(str(e)) from None
  if args.command == "sample":
    if args.guidance == NO_GUIDANCE and args.scale is not None:
      raise _UsageError(f"argument --scale: --guidance {NO_GUIDANCE} takes no scale")
    if args.scale is None:
      args.scale = config.scale_of(args.guidance)
    elif args.guidance != NO_GUIDANCE:
      try:
        check_rule(args.guidance, args.scale, **config.rule_kwargs.get(args.guidance, {}))
      except (TypeError, ValueError) as e:
        raise _UsageError(
          f"argument --scale: {args.scale:g} does not suit --guidance {args.guidance}: {e}"
        ) from None
  reason = _unwritable(args.out, directory=args.command == "demo")
  if reason is not None:
    raise _UsageError(f"argument --out: cannot write {args.out}: {reason}")
  if args.cache_dir is not None:
    cache, option = args.cache_dir, "argument --cache-dir"
  else:
    cache, option = default_cache_dir(), "JAXDIFF_CACHE_DIR (the default cache directory)"
  reason = _unwritable(cache, directory=True)
  if reason is not None:
    raise _UsageError(f"{option}: cannot write {cache}: {reason}")
  return config, cache


def _cmd_demo(args, config, cache) -> int:
  from jaxdiff.demo import run_demo

  run_demo(config, out_dir=args.out, cache_dir=cache, progress=not args.no_progress)
  return 0


def _cmd_sample(args, config, cache) -> int:
  import numpy as np

  from jaxdiff.demo import prepare_models, sample_digits
  from jaxdiff.demo._figures import save_grid
  from jaxdiff.models import load_digits

  models = prepare_models(
    config, load_digits(key=config.seed), cache, progress=not args.no_progress
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
    key=args.seed,
    config=config,
  )
  bad = int(np.sum(~np.isfinite(x).reshape(len(x), -1).all(axis=1)))
  if bad:  # never a grid of NaN pixels saved as if it were samples
    raise _RuntimeFailure(
      f"{bad} of {len(x)} samples are not finite (NaN/inf); nothing written to {args.out}; "
      "try a smaller --scale"
    )
  save_grid(args.out, np.clip(x, -1.0, 1.0), len(classes), args.num)
  print(f"wrote {args.out} ({len(labels)} samples, {nfe} network evaluations per sample)")
  return 0


class _RuntimeFailure(Exception):
  """A failure after the checks, reported as one line (exit 1)."""


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point; returns the process exit status (never raises ``SystemExit``).

  0: done (or ``--help``); 2: a bad invocation, found before any work, one line
  ``jaxdiff: error: ...`` on stderr; 1: a failure while working (disk full, a non-finite
  sample, ...), one line too, unless ``JAXDIFF_TRACEBACK=1`` asks for the traceback;
  130: interrupted.
  """
  parser = build_parser()
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    args = parser.parse_args(_join_number_values(argv))
  except SystemExit as e:  # argparse: --help (0) or a one-line error (2)
    return e.code if isinstance(e.code, int) else 2
  try:
    config, cache = _check(args)
  except _UsageError as e:
    print(f"jaxdiff: error: {e}", file=sys.stderr)
    return 2
  try:
    _use_compilation_cache(cache)
    if args.command == "demo":
      return _cmd_demo(args, config, cache)
    return _cmd_sample(args, config, cache)
  except KeyboardInterrupt:
    print("jaxdiff: interrupted (checkpoints kept; rerun to resume)", file=sys.stderr)
    return 130
  except Exception as e:  # noqa: BLE001 - the CLI's promise: one line, not a traceback
    if os.environ.get("JAXDIFF_TRACEBACK") == "1":
      raise
    kind = "" if isinstance(e, (OSError, _RuntimeFailure)) else f"{type(e).__name__}: "
    hint = "" if isinstance(e, _RuntimeFailure) else " (JAXDIFF_TRACEBACK=1 shows the traceback)"
    print(f"jaxdiff: error: {kind}{_first_line(e)}{hint}", file=sys.stderr)
    return 1
