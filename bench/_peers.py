"""The PyTorch peers, set up once for `bench_peers.py` and `tests/peers/`.

Each helper builds *the same thing* in both frameworks from one NumPy source: the same
parameters (a dense kernel is ``(in, out)`` here and its transpose ``(out, in)`` in
``torch.nn.Linear``), the same gradients, the same network weights, the same discrete noise
schedule. Only the peers' public APIs are used; nothing of theirs is reimplemented.

Importing this module needs neither torch nor any peer: :func:`peers` says which are
importable, and every torch-side helper imports torch when called.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxdiff
import optim
from jaxdiff import schedules, solvers

PEERS = ("torch", "torch_optimizer", "pytorch_optimizer", "pyhessian", "diffusers")


def peers() -> dict[str, str | None]:
  """name -> version for each importable peer, ``None`` for a missing one."""
  out = {}
  for name in PEERS:
    if importlib.util.find_spec(name) is None:
      out[name] = None
      continue
    mod = importlib.import_module(name)
    out[name] = str(getattr(mod, "__version__", "installed"))
  return out


def torch_threads() -> int:
  """Gives torch every core (XLA:CPU uses them all too) and returns the count."""
  import torch

  n = os.cpu_count() or 1
  torch.set_num_threads(n)
  return n


# --------------------------------------------------------------------------------------
# Parameters and gradients: a list of dense layers {"w": (in, out), "b": (out,)}.


def mlp_params(sizes, rng: np.random.Generator, dtype=np.float32) -> list[dict]:
  """He-initialised dense layers as NumPy arrays (kernels ``(in, out)``)."""
  return [
    {
      "w": (rng.standard_normal((m, n)) * np.sqrt(2.0 / m)).astype(dtype),
      "b": (0.1 * rng.standard_normal(n)).astype(dtype),
    }
    for m, n in zip(sizes[:-1], sizes[1:])
  ]


def orthogonal_grads(params: list[dict], rng: np.random.Generator) -> list[dict]:
  """Random gradients whose kernels are orthogonal to the weights output channel by output
  channel, as for scale-invariant weights: AdamP's and SGDP's projection then fires."""
  out = []
  for layer in params:
    w = layer["w"]
    g = rng.standard_normal(w.shape).astype(w.dtype)
    g -= w * np.sum(w * g, axis=0, keepdims=True) / np.sum(w * w, axis=0, keepdims=True)
    out.append({"w": g, "b": rng.standard_normal(layer["b"].shape).astype(w.dtype)})
  return out


def to_torch(tree: list[dict], requires_grad: bool = True) -> list:
  """The torch layout of :func:`mlp_params`: ``[w.T, b, w.T, b, ...]`` as leaf tensors."""
  import torch

  flat = []
  for layer in tree:
    for a in (np.ascontiguousarray(np.asarray(layer["w"]).T), np.asarray(layer["b"])):
      flat.append(torch.tensor(a, requires_grad=requires_grad))
  return flat


def from_torch(flat) -> list[dict]:
  """Inverse of :func:`to_torch` (NumPy arrays)."""
  arrs = [t.detach().cpu().numpy() for t in flat]
  return [{"w": np.ascontiguousarray(w.T), "b": b} for w, b in zip(arrs[::2], arrs[1::2])]


def max_rel_diff(a, b) -> float:
  """``max |a - b| / max |b|`` over all leaves (the peer is ``b``)."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  num = max(
    float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y)))) for x, y in zip(la, lb)
  )
  den = max(float(np.max(np.abs(np.asarray(y, np.float64)))) for y in lb)
  return num / den


# --------------------------------------------------------------------------------------
# First-order optimizers: ours vs each peer's class, on identical hyperparameters.

LR = 1e-3


def first_order_table() -> dict[str, tuple[Callable, dict[str, Callable]]]:
  """name -> (our optax transformation factory, {peer: factory(params) -> torch optimizer}).

  Peers that are not importable are left out of the inner dict."""
  have = peers()
  to = importlib.import_module("torch_optimizer") if have["torch_optimizer"] else None
  po = importlib.import_module("pytorch_optimizer") if have["pytorch_optimizer"] else None

  def both(attr_to, attr_po, **kw):
    d = {}
    if to is not None:
      d["torch_optimizer"] = lambda ps: getattr(to, attr_to)(ps, lr=LR, **kw)
    if po is not None:
      d["pytorch_optimizer"] = lambda ps: getattr(po, attr_po)(ps, lr=LR, **kw)
    return d

  return {
    "diffGrad": (lambda: optim.diffgrad(LR), both("DiffGrad", "DiffGrad")),
    "AdamP": (lambda: optim.adamp(LR), both("AdamP", "AdamP")),
    "SGDP": (lambda: optim.sgdp(LR, momentum=0.9), both("SGDP", "SGDP", momentum=0.9)),
  }


