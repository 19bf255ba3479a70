"""Side by side with the PyTorch peers, in one run: speed ratios and parity.

(a) optimizers vs torch-optimizer and pytorch_optimizer (diffGrad, AdamP, SGDP; AdaHessian
    and Sophia-H, whose peers need ``backward(create_graph=True)``): step time, and the
    parameters after 50 steps from identical parameters and gradients (float64);
(b) curvature estimators vs PyHessian on the same MLP, batch and weights: one
    Hessian-vector product, Hutchinson trace (100 probes), top eigenvalue (100 power
    iterations); parity of the HVP on the same vector and of the top eigenvalue;
(c) sampling loops vs diffusers' schedulers (DDIMScheduler, DPMSolverMultistepScheduler,
    UniPCMultistepScheduler) on the same tiny eps network and training table
    (``jaxdiff.schedules.from_alphas_cumprod``) at equal NFE: wall time and the final
    sample's difference.

Speed: every pair is timed in interleaved rounds and reported as the median of per-round
ratios ``peer time / our time`` (> 1: we are faster), ``bench/_timing.py``. Torch gets
``torch.set_num_threads(os.cpu_count())``; ours are jitted (optimizer steps with donated
buffers) and warmed up; torch runs eagerly, as its users run it. Goals: >= 2x for
the elementwise optimizers, >= 3x probe throughput vs PyHessian, >= 2x loop vs diffusers.

Writes bench/results/bench_peers.json. Needs the ``peers`` extra
(``pip install -e '.[peers]'``); a missing peer is reported and its rows skipped.
Run: ``make bench-peers`` or ``.venv/bin/python bench/bench_peers.py [--quick]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform

# Both frameworks share the cores, round after round: torch's OpenMP workers must sleep
# when idle instead of spinning for the next parallel region, or they steal the cores from
# whichever call is timed next (ours). Set before torch is imported; override by exporting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _peers import (
  SAMPLERS,
  curvature_table,
  diffusers_scheduler,
  first_order_table,
  max_rel_diff,
  mlp_params,
  mlp_torch,
  orthogonal_grads,
  our_sampler,
  peer_sampler,
  peers,
  run_ours,
  run_ours_curvature,
  run_peer,
  run_peer_curvature,
  separable_loss_jax,
  separable_loss_torch,
  tiny_net_jax,
  tiny_net_params,
  tiny_net_torch,
  to_torch,
  torch_threads,
  xent_jax,
)
from _timing import Stateful, compare, output_path

from optim import curvature

PARITY_SIZES = (16, 32, 8)  # float64 parity: 50 steps on a small two-layer tree


def _threaded(fns: dict) -> dict:
  """Each torch callable twice: with every core (``torch.set_num_threads(cpu_count)``, the
  setting the issue asks for) and with one thread (``<name>@1t``). On a loaded machine
  torch's OpenMP workers spin-wait for cores that other processes hold, and small
  operations get far slower with more threads; the table reports the ratio to torch's
  faster setting, so that load never flatters us."""
  import torch

  n = os.cpu_count() or 1
  out = {"ours": fns.pop("ours")}
  for name, fn in fns.items():
    out[name] = lambda fn=fn: (torch.set_num_threads(n), fn())[1]
    if n > 1:
      out[f"{name}@1t"] = lambda fn=fn: (torch.set_num_threads(1), fn())[1]
  return out


def _speedups(timings: dict, ours: str = "ours") -> dict:
  """peer -> {"speedup": median per-round (peer / ours) against the peer's faster thread
  setting, per-setting speedups, seconds}; plus our seconds."""
  out = {"ours_s": timings[ours].seconds}
  base = np.asarray(timings[ours].rounds)
  for name in [k for k in timings if k != ours and not k.endswith("@1t")]:
    settings = {"all_cores": timings[name]}
    if f"{name}@1t" in timings:
      settings["one_thread"] = timings[f"{name}@1t"]
    per = {k: float(np.median(np.asarray(t.rounds) / base)) for k, t in settings.items()}
    best = min(per, key=per.get)
    out[name] = {
      "speedup": per[best],
      "torch_setting": best,
      "speedup_by_setting": per,
      "seconds": settings[best].seconds,
    }
  return out


def _compare(fns: dict, **kw) -> dict:
  return _speedups(compare(_threaded(dict(fns)), baseline="ours", **kw))


# --------------------------------------------------------------------------------------
# (a) optimizers


def _jax_step(tx, grads):
  """A donated ``(params, state) -> (params, state)`` step on fixed gradients."""

  @functools.partial(jax.jit, donate_argnums=0)
  def step(carry, g):
    params, state = carry
    u, state = tx.update(g, state, params)
    return optax.apply_updates(params, u), state

  return lambda carry: step(carry, grads)


def _torch_step(make, params, grads):
  flat = to_torch(params)
  for p, g in zip(flat, to_torch(grads, requires_grad=False)):
    p.grad = g
  opt = make(flat)
  return opt.step


def first_order(sizes, rounds) -> dict:
  rng = np.random.default_rng(0)
  out = {}
  for name, (ours, peer_makers) in first_order_table().items():
    row = {}
    with jax.enable_x64(True):  # parity: float64 in both frameworks
      p64 = mlp_params(PARITY_SIZES, rng, np.float64)
      g64 = [orthogonal_grads(p64, rng) for _ in range(50)]
      a = run_ours(ours(), p64, g64)
      row["parity_50_steps_f64"] = {
        peer: max_rel_diff(a, run_peer(mk, p64, g64)) for peer, mk in peer_makers.items()
      }
    params = mlp_params(sizes, rng)
    grads = orthogonal_grads(params, rng)
    jparams, jgrads = jax.tree.map(jnp.asarray, (params, grads))
    tx = ours()
    fns = {"ours": Stateful(_jax_step(tx, jgrads), (jparams, tx.init(jparams)))}
    for peer, mk in peer_makers.items():
      fns[peer] = _torch_step(mk, params, grads)
    row["time"] = _compare(fns, rounds=rounds, calls_per_round=5, warmup=3)
    row["num_params"] = int(sum(x.size for x in jax.tree.leaves(params)))
    out[name] = row
  return out


def second_order(sizes, batch, rounds) -> dict:
  """AdaHessian / Sophia-H: parity on a separable objective (exact Hutchinson diagonal),
  step time (gradient + HVP + update) on an MLP with cross-entropy."""
  import torch

  rng = np.random.default_rng(1)
  params = mlp_params(sizes, rng)
  x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
  y = rng.integers(0, sizes[-1], batch)
  jx, jy = jnp.asarray(x), jnp.asarray(y)
  tx_, ty_ = torch.tensor(x), torch.tensor(y)
  model_loss = lambda p: xent_jax(p, jx, jy)

  def torch_loss(flat):
    h = tx_
    for i in range(0, len(flat) - 2, 2):
      h = torch.relu(h @ flat[i].T + flat[i + 1])
    return torch.nn.functional.cross_entropy(h @ flat[-2].T + flat[-1], ty_)

  out = {}
  for name, (ours, peer_makers) in curvature_table().items():
    row = {}
    with jax.enable_x64(True):
      p64 = mlp_params(PARITY_SIZES, rng, np.float64)
      d = [{k: rng.standard_normal(v.shape) for k, v in layer.items()} for layer in p64]
      dt = to_torch(d, requires_grad=False)
      a = run_ours_curvature(ours(), lambda p: separable_loss_jax(p, d), p64, 50)
      row["parity_50_steps_f64"] = {
        peer: max_rel_diff(
          a, run_peer_curvature(mk, lambda f: separable_loss_torch(f, dt), p64, 50)
        )
        for peer, mk in peer_makers.items()
      }
    tx = ours()

    @functools.partial(jax.jit, donate_argnums=0)
    def step(carry, tx=tx):
      p, s = carry
      g = jax.grad(model_loss)(p)
      u, s = tx.update(g, s, p, obj_fn=model_loss)
      return optax.apply_updates(p, u), s

    jp = jax.tree.map(jnp.asarray, params)
    fns = {"ours": Stateful(step, (jp, tx.init(jp)))}
    for peer, mk in peer_makers.items():
      flat = to_torch(params)
      opt = mk(flat)

      def tstep(opt=opt, flat=flat):
        opt.zero_grad(set_to_none=True)
        torch_loss(flat).backward(create_graph=True)
        opt.step()

      fns[peer] = tstep
    # Sophia refreshes every 10th step: 10 calls per timing cover one period.
    row["time"] = _compare(fns, rounds=rounds, calls_per_round=10, warmup=3)
    row["num_params"] = int(sum(v.size for v in jax.tree.leaves(params)))
    out[name] = row
  return out


# --------------------------------------------------------------------------------------
# (b) PyHessian


def pyhessian_section(sizes, batch, rounds, n=100) -> dict:
  import torch
  from pyhessian import hessian as PyHessian
  from pyhessian.utils import hessian_vector_product

  rng = np.random.default_rng(2)
  params = mlp_params(sizes, rng)
  x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
  y = rng.integers(0, sizes[-1], batch)
  jp, jx, jy = jax.tree.map(jnp.asarray, params), jnp.asarray(x), jnp.asarray(y)
  v_np = [
    {k: rng.standard_normal(a.shape).astype(np.float32) for k, a in layer.items()}
    for layer in params
  ]
  jv = jax.tree.map(jnp.asarray, v_np)

  model = mlp_torch(params)
  comp = PyHessian(
    model, torch.nn.CrossEntropyLoss(), data=(torch.tensor(x), torch.tensor(y)), cuda=False
  )
  tv = to_torch(v_np, requires_grad=False)

  def torch_hvp():  # one product from scratch: forward, gradient with graph, double backward
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(torch.tensor(x)), torch.tensor(y))
    gs = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
    return hessian_vector_product(gs, list(model.parameters()), tv)

  hvp = jax.jit(lambda p, v: curvature.hvp(xent_jax, p, v, jx, jy))
  op = lambda p: curvature.hessian_matvec(xent_jax, p, jx, jy)
  trace = jax.jit(lambda p: curvature.hutchinson_trace(op(p), key=1, num_probes=n).trace)
  top = jax.jit(
    lambda p: curvature.top_eigenvalues(op(p), key=2, k=1, max_iterations=n, tol=0.0).eigenvalues
  )

  # What PyHessian does: the forward and first backward pass once (it keeps the graph),
  # then only the second-order sweep per probe. The jax equivalent linearizes the
  # gradient once (`jax.linearize`); `hessian_matvec` instead runs a whole
  # forward-over-reverse `hvp` per product. Timed as a what-if row.
  def op_linearized(p):
    _, lin = jax.linearize(lambda q: jax.grad(xent_jax)(q, jx, jy), p)
    return curvature.LinearOperator(lin, p)

  trace_lin = jax.jit(
    lambda p: curvature.hutchinson_trace(op_linearized(p), key=1, num_probes=n).trace
  )

  # Parity: the same HVP; the top eigenvalue (both converge to it); the trace estimates
  # (different random probes: compared as estimates, each with its own probes).
  ours_hv = hvp(jp, jv)
  theirs_hv = [h.detach().numpy() for h in torch_hvp()]
  theirs_hv = [{"w": w.T, "b": b} for w, b in zip(theirs_hv[::2], theirs_hv[1::2])]
  eig_theirs = comp.eigenvalues(maxIter=n, tol=0.0, top_n=1)[0][0]
  tr_theirs = float(np.mean(comp.trace(maxIter=n, tol=0.0)))
  parity = {
    "hvp_max_rel_diff": max_rel_diff(ours_hv, theirs_hv),
    "top_eig_ours": float(top(jp)[0]),
    "top_eig_pyhessian": float(eig_theirs),
    "trace_ours": float(trace(jp)),
    "trace_pyhessian": tr_theirs,
    "trace_ours_linearized": float(trace_lin(jp)),
  }
  out = {"parity": parity, "num_params": int(sum(a.size for a in jax.tree.leaves(params)))}
  pairs = {
    "hvp": ({"ours": lambda: hvp(jp, jv), "PyHessian": torch_hvp}, 1),
    f"trace_{n}_probes": (
      {"ours": lambda: trace(jp), "PyHessian": lambda: comp.trace(maxIter=n, tol=0.0)},
      1,
    ),
    f"trace_{n}_probes_linearized_what_if": (
      {"ours": lambda: trace_lin(jp), "PyHessian": lambda: comp.trace(maxIter=n, tol=0.0)},
      1,
    ),
    f"top_eig_{n}_iters": (
      {
        "ours": lambda: top(jp),
        "PyHessian": lambda: comp.eigenvalues(maxIter=n, tol=0.0, top_n=1),
      },
      1,
    ),
  }
  for name, (fns, calls) in pairs.items():
    r = rounds if name != "hvp" else 3 * rounds
    out[name] = _compare(fns, rounds=r, calls_per_round=calls)
  return out


# --------------------------------------------------------------------------------------
# (c) diffusers


def diffusers_section(dim, width, batch, nfes, rounds) -> dict:
  import torch

  rng = np.random.default_rng(3)
  net = tiny_net_params(dim, width, rng)
  x_T = rng.standard_normal((batch, dim)).astype(np.float32)
  jx, tx_ = jnp.asarray(x_T), torch.tensor(x_T)
  out = {"config": {"dim": dim, "width": width, "batch": batch}}
  # The network alone, one evaluation in each framework: at this size it is most of a
  # step, so it bounds the loop ratios; the rest of each step is the loop's own overhead.
  table = diffusers_scheduler("ddim").alphas_cumprod.numpy()
  net_jax = jax.jit(tiny_net_jax(net, table))
  net_torch = tiny_net_torch(net, table)

  def torch_eval():
    with torch.no_grad():
      return net_torch(tx_, 500)

  out["network_alone"] = _compare(
    {"ours": lambda: net_jax(jx, 500.0), "diffusers": torch_eval}, rounds=rounds, calls_per_round=20
  )
  for name in SAMPLERS:
    for nfe in nfes:
      ours, steps = our_sampler(name, diffusers_scheduler(name), net, nfe)
      theirs = peer_sampler(diffusers_scheduler(name), net, nfe)
      a, b = np.asarray(ours(jx)), theirs(tx_).numpy()
      row = {
        "steps": int(steps),
        "final_max_abs_diff": float(np.max(np.abs(a - b))),
        "final_rms": float(np.sqrt(np.mean(b**2))),
      }
      row["time"] = _compare(
        {"ours": lambda: ours(jx), "diffusers": lambda: theirs(tx_)}, rounds=rounds
      )
      out[f"{name}@{nfe}"] = row
  return out


# --------------------------------------------------------------------------------------


def _print(res: dict) -> None:
  def speed(row, peer):
    s = row["time"].get(peer)
    return "-" if s is None else f"{s['speedup']:.2f}x ({s['torch_setting']})"

  print(
    "\n(a) optimizers: speed = peer step time / ours (> 1: ours faster); parity = max rel "
    "diff of params after 50 steps (f64)"
  )
  for sec in ("first_order", "second_order"):
    for name, row in res.get(sec, {}).items():
      for peer, par in row["parity_50_steps_f64"].items():
        print(
          f"  {name:11s} vs {peer:18s} speed {speed(row, peer):>20s}   parity {par:.1e}   "
          f"({row['num_params']:,} params, ours {1e3 * row['time']['ours_s']:.2f} ms)"
        )
  if "pyhessian" in res:
    ph = res["pyhessian"]
    print(f"\n(b) vs PyHessian ({ph['num_params']:,} params): speed = PyHessian time / ours")
    for name in [k for k in ph if k not in ("parity", "num_params")]:
      print(
        f"  {name:20s} {ph[name]['PyHessian']['speedup']:.2f}x "
        f"({ph[name]['PyHessian']['torch_setting']}) "
        f"(ours {1e3 * ph[name]['ours_s']:.1f} ms)"
      )
    print("  parity:", {k: round(v, 6) for k, v in ph["parity"].items()})
  for key in ("diffusers", "diffusers_tiny"):
    if key not in res:
      continue
    cfg = res[key]["config"]
    print(
      f"\n(c) vs diffusers, eps MLP dim {cfg['dim']} width {cfg['width']} batch "
      f"{cfg['batch']}: speed = diffusers loop time / ours at equal NFE"
    )
    net = res[key]["network_alone"]
    print(
      f"  {'network':12s} {net['diffusers']['speedup']:6.2f}x "
      f"({net['diffusers']['torch_setting']})   one evaluation alone: ours "
      f"{1e6 * net['ours_s']:.0f} us, torch {1e6 * net['diffusers']['seconds']:.0f} us"
    )
    for name, row in res[key].items():
      if name in ("network_alone", "config"):
        continue
      print(
        f"  {name:12s} {row['time']['diffusers']['speedup']:6.2f}x "
        f"({row['time']['diffusers']['torch_setting']})   max |diff| "
        f"{row['final_max_abs_diff']:.1e} (sample rms {row['final_rms']:.2f})"
      )


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="tiny sizes: proves the script runs")
  quick = ap.parse_args().quick
  have = peers()
  res: dict = {
    "peers": have,
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "machine": platform.machine(),
    "cpu_count": os.cpu_count(),
    "quick": quick,
  }
  if have["torch"] is None:
    print("torch is not installed: install the peers extra (pip install -e '.[peers]')")
  else:
    res["torch_threads"] = torch_threads()
    r = 3 if quick else 9
    if have["torch_optimizer"] or have["pytorch_optimizer"]:
      res["first_order"] = first_order((32, 64, 10) if quick else (1024, 1024, 1024, 10), r)
      res["second_order"] = second_order(
        (16, 32, 10) if quick else (256, 512, 10), 16 if quick else 128, r
      )
    if have["pyhessian"]:
      res["pyhessian"] = pyhessian_section(
        (16, 32, 10) if quick else (256, 512, 256, 10),
        16 if quick else 256,
        r,
        n=10 if quick else 100,
      )
    if have["diffusers"]:
      # The first network makes a step mostly matmuls (the network bounds the ratio); the
      # second is small enough that a step is mostly the loop itself.
      res["diffusers"] = diffusers_section(
        *((8, 32, 16, (5,)) if quick else (64, 256, 256, (10, 25))), rounds=r
      )
      if not quick:
        res["diffusers_tiny"] = diffusers_section(8, 32, 16, (10, 25), rounds=r)
  _print(res)
  path = output_path("bench_peers.json", quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(res, indent=2))
  print(f"\nwrote {path}")


if __name__ == "__main__":
  main()
