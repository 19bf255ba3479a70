"""The demo at tiny size (the CI smoke run): every stage runs, out/ holds the report, the
figures and metrics consistent with what was sampled; checkpoints are reused; the CLI
samples from the cached model."""

import dataclasses
import json
import math
import types

import jax
import matplotlib.image
import numpy as np
import pytest

from jaxdiff import cli, demo, guidance
from jaxdiff.demo import _highres as highres
from jaxdiff.demo import _training as training
from jaxdiff.models import load_digits

pytestmark = pytest.mark.integration  # minutes: trains three models, samples a grid

CONFIG = demo.DemoConfig.small()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("demo")
  out, cache = root / "out", root / "cache"
  lines = []
  results = demo.run_demo(CONFIG, out_dir=out, cache_dir=cache, progress=False, log=lines.append)
  return results, out, cache, lines


def test_demo_writes_report_metrics_and_figures(demo_run):
  results, out, _, lines = demo_run
  for name in [
    "report.md",
    "metrics.json",
    "training_curves.png",
    "metric_vs_scale.png",
    "hessian_spectrum.png",
    "real_digits.png",
    "samples_high_scale.png",
    *[f"samples_{s}.png" for s in CONFIG.solvers],
  ]:
    assert (out / name).stat().st_size > 0, name
  img = matplotlib.image.imread(out / f"samples_{CONFIG.solvers[0]}.png")
  assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
  report = (out / "report.md").read_text()
  assert "## Claims, measured" in report and "## Stage times" in report
  table_rows = [ln for ln in report.splitlines() if ln.startswith("| DPM-Solver++(2M) |")]
  assert len(table_rows) == len(CONFIG.rules)
  assert any("wrote" in ln for ln in lines)


