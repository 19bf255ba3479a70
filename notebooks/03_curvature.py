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
# # 03 · Curvature: the Hessian spectrum and trace of a trained network
#
# `optim.curvature` turns any scalar objective into a matrix-free linear operator
# (`hessian_matvec`: one forward-over-reverse product per call) and runs estimators on it:
# stochastic Lanczos quadrature for the eigenvalue density (`slq_density`), Hutchinson for
# the trace (`hutchinson_trace`, with a standard error and per-layer traces), and power
# iteration with deflation for the top eigenvalues (`top_eigenvalues`).
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
import optax
from flax import nnx

from jaxdiff.models import DigitClassifier, classifier_loss, load_digits, train
from optim import curvature

SMALL = os.environ.get("JAXDIFF_NOTEBOOK_SMALL") == "1"

# %% [markdown]
# ## Train a small classifier on the digits

# %%
data = load_digits()
result = train(
  DigitClassifier(rngs=nnx.Rngs(0)),
  classifier_loss(),
  optax.adam(3e-3),
  (data.train_x, data.train_y),
  steps=20 if SMALL else 1000,
  batch_size=128,
  chunk=20 if SMALL else 100,
)
graphdef, params = nnx.split(result.model)
n = 128 if SMALL else 1024
x, y = jnp.asarray(data.train_x[:n]), jnp.asarray(data.train_y[:n])


def loss(p, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, p)(x), y).mean()


num_params = sum(v.size for v in jax.tree.leaves(params))
print(f"{num_params} parameters, final training loss {result.losses[-1]:.4f}")

# %% [markdown]
# ## The Hessian as a linear operator, and its spectrum

# %%
H = curvature.hessian_matvec(loss, params, x, y)
key = jax.random.key(0)
density = curvature.slq_density(
  H, key=key, num_iterations=10 if SMALL else 80, num_probes=1 if SMALL else 4
)
top = curvature.top_eigenvalues(H, key=jax.random.fold_in(key, 1), k=3 if SMALL else 12)
print("top eigenvalues:", [round(float(e), 4) for e in top.eigenvalues])

ax = curvature.plot_density(density, label="SLQ density")
for e in top.eigenvalues:
  ax.axvline(float(e), color="C3", lw=0.6)
ax.set_xlabel("eigenvalue")
ax.set_title("Hessian spectrum: a bulk near zero and a few outliers (Sagun et al.)")
plt.show()

# %% [markdown]
# ## Trace: Hutchinson with a standard error, and per-layer traces

# %%
est = curvature.hutchinson_trace(H, key=jax.random.fold_in(key, 2), num_probes=10 if SMALL else 200)
print(f"tr(H) ≈ {float(est.trace):.3f} ± {float(est.stderr):.3f}")
per_layer = jax.tree_util.tree_leaves_with_path(est.per_leaf)
for path, value in per_layer:
  print(f"  {jax.tree_util.keystr(path):>40}: {float(value):9.4f}")
# SLQ estimates the same trace: tr(H) = P * E[lambda] under the density.
slq_trace = num_params * float(jnp.sum(density.weights * density.nodes) / jnp.sum(density.weights))
print(f"SLQ: tr(H) ≈ {slq_trace:.3f}")
