"""Diffusion ODE/SDE solver steps written on (alpha, sigma), shared by VP, VE and flow.

One solver family per module, as diffrax does: ``_base`` (the interface and the shared
numerics, see its docstring), ``_ddim`` (DDIM, DDPM), ``_euler`` (Euler, Heun), ``_dpmpp``
(DPM-Solver++ 2M, 3M, 2M-SDE), ``_unipc`` (UniPC) and ``_usf`` (USF, per-step decisions
as data). :mod:`jaxdiff.solvers` re-exports the public names and lists every solver in its
``REGISTRY`` (all but USF, whose schedule fixes the number of steps): adding a solver is one
module here plus its import and one registry line there.
"""