def run_ours(tx, params, grads_seq):
  """``params`` after one step per gradient of ``grads_seq`` (one jitted step)."""

  @jax.jit
  def step(params, state, g):
    u, state = tx.update(g, state, params)
    return optax.apply_updates(params, u), state

  params = jax.tree.map(jnp.asarray, params)
  state = tx.init(params)
  for g in grads_seq:
    params, state = step(params, state, g)
  return jax.tree.map(np.asarray, params)


def run_peer(make, params, grads_seq):
  """The same with a torch optimizer: ``p.grad`` set from ``grads_seq``, then ``step()``."""
  import torch

  flat = to_torch(params)
  opt = make(flat)
  for g in grads_seq:
    for p, gt in zip(flat, to_torch(g, requires_grad=False)):
      p.grad = gt
    opt.step()
  with torch.no_grad():
    return from_torch(flat)


# --------------------------------------------------------------------------------------
# Curvature optimizers on a separable objective: its Hessian is diagonal, so a Rademacher
# probe z gives z * (H z) = diag(H) exactly, whatever z each framework draws.

SEP_A, SEP_C = 1.0, 0.5  # L(p) = sum(a p^2 / 2 + c p^4 / 4 - d p), H = diag(a + 3 c p^2)


def separable_loss_jax(params, d):
  return sum(
    jnp.sum(SEP_A * p**2 / 2 + SEP_C * p**4 / 4 - q * p)
    for p, q in zip(jax.tree.leaves(params), jax.tree.leaves(d))
  )


def separable_loss_torch(flat, d_flat):
  return sum((SEP_A * p**2 / 2 + SEP_C * p**4 / 4 - q * p).sum() for p, q in zip(flat, d_flat))


def curvature_table(lr=0.05) -> dict[str, tuple[Callable, dict[str, Callable]]]:
  """As :func:`first_order_table` for the optimizers that need Hessian-vector products.

  AdaHessian: the official defaults except ``hessian_power=1`` (the paper's; torch-optimizer
  defaults to 0.5). Sophia-H: pytorch_optimizer's ``SophiaH`` divides by ``max(h, eps)``
  and clips at ``p``; ours divides by ``max(gamma h, eps)`` and clips at ``clip_threshold``,
  so ``gamma=1, clip_threshold=p`` is the same update (decay 0, Rademacher probes)."""
  have = peers()
  to = importlib.import_module("torch_optimizer") if have["torch_optimizer"] else None
  po = importlib.import_module("pytorch_optimizer") if have["pytorch_optimizer"] else None
  ada, sophia = {}, {}
  if to is not None:
    ada["torch_optimizer"] = lambda ps: to.Adahessian(ps, lr=lr, hessian_power=1.0)
  if po is not None:
    ada["pytorch_optimizer"] = lambda ps: po.AdaHessian(
      ps, lr=lr, eps=1e-4, hessian_distribution="rademacher"
    )
    sophia["pytorch_optimizer"] = lambda ps: po.SophiaH(
      ps, lr=lr, p=0.05, eps=1e-12, update_period=10, hessian_distribution="rademacher"
    )
  return {
    "AdaHessian": (lambda: optim.adahessian(lr, eps=1e-4, key=0), ada),
    "Sophia-H": (
      lambda: optim.sophia(
        lr,
        b1=0.96,
        b2=0.99,
        gamma=1.0,
        eps=1e-12,
        weight_decay=0.0,
        update_interval=10,
        clip_threshold=0.05,
        key=0,
      ),
      sophia,
    ),
  }


def run_ours_curvature(tx, loss, params, steps):
  """``steps`` steps of a curvature optimizer on ``loss(params)`` (one jitted step)."""

  @jax.jit
  def step(params, state):
    g = jax.grad(loss)(params)
    u, state = tx.update(g, state, params, obj_fn=loss)
    return optax.apply_updates(params, u), state

  params = jax.tree.map(jnp.asarray, params)
  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return jax.tree.map(np.asarray, params)


def run_peer_curvature(make, loss, params, steps):
  """The same in torch: ``backward(create_graph=True)`` then ``step()`` (the peers' API)."""
  import torch

  flat = to_torch(params)
  opt = make(flat)
  for _ in range(steps):
    opt.zero_grad(set_to_none=True)
    loss(flat).backward(create_graph=True)
    opt.step()
  with torch.no_grad():
    return from_torch(flat)


# --------------------------------------------------------------------------------------
# Curvature estimators (PyHessian): the same MLP and batch in both frameworks.


def mlp_jax(params, x):
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def xent_jax(params, x, y):
  logits = mlp_jax(params, x)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def mlp_torch(params):
  """A ``torch.nn.Sequential`` with the weights of :func:`mlp_params`' ``params``."""
  import torch

  layers = []
  for layer in params:
    m, n = layer["w"].shape
    lin = torch.nn.Linear(m, n)
    with torch.no_grad():
      lin.weight.copy_(torch.tensor(np.ascontiguousarray(np.asarray(layer["w"]).T)))
      lin.bias.copy_(torch.tensor(np.asarray(layer["b"])))
    layers += [lin, torch.nn.ReLU()]
  return torch.nn.Sequential(*layers[:-1])


