"""jaxdiff.noise2score: self-supervised denoising from the score of the noisy density.

Noise2Score (Kim & Ye, NeurIPS 2021): the amortized residual denoising autoencoder loss
(:func:`ardae_loss`) fits a score network on noisy images alone, and Tweedie's formula turns
its output into the denoised image for Gaussian (:func:`tweedie_gaussian`), Poisson
(:func:`tweedie_poisson`) and Gamma (:func:`tweedie_gamma`) noise. Implementation in
:mod:`jaxdiff._noise2score`.
"""

from jaxdiff._noise2score import ardae_loss, tweedie_gamma, tweedie_gaussian, tweedie_poisson

__all__ = ["ardae_loss", "tweedie_gamma", "tweedie_gaussian", "tweedie_poisson"]