def test_every_rule_and_solver_was_sampled_with_the_evaluations_it_reports(demo_run):
  results = demo_run[0]
  grid = results["grid"]
  assert {(r["rule"], r["solver"]) for r in grid} == {
    (rule, s) for rule in CONFIG.rules for s in CONFIG.solvers
  }
  for r in grid:
    per_step = 1 if r["rule"] == "none" else guidance.REGISTRY[r["rule"]].evals()
    assert r["steps"] == max(1, CONFIG.nfe_budget // per_step)
    if r["rule"] == "adaptive":  # 2 per step until the switch, then 1
      assert r["steps"] + 1 <= r["nfe"] <= 2 * r["steps"]
    elif r["rule"] == "rcfg":  # onetime negative: 2 evaluations at the first step, then 1
      assert r["nfe"] == r["steps"] + 1, r
    else:
      assert r["nfe"] == per_step * r["steps"], r
    for k in ("fd", "accuracy", "precision", "recall", "saturation", "wall_s"):
      assert math.isfinite(r[k]) and r[k] >= 0, (k, r)
    assert 0 <= r["accuracy"] <= 1 and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1


def test_metrics_json_is_the_run_results(demo_run):
  results, out = demo_run[0], demo_run[1]
  saved = json.loads((out / "metrics.json").read_text())
  assert saved["grid"] == json.loads(json.dumps(results["grid"]))
  assert set(saved["stages_s"]) >= {"total"}
  assert len(saved["sweep"]) == len(CONFIG.sweep_rules) * len(CONFIG.sweep_scales)


def test_second_run_reuses_the_checkpoints(demo_run):
  cache = demo_run[2]
  models = demo.prepare_models(CONFIG, load_digits(key=CONFIG.seed), cache, progress=False)
  assert models.resumed == {
    "denoiser": CONFIG.denoiser_steps,
    "weak denoiser": CONFIG.weak_steps,
    "classifier": CONFIG.classifier_steps,
  }


def test_cli_samples_a_grid_from_the_cached_model(demo_run, tmp_path, capsys):
  cache = demo_run[2]
  previous = jax.config.jax_compilation_cache_dir
  target = tmp_path / "grid.png"
  try:
    code = cli.main(
      [
        "sample",
        "--small",
        "--no-progress",
        "--cache-dir",
        str(cache),
        "--guidance",
        "apg",
        "--scale",
        "5",
        "--solver",
        "dpmpp_2m",
        "--steps",
        "2",
        "--class",
        "3",
        "--num",
        "4",
        "--out",
        str(target),
      ]
    )
  finally:
    jax.config.update("jax_compilation_cache_dir", previous)
  assert code == 0
  assert "4 samples, 4 network evaluations per sample" in capsys.readouterr().out
  img = matplotlib.image.imread(target)
  assert img.shape[:2] == (8 * 10, 8 * 37)  # 1 row x 4 samples of 8x8, 1-pixel gaps, x8
  assert np.ptp(img[..., :3]) > 0


def test_a_rule_added_to_the_registry_is_sampled_without_other_edits(demo_run, monkeypatch):
  spec = guidance.RuleSpec("My rule", lambda s, **kw: guidance.cfg(s, **kw), 4.5, 2)
  monkeypatch.setattr(
    guidance, "REGISTRY", types.MappingProxyType({**guidance.REGISTRY, "my_rule": spec})
  )
  config = demo.DemoConfig.small()
  assert "my_rule" in config.rules
  models = demo.prepare_models(config, load_digits(key=config.seed), demo_run[2], progress=False)
  steps = demo.steps_for_budget("my_rule", config.nfe_budget)
  labels = np.arange(10)
  x, nfe = demo.sample_digits(
    models,
    guidance="my_rule",
    scale=config.scale_of("my_rule"),
    solver="dpmpp_2m",
    steps=steps,
    labels=labels,
    config=config,
  )
  assert nfe == 2 * steps and x.shape == (10, 8, 8) and np.isfinite(x).all()
  # the same call as CFG at that scale: the new line is all it took
  x_cfg, _ = demo.sample_digits(
    models, guidance="cfg", scale=4.5, solver="dpmpp_2m", steps=steps, labels=labels, config=config
  )
  np.testing.assert_allclose(x, x_cfg, rtol=1e-5, atol=1e-5)


def test_apg_study_runs_without_apg_settings_in_rule_kwargs(demo_run):
  # A config that leaves APG at its factory defaults: the study's overrides (eta, r, beta)
  # are traced too, and APG with eta = 1, r = inf, beta = 0 is CFG (Sadat et al., Sec. 4).
  models = demo.prepare_models(CONFIG, load_digits(key=CONFIG.seed), demo_run[2], progress=False)
  labels = np.arange(10)
  sampler = demo._sampling.Sampler(models, labels, {}, CONFIG.compiler_options)
  key = jax.random.key(3)
  apg = sampler("apg", "dpmpp_2m", 2, key, scale=4.0, eta=1.0, norm_threshold=math.inf)
  cfg = sampler("cfg", "dpmpp_2m", 2, key, scale=4.0)
  np.testing.assert_allclose(apg["x"], cfg["x"], rtol=1e-4, atol=1e-4)
  with pytest.raises(TypeError, match="static"):
    demo._sampling.Sampler(models, labels, {"rcfg": {"variant": "onetime"}})(
      "rcfg", "dpmpp_2m", 2, key, variant=1.0
    )


def test_inverse_problems_stage_restores_the_held_out_digits_it_reports(demo_run):
  results, out = demo_run[0], demo_run[1]
  inv = results["inverse"]
  assert inv["setting"]["digits"] == CONFIG.inverse_digits
  # the tiny run's cache holds no trained flow model, and the demo does not train one
  assert inv["setting"]["flowchef"].startswith("skipped")
  problems = {"inpaint (box 4x4)", "super-resolution 2x"}
  methods = {"least squares A^+ y (no prior)", "DPS", "RED-diff"}
  assert {(r["problem"], r["method"]) for r in inv["rows"]} == {
    (p, m) for p in problems for m in methods
  }
  for r in inv["rows"]:
    assert r["nfe"] == (0 if r["method"].startswith("least") else CONFIG.nfe_budget), r
    assert all(math.isfinite(r[k]) for k in ("psnr", "residual", "accuracy", "wall_s")), r
  # the least-squares baseline meets the measurement up to its noise (std 0.05)
  assert all(r["residual"] < 0.05 for r in inv["rows"] if r["nfe"] == 0)
  report = (out / "report.md").read_text()
  assert "## Inverse problems" in report and "(inverse_problems.png)" in report
  assert sum(ln.startswith("| super-resolution 2x |") for ln in report.splitlines()) == 3
  assert matplotlib.image.imread(out / "inverse_problems.png").shape[0] > 50


def test_inverse_digits_zero_is_allowed_and_negative_is_rejected():
  assert demo.DemoConfig.small().inverse_digits > 0
  assert dataclasses.replace(CONFIG, inverse_digits=0).inverse_digits == 0
  with pytest.raises(ValueError, match="inverse_digits"):
    dataclasses.replace(CONFIG, inverse_digits=-1)


def test_highres_section_samples_16x16_at_equal_evaluations_and_draws_both_figures(demo_run):
  results, out = demo_run[0], demo_run[1]
  h = results["highres"]
  nfe = CONFIG.highres_nfe
  base_steps, n, guided = highres.noising_split(nfe)
  assert (h["setting"]["base_steps"], h["setting"]["noising_steps"]) == (base_steps, n)
  assert base_steps + n == nfe and guided >= 1
  # direct and both progressive runs make the same evaluations; the upsampled base, its own
  assert [(r["method"], r["nfe"]) for r in h["rows"]] == list(
    zip(highres.METHODS, (nfe, nfe, nfe, base_steps, nfe))
  )
  for r in h["rows"]:
    assert all(math.isfinite(r[k]) for k in ("fd", "accuracy", "precision", "recall")), r
  shown = min(highres.JACOBIAN_SHOWN, CONFIG.jacobian_iters)
  assert [j["sigma"] for j in h["jacobian"]] == list(highres.JACOBIAN_SIGMAS)
  for j in h["jacobian"]:
    top = j["top_eigenvalues"]
    assert len(top) == shown and top == sorted(top, reverse=True), j
    assert math.isfinite(j["max_residual"]), j
  report = (out / "report.md").read_text()
  assert "## Higher resolution" in report
  assert "(highres_progressive.png)" in report and "(jacobian_eigenvectors.png)" in report
  assert sum(ln.startswith("| progressive 8->16,") for ln in report.splitlines()) == 3
  for name in ("highres_progressive.png", "jacobian_eigenvectors.png"):
    assert matplotlib.image.imread(out / name).shape[0] > 100, name


def test_highres_runs_are_paired_and_the_16x16_model_is_cached(demo_run):
  cache = demo_run[2]
  data = load_digits(key=CONFIG.seed)
  models = demo.prepare_models(CONFIG, data, cache, progress=False)
  high = training.prepare_highres_model(
    CONFIG, training.upsample_digits(data), cache, progress=False
  )
  assert high.resumed_from == CONFIG.highres_steps  # restored, not trained again
  sampler = highres.HighresSampler(models.denoiser, models.schedule, high)
  labels, key = np.arange(10), jax.random.key(5)
  runs = sampler(labels, key, nfe=4)
  alone = sampler(labels, key, nfe=4, methods=highres.METHODS[3:])
  # the upsampled base sample drawn alone is progressive_sample's base stage, bit for bit
  np.testing.assert_array_equal(alone[highres.METHODS[3]]["x"], runs[highres.METHODS[3]]["x"])
  guided, unguided = (runs[m]["x"] for m in highres.METHODS[1:3])
  assert guided.shape == (10, 16, 16) and not np.array_equal(guided, unguided)
  # the structure guidance pulls the low band toward the (shared) reference
  low = lambda x: highres.pool2(x)  # noqa: E731
  ref = low(runs[highres.METHODS[3]]["x"])
  assert np.abs(low(guided) - ref).mean() < np.abs(low(unguided) - ref).mean()


def test_highres_settings_are_checked():
  assert dataclasses.replace(CONFIG, highres_steps=0).highres_steps == 0
  with pytest.raises(ValueError, match="highres_steps"):
    dataclasses.replace(CONFIG, highres_steps=-1)
  with pytest.raises(ValueError, match="highres_patch"):
    dataclasses.replace(CONFIG, highres_patch=3)
  with pytest.raises(ValueError, match="highres_dim"):
    dataclasses.replace(CONFIG, highres_dim=15)
  with pytest.raises(ValueError, match="highres_nfe"):
    dataclasses.replace(CONFIG, highres_nfe=1)


def test_few_step_section_compares_the_student_with_its_teacher(demo_run):
  results, out, cache, _ = demo_run
  f = results["few_step"]
  budget = CONFIG.nfe_budget
  assert [(r["setting"], r["nfe"]) for r in f["rows"]] == [
    (f"teacher, DDIM {budget} steps", budget),
    ("teacher, DDIM 1 step", 1),
    ("teacher, DDIM 2 steps", 2),
    ("student, 1 step", 1),
    ("student, 2 steps", 2),
  ]
  for r in f["rows"]:
    for k in ("fd", "accuracy", "fd_to_teacher", "ms_per_sample", "speedup"):
      assert math.isfinite(r[k]) and r[k] >= 0, (k, r)
  assert f["rows"][0]["fd_to_teacher"] < 1e-6  # the teacher against itself
  assert f["student_steps"] == CONFIG.student_steps and f["resumed_from"] == 0
  report = (out / "report.md").read_text()
  assert "## Few-step student" in report and "(few_step.png)" in report
  assert (out / "few_step.png").stat().st_size > 0
  # Cached: a second call restores the student bit for bit and samples the same images.
  models = training.prepare_models(CONFIG, load_digits(key=CONFIG.seed), cache, progress=False)
  from jaxdiff.demo import _few_step as few

  st = few.prepare_student(CONFIG, models, cache, progress=False)
  assert st.resumed_from == CONFIG.student_steps
  x_T = jax.random.normal(jax.random.key(0), (4, 8, 8))
  y = jax.numpy.arange(4)
  one = few.student_sample(st, x_T, y, num_steps=1, mid_t=0.5, key=jax.random.key(1))
  np.testing.assert_array_equal(one, st.denoise(x_T, jax.numpy.full((4,), st.grid.t[0]), y))
  two = few.student_sample(st, x_T, y, num_steps=2, mid_t=0.5, key=jax.random.key(1))
  assert two.shape == x_T.shape and not np.allclose(one, two)
  with pytest.raises(ValueError, match="num_steps must be 1 or 2"):
    few.student_sample(st, x_T, y, num_steps=3, mid_t=0.5, key=0)


def test_few_step_settings_are_checked():
  assert dataclasses.replace(CONFIG, student_steps=0).student_steps == 0
  with pytest.raises(ValueError, match="student_steps"):
    dataclasses.replace(CONFIG, student_steps=-1)
  with pytest.raises(ValueError, match="student_mid_t"):
    dataclasses.replace(CONFIG, student_mid_t=1.0)
  with pytest.raises(ValueError, match="student_lr"):
    dataclasses.replace(CONFIG, student_lr=0.0)
  with pytest.raises(ValueError, match="must be at least batch_size"):
    dataclasses.replace(CONFIG, student_pool=1)
