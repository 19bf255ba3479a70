"""DeeDiff early exit on the digits DiT: quality, blocks evaluated and time vs the threshold.

Run by ``python bench/sampling_accelerators.py --only exit [--quick]``; writes
``bench/results/sampling_accelerators_exit.json``.

The exit heads (``jaxdiff.models.ExitHeads``) are fine-tuned with DeeDiff's loss
(``early_exit_loss``) on the demo's cached denoiser (depth 2: one exit, after block 1) and,
for the study only, on a depth-4 denoiser trained with the demo's recipe
(``DemoConfig(depth=4)``, three exits): with the backbone frozen (the heads alone) and, as
the paper trains, jointly with it (``train_backbone=True``; ``--quick`` runs only the depth-2 frozen
setup, on 50 samples). All are cached in the demo cache directory
(``exit-v1[-joint]-d<depth>-<steps>-<hash>``), like the demo's models.

Sampling: DPM-Solver++(2M), ``STEPS`` steps, conditional (no guidance), 30 labels per
class. Two exit modes:
  * per call (``EarlyExit``'s own rule): a block is skipped only when every sample of the
    call is confident; the saving is real under jit;
  * per sample (the paper's batch-of-one rule, as ``jax.vmap`` of a one-sample call): the
    quality and the blocks counted are the paper's; under vmap the time is not saved.
Blocks evaluated are recounted from the trajectory (``jaxdiff.sample(...,
return_trajectory=True)``; DPM-Solver++(2M) evaluates once per step at ``(x_i, t_i)``).
Compute: FLOPs per evaluation from XLA's cost analysis of encode, one block, one UEM and
the readout; "equal compute" is the base solver at ``floor(STEPS * compute ratio)`` steps.
"""

from __future__ import annotations

import functools
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _timing import compare, output_path
from flax import nnx

from jaxdiff import from_v, sample, schedules, solvers, timesteps
from jaxdiff.models import EarlyExit, ExitHeads, early_exit_loss, train

EXIT_RECIPE = "exit-v1"  # bump when the heads' recipe (loss, optimizer, steps) changes
EXIT_STEPS = 800
EXIT_LR = 2e-3
STEPS = 20


def prepare_exit_heads(
  config, data, cache_dir, net, *, steps=EXIT_STEPS, joint=False, progress=False
):
  """DeeDiff heads for ``net`` (the demo denoiser of ``config``), trained or restored.

  ``joint=False``: only the heads train (``early_exit_loss(..., train_backbone=False)``,
  Adam with a warmup-cosine schedule, peak ``EXIT_LR``). ``joint=True``: the paper's joint
  training, fine-tuning a copy of ``net`` with the heads (``train_backbone=True``, which
  adds L_simple), at a quarter of the peak rate. Returns ``(net, heads, losses,
  resumed_from)``; the cache key hashes the denoiser's fields and the recipe.
  """
  from jaxdiff.demo._training import _DENOISER_FIELDS, _lr

  loss = early_exit_loss(schedules.vp_cosine(), prediction="v", train_backbone=joint)
  heads = ExitHeads(net, rngs=nnx.Rngs(config.seed + 4))
  if joint:
    model, fit, lr = EarlyExit(nnx.clone(net), heads), loss, EXIT_LR / 4
  else:
    frozen = nnx.split(net)
    model, lr = heads, EXIT_LR

    def fit(heads, x0, y, key):
      return loss(EarlyExit(nnx.merge(*frozen), heads), x0, y, key)

  tag = f"{EXIT_RECIPE}{'-joint' if joint else ''}-d{config.depth}-{steps}"
  r = train(
    model,
    fit,
    optax.adam(_lr(lr, steps)),
    (data.train_x, data.train_y),
    steps=steps,
    batch_size=config.batch_size,
    key=config.seed + 4,
    chunk=config.chunk,
    checkpoint_dir=pathlib.Path(cache_dir) / f"{tag}-{config.key_of(*_DENOISER_FIELDS)}",
    progress="exit heads" if progress else False,
    compiler_options=config.compiler_options,
  )
  if joint:
    return r.model.net, r.model.heads, r.losses, r.resumed_from
  return net, r.model, r.losses, r.resumed_from


