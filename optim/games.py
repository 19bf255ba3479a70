"""optim.games: certified convergence to Nash equilibria of differentiable games.

A game is a list of per-player losses ``f_i(params)`` over a tuple ``params`` with one
pytree per player. :func:`pseudo_gradient` stacks each player's own gradient;
:func:`game_bounds` estimates each player's curvature and the cross-player couplings with
matrix-free Lanczos runs (:mod:`optim.curvature`); :func:`small_gain_certificate` turns
them into the Small-Gain Nash (SGN) certificate (a block metric, a contraction rate and
a safe step size); :func:`nash_flow` runs the projected Euler or RK4 flow it certifies,
with the per-step factor :func:`contraction_factor`.
"""

from optim._games import (
  GameBounds,
  NashFlowResult,
  SmallGainCertificate,
  contraction_factor,
  game_bounds,
  nash_flow,
  pseudo_gradient,
  small_gain_certificate,
)

__all__ = [
  "GameBounds",
  "NashFlowResult",
  "SmallGainCertificate",
  "contraction_factor",
  "game_bounds",
  "nash_flow",
  "pseudo_gradient",
  "small_gain_certificate",
]
