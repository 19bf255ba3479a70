"""jaxdiff.wavelets: the 2-D Haar discrete wavelet transform and its inverse (batch first),
the structure split of DiffuseHigh's guidance (:func:`jaxdiff.guidance.diffusehigh`).
Implementation in :mod:`jaxdiff._wavelets`."""

from jaxdiff._wavelets import HaarCoefficients, haar_dwt, haar_idwt

__all__ = ["HaarCoefficients", "haar_dwt", "haar_idwt"]
