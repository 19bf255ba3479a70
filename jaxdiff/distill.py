"""jaxdiff.distill: few-step generators trained from a diffusion model or from data.

Consistency training, distribution-matching distillation (reverse-KL and f-divergence
DMD, decoupled DMD), data-free consistency distillation from the teacher's own
trajectories, and guidance distillation into adapters, each as pure losses over
``(params, batch, key)`` that plug into :func:`jaxdiff.models.train` or any nnx/optax
step. Implementation in :mod:`jaxdiff._distill` (one module per method family).
"""

__all__: list[str] = []
