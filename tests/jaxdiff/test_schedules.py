"""Schedules and grids: closed forms, round trips, monotone grids, clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxdiff import schedules

BETAS = np.linspace(1e-4, 0.02, 1000)
TABLE = np.cumprod(1.0 - BETAS)

SCHEDULES = {
  "vp_linear": schedules.vp_linear(),
  "vp_cosine": schedules.vp_cosine(),
  "edm": schedules.edm(),
  "flow": schedules.flow(t_min=1e-4, t_max=1 - 1e-4),
  "table": schedules.from_alphas_cumprod(TABLE),
}


def _t_strategy(name):
  s = SCHEDULES[name]
  return st.floats(min_value=s.t_min + 1e-3 * (s.t_max - s.t_min), max_value=s.t_max)


@pytest.mark.parametrize("name", list(SCHEDULES))
@given(data=st.data())
def test_logsnr_round_trip_and_consistency_with_alpha_sigma(x64, name, data):
  s = SCHEDULES[name]
  t = jnp.float64(data.draw(_t_strategy(name)))
  lam = s.logsnr(t)
  np.testing.assert_allclose(s.t_from_logsnr(lam), t, rtol=1e-9, atol=1e-9 * s.t_max)
  np.testing.assert_allclose(2 * jnp.log(s.alpha(t) / s.sigma(t)), lam, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["vp_linear", "vp_cosine", "table"])
@given(t=st.floats(0.0, 1.0))
def test_vp_schedules_preserve_variance(x64, name, t):
  s = SCHEDULES[name]
  t = s.t_min + t * (s.t_max - s.t_min)
  np.testing.assert_allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, 1.0, rtol=1e-12)


def test_closed_forms_match_their_papers(x64):
  t = jnp.linspace(0.01, 0.99, 7)
  # VP linear (Song et al. eq. 33): alpha^2 = exp(-t^2 (b1 - b0)/2 - t b0).
  lin = schedules.vp_linear()
  np.testing.assert_allclose(lin.alpha(t) ** 2, np.exp(-0.5 * t**2 * 19.9 - 0.1 * t), rtol=1e-12)
  # Cosine (Nichol & Dhariwal eq. 17).
  f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
  np.testing.assert_allclose(schedules.vp_cosine().alpha(t) ** 2, f(t) / f(0.0), rtol=1e-12)
  fl = schedules.flow()
  np.testing.assert_allclose(fl.alpha(t), 1 - t)
  np.testing.assert_allclose(fl.sigma(t), t)
  np.testing.assert_allclose(schedules.edm().sigma(t), t)


def test_table_schedule_hits_training_levels_exactly_at_integer_t(x64):
  s = SCHEDULES["table"]
  k = jnp.arange(0, 1000, 37.0)
  np.testing.assert_allclose(s.alpha(k) ** 2, TABLE[np.arange(0, 1000, 37)], rtol=1e-12)


def test_careful_forms_stay_accurate_near_zero_noise():
  # float32: a naive 1 - alpha^2 would be 0 at t = 1e-6 and logsnr = inf.
  s = schedules.vp_linear()
  lam = s.logsnr(jnp.float32(1e-6))
  assert jnp.isfinite(lam)
  np.testing.assert_allclose(lam, -np.log(0.1e-6), rtol=1e-3)


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("spacing", schedules.SPACINGS)
def test_every_spacing_gives_a_strictly_decreasing_noise_grid(x64, name, spacing):
  s = SCHEDULES[name]
  for n in (1, 7):
    g = schedules.timesteps(s, n, spacing=spacing)
    assert g.t.shape == (n + 1,)
    ratio = np.asarray(g.sigma / g.alpha)
    assert np.all(np.diff(ratio) < 0)
    np.testing.assert_allclose([g.t[0], g.t[-1]], [s.t_max, s.t_min], rtol=1e-12)


@given(u=st.floats(0.05, 0.95), v=st.floats(0.01, 0.9))
def test_logsnr_spacing_is_uniform_in_logsnr(x64, u, v):
  s = schedules.vp_cosine()
  g = schedules.timesteps(s, 12, spacing="logsnr", t_start=u, t_end=u * v)
  steps = np.diff(np.asarray(2 * g.lam))
  np.testing.assert_allclose(steps, steps[0], rtol=1e-7)


def test_karras_spacing_matches_edm_eq5(x64):
  g = schedules.timesteps(schedules.edm(), 18, spacing="karras")
  i = np.arange(19)
  want = (80 ** (1 / 7) + i / 18 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
  np.testing.assert_allclose(g.sigma, want, rtol=1e-10)


def test_denoise_to_zero_appends_a_clean_point(x64):
  g = schedules.timesteps(schedules.vp_cosine(), 10, denoise_to_zero=True)
  assert g.num_steps == 10
  assert float(g.sigma[-1]) == 0.0 and float(g.alpha[-1]) == 1.0
  assert float(g.lam[-1]) == schedules.LAM_MAX


def test_flow_grid_from_pure_noise_to_data_has_finite_lambda():
  g = schedules.timesteps(schedules.flow(), 8)
  assert float(g.alpha[0]) == 0.0 and float(g.sigma[-1]) == 0.0
  assert np.all(np.isfinite(np.asarray(g.lam)))


def test_grid_dtype_follows_x64_flag():
  assert schedules.timesteps(schedules.flow(), 4).t.dtype == jnp.float32
  with jax.enable_x64(True):
    assert schedules.timesteps(schedules.flow(), 4).t.dtype == jnp.float64


@pytest.mark.parametrize(
  "t, match",
  [
    ([0.5, 0.6, 0.1], "strictly decrease"),
    ([0.5, 0.5, 0.1], "strictly decrease"),
    ([[0.5, 0.1]], "1-D"),
    ([0.5], "at least 2"),
    ([0.5, float("nan")], "not finite"),
    ([0.5, 0.0, 0.0], "sigma must be > 0"),
  ],
)
def test_invalid_user_grids_raise_clear_errors(t, match):
  with pytest.raises(ValueError, match=match):
    schedules.timesteps_from(schedules.flow(), t)


@pytest.mark.parametrize(
  "build, error, match",
  [
    (lambda: schedules.timesteps(schedules.flow(), 5, spacing="linear"), ValueError, "spacing"),
    (lambda: schedules.timesteps(schedules.flow(), 0), ValueError, "n must lie"),
    (lambda: schedules.timesteps(schedules.flow(), 2.5), ValueError, "n must be an integer"),
    (lambda: schedules.timesteps(schedules.edm(), 5, rho=0.0), ValueError, "rho"),
    (lambda: schedules.timesteps(schedules.edm(), 5, rho=-7.0), ValueError, "rho"),
    (lambda: schedules.timesteps(schedules.edm(), 5, t_start=np.inf), ValueError, "t_start"),
    (
      lambda: schedules.timesteps(schedules.flow(), 5, t_start=0.1, t_end=0.5),
      ValueError,
      "t_start must exceed",
    ),
    (lambda: schedules.timesteps(schedules.flow(), 5, spacing="logsnr"), ValueError, "finite"),
    (lambda: schedules.from_alphas_cumprod([0.5, 0.9]), ValueError, "strictly decreasing"),
    (lambda: schedules.vp_linear(beta_min=2.0, beta_max=1.0), ValueError, "beta_max"),
    (lambda: schedules.vp_linear(beta_min=0.0), ValueError, "beta_min"),
    (lambda: schedules.vp_linear(beta_max=np.inf), ValueError, "beta_max must be finite"),
    (lambda: schedules.vp_linear(t_min=1.0), ValueError, "t_min"),
    (lambda: schedules.vp_cosine(t_max=1.5), ValueError, "t_max"),
    (lambda: schedules.vp_cosine(t_max=float("nan")), ValueError, "t_max"),
    (lambda: schedules.vp_cosine(t_min=0.5, t_max=0.4), ValueError, "t_min"),
    (lambda: schedules.vp_cosine(s=0.0), ValueError, "s must lie"),
    (lambda: schedules.edm(sigma_max=np.inf), ValueError, "sigma_max must be finite"),
    (lambda: schedules.edm(sigma_min=1.0, sigma_max=0.5), ValueError, "sigma_max"),
    (lambda: schedules.edm(sigma_min=-1.0), ValueError, "sigma_min"),
    (lambda: schedules.edm(sigma_min="small"), TypeError, "sigma_min"),
    (lambda: schedules.flow(t_max=1.2), ValueError, "t_max"),
    (lambda: schedules.flow(t_min=0.5, t_max=0.5), ValueError, "t_min"),
    (lambda: schedules.validate_grid(jnp.linspace(1, 0, 5)), TypeError, "Grid"),
  ],
)
def test_invalid_schedule_and_grid_arguments_raise(build, error, match):
  with pytest.raises(error, match=match):
    build()


def test_a_table_schedule_rejects_grids_outside_its_table_and_poisons_traced_times():
  table = schedules.from_alphas_cumprod(np.linspace(0.99, 0.1, 10))
  with pytest.raises(ValueError, match=r"t = 50 .*outside.*\[0, 9\]"):
    schedules.timesteps_from(table, [50, 5, 0])
  with pytest.raises(ValueError, match="t_start = 20"):
    schedules.timesteps(table, 4, t_start=20.0)
  assert jnp.isnan(jax.jit(table.logsnr)(jnp.float32(9.5)))
  assert jnp.isfinite(jax.jit(table.logsnr)(jnp.float32(9.0)))


def test_cosine_schedule_excludes_t_equal_one_where_alpha_is_zero_only_up_to_rounding():
  with pytest.raises(ValueError, match=r"t_max must lie in \(0, 1\)"):
    schedules.vp_cosine(t_max=1.0)
  with pytest.raises(ValueError, match="t_start = 1 .*outside"):
    schedules.timesteps(schedules.vp_cosine(), 4, t_start=1.0)