# --------------------------------------------------------------------------------------
# Sampling (diffusers): a tiny eps-prediction MLP in both frameworks, one discrete schedule.

NUM_TRAIN_TIMESTEPS = 1000


def tiny_net_params(dim, width, rng: np.random.Generator) -> dict:
  """Weights of :func:`tiny_net_jax`'s MLP (NumPy float32)."""
  s = lambda m: 1.0 / np.sqrt(m)
  f = np.float32
  return {
    "w1": (rng.standard_normal((dim + 1, width)) * s(dim + 1)).astype(f),
    "w2": (rng.standard_normal((width, width)) * s(width)).astype(f),
    "w3": (0.5 * rng.standard_normal((width, dim)) * s(width)).astype(f),
  }


def tiny_net_jax(params, alphas_cumprod):
  """``eps(x, t) = sigma_t x + MLP([x, t / 1000])``: the exact eps of standard normal data
  (``E[eps | x_t] = sigma_t x_t``) plus a 2-hidden-layer MLP, so samples stay O(1) and the
  network is not trivial; ``t`` is an integer index of the training table."""
  w1, w2, w3 = (jnp.asarray(params[k]) for k in ("w1", "w2", "w3"))
  sig = jnp.sqrt(1.0 - jnp.asarray(alphas_cumprod, jnp.float32))

  def eps(x, t, cond=None):
    del cond
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
    h = jnp.concatenate([x, t[:, None] / NUM_TRAIN_TIMESTEPS], axis=1)
    s = sig[jnp.round(t).astype(jnp.int32)][:, None]
    return s * x + jnp.tanh(jnp.tanh(h @ w1) @ w2) @ w3

  return eps


def tiny_net_torch(params, alphas_cumprod):
  """:func:`tiny_net_jax` in torch (same weights, same table)."""
  import torch

  w1, w2, w3 = (torch.tensor(params[k]) for k in ("w1", "w2", "w3"))
  sig = torch.sqrt(1.0 - torch.as_tensor(np.asarray(alphas_cumprod, np.float32)))

  def eps(x, t):
    tt = torch.full((x.shape[0], 1), float(t) / NUM_TRAIN_TIMESTEPS, dtype=x.dtype)
    h = torch.cat([x, tt], dim=1)
    return sig[int(t)] * x + torch.tanh(torch.tanh(h @ w1) @ w2) @ w3

  return eps


def diffusers_scheduler(name: str):
  """diffusers' scheduler for one of our solvers, on the default linear-beta table with
  each scheduler's default spacing and final step (DDIM: ``leading`` to alpha = 1, its
  default x0 clipping off;
  DPM-Solver++(2M) and UniPC (bh2, corrector on): ``linspace`` to sigma = 0)."""
  import diffusers

  common = dict(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule="linear")
  if name == "ddim":
    return diffusers.DDIMScheduler(clip_sample=False, **common)  # no clipping: plain DDIM
  if name == "dpmpp_2m":
    return diffusers.DPMSolverMultistepScheduler(
      algorithm_type="dpmsolver++", solver_order=2, **common
    )
  if name == "unipc":
    return diffusers.UniPCMultistepScheduler(solver_order=2, solver_type="bh2", **common)
  raise ValueError(f"no diffusers scheduler for {name!r}")


SAMPLERS = ("ddim", "dpmpp_2m", "unipc")


def our_sampler(name: str, scheduler, net_params, steps: int):
  """``(jitted x_T -> x_0, NFE)``: our solver on diffusers' grid and training table."""
  import torch

  scheduler.set_timesteps(steps)
  table = scheduler.alphas_cumprod.to(torch.float64).numpy()
  sched = schedules.from_alphas_cumprod(table)
  ts = schedules.timesteps_from(sched, scheduler.timesteps.numpy(), denoise_to_zero=True)
  denoise = jaxdiff.from_eps(tiny_net_jax(net_params, table), sched)
  solver = solvers.make(name)
  run = jax.jit(lambda x: jaxdiff.sample(denoise, solver, x, ts, key=jax.random.key(0)).x)
  return run, ts.num_steps


def peer_sampler(scheduler, net_params, steps: int):
  """``x_T -> x_0`` with diffusers' documented loop (``set_timesteps``, ``step``)."""
  import torch

  net = tiny_net_torch(net_params, scheduler.alphas_cumprod.numpy())

  def run(x):
    scheduler.set_timesteps(steps)
    with torch.no_grad():
      for t in scheduler.timesteps:
        x = scheduler.step(net(x, t), t, x).prev_sample
    return x

  return run