def _flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def cost_model(model: EarlyExit, batch: int) -> dict:
  """FLOPs per evaluation of the pieces (XLA cost analysis, batch ``batch``)."""
  net, heads = model.net, model.heads
  x = jnp.zeros((batch, net.image_size, net.image_size))
  t, y = jnp.full((batch,), 0.5), jnp.zeros((batch,), jnp.int32)
  h, c, valid = net.encode(x, t, y)
  return {
    "encode": _flops(lambda x: net.encode(x, t, y)[0], x),
    "block": _flops(lambda h: net.blocks[0](h, c, None), h),
    "uem": _flops(lambda h: heads.uncertainty(0, h, c), h),
    "readout": _flops(lambda h: net.readout(h, c, valid, x), h),
  }


def compute_ratio(costs: dict, blocks: np.ndarray, depth: int) -> float:
  """Mean FLOPs of exiting calls that ran ``blocks`` blocks over a full call's."""
  uems = np.minimum(blocks, depth - 1)
  per_call = costs["encode"] + blocks * costs["block"] + uems * costs["uem"] + costs["readout"]
  return float(np.mean(per_call) / (costs["encode"] + depth * costs["block"] + costs["readout"]))


@functools.partial(jax.jit, static_argnames="per_sample")
def _counts(model, traj, grid_t, labels, per_sample: bool):
  """Blocks evaluated at every step ``(N,)`` (per call) or ``(N, B)`` (per sample)."""
  blocks = lambda x, t, y: model.apply(x, t, y)[1]
  apply = jax.vmap(lambda x, t, y: blocks(x[None], t[None], y[None])) if per_sample else blocks
  step = lambda xt: apply(xt[0], jnp.broadcast_to(xt[1], labels.shape), labels)
  return jax.lax.map(step, (traj[:-1], grid_t[:-1]))


class _PerSample(nnx.Module):
  """The paper's exit rule for a batch of one, vmapped over the batch."""

  def __init__(self, model: EarlyExit):
    self.model = model

  def __call__(self, x, t, cond):
    one = lambda x, t, y: self.model(x[None], t[None], y[None])[0]
    return jax.vmap(one)(x, t, cond)


def run_exit_study(config, data, models, evaluator, labels, *, quick, cache_dir, rounds):
  """Quality, blocks and time vs threshold for one network (its heads trained/cached)."""
  from jaxdiff.demo._training import prepare_models

  out = {}
  schedule = models.schedule
  solver = solvers.make("dpmpp_2m")
  grid = timesteps(schedule, STEPS)
  labels = jnp.asarray(labels, jnp.int32)
  x_T = jax.random.normal(jax.random.key(config.seed + 5), (labels.shape[0], 8, 8))
  setups = [("depth 2 (the demo's denoiser)", config, models.denoiser, False)]
  if not quick:
    deep = config.__class__(**{**_fields(config), "depth": 4})
    deep_net = prepare_models(deep, data, cache_dir).denoiser
    setups += [
      ("depth 2, joint fine-tuning (backbone too)", config, models.denoiser, True),
      ("depth 4 (trained for this study)", deep, deep_net, False),
      ("depth 4, joint fine-tuning (backbone too)", deep, deep_net, True),
    ]
  thresholds = (0.0, 0.25, 0.3, 0.35, 0.4, 0.45)
  for name, cfg, net, joint in setups:
    t0 = time.perf_counter()
    net, heads, losses, resumed = prepare_exit_heads(cfg, data, cache_dir, net, joint=joint)
    train_s = time.perf_counter() - t0
    depth = len(net.blocks)
    costs = cost_model(EarlyExit(net, heads), labels.shape[0])
    base = from_v(net, schedule)
    rows = {}

    def run(den, steps=STEPS, trajectory=False):
      return sample(
        den,
        solver,
        x_T,
        timesteps(schedule, steps),
        key=0,
        cond=labels,
        return_trajectory=trajectory,
      )

    full = run(base)
    rows["full network"] = {
      **evaluator(np.asarray(full.x), np.asarray(labels)),
      "blocks": float(depth),
      "compute": 1.0,
      "steps": STEPS,
    }
    fns = {"full network": lambda: run(base).x}
    for th in thresholds[1:]:
      model = EarlyExit(net, heads, threshold=th)
      den = from_v(model, schedule)
      res = run(den, trajectory=True)
      calls = np.asarray(_counts(model, res.trajectory, grid.t, labels, per_sample=False))
      rows[f"per call, threshold {th:g}"] = {
        **evaluator(np.asarray(res.x), np.asarray(labels)),
        "blocks": float(np.mean(calls)),
        "blocks_per_step": [int(v) for v in calls],
        "compute": compute_ratio(costs, calls, depth),
      }
      fns[f"per call, threshold {th:g}"] = lambda den=den: run(den).x
      res_s = run(from_v(_PerSample(model), schedule), trajectory=True)
      per = np.asarray(_counts(model, res_s.trajectory, grid.t, labels, per_sample=True))
      rows[f"per sample, threshold {th:g}"] = {
        **evaluator(np.asarray(res_s.x), np.asarray(labels)),
        "blocks": float(np.mean(per)),
        "blocks_by_step": [float(v) for v in per.mean(axis=1)],
        "compute": compute_ratio(costs, per.ravel(), depth),
      }
    # The base solver with fewer steps at the compute of each exiting row.
    for r in [r for k, r in rows.items() if "threshold" in k]:
      n_eq = max(1, int(np.floor(STEPS * r["compute"])))
      if n_eq < STEPS and f"full network, {n_eq} steps" not in rows:
        res = run(base, n_eq)
        rows[f"full network, {n_eq} steps"] = {
          **evaluator(np.asarray(res.x), np.asarray(labels)),
          "blocks": float(depth),
          "compute": n_eq / STEPS,
          "steps": n_eq,
        }
        fns[f"full network, {n_eq} steps"] = lambda n=n_eq: run(base, n).x
    timing = compare(fns, baseline="full network", rounds=rounds)
    for k, v in timing.items():
      rows[k]["time_ratio"] = v.ratio
    out[name] = {
      "depth": depth,
      "heads_train_seconds": train_s,
      "heads_resumed_from": int(resumed),
      "heads_final_loss": float(np.mean(losses[-50:])),
      "flops_per_piece": costs,
      "rows": rows,
    }
    _print(name, rows)
  return out


