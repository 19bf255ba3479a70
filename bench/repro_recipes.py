"""Studies of the training recipes, one subcommand per method.

Items 1-4 live in ``bench/_recipes_part1.py`` (regime adaptation and ghost batch norm,
multi-sample dropout, PS-KD, MaskSparsity), items 5-8 in ``bench/_recipes_part2.py`` when it
exists; each module exports ``STUDIES`` (name -> ``study(quick) -> dict``). Every study
prints its table and merges its result into ``bench/results/repro_recipes.json`` (the other
studies' entries are kept).

Usage: ``.venv/bin/python bench/repro_recipes.py <study> [<study> ...] [--quick]``, or
``all``; ``--list`` prints the studies. ``--quick`` runs tiny budgets and writes to the
temporary directory instead of ``bench/results``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _timing import output_path  # noqa: E402


def _studies() -> dict:
  studies = {}
  for name in ("_recipes_part1", "_recipes_part2"):
    try:
      module = importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name != name:
        raise
      continue
    studies.update(module.STUDIES)
  return studies


def main(argv=None) -> None:
  studies = _studies()
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("study", nargs="*", help=f"'all' or some of: {', '.join(studies)}")
  ap.add_argument("--quick", action="store_true", help="tiny budgets (smoke test)")
  ap.add_argument("--list", action="store_true", help="list the studies and exit")
  args = ap.parse_args(argv)
  if args.list or not args.study:
    print("\n".join(studies))
    return
  names = list(studies) if args.study == ["all"] else args.study
  unknown = [n for n in names if n not in studies]
  if unknown:
    ap.error(f"unknown study {', '.join(unknown)}; choose from {', '.join(studies)}")
  path = output_path("repro_recipes.json", args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  for name in names:
    print(f"== {name}", flush=True)
    t0 = time.perf_counter()
    result = studies[name](args.quick)
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged[name] = result
    path.write_text(json.dumps(merged, indent=1, default=float) + "\n")
    print(f"== {name}: {result['wall_seconds']} s -> {path}", flush=True)


if __name__ == "__main__":
  main()
