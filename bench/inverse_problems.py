"""Inverse problems with a diffusion or flow prior: DPS, STSL, FlowChef, RED-diff.

Run: .venv/bin/python bench/inverse_problems.py [--quick]
[--part gmm|stsl_probes|digits|minority|all]
(prints tables, writes bench/results/inverse_problems.json and the image grid
bench/results/inverse_problems_digits.png; ``--quick``: fewer samples and steps, written
to the temporary directory).

Part 1, the exact testbed (float64): an 8-D, 4-component Gaussian mixture prior and a
measurement ``y = A x + s n`` of a point between two components (so the posterior has
several modes), for three operators: random masking (half the coordinates), a Gaussian blur and an
under-determined random projection (3 x 8). The exact posterior is a mixture
(:meth:`jaxdiff.testing.GaussianMixture.posterior`); each sampler's samples are compared
with exact posterior samples by the sliced Wasserstein distance (SW2), next to the prior's
distance and the data-vs-data floor (two independent exact draws). Every sampler takes
100 network evaluations per sample (STSL: 50 steps x (1 evaluation + 1 probe)).

``--part stsl_probes`` (not in ``all``): STSL on the same mixture problems with 1, 2, 4 and 8
Hutchinson probes per step, at DPS's 100 evaluations and at 50 steps.

Part 2, the digits (the demo's cached networks: the v-prediction denoiser on
``vp_cosine`` and the rectified flow of ``prepare_flow_model``): box inpainting (the
central 4 x 4 hidden) and 2x super-resolution (average pooling) of 100 held-out digits
with measurement noise 0.05, 50 steps. Per method: PSNR to the ground truth, the
measurement residual ``||A x - y|| / sqrt(M)``, the demo classifier's accuracy on the
restorations (true labels), NFE per sample and wall time (one call after compilation;
measured on a loaded 2-core machine). STSL vs DPS at equal NFE is the STSL paper's claim.

Part 3, minority guidance on the digits: minority scores of the training digits (Tweedie
reconstruction error after re-noising to t = 0.5), 4 quantile levels, a noise-aware MLP
level classifier, and the level distribution of 100 unconditional samples guided toward
the rarest / the commonest level (grid: bench/results/minority_guidance_digits.png).
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from _timing import output_path

import jaxdiff
from jaxdiff import guidance, inverse, metrics, schedules, solvers
from jaxdiff.demo._figures import save_columns
from jaxdiff.demo._inverse import NOISE_STD as NOISE_DIGITS
from jaxdiff.demo._inverse import held_out, least_squares, problems, score
from jaxdiff.testing import GaussianMixture

NOISE_GMM = 0.1


def _sample(denoise, sched, solver, x_T, steps, rule, spacing="logsnr", cond=None):
  ts = schedules.timesteps(sched, steps, spacing=spacing)
  out = jaxdiff.sample(denoise, solver, x_T, ts, key=1, guidance=rule, cond=cond)
  return out.x, int(out.nfe)


def gmm_methods(den_vp, den_flow, op, yb, x_T, steps):
  """(name, thunk -> (samples, nfe)) of every sampler on the mixture; 100 NFE each."""
  vp, fl = schedules.vp_cosine(), schedules.flow()
  ddpm, ddim = solvers.ddpm(), solvers.ddim()
  rows = []
  for s in (3.0, 10.0, 30.0):
    rows.append(
      (
        f"DPS (zeta={s:g})",
        lambda s=s: _sample(den_vp, vp, ddpm, x_T, steps, guidance.dps(op, yb, s)),
      )
    )
  rows.append(
    (
      "DPS (gaussian, s=noise)",
      lambda: _sample(
        den_vp,
        vp,
        ddpm,
        x_T,
        steps,
        guidance.dps(op, yb, 1.0, variant="gaussian", noise_std=NOISE_GMM),
      ),
    )
  )
  for s in (3.0, 10.0, 30.0):
    rows.append(
      (
        f"STSL (zeta={s:g}), equal NFE",
        lambda s=s: _sample(den_vp, vp, ddpm, x_T, steps // 2, guidance.stsl(op, yb, s)),
      )
    )
  for s in (0.1, 0.3, 1.0):
    loss = inverse.measurement_loss(op, yb)
    rows.append(
      (
        f"FlowChef (s={s:g})",
        lambda s=s: _sample(den_flow, fl, ddim, x_T, steps, guidance.flowchef(loss, s), "uniform"),
      )
    )
  for lam in (0.25, 1.0):
    ts = schedules.timesteps(vp, steps, spacing="logsnr")
    rows.append(
      (
        f"RED-diff (lam={lam:g})",
        lambda lam=lam, ts=ts: (lambda o: (o.x, int(o.nfe)))(
          inverse.red_diff(den_vp, op, yb, ts, key=3, lam=lam, init=x_T)
        ),
      )
    )
  return rows


def part_gmm(quick):
  jax.config.update("jax_enable_x64", True)
  n, steps, dim = (300, 40, 8) if quick else (1000, 100, 8)
  rng = np.random.default_rng(0)
  gmm = GaussianMixture(rng.normal(size=(4, dim)) * 1.5, 0.25)
  ops = {
    "mask": inverse.random_mask((dim,), 0.5, key=1),
    "blur": inverse.gaussian_blur((dim,), 1.0),
    "projection": inverse.matrix(jnp.asarray(rng.normal(size=(3, dim)) / np.sqrt(3))),
  }
  x_mid = 0.5 * (gmm.means[0] + gmm.means[1])[None]
  den_vp, den_flow = gmm.denoiser(schedules.vp_cosine()), gmm.denoiser(schedules.flow())
  x_T = jax.random.normal(jax.random.key(1), (n, dim))
  out = {}
  for name, op in ops.items():
    y = inverse.measure(op, x_mid, NOISE_GMM, key=5)
    post = gmm.posterior(op.matrix(), y[0], NOISE_GMM)
    ref = post.sample(11, n)
    sw = lambda a: float(metrics.sliced_wasserstein(a, ref, key=7, num_projections=256))
    weights = np.exp(np.asarray(post.log_weights))
    res = {
      "posterior_weights": weights.round(4).tolist(),
      "data_vs_data": sw(post.sample(12, n)),
      "prior": sw(gmm.sample(13, n)),
      "methods": {},
    }
    print(f"\n[{name}] {op.name}; posterior weights {weights.round(3)}")
    print(f"  {'data vs data (floor)':34s} SW2 {res['data_vs_data']:.3f}")
    print(f"  {'prior (no measurement)':34s} SW2 {res['prior']:.3f}")
    yb = jnp.broadcast_to(y, (n, *op.out_shape))
    for label, thunk in gmm_methods(den_vp, den_flow, op, yb, x_T, steps):
      t0 = time.perf_counter()
      x, nfe = thunk()
      x = np.asarray(x)
      wall = time.perf_counter() - t0
      d = sw(x) if np.all(np.isfinite(x)) else float("nan")
      resid = float(np.sqrt(np.mean((np.asarray(op(x)) - np.asarray(yb)) ** 2)))
      res["methods"][label] = {
        "sw2": d,
        "nfe": nfe,
        "residual_rms": resid,
        "wall_s_incl_compile": wall,
      }
      print(f"  {label:34s} SW2 {d:.3f}  residual {resid:.3f}  NFE {nfe}")
    out[name] = res
  jax.config.update("jax_enable_x64", False)
  return {
    "setting": {
      "dim": dim,
      "components": 4,
      "var": 0.25,
      "noise_std": NOISE_GMM,
      "samples": n,
      "steps": steps,
    },
    "problems": out,
  }


def part_stsl_probes(quick):
  """STSL's probe count on the mixture problems of :func:`part_gmm` (same prior, operators,
  measurement, noise and reference samples): num_probes in (1, 2, 4, 8), zeta in (3, 10,
  30), at DPS's budget of 100 evaluations (steps = 100 // (1 + probes)) and at part gmm's
  STSL step count (50 steps, 50 (1 + probes) evaluations)."""
  jax.config.update("jax_enable_x64", True)
  n, nfe, dim = (300, 40, 8) if quick else (1000, 100, 8)
  probes = (1, 4) if quick else (1, 2, 4, 8)
  scales = (10.0,) if quick else (3.0, 10.0, 30.0)
  rng = np.random.default_rng(0)
  gmm = GaussianMixture(rng.normal(size=(4, dim)) * 1.5, 0.25)
  ops = {
    "mask": inverse.random_mask((dim,), 0.5, key=1),
    "blur": inverse.gaussian_blur((dim,), 1.0),
    "projection": inverse.matrix(jnp.asarray(rng.normal(size=(3, dim)) / np.sqrt(3))),
  }
  x_mid = 0.5 * (gmm.means[0] + gmm.means[1])[None]
  den_vp, vp, ddpm = gmm.denoiser(schedules.vp_cosine()), schedules.vp_cosine(), solvers.ddpm()
  x_T = jax.random.normal(jax.random.key(1), (n, dim))
  out = {}
  for name, op in ops.items():
    y = inverse.measure(op, x_mid, NOISE_GMM, key=5)
    ref = gmm.posterior(op.matrix(), y[0], NOISE_GMM).sample(11, n)
    sw = lambda a: float(metrics.sliced_wasserstein(a, ref, key=7, num_projections=256))
    yb = jnp.broadcast_to(y, (n, *op.out_shape))
    rows = {}
    for p in probes:
      for steps in sorted({nfe // (1 + p), nfe // 2}):
        for s in scales:
          rule = guidance.stsl(op, yb, s, num_probes=p)
          x, used = _sample(den_vp, vp, ddpm, x_T, steps, rule)
          x = np.asarray(x)
          d = sw(x) if np.all(np.isfinite(x)) else float("nan")
          rows[f"probes={p}_steps={steps}_zeta={s:g}"] = {
            "probes": p,
            "steps": steps,
            "zeta": s,
            "nfe": used,
            "sw2": d,
          }
          print(f"  [{name}] probes {p} steps {steps:>3} zeta {s:>4g}: SW2 {d:.3f}  NFE {used}")
    out[name] = rows
  jax.config.update("jax_enable_x64", False)
  return {
    "setting": {"samples": n, "dps_nfe": nfe, "probes": probes, "zeta": scales},
    "problems": out,
  }


def _flow_view(denoise_vp, vp):
  """The VP denoiser seen on the flow schedule: same logSNR, state rescaled (no training)."""
  fl = schedules.flow()

  def den(x, t, cond):
    lam = jnp.clip(fl.logsnr(t), vp.logsnr(vp.t_max), vp.logsnr(vp.t_min))
    tv = vp.t_from_logsnr(lam)
    c = vp.alpha(tv) + vp.sigma(tv)  # x_vp = c * x_flow at equal SNR (alpha_f + sigma_f = 1)
    return denoise_vp(c[:, None, None] * x, tv, cond)

  return den


def _digits_models():
  from _digits import demo_models

  config, data, models, _ = demo_models()
  return config, data, models


def part_digits(quick):
  from jaxdiff import from_v
  from jaxdiff.demo._config import default_cache_dir
  from jaxdiff.demo._training import prepare_flow_model

  config, data, models = _digits_models()
  try:
    flow = prepare_flow_model(config, data, default_cache_dir(), progress=False)
    flow_note = "the demo's rectified-flow model (prepare_flow_model)"
  except Exception as err:  # noqa: BLE001 - fall back to the VP model on the flow schedule
    flow = None
    flow_note = f"no flow model ({err}); FlowChef on the VP denoiser via a change of variables"
  vp = models.schedule
  den_vp = from_v(models.denoiser, vp)
  den_flow = flow.denoise if flow is not None else _flow_view(den_vp, vp)
  clf = models.classifier
  n = 40 if quick else 100
  steps = 20 if quick else 50
  x_true, labels = held_out(data, n)
  null = -jnp.ones((n,), jnp.int32)
  x_T = jax.random.normal(jax.random.key(2), (n, 8, 8))
  ddpm, euler = solvers.ddpm(), solvers.ddim()
  out, grids = {}, {}
  for pname, op in problems().items():
    y = inverse.measure(op, x_true, NOISE_DIGITS, key=3)
    loss = inverse.measurement_loss(op, y)
    # Rules are built once: a freshly built rule compiles jaxdiff.sample again.
    r_dps, r_stsl = guidance.dps(op, y, 10.0), guidance.stsl(op, y, 10.0)
    r_chef = guidance.flowchef(loss, 1.0)
    ts_red = schedules.timesteps(vp, steps, spacing="logsnr")
    methods = {
      "A^T y (no prior)": lambda: (least_squares(op, y), 0),  # A^+ = 4 A^T for pooling
      "prior sample (no measurement)": lambda: _sample(
        den_vp, vp, ddpm, x_T, steps, None, cond=null
      ),
      "DPS": lambda: _sample(den_vp, vp, ddpm, x_T, steps, r_dps, cond=null),
      "DPS (half the steps)": lambda: _sample(den_vp, vp, ddpm, x_T, steps // 2, r_dps, cond=null),
      "STSL (equal NFE)": lambda: _sample(den_vp, vp, ddpm, x_T, steps // 2, r_stsl, cond=null),
      "STSL (equal steps)": lambda: _sample(den_vp, vp, ddpm, x_T, steps, r_stsl, cond=null),
      "FlowChef": lambda: _sample(
        den_flow, schedules.flow(), euler, x_T, steps, r_chef, "uniform", cond=null
      ),
      "RED-diff": lambda: (lambda o: (o.x, int(o.nfe)))(
        inverse.red_diff(den_vp, op, y, ts_red, key=4, cond=null)
      ),
    }
    res = {}
    print(f"\n[{pname}] {op.name}, noise {NOISE_DIGITS}, {n} held-out digits, {steps} steps")
    print(f"  {'method':30s} {'PSNR':>6s} {'resid':>6s} {'acc':>5s} {'NFE':>4s} {'wall s':>7s}")
    grids[pname] = {"ground truth": np.asarray(x_true), "measurement (A^T y)": np.asarray(op.T(y))}
    for name, thunk in methods.items():
      jax.block_until_ready(thunk())  # compile
      t0 = time.perf_counter()
      x, nfe = jax.block_until_ready(thunk())
      wall = time.perf_counter() - t0
      sc = score(x, x_true, op, y, clf, labels)
      res[name] = {**sc, "nfe": nfe, "wall_s": wall}
      p, r, acc = sc["psnr"], sc["residual"], sc["accuracy"]
      print(f"  {name:30s} {p:6.2f} {r:6.3f} {acc:5.2f} {nfe:4d} {wall:7.2f}")
      grids[pname][name] = np.clip(np.asarray(x), -1, 1)
    out[pname] = res
  ctx = {"den_vp": den_vp, "vp": vp, "data": data, "n": n}
  return (
    {
      "setting": {"images": n, "steps": steps, "noise_std": NOISE_DIGITS, "flow_model": flow_note},
      "problems": out,
    },
    grids,
    ctx,
  )


def _level_classifier(key, x0, levels, sched, num_levels, steps):
  """A noise-aware MLP ``(x_t, t) -> level logits`` trained on noised data (optax Adam)."""
  import optax

  d, hidden = int(np.prod(x0.shape[1:])), 256
  k1, k2, k3 = jax.random.split(key, 3)
  init = lambda k, i, o: jax.random.normal(k, (i, o)) * np.sqrt(2.0 / i)
  params = {
    "w1": init(k1, d + 2, hidden),
    "b1": jnp.zeros(hidden),
    "w2": init(k2, hidden, hidden),
    "b2": jnp.zeros(hidden),
    "w3": init(k3, hidden, num_levels) * 0.1,
    "b3": jnp.zeros(num_levels),
  }

  def net(p, x, t):
    lam = sched.logsnr(t) / 10.0
    h = jnp.concatenate(
      [x.reshape(x.shape[0], -1), jnp.sin(lam)[:, None], jnp.cos(lam)[:, None]], 1
    )
    h = jax.nn.silu(h @ p["w1"] + p["b1"])
    h = jax.nn.silu(h @ p["w2"] + p["b2"])
    return h @ p["w3"] + p["b3"]

  tx = optax.adam(optax.cosine_decay_schedule(2e-3, steps))
  opt = tx.init(params)
  x0, levels = jnp.asarray(x0), jnp.asarray(levels)

  @jax.jit
  def step(p, opt, k):
    ki, kt, ke = jax.random.split(k, 3)
    i = jax.random.randint(ki, (256,), 0, x0.shape[0])
    t = jax.random.uniform(kt, (256,), minval=sched.t_min, maxval=sched.t_max)
    a, s = sched.alpha(t)[:, None, None], sched.sigma(t)[:, None, None]
    xt = a * x0[i] + s * jax.random.normal(ke, x0[i].shape)
    loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(
      net(p, xt, t), levels[i]
    ).mean()
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, opt = tx.update(g, opt, p)
    return optax.apply_updates(p, u), opt, loss

  for k in jax.random.split(jax.random.key(5), steps):
    params, opt, loss = step(params, opt, k)
  return lambda x, t: net(params, x, t), float(loss)


def part_minority(quick, ctx):
  """Minority guidance on the digits: the minority-score distribution of guided samples."""
  if ctx is None:
    from jaxdiff import from_v

    _, data, models = _digits_models()
    ctx = {
      "den_vp": from_v(models.denoiser, models.schedule),
      "vp": models.schedule,
      "data": data,
      "n": 40 if quick else 100,
    }
  den_vp, vp, data, n = ctx["den_vp"], ctx["vp"], ctx["data"], ctx["n"]
  num_levels, t_score, draws = 4, 0.5, 4 if quick else 8
  score = lambda x, k: np.asarray(
    guidance.minority_score(
      den_vp,
      vp,
      jnp.asarray(x),
      t_score,
      key=k,
      num_draws=draws,
      cond=-jnp.ones((x.shape[0],), jnp.int32),
    )
  )
  train_scores = np.concatenate(
    [score(data.train_x[i : i + 256], i) for i in range(0, len(data.train_x), 256)]
  )
  levels, thresholds = guidance.minority_levels(train_scores, num_levels)
  clf, final_loss = _level_classifier(
    jax.random.key(0), data.train_x, levels, vp, num_levels, 300 if quick else 1000
  )
  steps = 20 if quick else 50
  null = -jnp.ones((n,), jnp.int32)
  x_T = jax.random.normal(jax.random.key(7), (n, 8, 8))
  rows = {"no guidance": None}
  for w in (1.0, 3.0):
    rows[f"level {num_levels - 1} (rarest), w={w:g}"] = guidance.minority(
      clf, num_levels, num_levels - 1, w
    )
  rows["level 0 (most common), w=3"] = guidance.minority(clf, num_levels, 0, 3.0)
  out = {
    "num_levels": num_levels,
    "t": t_score,
    "thresholds": thresholds.tolist(),
    "classifier_final_loss": final_loss,
    "rows": {},
  }
  samples = {}
  th = np.round(thresholds, 4)
  print(f"\n[minority guidance] L={num_levels} levels of the minority score at t={t_score}: {th}")
  head = f"fraction per level (0 common .. {num_levels - 1} rare)"
  print(f"  {'rule':32s} {'mean score':>10s} {'median':>8s}  {head}")
  ref = np.bincount(levels, minlength=num_levels) / len(levels)
  mean, med = train_scores.mean(), np.median(train_scores)
  print(f"  {'training data':32s} {mean:10.4f} {med:8.4f}  {np.round(ref, 2)}")
  for name, rule in rows.items():
    x, _ = _sample(den_vp, vp, solvers.ddim(), x_T, steps, rule, cond=null)
    x = np.clip(np.asarray(x), -1, 1)
    sc = score(x, 99)
    frac = np.bincount(np.searchsorted(thresholds, sc, side="right"), minlength=num_levels) / n
    out["rows"][name] = {
      "mean": float(sc.mean()),
      "median": float(np.median(sc)),
      "level_fraction": frac.tolist(),
    }
    print(f"  {name:32s} {sc.mean():10.4f} {np.median(sc):8.4f}  {np.round(frac, 2)}")
    samples[name] = x[np.argsort(-sc)]
  return out, samples


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="small sizes: proves the script runs")
  ap.add_argument(
    "--part", choices=("gmm", "stsl_probes", "digits", "minority", "all"), default="all"
  )
  args = ap.parse_args()
  path = output_path("inverse_problems.json", args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  results = {}
  t0 = time.perf_counter()

  def save():  # after every part, merged into what is there (parts may run separately)
    merged = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**merged, **results}, indent=2))

  if args.part in ("gmm", "all"):
    t = time.perf_counter()
    results["gmm"] = part_gmm(args.quick)
    results["gmm"]["wall_s"] = time.perf_counter() - t
    save()
  if args.part == "stsl_probes":  # not in "all": a sweep over part gmm's STSL rows
    t = time.perf_counter()
    results["stsl_probes"] = part_stsl_probes(args.quick)
    results["stsl_probes"]["wall_s"] = time.perf_counter() - t
    save()
  ctx = None
  if args.part in ("digits", "all"):
    t = time.perf_counter()
    results["digits"], grids, ctx = part_digits(args.quick)
    results["digits"]["wall_s"] = time.perf_counter() - t
    save_columns(path.with_name("inverse_problems_digits.png"), grids)
    save()
  if args.part in ("digits", "minority", "all"):
    t = time.perf_counter()
    results["minority"], samples = part_minority(args.quick, ctx)
    results["minority"]["wall_s"] = time.perf_counter() - t
    save_columns(
      path.with_name("minority_guidance_digits.png"), {"sorted by minority score": samples}, rows=10
    )
    save()
  print(f"\nwrote {path} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
  main()
