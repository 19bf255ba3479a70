"""optim.layouts: which axes of a parameter leaf mean what, for the optimizers that ask.

:func:`conv_spatial_axes` reads a Flax convolution kernel ``(*spatial, in, out)``; it is
the default ``spatial_axes`` rule of :func:`optim.adahessian`'s Hessian-diagonal
averaging.
"""

from optim._adahessian import conv_spatial_axes

__all__ = ["conv_spatial_axes"]
