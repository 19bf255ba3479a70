"""Guidance study on the exact Gaussian mixture: CFG overshoot vs APG, and AG's NFE savings.

Run: .venv/bin/python bench/guidance_study.py [--quick] [--only mixture|digits|classifier]
(prints the tables, writes bench/results/guidance.json; ``--quick``: 200 mixture samples and
3 digits per class, written to the temporary directory). The mixture part runs on CPU in
float64 in about a minute; the digits part restores the demo's cached models
(``DemoConfig.full()``, trained first if absent) and takes a few minutes. Rules are built by
name from ``jaxdiff.guidance.REGISTRY``.

Part 1 (Sadat et al., APG): class-0 samples at growing guidance scale w. "overshoot" is the
mean signed distance past the class mean along the class-mean direction,
E[<x, mu_0/|mu_0|>] - |mu_0| (0 for exact class samples); "norm" is E|x| / |mu_0|;
"sat" the saturation excess past the data box [-R, R] with R = max|mu| + 3 std.
Part 2 (Castillo et al., AG): for each threshold gamma_bar, the NFE per sample and the
sliced Wasserstein distance (SW2) to CFG's samples (same seeds) and to exact samples of
the classifier-free-guided target's class (class-conditional law), at w = 3.
Part 3 (digits, the demo's DiT denoiser and classifier, DPM-Solver++(2M), 30 samples per
class): the same APG ablation vs CFG at w in a range (FD of classifier features, accuracy,
saturation), and AG (both ``variant``s, several gamma_bar) vs CFG at *equal quality*: the NFE
plain CFG needs, on a coarser grid, to be as close to full CFG's samples (same noise; FD of
classifier features) as AG is.
Part 4 (``--only classifier``, about 2 minutes): classifier guidance (EluCD) on the same
models, see :func:`digits_classifier`.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from _timing import output_path  # noqa: E402

import jaxdiff  # noqa: E402
from jaxdiff import guidance, metrics, schedules, solvers  # noqa: E402
from jaxdiff.testing import GaussianMixture  # noqa: E402

MEANS = jnp.array([[3.0, 0.0], [-1.5, 2.6], [-1.5, -2.6]])
VAR = 0.25
N_SAMPLES = 2000
STEPS = 20


# The CFG-vs-APG rows: (row name, registry rule, hyperparameters).
# Besides CFG and APG as the demo runs it, the ablation switches on one part of APG at a time
# (projection eta = 0, reverse momentum, norm clipping r) and runs the settings of the
# paper's reference code (Sadat et al., appendix: eta = 0, momentum -0.75, r = 2.5).
APG_ROWS = (
  ("cfg", "cfg", {}),
  ("apg(eta=0,b=-0.5)", "apg", dict(eta=0.0, momentum=-0.5)),
  ("apg(eta=0,b=-0.5,r=1)", "apg", dict(eta=0.0, momentum=-0.5, norm_threshold=1.0)),
  ("only projection eta=0", "apg", dict(eta=0.0)),
  ("only momentum b=-0.5", "apg", dict(eta=1.0, momentum=-0.5)),
  ("only clipping r=2.5", "apg", dict(eta=1.0, norm_threshold=2.5)),
  ("paper (eta=0,b=-0.75,r=2.5)", "apg", dict(eta=0.0, momentum=-0.75, norm_threshold=2.5)),
)


def mixture(quick):
  """Parts 1 and 2 on the exact 2-D mixture (float64): the JSON fields they fill."""
  n_samples = 200 if quick else N_SAMPLES
  gmm = GaussianMixture(MEANS, VAR, weights=jnp.array([5.0, 3.0, 2.0]))
  sched = schedules.vp_cosine()
  ts = schedules.timesteps(sched, STEPS, spacing="logsnr")
  den = gmm.denoiser(sched)
  x_T = jax.random.normal(jax.random.key(0), (n_samples, 2))
  cond = jnp.zeros((n_samples,), jnp.int32)
  solver = solvers.make("dpmpp_2m")
  mu0 = MEANS[0]
  r0 = float(jnp.linalg.norm(mu0))
  box = float(jnp.max(jnp.abs(MEANS))) + 3 * VAR**0.5

  def run(rule, steps=STEPS):
    grid = ts if steps == STEPS else schedules.timesteps(sched, steps, spacing="logsnr")
    out = jaxdiff.sample(den, solver, x_T, grid, key=jax.random.key(1), cond=cond, guidance=rule)
    return out.x, int(out.nfe)

  def stats(x):
    along = float(jnp.mean(x @ (mu0 / r0)))
    return {
      "overshoot": along - r0,
      "norm_ratio": float(jnp.mean(jnp.linalg.norm(x, axis=-1))) / r0,
      "saturation": float(metrics.saturation(x, low=-box, high=box)),
      "finite": bool(jnp.isfinite(x).all()),
    }

  rows = []
  print(f"{'w':>5} | {'rule':<28} | {'overshoot':>9} | {'|x|/|mu|':>8} | {'sat':>8}")
  for w in (1.0, 3.0, 7.0, 15.0, 30.0, 50.0):
    for name, rule, hyper in APG_ROWS:
      s = stats(run(guidance.make(rule, w, **hyper))[0])
      rows.append({"scale": w, "rule": name, **s})
      print(
        f"{w:5.1f} | {name:<28} | {s['overshoot']:9.3f} | {s['norm_ratio']:8.3f} | "
        f"{s['saturation']:8.4f}"
      )

  exact = gmm.sample(jax.random.key(2), n_samples, cond)
  key = jax.random.key(3)
  swd = lambda a, b: float(metrics.sliced_wasserstein(a, b, key=key, num_projections=256))
  w = 3.0
  x_cfg, nfe_cfg = run(guidance.make("cfg", w))
  ag_rows = []
  print(
    f"\nAdaptive Guidance at w={w}: CFG nfe={nfe_cfg}, SW2(CFG, exact class)="
    f"{swd(x_cfg, exact):.4f}"
  )
  # Equal cost: CFG on a coarser grid with (about) the evaluations AG made, compared with
  # the same reference (CFG's own samples at STEPS steps). AG saves nothing if plain CFG with
  # fewer steps is as close.
  print(
    f"{'variant':>7} | {'gamma_bar':>9} | {'nfe':>4} | {'saved':>6} | {'SW2 to CFG':>10} | "
    f"{'SW2 to exact':>12} | {'CFG same nfe':>12} | {'its SW2 to CFG':>14}"
  )
  for variant in ("eps", "x0"):
    for thr in (1.01, 0.9999, 0.999, 0.99, 0.95, 0.9):
      x, nfe = run(guidance.make("adaptive", w, threshold=thr, variant=variant))
      steps_eq = max(2, round(nfe / 2))
      x_eq, nfe_eq = run(guidance.make("cfg", w), steps=steps_eq)
      r = {
        "variant": variant,
        "threshold": thr,
        "nfe": nfe,
        "saved_fraction": 1 - nfe / nfe_cfg,
        "sw2_to_cfg": swd(x, x_cfg),
        "sw2_to_exact_class": swd(x, exact),
        "cfg_equal_nfe": {"steps": steps_eq, "nfe": nfe_eq, "sw2_to_cfg": swd(x_eq, x_cfg)},
      }
      ag_rows.append(r)
      print(
        f"{variant:>7} | {thr:9.4f} | {nfe:4d} | {r['saved_fraction']:6.1%} | "
        f"{r['sw2_to_cfg']:10.4f} | {r['sw2_to_exact_class']:12.4f} | {nfe_eq:12d} | "
        f"{r['cfg_equal_nfe']['sw2_to_cfg']:14.4f}"
      )
  return {
    "setup": {
      "means": np.asarray(MEANS).tolist(),
      "variance": VAR,
      "weights": [0.5, 0.3, 0.2],
      "samples": n_samples,
      "steps": STEPS,
      "solver": "dpmpp_2m",
      "schedule": "vp_cosine, logsnr grid",
      "target_class": 0,
    },
    "cfg_vs_apg": rows,
    "adaptive": {
      "scale": w,
      "cfg_nfe": nfe_cfg,
      "sw2_cfg_to_exact": swd(x_cfg, exact),
      "rows": ag_rows,
    },
  }


# Digits rows of the APG ablation: (name, APG hyperparameters overriding the demo's).
INF = float("inf")
DIGIT_APG_ROWS = (
  ("only projection eta=0", dict(eta=0.0, norm_threshold=INF, momentum=0.0)),
  ("only momentum b=-0.5", dict(eta=1.0, norm_threshold=INF, momentum=-0.5)),
  ("only clipping r=2", dict(eta=1.0, norm_threshold=2.0, momentum=0.0)),
  ("eta=0 + momentum b=-0.5", dict(eta=0.0, norm_threshold=INF, momentum=-0.5)),
  ("demo (eta=0,b=-0.5,r=2)", dict(eta=0.0, norm_threshold=2.0, momentum=-0.5)),
  ("paper (eta=0,b=-0.75,r=2.5)", dict(eta=0.0, norm_threshold=2.5, momentum=-0.75)),
)


def digits(quick):
  """Part 3 on the demo's digits models: APG ablation and AG vs CFG at equal quality."""
  from _digits import class_labels, demo_models

  from jaxdiff.demo._evaluation import Evaluator
  from jaxdiff.demo._sampling import Sampler

  config, data, models, evaluator = demo_models()
  labels = class_labels(3 if quick else config.samples_per_class)
  solver = config.sweep_solver
  steps = config.steps_for("cfg", solver)  # the demo's budget: 20 NFE, 10 guided steps
  key = jax.random.key(config.seed + 100)  # the demo's sampling noise
  kwargs = dict(config.rule_kwargs)
  samplers = {
    v: Sampler(models, labels, {**kwargs, "adaptive": {"variant": v}}, config.compiler_options)
    for v in ("eps", "x0")
  }
  run = samplers["eps"]

  def measure(rule, n_steps, sampler=run, **hyper):
    res = sampler(rule, solver, n_steps, key, **hyper)
    return {"nfe": res["nfe"], **evaluator(res["x"], labels)}

  def show(tag, r):
    extra = f" | fd to CFG {r['fd_to_cfg']:7.3f}" if "fd_to_cfg" in r else ""
    print(
      f"{tag:<40} | nfe {r['nfe']:3d} | fd {r['fd']:8.3f} | acc {r['accuracy']:.3f} | "
      f"sat {r['saturation']:.4f}{extra}"
    )

  unguided = measure("none", 2 * steps)
  show(f"unguided ({2 * steps} steps)", unguided)
  scales = (3.0, 8.0) if quick else (2.0, 3.0, 5.0, 8.0, 15.0)
  apg_rows = []
  for w in scales:
    r = {"scale": w, "rule": "cfg", **measure("cfg", steps, scale=w)}
    apg_rows.append(r)
    show(f"w={w:g} cfg", r)
    for name, hyper in DIGIT_APG_ROWS:
      r = {"scale": w, "rule": name, **measure("apg", steps, scale=w, **hyper)}
      apg_rows.append(r)
      show(f"w={w:g} {name}", r)

  # AG vs CFG at equal quality. AG's claim is that it keeps CFG's samples while skipping
  # evaluations, so quality is measured against full CFG's own samples (same noise): the FD
  # of classifier features to them, and the per-sample RMS difference. CFG on a coarser
  # grid is the cheap alternative AG has to beat.
  w = config.scale_of("adaptive")
  x_full = run("cfg", solver, steps, key, scale=w)["x"]
  to_cfg = Evaluator(models.classifier, np.clip(x_full, -1.0, 1.0), config.seed)

  def against_cfg(r, x):
    r["fd_to_cfg"] = to_cfg(x, labels)["fd"]
    r["rms_to_cfg"] = float(np.sqrt(np.mean((np.clip(x, -1, 1) - np.clip(x_full, -1, 1)) ** 2)))
    return r

  cfg_steps = (2, 5, 10) if quick else tuple(range(2, steps + 1))
  cfg_rows = []
  for k in cfg_steps:
    r = {"steps": k, **measure("cfg", k, scale=w)}
    cfg_rows.append(against_cfg(r, run("cfg", solver, k, key, scale=w)["x"]))
    show(f"cfg w={w:g}, {k} steps", r)
  thresholds = (0.99, 0.9999) if quick else (0.9, 0.99, 0.999, 0.9999)
  ag_rows = []
  for variant, sampler in samplers.items():
    for th in thresholds:
      r = {"variant": variant, "threshold": th}
      r.update(measure("adaptive", steps, sampler, scale=w, threshold=th))
      against_cfg(r, sampler("adaptive", solver, steps, key, scale=w, threshold=th)["x"])
      # Equal quality: the fewest evaluations with which CFG on a coarser grid is at least as
      # close to full CFG as AG is.
      match = [c for c in cfg_rows if c["fd_to_cfg"] <= r["fd_to_cfg"]]
      best = min(match, key=lambda c: c["nfe"]) if match else None
      r["cfg_nfe_at_equal_quality"] = best["nfe"] if best else None
      ag_rows.append(r)
      show(f"AG {variant} gamma_bar={th:g}", r)
      print(f"{'':40}   CFG as close to full CFG with nfe {r['cfg_nfe_at_equal_quality']}")
  return {
    "setup": {
      "models": "demo cache, DemoConfig.full()",
      "solver": solver,
      "steps": steps,
      "samples": int(labels.size),
      "metrics": "FD of classifier features to held-out digits, class accuracy, saturation",
    },
    "unguided": unguided,
    "cfg_vs_apg": apg_rows,
    "adaptive": {"scale": w, "cfg_by_steps": cfg_rows, "rows": ag_rows},
  }


