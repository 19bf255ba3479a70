"""optim.xla: compiler settings under which this library's steps run at their measured speed.

A library cannot set process-wide XLA flags for its users, and a flag set after JAX has
started is ignored. XLA takes the same settings per computation, through
``jax.jit(..., compiler_options=...)``: :func:`compiler_options` returns the ones that the
optimizers here are measured with, for the backend in use, so one ``jit`` gets them and
nothing else in the process changes.
"""

from __future__ import annotations

from typing import Any

import jax

__all__ = ["compiler_options"]

# XLA:CPU's copy insertion, without region analysis, cannot prove that a donated state buffer
# is read (by the step's last fusion) before it is overwritten with a value the step does not
# compute in place, so it first saves the old value to a temporary: one extra read and write
# of the array (diffGrad's ``prev_grad``). Region analysis proves the save unnecessary. It
# only changes which copies are made, never a value.
_CPU = {"xla_cpu_copy_insertion_use_region_analysis": True}


def compiler_options(backend: str | None = None) -> dict[str, Any]:
  r"""The XLA options to pass to ``jax.jit(step, compiler_options=...)`` for this library.

  On CPU: ``{"xla_cpu_copy_insertion_use_region_analysis": True}``. XLA:CPU's copy
  insertion saves a donated state buffer to a temporary before overwriting it whenever a
  later fusion still reads the old value and the new value is a copy of another buffer
  (:func:`optim.diffgrad`'s ``prev_grad`` :math:`\leftarrow g_t`); region analysis proves
  the save unnecessary. On 10M parameters this takes :func:`optim.diffgrad`'s step from
  about 2.3-3.6x ``optax.adam`` to about 1.6x (``bench/bench_optim.py``). On other
  backends: ``{}`` (no option is needed there).

  The options change which buffers XLA copies, never a value: the step's outputs are the
  same bit for bit. They apply to the one computation that is compiled with them, unlike
  ``XLA_FLAGS``, which must be set before JAX starts and changes every computation.

  Args:
    backend: ``"cpu"``, ``"gpu"``, ``"tpu"``...; ``None``: ``jax.default_backend()``.

  Returns:
    A new dict of option names to values (empty where nothing applies).

  Example:
    >>> import jax, jax.numpy as jnp, optax, optim
    >>> import optim.xla
    >>> opt = optim.diffgrad(1e-3)
    >>> def step(p, s, g):
    ...   u, s = opt.update(g, s, p)
    ...   return optax.apply_updates(p, u), s
    >>> step = jax.jit(
    ...   step, donate_argnums=(0, 1), compiler_options=optim.xla.compiler_options()
    ... )
    >>> p = jnp.ones(3)
    >>> p, s = step(p, opt.init(p), jnp.full(3, 0.5))
    >>> p.shape
    (3,)
  """
  backend = jax.default_backend() if backend is None else str(backend)
  return dict(_CPU) if backend == "cpu" else {}
