"""optim.compander: the weight compander (Cakaj et al.), a reparameterization of weights.

Not an optimizer step: the model uses :func:`compand_weights` of its raw weights in the
forward pass (:func:`nnx_companded` for a flax ``nnx`` module), any optimizer trains the
raw weights, and :func:`expand_weights` inverts the map.
"""

from optim._compander import compand_weights, expand_weights, nnx_companded

__all__ = ["compand_weights", "expand_weights", "nnx_companded"]
