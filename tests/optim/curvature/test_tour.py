"""The Sagun et al. reproduction (run_tour): outputs, tool agreement, and the k-outlier claim."""

import json
import sys

import jax
import matplotlib
import numpy as np
import pytest

from optim import curvature
from optim.curvature import _tour


def _open_pyplot_figures():
  plt = sys.modules.get("matplotlib.pyplot")
  return [] if plt is None else plt.get_fignums()


@pytest.fixture(scope="module")
def small_tour(tmp_path_factory):
  """``(out_dir, result, backend_selections, new_pyplot_figures)`` of one small run."""
  out = tmp_path_factory.mktemp("tour")
  before = _open_pyplot_figures()
  with pytest.MonkeyPatch.context() as mp:
    selections = []
    mp.setattr(matplotlib, "use", lambda *args, **kwargs: selections.append(args))
    result = curvature.run_tour(out, small=True)
  new_figures = [n for n in _open_pyplot_figures() if n not in before]
  return out, result, selections, new_figures


@pytest.mark.integration  # the small tour trains an MLP
def test_tour_is_library_code_that_selects_no_backend_and_leaves_no_figure(small_tour):
  _, _, selections, new_figures = small_tour
  assert selections == [] and new_figures == []


@pytest.mark.integration  # the small tour trains an MLP
def test_small_tour_writes_json_and_log_scale_density_plot(small_tour):
  out, result, _, _ = small_tour
  assert (out / "curvature_density.png").stat().st_size > 10_000
  assert json.loads((out / "curvature_tour.json").read_text()) == result
  (run,) = result["runs"]
  assert run["train_accuracy"] > 0.9 and np.isfinite(run["hessian_trace"])


@pytest.mark.integration  # the small tour trains an MLP
def test_power_iteration_and_lanczos_agree_on_the_top_eigenvalues(small_tour):
  (run,) = small_tour[1]["runs"]
  ritz = np.asarray(run["top_ritz_values"][:3])
  power = np.sort(np.asarray(run["top_eigenvalues_power"]))[::-1][:3]
  np.testing.assert_allclose(power, ritz, rtol=1e-3)


@pytest.mark.integration  # the small tour trains an MLP
def test_spectrum_is_a_bulk_near_zero_plus_outliers(small_tour):
  # Sagun et al.'s qualitative picture: the most negative eigenvalue is tiny next to the
  # largest one, and the top eigenvalue is separated from the next by the outlier gap.
  (run,) = small_tour[1]["runs"]
  top = np.asarray(run["top_ritz_values"])
  assert abs(run["min_ritz_value"]) < 0.05 * top[0]
  assert run["outliers"] >= 1 and top[0] > 2 * top[run["outliers"]]


def test_count_outliers_uses_the_largest_ratio_gap():
  assert _tour.count_outliers([10.0, 9.0, 8.0, 1.0, 0.9, 0.5]) == 3
  assert _tour.count_outliers([5.0, 0.1, 0.05]) == 1
  assert _tour.count_outliers([1.0, -1.0]) == 1


@pytest.mark.integration  # the small tour trains an MLP
def test_overlapping_clusters_give_k_minus_1_outliers(small_tour):
  # Sagun et al.'s "about k outliers" in the regime where it shows (bench/sagun_regimes.py):
  # overlapping clusters (centers 0.5 * N(0, I), noise 1), so the loss stays away from 0.
  # The count is k - 1 (Papyan's class-mean outliers) by Lanczos and by power iteration;
  # the tour's well separated clusters do not show it. Same shapes and settings as the
  # small tour (the fixture), so the compiled training and spectrum are reused.
  k = 4
  kd, ki, kh = jax.random.split(jax.random.key(0), 3)
  batch = _tour.make_clusters(kd, k, 32, 8, separation=0.5)
  params, losses = _tour.train_mlp(ki, batch, sizes=(8, 16, 16, k), steps=150)
  top, slq, _ = _tour._spectrum(
    params, batch, kh, num_top=2 * k + 2, num_iterations=40, max_iterations=100, num_probes=1
  )
  ritz = np.sort(np.asarray(slq.nodes[0])[np.asarray(slq.weights[0]) > 0])[::-1]
  assert float(losses[-1]) > 0.1  # the overlapping regime: far from zero loss
  assert _tour.count_outliers(ritz[: 2 * k + 2]) == k - 1
  assert _tour.count_outliers(np.asarray(top.eigenvalues)) == k - 1


@pytest.mark.slow
@pytest.mark.xfail(
  strict=True,
  reason=(
    "Does not reproduce on the tour's well separated clusters: the outlier count of the "
    "trained 2-hidden-layer ReLU MLP measured 1, 3, 2, 3, 6 for k = 2, 3, 4, 6, 8 "
    "(bench/results/curvature_tour.json); it does on overlapping clusters (k - 1, see "
    "test_overlapping_clusters_give_k_minus_1_outliers and bench/sagun_regimes.py). Strict, "
    "so a future fix that makes it hold here is noticed."
  ),
)
def test_outlier_count_is_within_k_plus_minus_one_for_every_k(tmp_path):
  result = curvature.run_tour(tmp_path)
  for run in result["runs"]:
    assert abs(run["outliers"] - run["k"]) <= 1, (run["k"], run["outliers"])
