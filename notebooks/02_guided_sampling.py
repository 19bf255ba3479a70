# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Guided sampling: from an exact Gaussian mixture to handwritten digits
#
# In `jaxdiff` a **denoiser** is any `denoise(x, t, cond) -> x0_hat`, a **guidance rule**
# decides which network evaluations a step makes and how to combine them, and a
# **solver** turns the combined prediction into the next state; `jaxdiff.sample` runs the
# whole trajectory in one jitted `lax.scan` and reports the evaluations it made.
#
# 1. On `jaxdiff.testing.GaussianMixture`, whose denoiser is exact, we watch CFG overshoot
#    the class means at a high scale while APG does not.
# 2. On the 8x8 digits we train a small class-conditional transformer and compare rules.
#
# Set `JAXDIFF_NOTEBOOK_SMALL=1` to run at a tiny size (what CI does).

# %%
# Colab: install the library with its `demo` extra (matplotlib, tqdm, scikit-learn) from
# the repository. Pin what you install for results that stay put: a release tag
# (REPO + "@v0.2.0") or a commit (REPO + "@<sha>"). From a local clone, install it with
# `%pip install -q -e "..[demo]"` instead. (Run as a script, the %pip line is a comment.)
REPO = "git+https://github.com/optim-jaxdiff/optim-jaxdiff"
# %pip install -q "optim-jaxdiff[demo] @ {REPO}"

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import jaxdiff
import jaxdiff.demo
import optim
from jaxdiff import guidance, metrics, schedules, solvers
from jaxdiff.models import DigitDenoiser, load_digits, train, v_prediction_loss
from jaxdiff.testing import GaussianMixture

SMALL = os.environ.get("JAXDIFF_NOTEBOOK_SMALL") == "1"

# %% [markdown]
# ## 1. The Gaussian-mixture testbed
# Three classes in 2-D; label `-1` is the unconditional mixture (what CFG's null
# prediction uses).

# %%
gmm = GaussianMixture(jnp.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]]), 0.15)
sched = schedules.vp_cosine()
denoise = gmm.denoiser(sched)
n = 64 if SMALL else 1000
labels = jnp.arange(n) % 3
x_T = jax.random.normal(jax.random.key(0), (n, 2))
ts = schedules.timesteps(sched, 20, spacing="logsnr")

rules = {
  "conditional": None,
  "CFG w=6": guidance.cfg(6.0),
  "APG w=6": guidance.apg(6.0, eta=0.0, norm_threshold=1.0, momentum=-0.5),
}
fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
for ax, (name, rule) in zip(axes, rules.items()):
  out = jaxdiff.sample(
    denoise, solvers.dpmpp_2m(), x_T, ts, key=jax.random.key(1), cond=labels, guidance=rule
  )
  dist = jnp.linalg.norm(out.x - gmm.means[labels], axis=1).mean()
  ax.scatter(*np.asarray(out.x).T, c=np.asarray(labels), s=4, cmap="viridis")
  ax.scatter(*np.asarray(gmm.means).T, c="red", marker="x")
  ax.set_title(f"{name}: NFE {int(out.nfe)}, mean dist. to mean {float(dist):.2f}")
plt.show()

# %% [markdown]
# ## 2. Digits: train a class-conditional denoiser
# `DigitDenoiser` is a tiny diffusion transformer whose self-attention honours the PAG
# flag; label dropout trains the unconditional (null, `-1`) model alongside. The
# checkpoint directory makes a re-run instant.

# %%
data = load_digits()
steps = 20 if SMALL else 1500
cache = jaxdiff.demo.default_cache_dir()  # $JAXDIFF_CACHE_DIR or .cache/jaxdiff-demo
net = DigitDenoiser(dim=16 if SMALL else 64, depth=1 if SMALL else 2, rngs=nnx.Rngs(0))
result = train(
  net,
  v_prediction_loss(sched),
  optim.adamp(optax.warmup_cosine_decay_schedule(0.0, 2e-3, max(1, steps // 10), steps)),
  (data.train_x, data.train_y),
  steps=steps,
  batch_size=128,
  chunk=10 if SMALL else 100,
  checkpoint_dir=cache / f"notebook02-{'small' if SMALL else 'full'}",
)
digit_denoise = jaxdiff.from_v(result.model, sched)

# %% [markdown]
# ## Compare rules at the same budget of network evaluations

# %%
per_class = 2 if SMALL else 8
y = jnp.repeat(jnp.arange(10), per_class)
x_T = jax.random.normal(jax.random.key(2), (y.shape[0], 8, 8))
budget = 4 if SMALL else 20
# Each rule gets budget / (its network evaluations per step) steps, read from the registry.
per_step = lambda name: guidance.REGISTRY[name].evals()
cases = {
  "conditional": (None, budget),
  "CFG w=5": (guidance.cfg(5.0), budget // per_step("cfg")),
  "APG w=5": (guidance.apg(5.0, norm_threshold=2.0, momentum=-0.5), budget // per_step("apg")),
  "PAG s=2": (guidance.pag(2.0), budget // per_step("pag")),
}
fig, axes = plt.subplots(1, len(cases), figsize=(4 * len(cases), 4))
for ax, (name, (rule, steps_)) in zip(axes, cases.items()):
  grid = schedules.timesteps(sched, steps_, spacing="logsnr")
  out = jaxdiff.sample(
    digit_denoise, solvers.unipc(), x_T, grid, key=jax.random.key(3), cond=y, guidance=rule
  )
  sat = float(metrics.saturation(out.x))
  tiles = np.clip(np.asarray(out.x), -1, 1).reshape(10, per_class, 8, 8)
  ax.imshow(tiles.transpose(1, 2, 0, 3).reshape(per_class * 8, 80), cmap="gray_r", vmin=-1, vmax=1)
  ax.set_title(f"{name}: NFE {int(out.nfe)}, saturation {sat:.3f}", fontsize=9)
  ax.axis("off")
plt.show()
