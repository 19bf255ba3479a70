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
# # 01 · Optimizers: compose optax chains with `optim`
#
# Every optimizer in `optim` is an optax `GradientTransformation`: the bare preconditioner
# is `optim.scale_by_<x>`, the alias `optim.<x>` chains weight decay and the learning
# rate. So they mix freely with optax's own pieces. This notebook
#
# 1. builds a few chains (clipping, ⊥Grad projection, diffGrad, schedules),
# 2. trains the same MLP digit classifier with **AdamW** and with **Sophia** (a
#    curvature-based optimizer that needs the objective as an extra argument) and
#    compares the loss curves.
#
# Set `JAXDIFF_NOTEBOOK_SMALL=1` to run everything at a tiny size (what CI does).

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

import optim
from jaxdiff.models import DigitClassifier, load_digits

SMALL = os.environ.get("JAXDIFF_NOTEBOOK_SMALL") == "1"
STEPS = 15 if SMALL else 400
print(jax.devices())

# %% [markdown]
# ## Composing chains
# Optimizers are values: build them once, reuse them, chain them with optax.

# %%
schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, max(1, STEPS // 10), STEPS)
chains = {
  # diffGrad's preconditioner with optax's clipping and learning-rate pieces
  "clip + diffGrad": optax.chain(
    optax.clip_by_global_norm(1.0),
    optim.scale_by_diffgrad(),
    optax.scale_by_learning_rate(schedule),
  ),
  # the ⊥Grad projection is chained *before* any base optimizer
  "⊥Grad + AdamW": optax.chain(optim.perp_grad(), optax.adamw(schedule, weight_decay=1e-4)),
  # AdamP projects out the radial part of scale-invariant weights
  "AdamP": optim.adamp(schedule),
}
for name, tx in chains.items():
  print(f"{name:>16}: {type(tx).__name__}")

# %% [markdown]
# ## AdamW vs Sophia on the digits
# One training loop serves every optimizer: curvature-based optimizers receive the
# objective through the `obj_fn` extra argument (`optax.GradientTransformationExtraArgs`),
# first-order ones ignore it.

# %%
data = load_digits()
x, y = jnp.asarray(data.train_x), jnp.asarray(data.train_y)
graphdef, params0 = nnx.split(DigitClassifier(rngs=nnx.Rngs(0)))


def loss_fn(params, xb, yb):
  logits = nnx.merge(graphdef, params)(xb)
  return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()


def run(tx, steps=STEPS, batch=128):
  @jax.jit
  def step(params, state, i):
    idx = jax.random.randint(jax.random.fold_in(jax.random.key(1), i), (batch,), 0, x.shape[0])
    obj = lambda p: loss_fn(p, x[idx], y[idx])
    loss, grads = jax.value_and_grad(obj)(params)
    updates, state = tx.update(grads, state, params, obj_fn=obj)
    return optax.apply_updates(params, updates), state, loss

  params, state, losses = params0, tx.init(params0), []
  for i in range(steps):
    params, state, loss = step(params, state, i)
    losses.append(float(loss))
  test_acc = jnp.mean(
    nnx.merge(graphdef, params)(jnp.asarray(data.test_x)).argmax(-1) == data.test_y
  )
  return losses, float(test_acc)


curves = {
  "AdamW": run(optax.adamw(schedule, weight_decay=1e-4)),
  "Sophia-H": run(optim.sophia(schedule, weight_decay=1e-4, update_interval=5, key=0)),
  "clip + diffGrad": run(chains["clip + diffGrad"]),
}

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, (losses, acc) in curves.items():
  ax.plot(losses, label=f"{name} (test acc {acc:.3f})")
ax.set_yscale("log")
ax.set_xlabel("step")
ax.set_ylabel("training loss")
ax.legend()
plt.show()