def digits_classifier(quick):
  """Part 4, classifier guidance (EluCD) on the demo's digits: why the demo's samples were
  noisy at its former scale 0.3 (FD 75-107). The rule guides the *unconditional* model, so
  its baseline is that model alone (``s = 0``), not conditional sampling. Rows: the scale
  with the factory's temperatures (tau_2 = tau_1, no schedule) and with the official DDPM
  script's (tau_2 = 0.5 tau_1, sine schedule 0.3), each part alone, the three solvers; every
  row also scored by an independently trained classifier (same recipe, another seed), since
  the guiding classifier is the demo's evaluator. Then, per step time of the 20-step grid,
  the classifier on the denoiser's x0_hat of noised held-out digits: accuracy, mean
  confidence, the norm of grad log p(y | x0_hat) and the guidance coefficient sigma^2/alpha.
  """
  from _digits import class_labels, demo_models
  from flax import nnx

  import optim
  from jaxdiff import from_v
  from jaxdiff.demo._evaluation import Evaluator
  from jaxdiff.demo._sampling import Sampler
  from jaxdiff.demo._training import _lr
  from jaxdiff.models import DigitClassifier, classifier_loss, train

  config, data, models, evaluator = demo_models()
  labels = class_labels(3 if quick else config.samples_per_class)
  key = jax.random.key(config.seed + 100)  # the demo's sampling noise
  steps = config.steps_for("classifier", config.sweep_solver)  # 20: one evaluation a step
  c = config
  second = train(
    DigitClassifier(rngs=nnx.Rngs(c.seed + 12)),
    classifier_loss(),
    optim.diffgrad(_lr(c.classifier_lr, c.classifier_steps), weight_decay=1e-4),
    (data.train_x, data.train_y),
    steps=c.classifier_steps,
    batch_size=c.batch_size,
    key=c.seed + 12,
    chunk=c.chunk,
    progress=False,
    compiler_options=c.compiler_options,
  ).model
  test_acc = float(np.mean(np.asarray(second(jnp.asarray(data.test_x))).argmax(-1) == data.test_y))
  judge = Evaluator(second, data.test_x, config.seed)
  print(f"\nindependent classifier: held-out accuracy {test_acc:.3f}")
  sampler = Sampler(models, labels, {}, config.compiler_options)  # the factory's defaults
  official = dict(marginal_temperature=0.5, schedule_amplitude=0.3)
  settings = [("none", "conditional model, no guidance", "none", 0.0, {})]
  settings += [("default", f"s={s:g}", "classifier", s, {}) for s in (0.0, 0.03, 0.1, 0.3, 1.0)]
  settings += [
    ("official", f"s={s:g}", "classifier", s, official) for s in (0.05, 0.1, 0.15, 0.2, 0.3, 1.0)
  ]
  settings += [
    ("tau_2 = 0.5 only", "s=0.1", "classifier", 0.1, dict(marginal_temperature=0.5)),
    ("schedule 0.3 only", "s=0.1", "classifier", 0.1, dict(schedule_amplitude=0.3)),
  ]
  rows = []
  for solver in ("dpmpp_2m", "ddim", "unipc"):
    for temps, setting, rule, s, hyper in settings:
      if solver != "dpmpp_2m" and not (s in (0.0, 0.1, 0.3) and temps in ("default", "official")):
        continue
      x = sampler(rule, solver, steps, key, scale=s, **hyper)["x"]
      r = {"solver": solver, "temperatures": temps, "setting": setting, "scale": s}
      r.update(evaluator(x, labels))
      r["independent"] = judge(x, labels)
      rows.append(r)
      print(
        f"{solver:>8} {temps:<18} {setting:<30} | fd {r['fd']:8.3f} | acc {r['accuracy']:.3f}"
        f" | prec {r['precision']:.3f} | rec {r['recall']:.3f} | sat {r['saturation']:.4f}"
        f" | independent: fd {r['independent']['fd']:8.3f}, acc {r['independent']['accuracy']:.3f}"
      )

  grid = jaxdiff.timesteps(models.schedule, steps, spacing="logsnr")
  denoise = from_v(models.denoiser, models.schedule)
  clf = models.classifier
  x0, y = jnp.asarray(data.test_x), jnp.asarray(data.test_y)
  null = jnp.full(y.shape, -1, jnp.int32)
  grad = jax.jit(jax.grad(lambda z: jax.nn.log_softmax(clf(z))[jnp.arange(y.shape[0]), y].sum()))
  norm = lambda v: float(jnp.mean(jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=-1)))  # noqa: E731
  per_step = []
  print(
    f"\n{'t':>6} | {'sig^2/alpha':>11} | {'acc':>5} | {'conf':>5} | {'|grad|':>6} | {'|x0_hat|':>8}"
  )
  for i in range(steps):
    t, a, sg = (float(np.asarray(v)[i]) for v in (grid.t, grid.alpha, grid.sigma))
    xt = a * x0 + sg * jax.random.normal(jax.random.key(i), x0.shape)
    xh = denoise(xt, jnp.full(y.shape, t), null)
    logits = clf(xh)
    r = {
      "t": t,
      "coefficient": sg**2 / a,
      "accuracy": float(jnp.mean(logits.argmax(-1) == y)),
      "confidence": float(jnp.mean(jax.nn.softmax(logits).max(-1))),
      "grad_norm": norm(grad(xh)),
      "x0_hat_norm": norm(xh),
    }
    per_step.append(r)
    print(
      f"{t:6.3f} | {r['coefficient']:11.2f} | {r['accuracy']:5.3f} | {r['confidence']:5.3f} | "
      f"{r['grad_norm']:6.2f} | {r['x0_hat_norm']:8.2f}"
    )
  return {
    "setup": {
      "models": "demo cache, DemoConfig.full(); guides the unconditional model (label -1)",
      "steps": steps,
      "samples": int(labels.size),
      "official": official,
      "independent_classifier_test_accuracy": test_acc,
    },
    "rows": rows,
    "per_step": per_step,
  }


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="few samples: proves the script runs")
  ap.add_argument(
    "--only", choices=("mixture", "digits", "classifier"), help="run one part (classifier: part 4)"
  )
  args = ap.parse_args()
  out = {}
  if args.only in (None, "mixture"):
    out.update(mixture(args.quick))
  if args.only in (None, "digits"):
    with jax.enable_x64(False):  # the demo's models run in float32
      out["digits"] = digits(args.quick)
  if args.only in (None, "classifier"):
    with jax.enable_x64(False):
      out["digits_classifier"] = digits_classifier(args.quick)
  path = output_path("guidance.json", args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  if args.only is not None and path.exists():  # one part: keep the other's results
    out = {**json.loads(path.read_text()), **out}
  out.update(backend=jax.default_backend(), unix_time=time.time())
  path.write_text(json.dumps(out, indent=2))
  print(f"\nwrote {path}")


if __name__ == "__main__":
  main()
