"""The demo's report: the claims as measured, and ``report.md``."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from jaxdiff import guidance
from jaxdiff.demo._config import DemoConfig, default_cache_dir, rule_label, solver_label
from jaxdiff.demo._evaluation import _setting
from jaxdiff.demo._training import Models

__all__ = ["claims", "fmt", "report"]


def fmt(v, nd=3) -> str:
  """``v`` for a table: floats with ``nd`` decimals, or in scientific notation when extreme.

  Example:
    >>> fmt(0.5, 2), fmt(1e-5), fmt("x")
    ('0.50', '1.00e-05', 'x')
  """
  if isinstance(v, float):
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
      return f"{v:.2e}"
    return f"{v:.{nd}f}"
  return str(v)


_METRICS_HEAD = "FD | accuracy | precision | recall | saturation |"


def _metric_cells(r: dict) -> str:
  """The five metric cells of a table row (``_METRICS_HEAD``'s columns)."""
  return (
    f"{r['fd']:.3f} | {r['accuracy']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
    f"{r['saturation']:.4f} |"
  )


def claims(config: DemoConfig, results: dict, sweep_solver: str) -> list[str]:
  """The report's "Claims, measured" lines, each saying whether the claim held in ``results``."""
  grid, sweep = results["grid"], results["sweep"]
  lines = []

  def find(rule, solver):
    return next((r for r in grid if r["rule"] == rule and r["solver"] == solver), None)

  # 1. guided accuracy above unguided, per solver.
  verdicts = []
  for s in config.solvers:
    base, cfg = find("none", s), find("cfg", s)
    if base and cfg:
      others = [r for r in grid if r["solver"] == s and r["rule"] not in ("none",)]
      above = sum(r["accuracy"] > base["accuracy"] for r in others)
      verdicts.append(
        f"{solver_label(s)}: unguided {base['accuracy']:.3f} vs CFG {cfg['accuracy']:.3f} "
        f"({above}/{len(others)} guided rules above unguided)"
      )
  if verdicts:
    holds = all(
      find("cfg", s)["accuracy"] > find("none", s)["accuracy"]
      for s in config.solvers
      if find("cfg", s) and find("none", s)
    )
    lines.append(
      f"- **Guided class accuracy above unguided** (CFG at w = {config.scale_of('cfg'):g}): "
      f"{'holds' if holds else 'does NOT hold'} -- " + "; ".join(verdicts) + "."
    )
  # 2. APG saturation below CFG at the highest scale.
  w_max = max(config.sweep_scales) if config.sweep_scales else None
  cfg_hi = next((r for r in sweep if r["rule"] == "cfg" and r["w"] == w_max), None)
  apg_hi = next((r for r in sweep if r["rule"] == "apg" and r["w"] == w_max), None)
  if cfg_hi and apg_hi:
    holds = apg_hi["saturation"] < cfg_hi["saturation"]
    lines.append(
      f"- **APG's saturation below CFG's at the highest scale** (w = {w_max:g}, "
      f"{solver_label(sweep_solver)}): {'holds' if holds else 'does NOT hold'} -- "
      f"APG {apg_hi['saturation']:.4f} vs CFG {cfg_hi['saturation']:.4f} (mean excess "
      f"beyond [-1, 1]); accuracy APG {apg_hi['accuracy']:.3f} vs CFG {cfg_hi['accuracy']:.3f}, "
      f"FD APG {apg_hi['fd']:.3f} vs CFG {cfg_hi['fd']:.3f}."
    )
    parts = [r for r in results["studies"] if r["study"].startswith("APG components")]
    if parts:
      verdict = lambda r: "below" if r["saturation"] < cfg_hi["saturation"] else "not below"
      lines.append(
        "  Component study at the same scale (saturation, and whether it is below CFG's): "
        + "; ".join(f"{r['setting']}: {r['saturation']:.4f} ({verdict(r)})" for r in parts)
        + "."
      )
  # 3. Adaptive Guidance's savings: the verdict is at equal quality (the guidance ablation).
  ag_rows = []
  for s in config.solvers:
    ag, cfg = find("adaptive", s), find("cfg", s)
    if ag and cfg:
      saving = 1.0 - ag["nfe"] / cfg["nfe"]
      ag_rows.append(
        f"{solver_label(s)}: {ag['nfe']} vs {cfg['nfe']} evaluations ({100 * saving:.0f}% "
        f"fewer), accuracy {ag['accuracy']:.3f} vs {cfg['accuracy']:.3f}, FD {ag['fd']:.3f} "
        f"vs {cfg['fd']:.3f}, wall {ag['wall_s']:.2f} s vs {cfg['wall_s']:.2f} s"
      )
  if ag_rows:
    kw = config.rule_kwargs.get("adaptive", {})
    variant = kw.get("variant", _setting(config, "adaptive", guidance.adaptive, "variant"))
    threshold = kw.get("threshold", _setting(config, "adaptive", _ag_build(), "threshold"))
    verdict, detail = _ag_saving(results["studies"], variant)
    lines.append(
      f'- **Adaptive Guidance saves evaluations at equal quality** (`variant="{variant}"`, '
      f"threshold {threshold}, w = {config.scale_of('adaptive'):g}, "
      f"{solver_label(sweep_solver)}): {verdict} -- {detail}. At the grid's budget (CFG's "
      "steps; evaluations alone are no verdict: a variant that switches off guidance early "
      "saves the most): " + "; ".join(ag_rows) + "."
    )
    ths = [r for r in results["studies"] if r["study"].startswith("AG threshold")]
    if ths:
      lines.append(
        "  Threshold study: "
        + "; ".join(f"{r['setting']}: NFE {r['nfe']}, accuracy {r['accuracy']:.3f}" for r in ths)
        + ". After its switch AG is conditional-only, so its accuracy falls back toward the "
        "unguided value: how early it switches decides the trade-off."
      )
  lines.extend(_ag_equal_quality(results["studies"]))
  return lines


def _ag_build():
  """The registry's builder of Adaptive Guidance (it holds the default threshold)."""
  return guidance.REGISTRY["adaptive"].build


def _ag_rows(studies: list[dict]) -> tuple[list[dict], list[dict]]:
  """The guidance ablation's (CFG rows, AG rows) of the equal-quality comparison."""
  rows = [r for r in studies if r["study"].startswith("AG vs CFG at equal quality")]
  return [r for r in rows if r["setting"].startswith("CFG")], [
    r for r in rows if r["setting"].startswith("AG")
  ]


def _cheapest_as_close(cfg: list[dict], ag: dict) -> dict:
  """The CFG run with the fewest evaluations that is at least as close to full CFG's
  samples as ``ag`` (full CFG itself, the reference, when no coarser grid is)."""
  match = [c for c in cfg if c["fd_to_cfg"] <= ag["fd_to_cfg"]]
  return min(match or [max(cfg, key=lambda c: c["nfe"])], key=lambda c: c["nfe"])


def _ag_saving(studies: list[dict], variant: str) -> tuple[str, str]:
  """(verdict, detail) of "AG saves evaluations" for ``variant``, from the ablation rows:
  it holds when AG makes fewer evaluations than the cheapest CFG run as close to full
  CFG's samples (the same noise)."""
  cfg, ags = _ag_rows(studies)
  ag = next((r for r in ags if r.get("variant") == variant), None)
  if ag is None or not cfg:
    return "not measured", "the guidance ablation did not run (`guidance_ablation=False`)"
  best = _cheapest_as_close(cfg, ag)
  saved = best["nfe"] - ag["nfe"]
  detail = (
    f"AG makes {ag['nfe']} evaluations at FD {ag['fd_to_cfg']:.3f} to full CFG's samples; "
    f"the cheapest CFG run at least as close ({best['setting']}) makes {best['nfe']} "
    f"(FD {best['fd_to_cfg']:.3f})"
  )
  if saved > 0:
    plural = "s" if saved > 1 else ""
    return "holds", f"{detail}: {saved} evaluation{plural} saved ({100 * saved / best['nfe']:.0f}%)"
  return "does NOT hold", f"{detail}: AG saves nothing at equal quality"


def _ag_equal_quality(studies: list[dict]) -> list[str]:
  """AG vs CFG on coarser grids at equal closeness to full CFG (``fd_to_cfg``), if run."""
  cfg, ags = _ag_rows(studies)
  out = []
  for ag in ags:
    best = _cheapest_as_close(cfg, ag) if cfg else None
    verdict = (
      f"CFG with {best['nfe']} evaluations ({best['setting']}) is as close"
      if best
      else "no CFG run to compare"
    )
    out.append(
      f"{ag['setting']}: {ag['nfe']} evaluations, FD to full CFG {ag['fd_to_cfg']:.3f}; {verdict}"
    )
  if out:
    cells = ", ".join(f"{c['setting']}: {c['fd_to_cfg']:.3f}" for c in cfg)
    return [
      "- **Adaptive Guidance at equal quality, both variants** (closeness to full CFG's "
      "samples from the same noise, FD of classifier features; AG saves evaluations only if "
      "CFG on a coarser grid is farther): " + "; ".join(out) + f". CFG runs: {cells}."
    ]
  return []


def _caching_section(c: dict) -> list[str]:
  """Feature caching: TaylorSeer vs full computation at equal steps, and the figure."""
  lines = [
    "## Feature caching (`jaxdiff.caching`)\n",
    f"CFG with DPM-Solver++(2M), {c['steps']} steps, same noise; partial evaluations run "
    "the embedding, gates and readout around cached block features (FLOP ratio from XLA's "
    f"count per call; caching every step would cost at best 1/{c['ceiling']:.1f}). "
    "RMS to full: per-pixel RMS difference to the full computation's images, the change "
    "the cache causes (FD alone misleads here: fewer steps lower it too). "
    "`python bench/sampling_accelerators.py --only cache` is the full study.\n",
    "| setting | evaluations (full) | FLOP ratio | wall (s) | FD | accuracy | RMS to full |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in c["rows"]:
    lines.append(
      f"| {r['setting']} | {r['nfe']} ({r['full_nfe']}) | {r['flop_ratio']:.2f} | "
      f"{r['wall_s']:.3f} | {fmt(r['fd'])} | {fmt(r['accuracy'])} | {r['rms_to_full']:.3f} |"
    )
  lines.append("\n![feature caching](feature_caching.png)\n")
  return lines


def _searched_section(c: dict) -> list[str]:
  """The shipped S³ schedule vs DPM-Solver++(2M) at the same small NFE, and the figure."""
  lines = [
    "## Searched schedule (`jaxdiff.search.s3_search`)\n",
    f"Unguided, {c['nfe']} evaluations, same noise. The schedule (per-step USF decisions "
    "and times) was found once by `python bench/sampling_accelerators.py --only search` on "
    "the full models and ships as `jaxdiff/demo/searched_schedules.json`.\n",
    "| setting | NFE | FD | accuracy |",
    "|---|---|---|---|",
  ]
  for r in c["rows"]:
    lines.append(f"| {r['setting']} | {r['nfe']} | {fmt(r['fd'])} | {fmt(r['accuracy'])} |")
  lines.append("\n![searched schedule](searched_schedule.png)\n")
  return lines


def _few_step_section(f: dict) -> list[str]:
  """The few-step student against its teacher: a row per run, and the figure."""
  lines = [
    "## Few-step student (`jaxdiff.distill`)\n",
    f"A copy of the denoiser distilled from {f['pool']} of the teacher's own DDIM "
    f"trajectories ({f['teacher_steps']} steps, conditional, no guidance; no training "
    "digit is used): every state of a trajectory is mapped to the trajectory's end "
    '(`distill.trajectory_consistency_loss(..., variant="endpoint")`, the data-free pairs '
    f"of TBCM) for {f['student_steps']} steps (final loss {fmt(f['final_loss'], 4)}). It "
    "samples in one evaluation, or two (re-noised to t = "
    f"{f['mid_t']:.3f}, then mapped again). Same noise for every row. FD to teacher: FD "
    "of the classifier features to the teacher's full-budget samples (how close the "
    "student stays to what it imitates). Wall time per sample: compiled, median of "
    f"{f['rounds']} interleaved rounds; speed-up: median per-round ratio of the teacher's "
    "full-budget time to the row's. `python bench/trajectory_distillation_digits.py` is "
    "the study.\n",
    "| setting | NFE | FD | accuracy | precision | recall | FD to teacher | ms / sample | "
    "speed-up |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in f["rows"]:
    lines.append(
      f"| {r['setting']} | {r['nfe']} | {fmt(r['fd'])} | {fmt(r['accuracy'])} | "
      f"{fmt(r['precision'])} | {fmt(r['recall'])} | {fmt(r['fd_to_teacher'])} | "
      f"{r['ms_per_sample']:.3f} | {r['speedup']:.1f}x |"
    )
  lines.append("\n![few-step student](few_step.png)\n")
  return lines


def _inverse_section(inv: dict) -> list[str]:
  """The inverse-problems section: setting, one table row per (problem, method), the grid."""
  s = inv["setting"]
  lines = [
    "## Inverse problems (`jaxdiff.inverse`, `guidance.dps`, `guidance.flowchef`)\n",
    f"{s['digits']} held-out digits, measured as `y = A x + {s['noise_std']:g} n`: box "
    f"inpainting (the central 4x4 hidden) and 2x super-resolution (average pooling), "
    f"restored with the unconditional denoiser (label -1) in {s['steps']} steps: DPS "
    f"(zeta = {s['dps_scale']:g}, DDPM; each step also back-propagates through the network), "
    f"RED-diff (Adam 0.1, lambda = 0.25) and FlowChef (s = {s['flowchef_scale']:g}, Euler) -- "
    f"{s['flowchef']}. Residual `||A x - y|| / sqrt(M)` (the noise level is "
    f"{s['noise_std']:g}); accuracy of the classifier on the restorations (true labels); "
    "wall time after compilation. `python bench/inverse_problems.py` is the full study.\n",
    "| problem | method | steps | NFE | PSNR dB | residual | accuracy | wall s |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in inv["rows"]:
    lines.append(
      f"| {r['problem']} | {r['method']} | {r['steps']} | {r['nfe']} | {r['psnr']:.2f} | "
      f"{r['residual']:.3f} | {r['accuracy']:.3f} | {r['wall_s']:.2f} |"
    )
  lines.append("\n![inverse problems](inverse_problems.png)\n")
  return lines


def _highres_section(h: dict) -> list[str]:
  """Direct vs progressive 16x16 sampling (a row each), and the Jacobian's eigenvectors."""
  s = h["setting"]
  lines = [
    "## Higher resolution (`jaxdiff.progressive_sample`, `guidance.diffusehigh`)\n",
    f"The digits upsampled to 16x16 (bicubic, clipped to [-1, 1]) and a 16x16 denoiser "
    f"trained on them (DiT, {s['highres_patch']}x{s['highres_patch']} patches, width "
    f"{s['highres_dim']}, {s['highres_depth']} blocks, {s['highres_steps']} steps: smaller "
    "and shorter-trained than the 8x8 denoiser, to keep this section under a minute; its "
    f"direct samples show it). Each run makes {s['nfe']} network evaluations per sample "
    "(DPM-Solver++(2M), one key): direct 16x16 sampling; DiffuseHigh's progressive "
    f"sampling ({s['base_steps']} steps of the 8x8 denoiser, bicubic upsampling and unsharp "
    f"mask, re-noised to leave {s['noising_steps']} steps of the 16x16 denoiser, the first "
    f"{s['guided_steps']} with the low Haar band of x0_hat from that reference); the same "
    "without the structure guidance; the upsampled 8x8 sample alone; the guidance without "
    "the unsharp mask (which the study finds to be what makes the guidance hurt on these "
    "smooth images). Scored at 8x8 (2x2 "
    "average pooling) with the demo's classifier against the pooled held-out 16x16 digits. "
    "`python bench/diffusehigh_digits.py` is the study (a 16x16 model as large and as long "
    "trained as the 8x8 one, 5 paired seeds, full-resolution metrics).\n",
    f"| method | NFE | {_METRICS_HEAD}",
    "|---|---|---|---|---|---|---|",
  ]
  for r in h["rows"]:
    lines.append(f"| {r['method']} | {r['nfe']} | {_metric_cells(r)}")
  lines.append(f"| real 16x16 digits (training), pooled | - | {_metric_cells(h['reference'])}")
  lines.append("\n![16x16 samples](highres_progressive.png)\n")
  lines.append(
    "Leading eigenvectors of the 16x16 denoiser's Jacobian at a held-out 3 noised to "
    "`y = x + sigma z` (data scale), from `metrics.jacobian_spectrum` "
    f"({s['jacobian_iters']} Lanczos steps on `jvp`/`vjp` products, never a dense "
    "Jacobian). The eigenvalues are the shrinkage factors of Kadkhodaie et al.'s adaptive "
    "basis (near 1: kept, near 0: removed as noise); the residual is the largest "
    "`||A v - theta v||` of the shown pairs.\n"
  )
  lines += ["| sigma | leading eigenvalues | largest residual |", "|---|---|---|"]
  for j in h["jacobian"]:
    top = ", ".join(f"{e:.2f}" for e in j["top_eigenvalues"])
    lines.append(f"| {j['sigma']:g} | {top} | {j['max_residual']:.2g} |")
  lines.append("\n![jacobian eigenvectors](jacobian_eigenvectors.png)\n")
  return lines


def report(config: DemoConfig, models: Models, results: dict, sweep_solver: str) -> str:
  """``report.md``: setup, claims, the grid, sweep and study tables, training, spectrum."""

  def nparams(m):
    return sum(int(np.size(v)) for v in jax.tree.leaves(nnx.state(m, nnx.Param)))

  ref = results["reference"]
  small = config.denoiser_steps < 100
  mode = "`JAXDIFF_DEMO_SMALL=1` (smoke test: the numbers mean nothing)" if small else "full"
  L = []
  L.append("# jaxdiff digits demo: guidance rules x solvers on sklearn's 8x8 digits\n")
  L.append(
    f"Every number below was measured by this run (`python -m jaxdiff demo`) on "
    f"**{results['device']}**. Configuration: "
    f"{mode}.\n"
  )
  L.append("## Setup\n")
  L.append(
    f"- Data: `sklearn.datasets.load_digits` (1797 images, 8x8, scaled to [-1, 1]), "
    f"stratified split: 1437 train / 360 held-out.\n"
    f"- Denoiser: `jaxdiff.models.DigitDenoiser` (DiT, 2x2 patches, adaLN-Zero, "
    f"PAG-aware `SelfAttention`), {nparams(models.denoiser):,} parameters, v-prediction on "
    f"`schedules.vp_cosine()`, label dropout 0.1 (null label -1), "
    f"{config.denoiser_steps} steps of `optim.adamp` (batch {config.batch_size}, warmup + "
    f"cosine, peak lr {config.learning_rate}).\n"
    f"- Weak denoiser (autoguidance): same architecture, {nparams(models.weak):,} parameters, "
    f"{config.weak_steps} steps.\n"
    f"- Classifier: `jaxdiff.models.DigitClassifier` (MLP, SiLU), {nparams(models.classifier):,}"
    f" parameters, {config.classifier_steps} steps of `optim.diffgrad`; held-out accuracy "
    f"**{results['classifier_test_accuracy']:.3f}**. Its 32-d penultimate features are the "
    f"feature space of the Frechet distance (FD) and precision/recall (k = 3).\n"
    f"- Sampling: {config.samples_per_class} samples per class ({10 * config.samples_per_class}"
    f" per configuration), logSNR-uniform grid, a budget of **{config.nfe_budget} network "
    f"evaluations per sample**: rules that call the network twice per step get half the "
    f"steps. Adaptive Guidance gets CFG's steps and spends what it spends.\n"
    f"- Metrics: FD vs the held-out digits, class accuracy of the samples under the "
    f"classifier, precision/recall (Kynkaanniemi et al.), saturation = mean excess of the "
    f"*unclipped* sample beyond [-1, 1] (`metrics.saturation`), NFE per sample as "
    f"reported by `jaxdiff.sample`, sampling wall time (compiled, excluding compilation).\n"
    f"- Checkpoints: `{results.get('cache_dir', default_cache_dir())}` (override: `--cache-dir` or "
    f"`JAXDIFF_CACHE_DIR`); resumed from steps {results['resumed_from']}.\n"
  )
  L.append("## Claims, measured\n")
  L.extend(claims(config, results, sweep_solver))
  L.append("")
  L.append(
    f"Reference (real training digits scored like samples): FD {ref['fd']:.3f}, accuracy "
    f"{ref['accuracy']:.3f}, precision {ref['precision']:.3f}, recall {ref['recall']:.3f}, "
    f"saturation {ref['saturation']:.4f}.\n"
  )
  L.append("## Rules x solvers\n")
  L.append(f"| solver | rule | scale | steps | NFE | wall s | {_METRICS_HEAD}")
  L.append("|---|---|---|---|---|---|---|---|---|---|---|")
  for r in results["grid"]:
    L.append(
      f"| {solver_label(r['solver'])} | {rule_label(r['rule'])} | {fmt(r['scale'], 2)} | "
      f"{r['steps']} | {r['nfe']} | {r['wall_s']:.2f} | {_metric_cells(r)}"
    )
  L.append(
    "\nScales follow each rule's convention: CFG / APG / Adaptive / autoguidance `w` "
    "(1 = no guidance), PAG `s` (0 = none), CFG++ `lambda` in [0, 1], classifier `s`. APG: "
    f"{config.rule_kwargs.get('apg', {})}. Classifier guidance steers the *unconditional* "
    "model (label -1): its baseline is that model alone (`s = 0` in the classifier-scale "
    "study), not conditional sampling.\n"
  )
  L.append("![samples](samples_" + (config.solvers[0]) + ".png)\n")
  for s in config.solvers[1:]:
    L.append(f"![samples {s}](samples_{s}.png)\n")
  if results["sweep"]:
    L.append(f"## Metrics vs guidance scale ({solver_label(sweep_solver)})\n")
    L.append(f"| rule | w | NFE | {_METRICS_HEAD}")
    L.append("|---|---|---|---|---|---|---|---|")
    for r in results["sweep"]:
      L.append(f"| {rule_label(r['rule'])} | {r['w']:g} | {r['nfe']} | {_metric_cells(r)}")
    L.append("\n![metric vs scale](metric_vs_scale.png)\n")
    L.append("![highest scale](samples_high_scale.png)\n")
  if results["studies"]:
    L.append(f"## Other studies ({solver_label(sweep_solver)}, same noise as the grid)\n")
    L.append(f"| study | setting | NFE | {_METRICS_HEAD}")
    L.append("|---|---|---|---|---|---|---|---|")
    for r in results["studies"]:
      L.append(f"| {r['study']} | {r['setting']} | {r['nfe']} | {_metric_cells(r)}")
    L.append("")
  if results.get("inverse"):
    L.extend(_inverse_section(results["inverse"]))
  if results.get("caching"):
    L.extend(_caching_section(results["caching"]))
  if results.get("searched"):
    L.extend(_searched_section(results["searched"]))
  if results.get("few_step"):
    L.extend(_few_step_section(results["few_step"]))
  if results.get("highres"):
    L.extend(_highres_section(results["highres"]))
  L.append("## Training\n")
  for name, curve in models.losses.items():
    if len(curve):
      tail = curve[-max(1, len(curve) // 20) :].mean()
      L.append(f"- {name}: {len(curve)} steps, final loss (mean of last 5%) {tail:.4f}")
  L.append("\n![training curves](training_curves.png)\n")
  h = results["hessian"]
  L.append("## Hessian spectrum of the classifier (`optim.curvature`)\n")
  L.append(
    f"Cross-entropy Hessian at the trained classifier on {h['examples']} training digits "
    f"({h['num_params']:,} parameters): SLQ density (`slq_density`, {config.slq_iters} "
    f"Lanczos steps x {config.slq_probes} probes) and the top {config.top_k} eigenvalues by "
    f"power iteration with deflation (`top_eigenvalues`): "
    + ", ".join(f"{e:.3g}" for e in h["top_eigenvalues"])
    + ". Sagun et al. predict a bulk near zero plus about one outlier per class (10).\n"
  )
  L.append("![hessian spectrum](hessian_spectrum.png)\n")
  L.append(
    f"Sagun et al. reproduction on k-cluster data (`optim.curvature.run_tour`): "
    f"{results['tour']}.\n"
  )
  L.append("## Stage times\n")
  L.append(
    "Wall time depends on what else runs on the machine; CPU time (all threads of this "
    "process) does not, and on a dedicated machine the wall time is at most about it.\n"
  )
  L.append("| stage | wall s | CPU s |")
  L.append("|---|---|---|")
  for k, v in results["stages_s"].items():
    L.append(f"| {k} | {v:.1f} | {results['stages_cpu_s'].get(k, float('nan')):.1f} |")
  L.append("")
  return "\n".join(L) + "\n"
