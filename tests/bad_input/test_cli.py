# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile invocations of ``python -m jaxdiff`` (in-process, :func:`jaxdiff.cli.main`), of
:class:`jaxdiff.demo.DemoConfig` and of :func:`jaxdiff.demo.sample_digits`, one line a case.

``cli(argv, env=None)`` runs ``main(argv)`` in a scratch working directory with
``JAXDIFF_CACHE_DIR`` pointing into it (plus ``env``) and returns ``(exit code, stderr
lines)``. The CLI's work (compilation cache, training, sampling, the demo) is replaced by a
stub that returns 0: a bad invocation must be rejected before it (policy 8), and a valid
one reaching it returns ``(0, [])`` in a few milliseconds. The ``sample_digits`` cases are
the ones that would need the cached model: they pass ``NO_MODELS`` (``None``) and must fail
on their arguments before the models are touched.
"""

import contextlib
import io
import os
import pathlib
import tempfile

import numpy as np

from jaxdiff import cli as jcli
from jaxdiff.demo import DemoConfig, sample_digits
from tests.bad_input.harness import Case, params, raises, returns, run

TMP = pathlib.Path(tempfile.mkdtemp(prefix="jaxdiff-bad-cli-"))
FILE = TMP / "a-file"
FILE.write_text("not a directory")
DIR_PNG = TMP / "dir.png"
DIR_PNG.mkdir()
# A place even root cannot write (sysfs); the cases that use it are kept only where it is.
LOCKED = "/sys/jaxdiff-bad-input"
_LOCKED_OK = jcli._unwritable(pathlib.Path(LOCKED), directory=True) is not None
_WORK = ("_use_compilation_cache", "_cmd_sample", "_cmd_demo")
NO_MODELS = None
nan, inf = float("nan"), float("inf")


def _reached(*args, **kwargs):
  return 0


def cli(argv, env=None):
  """``(exit code, stderr lines)`` of ``jaxdiff.cli.main(argv)``; its work is a stub."""
  env = {"JAXDIFF_CACHE_DIR": str(TMP / "cache"), "JAXDIFF_DEMO_SMALL": "", **(env or {})}
  saved_env = {k: os.environ.get(k) for k in env}
  saved = {name: getattr(jcli, name) for name in _WORK}
  cwd = os.getcwd()
  out, err = io.StringIO(), io.StringIO()
  try:
    os.environ.update(env)
    os.chdir(TMP)
    for name in _WORK:
      setattr(jcli, name, _reached)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      code = jcli.main(argv)
  finally:
    os.chdir(cwd)
    for name, fn in saved.items():
      setattr(jcli, name, fn)
    for k, v in saved_env.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  return code, err.getvalue().splitlines()


def sample(**overrides):
  """``sample_digits`` with valid arguments but ``overrides``, on ``NO_MODELS``."""
  kw = dict(guidance="cfg", scale=3.0, solver="ddim", steps=2, labels=np.arange(10))
  return sample_digits(NO_MODELS, **{**kw, **overrides})


def usage(fragment):
  """Exit 2 and exactly one stderr line ``jaxdiff: error: ...`` containing ``fragment``."""

  def check(result):
    code, lines = result
    assert code == 2, result
    assert len(lines) == 1 and lines[0].startswith("jaxdiff: error: "), lines
    assert fragment in lines[0], (fragment, lines)

  return check


def reached(result):
  assert result == (0, []), result


BAD = "policy 8: a bad invocation is one stderr line naming the option, exit 2, before any work"
VALID = "a valid invocation passes every check and reaches the work (stubbed here), exit 0"


def bad(code, fragment):
  return Case(code, returns(usage(fragment), BAD))


def ok(code):
  return Case(code, returns(reached, VALID))


NS = dict(
  cli=cli,
  TMP=TMP,
  FILE=FILE,
  DIR_PNG=DIR_PNG,
  LOCKED=LOCKED,
  DemoConfig=DemoConfig,
  sample=sample,
  np=np,
  nan=nan,
  inf=inf,
)

CLI_CASES = [
  # no command, unknown command, unknown option, help
  bad("cli([])", "required: {demo,sample}"),
  bad('cli(["fly"])', "invalid choice: 'fly'"),
  bad('cli(["sample", "--frobnicate"])', "unrecognized arguments: --frobnicate"),
  bad('cli(["demo", "--steps", "3"])', "unrecognized arguments: --steps"),
  Case('cli(["--help"])', returns(lambda r: r == (0, []), "--help prints the usage, exit 0")),
  Case('cli(["sample", "--help"])', returns(lambda r: r == (0, []), "--help prints the usage, exit 0")),
  # --scale
  bad('cli(["sample", "--scale", "nan"])', "argument --scale: expected a finite number"),
  bad('cli(["sample", "--scale", "-inf"])', "argument --scale: expected a finite number"),
  bad('cli(["sample", "--scale", "inf"])', "argument --scale: expected a finite number"),
  bad('cli(["sample", "--scale", "1e400"])', "argument --scale: expected a finite number"),
  bad('cli(["sample", "--scale", "1e39"])', "argument --scale: expected a finite number (float32 range)"),
  bad('cli(["sample", "--scale", "3,5"])', "argument --scale: expected a number, got '3,5'"),
  bad('cli(["sample", "--scale", ""])', "argument --scale: expected a number, got ''"),
  bad('cli(["sample", "--scale", "0x10"])', "argument --scale: expected a number"),
  bad('cli(["sample", "--scale"])', "argument --scale: expected one argument"),
  ok('cli(["sample", "--scale", "-2.5"])'),
  ok('cli(["sample", "--scale=-1e-3"])'),
  # --steps, --num, --class, --seed
  bad('cli(["sample", "--steps", "0"])', "argument --steps: expected a positive integer"),
  bad('cli(["sample", "--steps", "-1"])', "argument --steps: expected a positive integer"),
  bad('cli(["sample", "--steps", "2.5"])', "argument --steps: expected a positive integer at most 1000, got '2.5'"),
  bad('cli(["sample", "--steps", "1e3"])', "argument --steps"),
  bad('cli(["sample", "--steps", "10000000000000"])', "argument --steps: expected a positive integer at most 1000"),
  bad('cli(["sample", "--steps", ""])', "argument --steps"),
  ok('cli(["sample", "--steps", "1000"])'),
  bad('cli(["sample", "--num", "0"])', "argument --num"),
  bad('cli(["sample", "--num", "101"])', "argument --num: expected a positive integer at most 100"),
  bad('cli(["sample", "--class", "-1"])', "argument --class: expected a digit class 0-9, got -1"),
  bad('cli(["sample", "--class", "10"])', "argument --class: expected a digit class 0-9, got 10"),
  bad('cli(["sample", "--class", "a"])', "argument --class: expected a digit class 0-9, got 'a'"),
  bad('cli(["sample", "--class", "3.0"])', "argument --class"),
  ok('cli(["sample", "--class", "0"])'),
  bad('cli(["sample", "--seed", "-1"])', "argument --seed: expected an integer seed in [0, 4294967295]"),
  bad('cli(["sample", "--seed", "4294967296"])', "argument --seed"),
  bad('cli(["sample", "--seed", "99999999999999999999999"])', "argument --seed"),
  bad('cli(["sample", "--seed", "1.5"])', "argument --seed"),
  ok('cli(["sample", "--seed", "4294967295"])'),
  # --guidance, --solver (the registries' names, exactly)
  bad('cli(["sample", "--guidance", "magic"])', "argument --guidance: invalid choice: 'magic'"),
  bad('cli(["sample", "--guidance", "CFG"])', "argument --guidance: invalid choice: 'CFG'"),
  bad('cli(["sample", "--guidance", ""])', "argument --guidance: invalid choice"),
  bad('cli(["sample", "--solver", "rk45"])', "argument --solver: invalid choice: 'rk45'"),
  # --out of sample: a writable .png file
  bad('cli(["sample", "--out", "grid.jpg"])', "argument --out: expected a .png file name"),
  bad('cli(["sample", "--out", "grid"])', "argument --out: expected a .png file name"),
  bad('cli(["sample", "--out", ""])', "argument --out: expected a path"),
  bad('cli(["sample", "--out", "a" + chr(0) + ".png"])', "argument --out: expected a path"),
  bad('cli(["sample", "--out", str(DIR_PNG)])', "argument --out: cannot write"),
  bad('cli(["sample", "--out", str(FILE / "grid.png")])', "is not a directory"),
  bad('cli(["sample", "--out", "a" * 300 + ".png"])', "argument --out: cannot write"),
  ok('cli(["sample", "--out", "GRID.PNG"])'),
  ok('cli(["sample", "--out", "new/sub/dir/grid.png"])'),
  # --out of demo: a writable directory
  bad('cli(["demo", "--out", str(FILE)])', "argument --out: cannot write"),
  bad('cli(["demo", "--out", str(FILE / "report")])', "is not a directory"),
  bad('cli(["demo", "--out", ""])', "argument --out: expected a path"),
  ok('cli(["demo", "--out", "new/report"])'),
  # --cache-dir and JAXDIFF_CACHE_DIR: a writable directory
  bad('cli(["sample", "--cache-dir", str(FILE)])', "argument --cache-dir: cannot write"),
  bad('cli(["demo", "--cache-dir", str(FILE / "sub")])', "argument --cache-dir: cannot write"),
  bad('cli(["demo", "--cache-dir", ""])', "argument --cache-dir: expected a path"),
  bad('cli(["sample"], env={"JAXDIFF_CACHE_DIR": str(FILE)})', "JAXDIFF_CACHE_DIR"),
  bad('cli(["demo"], env={"JAXDIFF_CACHE_DIR": str(FILE / "x")})', "JAXDIFF_CACHE_DIR"),
  ok('cli(["sample"], env={"JAXDIFF_CACHE_DIR": ""})'),
  # JAXDIFF_DEMO_SMALL: 1, 0 or unset
  bad('cli(["sample"], env={"JAXDIFF_DEMO_SMALL": "true"})', "JAXDIFF_DEMO_SMALL"),
  bad('cli(["demo"], env={"JAXDIFF_DEMO_SMALL": "2"})', "JAXDIFF_DEMO_SMALL"),
  bad('cli(["demo"], env={"JAXDIFF_DEMO_SMALL": " 1"})', "JAXDIFF_DEMO_SMALL"),
  ok('cli(["demo", "--small"], env={"JAXDIFF_DEMO_SMALL": "true"})'),
  ok('cli(["demo"], env={"JAXDIFF_DEMO_SMALL": "0"})'),
  # a scale that does not suit the rule: the rule's own factory decides
  bad('cli(["sample", "--guidance", "cfgpp", "--scale", "3"])', "argument --scale: 3 does not suit --guidance cfgpp"),
  bad('cli(["sample", "--guidance", "pag", "--scale", "-1"])', "argument --scale: -1 does not suit --guidance pag"),
  bad('cli(["sample", "--guidance", "classifier", "--scale", "-1e3"])', "argument --scale: -1000 does not suit"),
  bad('cli(["sample", "--guidance", "none", "--scale", "3"])', "argument --scale: --guidance none takes no scale"),
  ok('cli(["sample", "--guidance", "none"])'),
  ok('cli(["sample", "--guidance", "cfgpp", "--scale", "1", "--solver", "ddpm"])'),
  # several bad options: still one line (the first the parser meets)
  bad('cli(["sample", "--steps", "0", "--out", "x.jpg", "--scale", "nan"])', "jaxdiff: error: argument"),
]  # fmt: skip
if _LOCKED_OK:
  CLI_CASES += [
    bad('cli(["sample", "--out", LOCKED + "/grid.png"])', "argument --out: cannot write /sys"),
    bad('cli(["demo", "--out", LOCKED])', "argument --out: cannot write /sys"),
    bad('cli(["sample", "--cache-dir", LOCKED])', "argument --cache-dir: cannot write /sys"),
  ]

# DemoConfig: every field checked at construction, the message names it.
CONFIG_CASES = [
  Case("DemoConfig(dim=-1)", raises(ValueError, r"DemoConfig: dim must lie in \[1, inf\)")),
  Case("DemoConfig(depth=0)", raises(ValueError, "DemoConfig: depth")),
  Case("DemoConfig(dim=2.5)", raises(TypeError, "DemoConfig: dim must be an int")),
  Case("DemoConfig(dim=64.0)", raises(TypeError, "DemoConfig: dim must be an int")),
  Case("DemoConfig(batch_size=True)", raises(TypeError, "DemoConfig: batch_size must be an int")),
  Case("DemoConfig(samples_per_class=None)", raises(TypeError, "DemoConfig: samples_per_class")),
  Case("DemoConfig(dim=30)", raises(ValueError, r"DemoConfig: dim \(30\) must be even and a multiple of num_heads \(4\)")),
  Case("DemoConfig(weak_dim=6)", raises(ValueError, "DemoConfig: weak_dim")),
  Case("DemoConfig(seed=-1)", raises(ValueError, "DemoConfig: seed")),
  Case("DemoConfig(xla_opt_level=4)", raises(ValueError, "DemoConfig: xla_opt_level")),
  Case("DemoConfig(learning_rate=nan)", raises(ValueError, "DemoConfig: learning_rate must be a number, got NaN")),
  Case("DemoConfig(classifier_lr=0.0)", raises(ValueError, "DemoConfig: classifier_lr")),
  Case('DemoConfig(tour="yes")', raises(TypeError, "DemoConfig: tour must be a bool")),
  Case("DemoConfig(nfe_budget=1)", raises(ValueError, "DemoConfig: nfe_budget \\(1\\) is smaller than the 2 network evaluations per step of rule 'cfg'")),
  Case('DemoConfig(nfe_budget=3, solvers=("heun",))', raises(ValueError, "smaller than the 4 network evaluations per step of rule 'cfg' with solver 'heun'")),
  Case('DemoConfig(nfe_budget=20, solvers=("heun",)).steps_for("cfg", "heun")', returns(lambda n: n == 5, "a two-stage solver gets half the steps of the budget")),
  Case('DemoConfig(nfe_budget=21, rule_kwargs={"pag": {"cfg_scale": 2.0}}).steps_for("pag", "ddim")', returns(lambda n: n == 7, "PAG with a CFG term: 3 evaluations per step")),
  Case('DemoConfig(nfe_budget=1, rules=("none",)).nfe_budget', returns(lambda n: n == 1, "plain sampling needs 1 evaluation per step: a budget of 1 is one step" )),
  Case('DemoConfig(rules=("none", "magic"))', raises(ValueError, "DemoConfig: rules: unknown \\['magic'\\]")),
  Case('DemoConfig(rules="cfg")', raises(TypeError, "DemoConfig: rules must be a tuple")),
  Case("DemoConfig(rules=())", raises(ValueError, "DemoConfig: rules must not be empty")),
  Case('DemoConfig(rules=("cfg", "cfg"))', raises(ValueError, "DemoConfig: rules: \\['cfg'\\] listed more than once")),
  Case('DemoConfig(solvers=("rk45",))', raises(ValueError, "DemoConfig: solvers: unknown \\['rk45'\\]")),
  Case('DemoConfig(sweep_solver="rk4")', raises(ValueError, "DemoConfig: sweep_solver: unknown")),
  Case('DemoConfig(scales={"cfg": nan})', raises(ValueError, "DemoConfig: scales\\['cfg'\\] must be a number, got NaN")),
  Case('DemoConfig(scales={"cfg": inf})', raises(ValueError, "DemoConfig: scales\\['cfg'\\] must be finite")),
  Case('DemoConfig(scales={"cfg": "3"})', raises(TypeError, "DemoConfig: scales\\['cfg'\\]")),
  Case('DemoConfig(scales={"cfgpp": 3.0})', raises(ValueError, "DemoConfig: scales\\['cfgpp'\\]: cfgpp: scale must lie in \\[0, 1\\]")),
  Case('DemoConfig(scales={"magic": 1.0})', raises(ValueError, "DemoConfig: scales: unknown \\['magic'\\]")),
  Case('DemoConfig(rule_kwargs={"magic": {}})', raises(ValueError, "DemoConfig: rule_kwargs: unknown \\['magic'\\]")),
  Case('DemoConfig(rule_kwargs={"apg": {"foo": 1.0}})', raises(TypeError, "DemoConfig: rule_kwargs\\['apg'\\]: .*'foo'")),
  Case('DemoConfig(rule_kwargs={"apg": {"momentum": nan}})', raises(ValueError, "DemoConfig: rule_kwargs\\['apg'\\]: apg: momentum")),
  Case('DemoConfig(rule_kwargs={"apg": 2.0})', raises(TypeError, "DemoConfig: rule_kwargs\\['apg'\\] must be a dict")),
  Case("DemoConfig(rule_kwargs={}).rule_kwargs", returns(lambda kw: kw == {}, "rules not listed use their factory's defaults")),
  Case("DemoConfig(sweep_scales=())", raises(ValueError, "DemoConfig: sweep_scales must not be empty")),
  Case("DemoConfig(sweep_scales=(2.0, nan))", raises(ValueError, "DemoConfig: sweep_scales\\[1\\] must be a number")),
  Case("DemoConfig(sweep_scales=(0.5,))", raises(ValueError, "DemoConfig: sweep_scales\\[0\\] \\(w = 0.5, pag scale w \\+ -1\\): pag: scale" )),
  Case('DemoConfig(sweep_scales=(0.5,), rules=("none", "cfg")).sweep_scales', returns(lambda s: s == (0.5,), "sweep settings are checked only for the rules that run")),
  Case('DemoConfig(sweep_rules={"pag": inf})', raises(ValueError, "DemoConfig: sweep_rules\\['pag'\\] must be finite")),
  Case("DemoConfig(cfgpp_lambdas=(2.0,))", raises(ValueError, "DemoConfig: cfgpp_lambdas\\[0\\]: cfgpp: scale")),
  Case("DemoConfig(cfgpp_lambdas=())", raises(ValueError, "DemoConfig: cfgpp_lambdas must not be empty")),
  Case("DemoConfig(classifier_scales=(-inf,))", raises(ValueError, "DemoConfig: classifier_scales\\[0\\]")),
  Case("DemoConfig(adaptive_thresholds=(nan,))", raises(ValueError, "DemoConfig: adaptive_thresholds\\[0\\]")),
]  # fmt: skip

# sample_digits: arguments are checked before the models are touched (NO_MODELS is None).
SAMPLE_CASES = [
  Case('sample(guidance="magic")', raises(ValueError, "guidance must be one of")),
  Case('sample(solver="rk45")', raises(ValueError, "solver must be one of")),
  Case("sample(steps=0)", raises(ValueError, "steps must lie in")),
  Case("sample(steps=2.5)", raises(ValueError, "steps must be an integer")),
  Case("sample(steps=True)", raises(TypeError, "steps must be an int, got a bool")),
  Case("sample(scale=nan)", raises(ValueError, "cfg: scale must be a number, got NaN")),
  Case('sample(guidance="cfgpp", scale=3.0)', raises(ValueError, "cfgpp: scale must lie in")),
  Case('sample(guidance="none", scale=3.0)', raises(ValueError, "scale: guidance 'none' takes no scale")),
  Case("sample(labels=np.array([0, 10]))", raises(ValueError, r"labels must lie in \[0, 10\), got 10")),
  Case("sample(labels=np.array([-1, 3]))", raises(ValueError, r"labels must lie in \[0, 10\), got -1")),
  Case("sample(labels=np.array([0.0, 1.0]))", raises(TypeError, "labels must be integer digit classes")),
  Case("sample(labels=np.array([True]))", raises(TypeError, "labels must be integer digit classes")),
  Case("sample(labels=np.zeros(0, int))", raises(ValueError, "labels must be a non-empty 1-D array")),
  Case("sample(labels=np.zeros((2, 5), int))", raises(ValueError, "labels must be a non-empty 1-D array")),
]  # fmt: skip

CASES = CLI_CASES + CONFIG_CASES + SAMPLE_CASES


def test_table_size():
  assert len(CLI_CASES) >= 30 and len(CASES) >= 100


@params(CASES)
def test_case(case):
  run(case, NS)
