"""The one timing helper of the benchmarks: interleaved rounds, compile excluded, ratios
to a baseline taken round by round.

A shared, noisy machine drifts (another process starts, the clock throttles). Timing A
for a while and then B puts the drift into B / A; timing A and B alternately, round after
round, and taking the median over rounds of the *per-round* ratio B / A cancels it,
because both sides of each ratio saw the same machine. Compilation and the first call are
excluded (warm-up), and every timed call ends in ``jax.block_until_ready``.

    from _timing import compare
    res = compare({"grad": lambda: grad(p, b), "hvp": lambda: hvp(p, v, b)}, baseline="grad")
    res["hvp"].ratio     # median over rounds of t_hvp / t_grad in the same round
    res["hvp"].seconds   # median seconds per call

A callable that must carry state (donated buffers, an optimizer state) is a
:class:`Stateful`: ``step(state) -> state``, timed on its own successive states.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

__all__ = ["Stateful", "Timing", "compare", "output_path", "over_runs", "ratio", "time_once"]


@dataclasses.dataclass
class Stateful:
  """``step(state) -> state`` timed on its own successive states (``state`` is the first)."""

  step: Callable[[Any], Any]
  state: Any


@dataclasses.dataclass(frozen=True)
class Timing:
  """One callable's result of :func:`compare` (seconds are per call)."""

  seconds: float  # median over rounds
  rounds: tuple[float, ...]  # per-round seconds per call
  ratio: float | None  # median over rounds of (this / baseline); None without a baseline
  ratio_min_max: tuple[float, float] | None
  warmup_s: float  # first call(s): compilation and warm-up


def ratio(a: Timing, b: Timing) -> float:
  """Median over rounds of ``a / b`` (both from one :func:`compare` call, same rounds)."""
  return float(np.median(np.asarray(a.rounds) / np.asarray(b.rounds)))


def output_path(name: str, quick: bool) -> pathlib.Path:
  """Where a bench writes its JSON: ``bench/results/<name>`` for a real run; a smoke run
  (``--quick``) writes to the temporary directory so it never replaces measured results."""
  if quick:
    return pathlib.Path(tempfile.gettempdir()) / "jaxdiff-bench-quick" / name
  return pathlib.Path(__file__).resolve().parent / "results" / name


def time_once(fn: Callable[[], Any]) -> tuple[Any, float]:
  """``(fn(), seconds)`` with the result blocked on: for one-off wall times (a whole study)."""
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - t0


def _runner(fn):
  if isinstance(fn, Stateful):

    def run(n: int) -> float:
      state = jax.block_until_ready(fn.state)
      t0 = time.perf_counter()
      for _ in range(n):
        state = fn.step(state)
      jax.block_until_ready(state)
      dt = time.perf_counter() - t0
      fn.state = state
      return dt / n

  else:

    def run(n: int) -> float:
      t0 = time.perf_counter()
      for _ in range(n):
        out = fn()
      jax.block_until_ready(out)
      return (time.perf_counter() - t0) / n

  return run


def compare(
  fns: Mapping[str, Callable[[], Any] | Stateful],
  *,
  baseline: str | None = None,
  rounds: int = 7,
  calls_per_round: int = 1,
  warmup: int = 2,
) -> dict[str, Timing]:
  """Times every callable in interleaved rounds; ratios are medians of per-round ratios.

  Args:
    fns: name -> zero-argument callable (its result is blocked on) or :class:`Stateful`.
    baseline: the name the ratios are taken to (``None``: no ratios).
    rounds: number of rounds; each round times every callable once, in order.
    calls_per_round: calls averaged inside one timing (for calls much shorter than the
      timer's resolution or the dispatch overhead).
    warmup: untimed calls before the rounds (the first compiles).

  Returns:
    name -> :class:`Timing`.
  """
  if baseline is not None and baseline not in fns:
    raise ValueError(f"baseline {baseline!r} is not one of {sorted(fns)}")
  if rounds < 1 or calls_per_round < 1 or warmup < 1:
    raise ValueError("rounds, calls_per_round and warmup must be >= 1")
  runners = {name: _runner(fn) for name, fn in fns.items()}
  warm = {}
  for name, run in runners.items():
    t0 = time.perf_counter()
    for _ in range(warmup):
      run(1)
    warm[name] = time.perf_counter() - t0
  per_round: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(rounds):
    for name, run in runners.items():
      per_round[name].append(run(calls_per_round))
  out = {}
  for name, times in per_round.items():
    r = med = ratio_range = None
    if baseline is not None:
      r = np.asarray(times) / np.asarray(per_round[baseline])
      med, ratio_range = float(np.median(r)), (float(r.min()), float(r.max()))
    out[name] = Timing(float(np.median(times)), tuple(times), med, ratio_range, warm[name])
  return out


def over_runs(
  script: str, n: int, argv: list[str], ratios: Callable[[dict], dict[str, float]]
) -> tuple[dict, dict]:
  """Runs ``script`` ``n`` times, each in a fresh process, and summarizes its ratios.

  One process's allocator, page and cache state biases all of its rounds alike, so the
  rounds inside a run do not average it out; separate processes do. The script is called
  as ``script --runs 1 --json-to FILE *argv`` and must write its result dictionary there;
  ``ratios(result)`` picks the ratios to summarize (row -> ratio).

  Returns:
    ``(last result, {row: {"median": ..., "min_max": [lo, hi], "runs": [...]}})``.
  """
  outs = []
  for _ in range(n):
    with tempfile.TemporaryDirectory() as tmp:
      dest = pathlib.Path(tmp) / "run.json"
      cmd = [sys.executable, script, "--runs", "1", "--json-to", str(dest), *argv]
      subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
      outs.append(json.loads(dest.read_text()))
  per_run = [ratios(o) for o in outs]
  summary = {
    row: {
      "median": float(np.median([r[row] for r in per_run])),
      "min_max": [float(min(r[row] for r in per_run)), float(max(r[row] for r in per_run))],
      "runs": [float(r[row]) for r in per_run],
    }
    for row in per_run[-1]
  }
  return outs[-1], summary
