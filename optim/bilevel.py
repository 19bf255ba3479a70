"""optim.bilevel: bilevel optimization, min_x f(x, y*(x)) with y*(x) = argmin_y g(x, y).

:func:`implicit_hypergradient` is the matrix-free implicit-differentiation hypergradient
(conjugate gradients on Hessian-vector products, :func:`optim.curvature.conjugate_gradient`)
that the bilevel methods here share. The methods, each an ``*_init`` / ``*_step`` pair with
its ``...State`` where it is a stochastic step, and a runner returning an ott-style
``...Result`` (``converged``, ``n_iters``, ``errors``):

* :func:`borep` (BO-REP: normalized momentum for an upper level with unbounded smoothness,
  periodic lower-level updates);
* :func:`bsvrb` (BSVRB v1/v2: many lower-level blocks, block sampling, variance reduction;
  the block axis can be sharded over a mesh);
* :func:`maid` (MAID: adaptive accuracies of the lower-level and adjoint solves, inexact
  backtracking);
* :func:`lvhba` (LV-HBA: lower-level constraints coupling both levels, a proximal Lagrangian
  value function, single loop, Hessian-free).
"""

from optim._bilevel._blockwise import BSVRBResult, BSVRBState, bsvrb, bsvrb_init, bsvrb_step
from optim._bilevel._borep import BOREPResult, BOREPState, borep, borep_init, borep_step
from optim._bilevel._hypergrad import HypergradResult, implicit_hypergradient
from optim._bilevel._lvhba import LVHBAResult, LVHBAState, lvhba, lvhba_init, lvhba_step
from optim._bilevel._maid import MAIDResult, maid

__all__ = [
  "BOREPResult",
  "BSVRBResult",
  "BSVRBState",
  "BOREPState",
  "borep",
  "borep_init",
  "borep_step",
  "bsvrb",
  "bsvrb_init",
  "bsvrb_step",
  "HypergradResult",
  "LVHBAResult",
  "LVHBAState",
  "MAIDResult",
  "implicit_hypergradient",
  "lvhba",
  "lvhba_init",
  "lvhba_step",
  "maid",
]
