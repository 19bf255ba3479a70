"""jaxdiff.solvers: ODE/SDE solver steps on (alpha, sigma) for VP, VE and flow schedules.

:data:`REGISTRY` maps a name to a :class:`SolverSpec` (label, factory); :func:`make` builds
a solver by name. The demo, the CLI and the bench read only the registry.
"""

import dataclasses
from collections.abc import Callable
from types import MappingProxyType

from jaxdiff._solvers import (
  DDIM,
  DDPM,
  DPMSolverPP2M,
  DPMSolverPP2MSDE,
  DPMSolverPP3M,
  Euler,
  Heun,
  Solver,
  UniPC,
  ddim,
  ddpm,
  dpmpp_2m,
  dpmpp_2m_sde,
  dpmpp_3m,
  euler,
  heun,
  phi,
  unipc,
)


@dataclasses.dataclass(frozen=True)
class SolverSpec:
  """How to build one solver by name: a table label and the factory (``**kwargs -> Solver``)."""

  label: str
  factory: Callable[..., Solver]
  stochastic: bool = False


# One line per solver.
REGISTRY = MappingProxyType(
  {
    "ddim": SolverSpec("DDIM", ddim),
    "ddpm": SolverSpec("DDPM", ddpm, stochastic=True),
    "euler": SolverSpec("Euler", euler),
    "heun": SolverSpec("Heun", heun),
    "dpmpp_2m": SolverSpec("DPM-Solver++(2M)", dpmpp_2m),
    "dpmpp_3m": SolverSpec("DPM-Solver++(3M)", dpmpp_3m),
    "dpmpp_2m_sde": SolverSpec("DPM-Solver++(2M) SDE", dpmpp_2m_sde, stochastic=True),
    "unipc": SolverSpec("UniPC (bh2)", unipc),
  }
)


def make(name: str, **kwargs) -> Solver:
  """Builds the registered solver ``name`` with the factory's keyword arguments.

  Example:
    >>> from jaxdiff import solvers
    >>> solvers.make("unipc", order=3).order
    3
  """
  if name not in REGISTRY:
    raise ValueError(f"unknown solver {name!r}; known: {', '.join(sorted(REGISTRY))}")
  return REGISTRY[name].factory(**kwargs)


__all__ = [
  "REGISTRY",
  "SolverSpec",
  "make",
  "DDIM",
  "DDPM",
  "DPMSolverPP2M",
  "DPMSolverPP2MSDE",
  "DPMSolverPP3M",
  "Euler",
  "Heun",
  "Solver",
  "UniPC",
  "ddim",
  "ddpm",
  "dpmpp_2m",
  "dpmpp_2m_sde",
  "dpmpp_3m",
  "euler",
  "heun",
  "phi",
  "unipc",
]
