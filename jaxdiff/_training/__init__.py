"""Training-side methods as pure functions, one topic per module.

``_samplers`` (the timestep samplers: uniform, logit-normal, U-shaped, the curriculum),
``_loss`` (the denoising loss and Smooth Diffusion's regularizer) and ``_reflow`` (reflow
pairs). :mod:`jaxdiff.training` re-exports the public names. The weight average that used
to live here is an optax transformation: :func:`optim.weight_ema`.
"""
