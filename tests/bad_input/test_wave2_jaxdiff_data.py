# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile inputs, round two: non-finite data, files, dtypes and operators in ``jaxdiff``.

One line a case (the table) plus value tests where a fix changed behaviour:

* non-finite measurements ``y`` of DPS, STSL, FlowChef's measurement loss and RED-diff:
  a concrete one raises (the exact posterior's check, :func:`jaxdiff._validation.check_finite`),
  a traced one poisons exactly its rows with NaN;
* the searches' JSON files (:meth:`SolverSchedule.from_json`, :meth:`SkipSchedule.from_json`)
  and the training checkpoints (digests; the CLI's one-line error naming the file);
* dtypes: integer batches through an operator, bfloat16/float16 grids;
* ``gaussian_blur`` kernels longer than some image axes; ``gaussian_frechet_distance``
  with asymmetric or indefinite covariances.

Fixtures: a 2-D two-component mixture ``GMM`` with its exact VP denoiser ``DEN``, a 3-step
grid ``TS``, a 1 x 2 operator ``OP`` with a batch ``X`` of 4 and measurements ``Y``;
``SAMPLE(rule)`` runs a rule in :func:`jaxdiff.sample`; ``SS`` / ``SK`` are a valid solver
schedule and skip schedule, ``SS_JSON`` / ``SK_JSON`` their JSON and ``SS_FILE`` a file of it.
"""

import contextlib
import io
import json
import os
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxdiff
from jaxdiff import guidance as G  # noqa: F401 - used by the reproducers
from jaxdiff import inverse as I
from jaxdiff import metrics, schedules, search, solvers  # noqa: F401 - used by the reproducers
from jaxdiff.models import classifier_loss, train
from jaxdiff.solvers import StepChoice
from jaxdiff.testing import GaussianMixture
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
SCHED = schedules.vp_cosine()
GMM = GaussianMixture(jnp.array([[2.0, 0.0], [-2.0, 0.0]]), 0.3)
DEN = GMM.denoiser(SCHED)
TS = schedules.timesteps(SCHED, 3, spacing="logsnr")
OP = I.matrix(jnp.array([[1.0, 0.5]]))
HALF = I.matrix(jnp.array([[0.5, 0.5]]))
X = jax.random.normal(jax.random.key(0), (4, 2))
Y = jnp.ones((4, 1))
Z2, EYE2 = jnp.zeros(2), jnp.eye(2)

SS = search.SolverSchedule(
  (StepChoice(1), StepChoice(2), StepChoice(2)), np.array([1.0, 0.6, 0.3, 0.05])
)
SK = search.SkipSchedule(np.array([1.0, 0.6, 0.3, 0.05]), np.array([[1, 0], [1, 1], [0, 1]], bool))
SS_JSON, SK_JSON = SS.to_json(), SK.to_json()
SS_DATA = json.loads(SS_JSON)
_TMP = pathlib.Path(tempfile.mkdtemp(prefix="jaxdiff-wave2-data-"))
SS_FILE = _TMP / "s3.json"
SS_FILE.write_text(SS_JSON)
BAD_FILE = _TMP / "bad.json"
BAD_FILE.write_text(SS_JSON.replace("0.3", "0.7"))


def SAMPLE(rule, x=X):
  return jaxdiff.sample(DEN, solvers.ddim(), x, TS, key=0, guidance=rule).x


def JIT(make_rule):
  """Samples with a rule built from a *traced* measurement (inside ``jit``)."""
  return jax.jit(lambda y: SAMPLE(make_rule(y)))


def ss_json(**fields):
  """The valid solver schedule's JSON with ``fields`` replaced (``None``: dropped)."""
  data = {**SS_DATA, **fields}
  return json.dumps({k: v for k, v in data.items() if v is not None})


def only_row_nan(row):
  """Row ``row`` of the samples is all NaN, every other row finite."""

  def check(x):
    x = np.asarray(x)
    assert np.isnan(x[row]).all(), x
    assert np.isfinite(np.delete(x, row, axis=0)).all(), x

  return check


def same(want):
  return lambda got: np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


NS = dict(globals())

CASES = [
  # --- non-finite measurements: concrete raises (the posterior's check), traced poisons its rows
  Case("G.dps(OP, Y.at[1, 0].set(nan))", raises(ValueError, r"dps: y must be finite .*index \(1, 0\)")),
  Case("G.dps(OP, Y.at[0, 0].set(inf), variant='gaussian', noise_std=0.1)", raises(ValueError, "dps: y must be finite")),
  Case("G.stsl(OP, Y.at[2, 0].set(-inf))", raises(ValueError, "stsl: y must be finite")),
  Case("I.measurement_loss(OP, Y.at[3, 0].set(nan))", raises(ValueError, "measurement_loss: y must be finite")),
  Case("G.flowchef(I.measurement_loss(OP, Y.at[0, 0].set(nan)))", raises(ValueError, "measurement_loss: y must be finite")),
  Case("I.red_diff(DEN, OP, Y.at[3, 0].set(nan), TS, key=0)", raises(ValueError, "red_diff: y must be finite")),
  Case("GMM.posterior(jnp.ones((1, 2)), jnp.array([inf]), 0.1)", raises(ValueError, "y must be finite")),
  Case("G.minority_score(DEN, SCHED, X.at[2, 1].set(nan), key=0)", raises(ValueError, r"minority_score: x0 must be finite .*index \(2, 1\)")),
  Case("JIT(lambda y: G.dps(OP, y))(Y.at[1, 0].set(nan))", returns(only_row_nan(1), "traced y: the samples of its non-finite rows are NaN", nan_ok=True)),
  Case("JIT(lambda y: G.dps(OP, y))(Y.at[2, 0].set(inf))", returns(only_row_nan(2), "traced inf: NaN in its row, not a finite pull to infinity", nan_ok=True)),
  Case("JIT(lambda y: G.stsl(OP, y))(Y.at[0, 0].set(nan))", returns(only_row_nan(0), "STSL shares DPS's step and its poison", nan_ok=True)),
  Case("JIT(lambda y: G.flowchef(I.measurement_loss(OP, y)))(Y.at[3, 0].set(inf))", returns(only_row_nan(3), "the measurement loss is NaN in the rows of a traced non-finite y", nan_ok=True)),
  Case("jax.jit(lambda y: I.red_diff(DEN, OP, y, TS, key=0).x)(Y.at[1, 0].set(nan))", returns(only_row_nan(1), "RED-diff: a traced NaN in y makes its row NaN", nan_ok=True)),
  Case("JIT(lambda y: G.dps(OP, y))(Y)", returns(lambda x: np.isfinite(np.asarray(x)).all(), "a finite traced y is not poisoned")),
  # --- SolverSchedule.from_json: schema, one line naming the source and the field
  Case("search.SolverSchedule.from_json(SS_JSON.replace('0.3', '0.7'))", raises(ValueError, r"SolverSchedule.from_json \(JSON text\): field 't' must be strictly decreasing .*t\[1\] = 0.6 and t\[2\] = 0.7")),
  Case("search.SolverSchedule.from_json(ss_json(t=[1.0, 0.6, nan, 0.05]))", raises(ValueError, r"field 't' must be finite, got nan at t\[2\]")),
  Case("search.SolverSchedule.from_json(ss_json(t=[0.05, 0.3, 0.6, 1.0]))", raises(ValueError, "field 't' must be strictly decreasing")),
  Case("search.SolverSchedule.from_json(ss_json(t=[1.0, '0.6', 0.3, 0.05]))", raises(ValueError, r"field 't' must hold numbers, got string .* at t\[1\]")),
  Case("search.SolverSchedule.from_json(ss_json(t=[1.0, 0.5]))", raises(ValueError, r"field 't': t must have 4 times")),
  Case("search.SolverSchedule.from_json(SK_JSON)", raises(ValueError, "this is a SkipSchedule's JSON .* read it with SkipSchedule.from_json")),
  Case("search.SolverSchedule.from_json(ss_json(steps=None))", raises(ValueError, "missing field 'steps'")),
  Case("search.SolverSchedule.from_json(ss_json(grid='logsnr'))", raises(ValueError, "unknown field 'grid'")),
  Case("search.SolverSchedule.from_json(ss_json(steps=[{'order': 1}] * 3))", raises(ValueError, r"field 'steps\[0\]' must have exactly .*missing 'prediction'")),
  Case("search.SolverSchedule.from_json(ss_json(steps=[{**SS_DATA['steps'][0], 'eta': 1}] * 3))", raises(ValueError, r"field 'steps\[0\]' .*unknown 'eta'")),
  Case("search.SolverSchedule.from_json(ss_json(steps=[SS_DATA['steps'][0], 3, 4]))", raises(ValueError, r"field 'steps\[1\]' must be an object")),
  Case("search.SolverSchedule.from_json(ss_json(steps=[{**s, 'order': 4} for s in SS_DATA['steps']]))", raises(ValueError, r"field 'steps': steps\[0\].order must lie in \[1, 3\]")),
  Case("search.SolverSchedule.from_json(SS_JSON[:-3])", raises(ValueError, r"\(JSON text\): not valid JSON")),
  Case("search.SolverSchedule.from_json('[1.0, 0.5]')", raises(ValueError, "expected a JSON object with fields 'steps', 't', got a JSON array")),
  Case("search.SolverSchedule.from_json(str(SS_FILE))", raises(ValueError, r"not valid JSON .*pass pathlib.Path")),
  Case("search.SolverSchedule.from_json(BAD_FILE)", raises(ValueError, r"SolverSchedule.from_json\(.*bad.json\): field 't' must be strictly decreasing")),
  Case("search.SolverSchedule.from_json(3)", raises(TypeError, "text must be JSON text")),
  Case("search.SolverSchedule.from_json(SS_FILE).to_json() == SS_JSON", returns(lambda ok: ok, "a file (pathlib.Path) reads back exactly")),
  # --- SkipSchedule.from_json
  Case("search.SkipSchedule.from_json(SS_JSON)", raises(ValueError, "this is a SolverSchedule's JSON .* read it with SolverSchedule.from_json")),
  Case("search.SkipSchedule.from_json(SK_JSON.replace('0.3', 'NaN'))", raises(ValueError, r"SkipSchedule.from_json \(JSON text\): field 't' must be finite")),
  Case("search.SkipSchedule.from_json(SK_JSON.replace('0.6', '0.2'))", raises(ValueError, "field 't' must be strictly decreasing")),
  Case("search.SkipSchedule.from_json(SK_JSON.replace('[1, 1]', '[1]'))", raises(ValueError, r"field 'mask\[1\]' must be a list of 2 entries")),
  Case("search.SkipSchedule.from_json(SK_JSON.replace('[1, 1]', '[1, 0.5]'))", raises(ValueError, r"field 'mask\[1\]\[1\]' must be 0 or 1")),
  Case("search.SkipSchedule.from_json(SK_JSON.replace('\"mask\"', '\"masks\"'))", raises(ValueError, "missing field 'mask' and unknown field 'masks'")),
  Case("search.SkipSchedule.from_json(SK_JSON.replace('[[1, 0], ', '['))", raises(ValueError, "field 'mask': t must hold the 3 grid times of 2 mask rows")),
  # --- dtypes: integer batches promote (never truncate the operator); low-precision grids
  Case("HALF(jnp.array([[1, 1]]))", returns(same([[1.0]]), "an integer batch is promoted to float: A x = 1, not int(A) x = 0")),
  Case("HALF.T(jnp.array([[2]]))", returns(same([[1.0, 1.0]]), "the transpose promotes an integer measurement alike")),
  Case("HALF(jnp.array([[True, False]]))", returns(same([[0.5]]), "a bool batch is promoted too")),
  Case("HALF(jnp.ones((1, 2), jnp.uint8)).dtype == jnp.result_type(float)", returns(lambda ok: ok, "promoted to the default float dtype")),
  Case("HALF(jnp.ones((1, 2), jnp.bfloat16)).dtype == jnp.bfloat16", returns(lambda ok: ok, "a floating batch keeps its dtype (unchanged)")),
  Case("I.gaussian_blur((4, 4), 1.0, size=3)(jnp.ones((1, 4, 4), jnp.int32))", returns(same(I.gaussian_blur((4, 4), 1.0, size=3)(jnp.ones((1, 4, 4)))), "the blur of an integer image equals that of its float copy")),
  Case("I.avg_pool((4, 4))(jnp.arange(16).reshape(1, 4, 4))", returns(same([[[2.5, 4.5], [10.5, 12.5]]]), "pooling an integer image averages in float")),
  Case("schedules.timesteps(schedules.vp_linear(), 300, dtype=jnp.bfloat16)", raises(ValueError, r"the grid is bfloat16: with a 8-bit significand its 301 points collide .*dtype=jnp.float32")),
  Case("schedules.timesteps(SCHED, 50, dtype=jnp.bfloat16)", raises(ValueError, r"sigma must be > 0 .*the grid is bfloat16.*build it in float32")),
  Case("schedules.timesteps(schedules.flow(), 3000, dtype=jnp.float16)", raises(ValueError, "the grid is float16")),
  Case("schedules.timesteps_from(SCHED, jnp.linspace(0.99, 0.5, 300).astype(jnp.bfloat16))", raises(ValueError, "the grid is bfloat16")),
  Case("schedules.timesteps(schedules.vp_linear(), 50, dtype=jnp.bfloat16).t.dtype == jnp.bfloat16", returns(lambda ok: ok, "a bfloat16 grid that fits its precision still works")),
  Case("schedules.timesteps(SCHED, 300, dtype=jnp.float32).num_steps", returns(lambda n: n == 300, "the advice works: the float32 grid")),
  # --- operators: any kernel size with any image shape
  Case("I.gaussian_blur((3, 8), 1.0)(jnp.ones((2, 3, 8))).shape", returns(lambda s: s == (2, 3, 8), "kernel 7 longer than the first axis only")),
  Case("I.gaussian_blur((8, 3), 1.0).T(jnp.ones((2, 8, 3))).shape", returns(lambda s: s == (2, 8, 3), "and its transpose")),
  Case("I.gaussian_blur((2, 9, 4), 0.8, size=5)(jnp.ones((1, 2, 9, 4))).shape", returns(lambda s: s == (1, 2, 9, 4), "3-D, two axes shorter than the kernel")),
  Case("I.gaussian_blur((1, 10), 1.0, size=9)(jnp.ones((1, 1, 10))).shape", returns(lambda s: s == (1, 1, 10), "a single row")),
  # --- Gaussian Frechet distance: covariances must be covariances
  Case("metrics.gaussian_frechet_distance(Z2, jnp.array([[1.0, 0.5], [0.0, 1.0]]), Z2, EYE2)", raises(ValueError, r"cov_a must be a symmetric covariance matrix, got cov_a\[0, 1\] = 0.5 but cov_a\[1, 0\] = 0")),
  Case("metrics.gaussian_frechet_distance(Z2, EYE2, Z2, -EYE2)", raises(ValueError, "cov_b must be positive semi-definite .*eigenvalue -1")),
  Case("metrics.gaussian_frechet_distance(Z2, jnp.array([[1.0, 2.0], [2.0, 1.0]]), Z2, EYE2)", raises(ValueError, "cov_a must be positive semi-definite")),
  Case("jax.jit(metrics.gaussian_frechet_distance)(Z2, EYE2, Z2, -EYE2)", returns(lambda d: np.isnan(d), "traced: an indefinite covariance gives NaN", nan_ok=True)),
  Case("jax.jit(metrics.gaussian_frechet_distance)(Z2, jnp.array([[1.0, 0.5], [0.0, 1.0]]), Z2, EYE2)", returns(lambda d: np.isnan(d), "traced: an asymmetric covariance gives NaN", nan_ok=True)),
  Case("jax.jit(metrics.gaussian_frechet_distance)(Z2, EYE2, jnp.ones(2), 4 * EYE2)", returns(lambda d: float(d) == 4.0, "traced valid covariances are not poisoned")),
  Case("metrics.gaussian_frechet_distance(Z2, jnp.array([[1.0, 1.0], [1.0, 1.0]]), Z2, jnp.array([[1.0, 1e-6], [0.0, 1.0]]))", returns(lambda d: np.isfinite(d), "singular PSD and float32-roundoff asymmetry are accepted")),
]  # fmt: skip


@params(CASES)
def test_case(case):
  run(case, NS)


# -- value tests ------------------------------------------------------------------------


def _dense_blur(shape, sigma, size):
  """The blur's matrix written out in float64: zero boundary, centred separable kernel."""
  u = np.arange(size) - size // 2
  k = np.exp(-0.5 * (u / sigma) ** 2)
  k /= k.sum()
  idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(
    -1, len(shape)
  )
  d = idx[:, None, :] - idx[None, :, :]
  inside = np.all(np.abs(d) <= size // 2, axis=-1)
  return np.where(inside, np.prod(k[np.clip(d + size // 2, 0, size - 1)], axis=-1), 0.0)


@pytest.mark.parametrize(
  "shape, sigma, size",
  [((3, 8), 1.0, 7), ((8, 3), 1.0, 7), ((2, 9, 4), 0.8, 5), ((1, 10), 1.0, 9), ((5, 6), 1.0, 7), ((3, 3), 1.0, 7), ((9, 9), 1.0, 3)],
)  # fmt: skip
def test_blur_of_any_kernel_size_is_the_dense_zero_padded_blur_and_its_adjoint_exact(
  shape, sigma, size, x64
):
  op = I.gaussian_blur(shape, sigma, size)
  np.testing.assert_allclose(
    np.asarray(op.matrix(jnp.float64)), _dense_blur(shape, sigma, size), atol=1e-15
  )
  kx, ky = jax.random.split(jax.random.key(1))
  x = jax.random.normal(kx, (2, *shape), jnp.float64)
  y = jax.random.normal(ky, (2, *shape), jnp.float64)
  np.testing.assert_allclose(float(jnp.vdot(op(x), y)), float(jnp.vdot(x, op.T(y))), rtol=1e-13)


def test_matrix_of_an_integer_batch_is_the_float_product():
  a = jnp.array([[0.5, 0.25], [-1.5, 2.0]])
  x = jnp.array([[1, 2], [3, -4]])
  np.testing.assert_array_equal(I.matrix(a)(x), I.matrix(a)(x.astype(jnp.float32)))
  np.testing.assert_array_equal(I.matrix(a)(x), [[1.0, 2.5], [0.5, -12.5]])


def test_a_traced_non_finite_row_leaves_the_other_samples_bit_for_bit():
  """A NaN measurement poisons its own sample only: the others equal those of a finite y."""
  y = Y.at[1, 0].set(nan)
  traced = JIT(lambda v: G.dps(OP, v))(y)
  clean = SAMPLE(G.dps(OP, Y))
  np.testing.assert_array_equal(
    np.delete(np.asarray(traced), 1, 0), np.delete(np.asarray(clean), 1, 0)
  )


def test_gaussian_frechet_distance_unchanged_on_valid_covariances(x64):
  rng = np.random.default_rng(0)
  f = rng.normal(size=(40, 5))
  g = rng.normal(size=(30, 5)) + 0.3
  want = metrics.frechet_distance(f, g)
  got = metrics.gaussian_frechet_distance(
    f.mean(0), np.cov(f, rowvar=False), g.mean(0), np.cov(g, rowvar=False)
  )
  np.testing.assert_allclose(float(got), float(want), rtol=1e-12)
  assert float(
    jax.jit(metrics.gaussian_frechet_distance)(
      f.mean(0), np.cov(f, rowvar=False), g.mean(0), np.cov(g, rowvar=False)
    )
  ) == float(got)


# -- checkpoints --------------------------------------------------------------------------

_NET = lambda: nnx.Sequential(
  lambda x: x.reshape(x.shape[0], -1), nnx.Linear(16, 4, rngs=nnx.Rngs(0))
)
_DATA = (jnp.zeros((8, 4, 4)), jnp.arange(8) % 4)


def _train(directory, stop_after=None, net=None):
  return train(
    net or _NET(), classifier_loss(), optax.sgd(0.1), _DATA, steps=4, batch_size=4, chunk=2,
    key=0, checkpoint_dir=directory, stop_after=stop_after, progress=False,
  )  # fmt: skip


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A checkpoint directory holding step 2 of 4 (with its digests)."""
  d = tmp_path_factory.mktemp("ckpt") / "run"
  _train(d, stop_after=2)
  assert (d / "2" / "jaxdiff_digests.json").is_file()
  return d


def _copy(saved, tmp_path):
  import shutil

  out = tmp_path / "run"
  shutil.copytree(saved, out)
  return out


def _array_file(run_dir):
  files = sorted(
    p for p in (run_dir / "2" / "default").rglob("*") if p.is_file() and p.parent.name == "d"
  )
  assert files
  return max(files, key=lambda p: p.stat().st_size)


def _flip(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))


@pytest.mark.parametrize(
  "damage, fragment",
  [
    (lambda d: _flip(_array_file(d)), "differs from what was saved"),
    (lambda d: _array_file(d).write_bytes(b""), "has 0 bytes"),
    (lambda d: (d / "2" / "default" / "_METADATA").write_text("garbage"), "_METADATA has 7 bytes"),
    (lambda d: (d / "2" / "default" / "manifest.ocdbt").unlink(), "manifest.ocdbt is missing"),
    (
      lambda d: (d / "2" / "jaxdiff_digests.json").write_text("{"),
      "jaxdiff_digests.json is unreadable",
    ),
  ],
  ids=[
    "flipped-byte",
    "emptied-array-file",
    "garbage-metadata",
    "missing-manifest",
    "garbage-digests",
  ],
)
def test_damaged_checkpoint_is_one_line_naming_the_file_not_a_model_mismatch(
  saved, tmp_path, damage, fragment
):
  run_dir = _copy(saved, tmp_path)
  damage(run_dir)
  with pytest.raises(ValueError) as info:
    _train(run_dir)
  msg = str(info.value)
  assert "\n" not in msg and "that is damaged" in msg and fragment in msg, msg
  assert str(run_dir / "2") in msg and "does not match" not in msg, msg


def test_resume_from_an_intact_checkpoint_is_unchanged_and_a_mismatch_still_says_so(
  saved, tmp_path
):
  run_dir = _copy(saved, tmp_path)
  resumed = _train(run_dir)
  fresh = _train(None)
  assert resumed.resumed_from == 2
  np.testing.assert_array_equal(resumed.losses, fresh.losses)
  other = nnx.Sequential(lambda x: x.reshape(x.shape[0], -1), nnx.Linear(16, 3, rngs=nnx.Rngs(0)))
  with pytest.raises(
    ValueError, match=r"does not match this model/optimizer \(its files are intact\)"
  ):
    _train(_copy(saved, tmp_path / "b"), net=other)


def test_checkpoint_without_digests_damaged_is_not_blamed_on_the_model(saved, tmp_path):
  run_dir = _copy(saved, tmp_path)
  (run_dir / "2" / "jaxdiff_digests.json").unlink()  # as written before digests existed
  (run_dir / "2" / "default" / "_METADATA").write_text("garbage")
  with pytest.raises(
    ValueError,
    match="could not be restored: it does not match this model/optimizer or a file of it is damaged",
  ) as info:
    _train(run_dir)
  assert "\n" not in str(info.value)


def test_cli_with_a_damaged_checkpoint_prints_one_line_naming_the_file(
  saved, tmp_path, monkeypatch
):
  from jaxdiff import cli as jcli

  run_dir = _copy(saved, tmp_path)
  _flip(_array_file(run_dir))
  monkeypatch.setenv("JAXDIFF_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.delenv("JAXDIFF_TRACEBACK", raising=False)
  monkeypatch.setattr(jcli, "_use_compilation_cache", lambda cache: None)
  monkeypatch.setattr(jcli, "_cmd_sample", lambda args, config, cache: _train(run_dir))
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    code = jcli.main(["sample", "--out", str(tmp_path / "g.png"), "--no-progress"])
  lines = err.getvalue().splitlines()
  assert code == 1 and len(lines) == 1, lines
  assert lines[0].startswith("jaxdiff: error: ") and str(_array_file(run_dir)) in lines[0], lines
  assert "does not match" not in lines[0]
  assert os.environ.get("JAXDIFF_TRACEBACK") is None
