"""optim.quant: fake quantization and Hessian-aware mixed-precision bit allocation.

:func:`fake_quant` / :func:`quantize_params` quantize (per tensor or per channel,
symmetric or asymmetric) with a straight-through gradient for quantization-aware training;
:func:`model_size_bits` counts the storage. :func:`layer_sensitivity` gives HAWQ-V2's
per-layer sensitivities (Hutchinson traces of the diagonal Hessian blocks from
:mod:`optim.curvature`) or HAWQ's top-eigenvalue ordering; :func:`interlayer_sensitivity`
the cross-layer terms they leave out; :func:`pareto_bit_allocation` the exact optimum
under a size budget.
"""

from optim.quant._fake import fake_quant, model_size_bits, quantize_params
from optim.quant._hawq import Allocation, Sensitivity, layer_sensitivity, pareto_bit_allocation
from optim.quant._interlayer import interlayer_sensitivity

__all__: list[str] = [
  # Fake quantization and size accounting.
  "fake_quant",
  "model_size_bits",
  "quantize_params",
  # Hessian-aware mixed precision.
  "Allocation",
  "Sensitivity",
  "interlayer_sensitivity",
  "layer_sensitivity",
  "pareto_bit_allocation",
]
