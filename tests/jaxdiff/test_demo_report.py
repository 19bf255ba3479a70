"""The demo report's Adaptive Guidance verdict is computed from the measured rows (no
models: synthetic rows shaped like ``jaxdiff.demo._run._guidance_ablation``'s)."""

import dataclasses

import pytest

from jaxdiff.demo._config import DemoConfig
from jaxdiff.demo._report import claims

STUDY = "AG vs CFG at equal quality, w = 3"
METRICS = dict(fd=1.0, accuracy=1.0, precision=0.8, recall=0.8, saturation=0.0)


def _results(ag_x0_nfe=17, ag_x0_fd=0.150, ablation=True):
  def grid_row(rule, nfe):
    return {"rule": rule, "solver": "dpmpp_2m", "nfe": nfe, "wall_s": 0.1, **METRICS}

  # The digits demo's measured closeness to full CFG (FD of classifier features).
  ablation_rows = [
    {"study": STUDY, "setting": "CFG, 2 steps", "nfe": 4, "fd_to_cfg": 3.099},
    {"study": STUDY, "setting": "CFG, 8 steps", "nfe": 16, "fd_to_cfg": 0.274},
    {"study": STUDY, "setting": "CFG, 9 steps", "nfe": 18, "fd_to_cfg": 0.112},
    {"study": STUDY, "setting": "CFG, 10 steps (the reference)", "nfe": 20, "fd_to_cfg": 0.0},
    {
      "study": STUDY,
      "setting": "AG eps, 10 steps",
      "nfe": 11,
      "fd_to_cfg": 17.37,
      "variant": "eps",
    },
    {
      "study": STUDY,
      "setting": "AG x0, 10 steps",
      "nfe": ag_x0_nfe,
      "fd_to_cfg": ag_x0_fd,
      "variant": "x0",
    },
  ]
  return {
    "grid": [grid_row("none", 20), grid_row("cfg", 20), grid_row("adaptive", ag_x0_nfe)],
    "sweep": [],
    "studies": [{**METRICS, **r} for r in ablation_rows] if ablation else [],
  }


def _ag_claim(config, results):
  (line,) = [
    c for c in claims(config, results, "dpmpp_2m") if "Adaptive Guidance saves evaluations" in c
  ]
  return line


@pytest.fixture(scope="module")
def config():
  return dataclasses.replace(DemoConfig.full(), solvers=("dpmpp_2m",))


def test_the_demo_samples_adaptive_guidance_with_the_x0_variant(config):
  assert config.rule_kwargs["adaptive"]["variant"] == "x0"


def test_ag_saves_evaluations_only_against_the_cheapest_cfg_run_as_close(config):
  line = _ag_claim(config, _results())
  assert 'variant="x0"' in line and "holds --" in line
  assert "(CFG, 9 steps) makes 18" in line and "1 evaluation saved (6%)" in line


@pytest.mark.parametrize(
  "nfe, fd",
  [(19, 0.150), (17, 0.300)],  # more evaluations than CFG as close; a farther AG
  ids=["more_evaluations", "farther_from_cfg"],
)
def test_ag_that_saves_nothing_at_equal_quality_does_not_hold(config, nfe, fd):
  assert "does NOT hold" in _ag_claim(config, _results(nfe, fd))


def test_the_eps_variant_saves_nothing_though_it_makes_fewer_evaluations(config):
  eps = dataclasses.replace(config, rule_kwargs={**config.rule_kwargs, "adaptive": {}})
  line = _ag_claim(eps, _results())
  assert 'variant="eps"' in line and "does NOT hold" in line
  assert "(CFG, 2 steps) makes 4" in line


def test_without_the_ablation_the_verdict_is_not_measured(config):
  line = _ag_claim(config, _results(ablation=False))
  assert "not measured" in line and "holds" not in line
