"""ZOODiP on the 8x8 digits: personalising a quantized DiT from forward passes only.

Run: nice -n 10 .venv/bin/python bench/repro_zo_quant_personalization.py [--quick]
(prints the tables, writes bench/results/repro_zo_quant_personalization.json; ``--quick``:
one target, one seed, fewer steps, written to the temporary directory).

Paper (Seo, Jeong, Lee & Chun, CVPR 2025, arXiv:2503.14868; official code
github.com/ignoww/ZOODiP): textual inversion of one new token of Stable Diffusion v1.5 on
DreamBooth subjects, the whole model quantized to int8 weights (optimum-quanto), the token
trained by zeroth-order Adam from forward passes only (``optim.zeroth_order.
zo_subspace_step``: n = 2 Gaussian forward differences, mu = 1e-3, Adam lr 1e-2 with eps
1e-3, the history-subspace projection refreshed every tau = 128 steps with nu = 1e-3) and
partial uniform timestep sampling (PUTS: t ~ U[500, 900) of 1000). Headline claim: image
and text alignment comparable to textual inversion (backpropagation through the full-
precision model) at 2.37 GB instead of 6.75 GB of GPU memory (Table 1), with the subspace
gradient and PUTS each improving the ZO result (ablations). That setting (Stable Diffusion,
DreamBooth photographs, CLIP/DINO scores, a GPU) is impossible on 2 CPU cores: this study is
the small setting only, and no verdict at the paper's setting is given.

Small setting: the demo's cached class-conditional DiT (v prediction, ``vp_cosine``, 2
blocks, width 64; ``bench/_digits.py``), its weights fake-quantized per output channel with
``optim.quant.quantize_params`` (8 bits; 4 bits as a variant); the "new token" is the
model's null-label embedding row (64 numbers), initialised at the null embedding and trained
on K = 5 training images of one digit (the target), then used as the conditioning of every
sample (label -1). The target digit's own embedding row is never used in training: it is
the oracle row of the tables. Loss: the v-prediction squared error on the K images, one
(t, noise) per image per step, shared by the step's queries (as in the official code).
PUTS here: the 40% of the time range (the paper's 400 of 1000 timesteps) where the label
changes the denoising loss most, measured on the K images before training (the paper's
analysis of where the text embedding matters, Sec. 4.3). Methods, all with Adam and the same
number of steps: ZO without projection (nu = 0), ZOODiP (official projection, tau = 128:
here tau > d, so the history spans the whole space), ZOODiP with tau = 11 (the paper's
tau / d = 128 / 768), ZOODiP with the "principal" variant, ZOODiP with t ~ U over the whole
range (no PUTS), ZOODiP on 4-bit weights, and textual inversion by backpropagation through
the unquantized model (t uniform, the TI reference). One ZO step costs 3 forward passes;
one backprop step is counted as 3 forward-equivalents (forward + backward ~ 2 forwards), so
the step counts are also equal budgets. Metrics: the denoising loss on the K images
(unquantized model, 32 fixed (t, noise) draws per image over the whole range) against
forward passes; the demo classifier's accuracy (argmax = target) and mean confidence
p(target) on 100 samples (DPM-Solver++(2M), 10 steps) with the learned row, from the
quantized model the row was trained on and from the unquantized one; the cosine of the ZO
estimate to the exact minibatch gradient (through the same quantized weights) at the
learned row, with the run's final projection and without it (same perturbations, 64
draws). Memory: XLA's buffer assignment of one compiled training step (the
``memory_analysis`` of the jitted step: temporaries, arguments), ZO on the quantized model
vs backprop on the unquantized one; the weight storage at 8 and 4 bits is nominal (fake
quantization stores float32). Wall times are taken on a shared, loaded 2-core CPU and are
indicative only. 1000 steps (3000 forward passes) per run, 2 targets (digits 3 and 7) x 2
seeds (which K images, the training noise); about 10 minutes under load.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _digits import demo_models
from _timing import output_path
from flax import nnx

import jaxdiff
from jaxdiff import from_v, schedules, solvers
from optim.quant import model_size_bits, quantize_params
from optim.zeroth_order import zo_subspace_init, zo_subspace_step

K_IMAGES = 5
NUM_QUERIES, MU, TAU, NU, LR = 2, 1e-3, 128, 1e-3, 1e-2
PUTS_WIDTH = 0.4
EVAL_DRAWS = 32
NUM_SAMPLES = 100
SOLVER, SAMPLE_STEPS = "dpmpp_2m", 10


class Setup:
  """The cached DiT split into a list of weight leaves, its schedule and classifier."""

  def __init__(self):
    d = demo_models()
    self.config, self.data, self.evaluator = d.config, d.data, d.evaluator
    self.net, self.classifier = d.models.denoiser, d.models.classifier
    self.schedule = d.models.schedule
    self.graphdef, params, self.rest = nnx.split(self.net, nnx.Param, ...)
    flat, self.treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [jax.tree_util.keystr(path) for path, _ in flat]
    self.leaves = [jnp.asarray(v) for _, v in flat]
    self.label_index = next(i for i, n in enumerate(names) if "label" in n)
    self.null_row = self.net.num_classes  # row K of the table: the null label
    self.table = self.leaves[self.label_index]
    # Weights (matrices) are quantized; vectors (biases) and the embedding table stay float,
    # as optimum-quanto quantizes the Linear weights and not the token embeddings.
    self.bits_of = lambda b: [
      None if (i == self.label_index or v.ndim < 2) else b for i, v in enumerate(self.leaves)
    ]

  def quantized(self, bits):
    if bits is None:
      return list(self.leaves)
    return quantize_params(list(self.leaves), self.bits_of(bits), axis=-1)

  def model(self, leaves, row):
    """The DiT whose null-label row is ``row``: conditioning by the learned token."""
    leaves = list(leaves)
    leaves[self.label_index] = leaves[self.label_index].at[self.null_row].set(row)
    return nnx.merge(self.graphdef, jax.tree.unflatten(self.treedef, leaves), self.rest)

  def v_loss(self, leaves, row, x0, t, eps):
    a = self.schedule.alpha(t)[:, None, None]
    s = self.schedule.sigma(t)[:, None, None]
    out = self.model(leaves, row)(a * x0 + s * eps, t, jnp.full(t.shape, -1, jnp.int32))
    return jnp.mean((out - (a * eps - s * x0)) ** 2)


_GAP = {}


def per_t_gap(setup, x0, target, key):
  """The loss with the null row minus the loss with the target's row, per time: where the
  label matters (the paper's Fig. 4 analysis, on the K images; 64 noise draws per time)."""
  grid = np.linspace(0.025, 0.975, 39)
  eps = jax.random.normal(key, (64,) + x0.shape)
  if "fn" not in _GAP:

    @jax.jit
    def gap(x0, true_row, null_row, eps, grid):
      def at(t):
        def one(e):
          tt = jnp.full((x0.shape[0],), t)
          loss = lambda r: setup.v_loss(setup.leaves, r, x0, tt, e)  # noqa: E731
          return loss(null_row) - loss(true_row)

        return jnp.mean(jax.lax.map(one, eps))

      return jax.lax.map(at, grid)

    _GAP["fn"] = gap
  rows = setup.table[target], setup.table[setup.null_row]
  return grid, np.asarray(_GAP["fn"](x0, *rows, eps, jnp.asarray(grid, jnp.float32)))


def puts_range(grid, gap):
  """The window of width PUTS_WIDTH of [t_min, t_max] with the largest mean gap."""
  best, lo_best = -np.inf, 0.0
  for lo in np.linspace(0.0, 1.0 - PUTS_WIDTH, 25):
    inside = (grid >= lo) & (grid <= lo + PUTS_WIDTH)
    if inside.any() and gap[inside].mean() > best:
      best, lo_best = gap[inside].mean(), lo
  return float(lo_best), float(lo_best + PUTS_WIDTH)


_RUNNERS = {}


def runner(setup, mode, variant, tau):
  """One compiled chunk of training steps per (mode, variant); weights, images, time range
  and nu are arguments, so the runs of a method share one compilation."""
  if (mode, variant, tau) in _RUNNERS:
    return _RUNNERS[mode, variant, tau]
  # the official ZOAdam is m_hat / (sqrt(v_hat) + 1e-3); textual inversion: plain Adam
  tx = optax.adam(LR, eps=1e-3) if mode == "zo" else optax.adam(LR)

  def step(carry, kk, leaves, x0, lo, hi, nu):
    row, zs, opt = carry
    k_t, k_eps, k_zo = jax.random.split(kk, 3)
    t = jax.random.uniform(k_t, (x0.shape[0],), minval=lo, maxval=hi)
    eps = jax.random.normal(k_eps, x0.shape)
    fn = lambda r: setup.v_loss(leaves, r, x0, t, eps)  # noqa: E731
    if mode == "zo":
      out = zo_subspace_step(
        fn, row, zs, key=k_zo, num_queries=NUM_QUERIES, mu=MU, nu=nu, variant=variant
      )
      grads, zs = out.grads, out.state
    else:
      grads = jax.grad(fn)(row)
    updates, opt = tx.update(grads, opt)
    return (optax.apply_updates(row, updates), zs, opt)

  @jax.jit
  def run_chunk(carry, keys, leaves, x0, lo, hi, nu):
    body = lambda c, k: (step(c, k, leaves, x0, lo, hi, nu), None)  # noqa: E731
    return jax.lax.scan(body, carry, keys)[0]

  def init():
    row0 = setup.table[setup.null_row]
    return (row0, zo_subspace_init(row0, history_size=tau), tx.init(row0))

  _RUNNERS[mode, variant, tau] = (run_chunk, step, init)
  return _RUNNERS[mode, variant, tau]


def train(
  setup, leaves, x0, *, steps, chunk, key, t_range, mode, variant="official", nu=NU, tau=TAU
):
  """Adam on the row from the null embedding; ``mode``: "zo" (forward passes only) or
  "backprop". Returns the row after every chunk, the wall time (compiled beforehand), the
  number of directions the projection removes or keeps at the end, and one step's memory."""
  run_chunk, step, init = runner(setup, mode, variant, tau)
  lo, hi = (jnp.asarray(v, jnp.float32) for v in t_range)
  nu = jnp.asarray(nu, jnp.float32)
  keys = jax.random.split(key, steps).reshape(steps // chunk, chunk)
  jax.block_until_ready(run_chunk(init(), keys[0], leaves, x0, lo, hi, nu))  # compile
  carry = init()
  rows = [np.asarray(carry[0])]
  t0 = time.perf_counter()
  for ks in keys:
    carry = jax.block_until_ready(run_chunk(carry, ks, leaves, x0, lo, hi, nu))
    rows.append(np.asarray(carry[0]))
  wall = time.perf_counter() - t0
  args = (carry, jax.random.key(0), leaves, x0, lo, hi, nu)
  memory = step_memory(step, args)
  return np.stack(rows), wall, int(carry[1].active.sum()), memory, carry


def step_memory(step, args):
  """XLA's buffer assignment of one compiled step (bytes; the weights are arguments)."""
  m = jax.jit(step).lower(*args).compile().memory_analysis()
  if m is None:
    return None
  return {
    "temp_bytes": int(m.temp_size_in_bytes),
    "argument_bytes": int(m.argument_size_in_bytes),
    "output_bytes": int(m.output_size_in_bytes),
  }


_PROBE = {}


def gradient_cosines(setup, leaves, x0, row, zstate, t_range, variant, key, draws=64):
  """Cosine of the ZO estimate to the exact gradient of the same minibatch loss (through the
  same quantized weights), with the run's final projection and without it (the same
  perturbations): does the subspace denoise the estimate?"""
  if variant not in _PROBE:

    @jax.jit
    def probe(leaves, x0, row, zstate, lo, hi, key):
      def one(kk):
        k_t, k_eps, k_zo = jax.random.split(kk, 3)
        t = jax.random.uniform(k_t, (x0.shape[0],), minval=lo, maxval=hi)
        eps = jax.random.normal(k_eps, x0.shape)
        fn = lambda r: setup.v_loss(leaves, r, x0, t, eps)  # noqa: E731
        exact = jax.grad(fn)(row)
        cos = lambda g: g @ exact / (jnp.linalg.norm(g) * jnp.linalg.norm(exact))  # noqa: E731
        kw = dict(key=k_zo, num_queries=NUM_QUERIES, mu=MU, variant=variant)
        # count 1: no refresh inside the probe, the run's final subspace applies
        st = zstate._replace(count=jnp.ones((), jnp.int32))
        proj = zo_subspace_step(fn, row, st, **kw).grads
        raw = zo_subspace_step(fn, row, st._replace(active=jnp.zeros_like(st.active)), **kw)
        return cos(proj), cos(raw.grads)

      return jax.lax.map(one, jax.random.split(key, draws))

    _PROBE[variant] = probe
  lo, hi = (jnp.asarray(v, jnp.float32) for v in t_range)
  c_proj, c_raw = _PROBE[variant](leaves, x0, row, zstate, lo, hi, key)
  return {"projected": float(jnp.mean(c_proj)), "unprojected": float(jnp.mean(c_raw))}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args()
  quick = args.quick
  targets = (7,) if quick else (3, 7)
  seeds = (0,) if quick else (0, 1)
  steps, chunk = (500, 250) if quick else (1000, 100)
  t_start = time.perf_counter()

  setup = Setup()
  q8, q4 = setup.quantized(8), setup.quantized(4)
  fp = setup.leaves
  labels_all = np.asarray(setup.data.train_y)
  train_x = np.asarray(setup.data.train_x)
  ts = schedules.timesteps(setup.schedule, SAMPLE_STEPS, spacing="logsnr")
  solver = solvers.make(SOLVER)
  k_noise, k_sample = jax.random.split(jax.random.key(setup.config.seed + 100))
  x_T = jax.random.normal(k_noise, (NUM_SAMPLES, 8, 8))

  @jax.jit
  def sample(leaves, row):
    denoise = from_v(lambda x, t, c: setup.model(leaves, row)(x, t, c), setup.schedule)
    cond = jnp.full((NUM_SAMPLES,), -1, jnp.int32)
    return jaxdiff.sample(denoise, solver, x_T, ts, key=k_sample, cond=cond).x

  clf_graph, clf_params = nnx.split(setup.classifier)
  logits_of = jax.jit(lambda x: nnx.merge(clf_graph, clf_params)(jnp.clip(x, -1.0, 1.0)))

  def classify(leaves, row, target):
    probs = jax.nn.softmax(logits_of(sample(leaves, jnp.asarray(row))), -1)
    probs = np.asarray(probs)
    return {
      "accuracy": float(np.mean(probs.argmax(-1) == target)),
      "confidence": float(np.mean(probs[:, target])),
    }

  eval_t = jnp.asarray(np.linspace(0.02, 0.98, EVAL_DRAWS))
  eval_eps = jax.random.normal(jax.random.key(12345), (EVAL_DRAWS, K_IMAGES, 8, 8))

  @jax.jit
  def eval_loss_at(row, x0):
    def one(i):
      return setup.v_loss(fp, row, x0, jnp.full((x0.shape[0],), eval_t[i]), eval_eps[i])

    return jnp.mean(jax.lax.map(one, jnp.arange(EVAL_DRAWS)))

  methods = {
    "zo_no_projection": dict(mode="zo", leaves=q8, nu=0.0, puts=True),
    "zoodip": dict(mode="zo", leaves=q8, puts=True),
    # the paper's history / dimension ratio, 128 / 768, at d = 64
    "zoodip_tau11": dict(mode="zo", leaves=q8, puts=True, tau=11),
    "zoodip_principal": dict(mode="zo", leaves=q8, puts=True, variant="principal"),
    "zoodip_uniform_t": dict(mode="zo", leaves=q8, puts=False),
    "zoodip_4bit": dict(mode="zo", leaves=q4, puts=True),
    "backprop_fp_ti": dict(mode="backprop", leaves=fp, puts=False),
  }
  if quick:
    methods = {k: methods[k] for k in ("zo_no_projection", "zoodip", "backprop_fp_ti")}
  t_full = (float(setup.schedule.t_min), float(setup.schedule.t_max))

  runs, gaps, memory = [], {}, {}
  for target in targets:
    for seed in seeds:
      rng = np.random.default_rng(1000 * target + seed)
      idx = rng.choice(np.flatnonzero(labels_all == target), K_IMAGES, replace=False)
      x0 = jnp.asarray(train_x[idx])
      grid, gap = per_t_gap(setup, x0, target, jax.random.key(seed))
      t_puts = puts_range(grid, gap)
      gaps[f"{target}/{seed}"] = {"t": grid.tolist(), "gap": gap.tolist(), "puts": t_puts}
      eval_loss = lambda row, x0=x0: eval_loss_at(jnp.asarray(row), x0)  # noqa: E731
      base = {
        "init_null_row": setup.table[setup.null_row],
        "oracle_target_row": setup.table[target],
      }
      for name, row in base.items():
        rec = {"target": target, "seed": seed, "method": name, "loss": float(eval_loss(row))}
        rec["q8"] = classify(q8, row, target)
        rec["fp"] = classify(fp, row, target)
        runs.append(rec)
      for name, m in methods.items():
        rows, wall, active, mem, carry = train(
          setup,
          m["leaves"],
          x0,
          steps=steps,
          chunk=chunk,
          key=jax.random.key(seed),
          t_range=t_puts if m["puts"] else t_full,
          mode=m["mode"],
          variant=m.get("variant", "official"),
          nu=m.get("nu", NU),
          tau=m.get("tau", TAU),
        )
        losses = [float(eval_loss(jnp.asarray(r))) for r in rows]
        final = jnp.asarray(rows[-1])
        rec = {
          "target": target,
          "seed": seed,
          "method": name,
          "loss": losses[-1],
          "loss_curve": losses,
          "forward_passes": [3 * chunk * i for i in range(len(rows))],
          "wall_s_under_load": wall,
          "active_directions_at_end": active,
          "distance_to_oracle": float(jnp.linalg.norm(final - setup.table[target])),
          "q8": classify(q8, final, target),
          "fp": classify(fp, final, target),
        }
        if m["mode"] == "zo":
          rec["gradient_cosine"] = gradient_cosines(
            setup,
            m["leaves"],
            x0,
            final,
            carry[1],
            t_puts if m["puts"] else t_full,
            m.get("variant", "official"),
            jax.random.key(99 + seed),
          )
        if m["leaves"] is q4:
          rec["q4"] = classify(q4, final, target)
        runs.append(rec)
        memory.setdefault(name, mem)
        print(
          f"target {target} seed {seed} {name:18s} loss {losses[0]:.4f} -> {losses[-1]:.4f}  "
          f"acc q8 {rec['q8']['accuracy']:.2f} fp {rec['fp']['accuracy']:.2f}  "
          f"conf q8 {rec['q8']['confidence']:.2f}  wall {wall:.1f}s  active {active}  "
          f"cos {rec.get('gradient_cosine')}",
          flush=True,
        )

  # --- summary over targets and seeds
  names = ["init_null_row", "oracle_target_row", *methods]
  summary = {}
  print(f"\n{'method':20s} {'loss':>15s} {'acc q8':>13s} {'conf q8':>13s} {'acc fp':>13s}")
  for name in names:
    rs = [r for r in runs if r["method"] == name]

    def ms(vals):
      return [float(np.mean(vals)), float(np.std(vals))]

    s = {
      "loss": ms([r["loss"] for r in rs]),
      "accuracy_q8": ms([r["q8"]["accuracy"] for r in rs]),
      "confidence_q8": ms([r["q8"]["confidence"] for r in rs]),
      "accuracy_fp": ms([r["fp"]["accuracy"] for r in rs]),
      "confidence_fp": ms([r["fp"]["confidence"] for r in rs]),
      "runs": len(rs),
    }
    if rs and "gradient_cosine" in rs[0]:
      for which in ("projected", "unprojected"):
        s[f"gradient_cosine_{which}"] = ms([r["gradient_cosine"][which] for r in rs])
    if rs and "wall_s_under_load" in rs[0]:
      s["wall_s_under_load"] = ms([r["wall_s_under_load"] for r in rs])
      s["loss_curve_mean"] = np.mean([r["loss_curve"] for r in rs], 0).tolist()
    summary[name] = s
    print(
      f"{name:20s} {s['loss'][0]:.4f}+-{s['loss'][1]:.4f} "
      f"{s['accuracy_q8'][0]:.2f}+-{s['accuracy_q8'][1]:.2f} "
      f"{s['confidence_q8'][0]:.2f}+-{s['confidence_q8'][1]:.2f} "
      f"{s['accuracy_fp'][0]:.2f}+-{s['accuracy_fp'][1]:.2f}"
    )
  weights = {
    "float32_bits": model_size_bits(fp, 32),
    "int8_bits": model_size_bits(fp, setup.bits_of(8)),
    "int4_bits": model_size_bits(fp, setup.bits_of(4)),
  }
  print("\nmemory of one compiled step (bytes):")
  for name, m in memory.items():
    print(f"  {name:20s} {m}")
  print(f"weights (bits): {weights}")
  out = {
    "setting": {
      "model": "demo DiT (dim 64, depth 2, v prediction, vp_cosine)",
      "k_images": K_IMAGES,
      "num_queries": NUM_QUERIES,
      "mu": MU,
      "history_size": TAU,
      "nu": NU,
      "learning_rate": LR,
      "steps": steps,
      "puts_width": PUTS_WIDTH,
      "targets": list(targets),
      "seeds": list(seeds),
      "sampler": f"{SOLVER}, {SAMPLE_STEPS} steps, {NUM_SAMPLES} samples",
      "forward_equivalents_per_step": 3,
    },
    "summary": summary,
    "memory_one_step_bytes": memory,
    "weight_storage_bits": weights,
    "per_t_gap": gaps,
    "runs": runs,
    "wall_total_s_under_load": time.perf_counter() - t_start,
    "note": "wall times on a shared, loaded 2-core CPU: indicative only",
  }
  path = output_path("repro_zo_quant_personalization.json", quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w") as fh:
    json.dump(out, fh, indent=1)
  print(f"wrote {path} ({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
  main()