def _fields(config) -> dict:
  import dataclasses

  return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _print(name, rows):
  print(f"\n(exit) DeeDiff on the digits DiT, {name}; DPM-Solver++(2M), time vs full network")
  print(f"{'setting':34s} {'FD':>7s} {'acc':>6s} {'blocks':>7s} {'compute':>8s} {'time':>6s}")
  for k, r in rows.items():
    print(
      f"{k:34s} {r['fd']:7.2f} {r['accuracy']:6.3f} {r['blocks']:7.2f} {r['compute']:8.3f} "
      f"{r.get('time_ratio') or float('nan'):6.2f}"
    )


def run(quick: bool = False) -> dict:
  """The study; writes ``sampling_accelerators_exit.json`` (``--quick``: a temp file)."""
  from jaxdiff.demo._config import DemoConfig, default_cache_dir
  from jaxdiff.demo._evaluation import Evaluator
  from jaxdiff.demo._training import prepare_models
  from jaxdiff.models import load_digits

  t0 = time.perf_counter()
  config = DemoConfig.full()
  data = load_digits(key=config.seed)
  cache_dir = default_cache_dir()
  models = prepare_models(config, data, cache_dir, progress=False)
  evaluator = Evaluator(models.classifier, data.test_x, config.seed)
  per_class = 5 if quick else config.samples_per_class
  labels = np.repeat(np.arange(10), per_class).astype(np.int32)
  out = {
    "setting": {
      "solver": "dpmpp_2m",
      "steps": STEPS,
      "guidance": "none (conditional)",
      "samples": int(labels.shape[0]),
      "heads": f"{EXIT_STEPS} Adam steps (peak lr {EXIT_LR}; joint: {EXIT_LR / 4}), "
      "early_exit_loss; frozen backbone unless 'joint'",
      "blocks": "recounted from the trajectory; per call = the batch exits together",
      "under_load": True,
    },
    "studies": run_exit_study(
      config,
      data,
      models,
      evaluator,
      labels,
      quick=quick,
      cache_dir=cache_dir,
      rounds=1 if quick else 5,
    ),
  }
  out["seconds"] = time.perf_counter() - t0
  path = output_path("sampling_accelerators_exit.json", quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1))
  print(f"\nwrote {path} ({out['seconds']:.0f} s)")
  return out
