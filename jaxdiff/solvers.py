"""jaxdiff.solvers: ODE/SDE solver steps on (alpha, sigma) for VP, VE and flow schedules.

:data:`REGISTRY` maps a name to a :class:`SolverSpec` (label, factory); :func:`make` builds
a solver by name. The demo, the CLI and the bench read only the registry.
"""

import dataclasses
import inspect
from collections.abc import Callable
from types import MappingProxyType

from jaxdiff._solvers._base import Solver, phi
from jaxdiff._solvers._ddim import DDIM, DDPM, ddim, ddpm
from jaxdiff._solvers._dpmpp import (
  DPMSolverPP2M,
  DPMSolverPP2MSDE,
  DPMSolverPP3M,
  dpmpp_2m,
  dpmpp_2m_sde,
  dpmpp_3m,
)
from jaxdiff._solvers._euler import Euler, Heun, euler, heun
from jaxdiff._solvers._unipc import UniPC, unipc
from jaxdiff._solvers._usf import USF, StepChoice, usf, usf_steps


@dataclasses.dataclass(frozen=True)
class SolverSpec:
  """How to build one solver by name: a table label and the factory (``**kwargs -> Solver``)."""

  label: str
  factory: Callable[..., Solver]


# One line per solver. USF (`usf`) is not listed: its schedule fixes the number of steps,
# so it cannot be built by name alone for any grid.
REGISTRY = MappingProxyType(
  {
    "ddim": SolverSpec("DDIM", ddim),
    "ddpm": SolverSpec("DDPM", ddpm),
    "euler": SolverSpec("Euler", euler),
    "heun": SolverSpec("Heun", heun),
    "dpmpp_2m": SolverSpec("DPM-Solver++(2M)", dpmpp_2m),
    "dpmpp_3m": SolverSpec("DPM-Solver++(3M)", dpmpp_3m),
    "dpmpp_2m_sde": SolverSpec("DPM-Solver++(2M) SDE", dpmpp_2m_sde),
    "unipc": SolverSpec("UniPC (bh2)", unipc),
  }
)


def make(name: str, **kwargs) -> Solver:
  """Builds the registered solver ``name`` with the factory's keyword arguments.

  An option the solver does not have (``make("dpmpp_2m", diffusers_compat=True)``) is a
  ``TypeError`` that lists the options it has.

  Example:
    >>> from jaxdiff import solvers
    >>> solvers.make("unipc", order=3).order
    3
  """
  if name not in REGISTRY:
    raise ValueError(f"unknown solver {name!r}; known: {', '.join(sorted(REGISTRY))}")
  factory = REGISTRY[name].factory
  accepted = inspect.signature(factory).parameters
  unknown = sorted(set(kwargs) - set(accepted))
  if unknown:
    raise TypeError(
      f"solver {name!r} has no option {', '.join(unknown)}; its options: "
      f"{', '.join(accepted) or 'none'}"
    )
  return factory(**kwargs)


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
  "StepChoice",
  "USF",
  "usf",
  "usf_steps",
]
