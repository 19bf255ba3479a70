"""The command line: --help documents every option; bad arguments give ONE error line and
exit 2 before any model is loaded or trained (the hostile-input table is
tests/bad_input/test_cli.py); a failure while working is one line and exit 1."""

import errno
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import jaxdiff.demo._figures
import jaxdiff.models
from jaxdiff import cli, demo, guidance, solvers

SAMPLE_OPTIONS = [
  "--guidance",
  "--scale",
  "--solver",
  "--steps",
  "--class",
  "--num",
  "--seed",
  "--out",
  "--cache-dir",
  "--small",
  "--no-progress",
]
DEMO_OPTIONS = ["--out", "--cache-dir", "--small", "--no-progress"]


def _run(argv, capsys):
  code = cli.main(argv)
  out = capsys.readouterr()
  return code, out.out, out.err


@pytest.mark.parametrize("command, options", [("sample", SAMPLE_OPTIONS), ("demo", DEMO_OPTIONS)])
def test_help_documents_every_option(command, options, capsys):
  code, out, _ = _run([command, "--help"], capsys)
  assert code == 0
  parser = cli.build_parser()
  sub = next(a for a in parser._actions if a.dest == "command").choices[command]
  documented = {o for a in sub._actions for o in a.option_strings if a.help}
  for option in options:
    assert option in out and option in documented, option
  # every registered option has help text (nothing undocumented slips in)
  undocumented = [a.option_strings for a in sub._actions if a.option_strings and not a.help]
  assert not undocumented


def test_top_level_help_lists_both_commands(capsys):
  code, out, _ = _run(["--help"], capsys)
  assert code == 0 and "demo" in out and "sample" in out


@pytest.mark.parametrize(
  "argv, fragment",
  [
    (["sample", "--guidance", "cfgpp", "--scale", "3"], "does not suit --guidance cfgpp"),
    (["sample", "--guidance", "pag", "--scale", "-1"], "does not suit --guidance pag"),
    (["sample", "--guidance", "classifier", "--scale", "-1e3"], "--scale: -1000 does not suit"),
    (["sample", "--guidance", "none", "--scale", "3"], "--guidance none takes no scale"),
    (["sample", "--steps", "0"], "--steps: expected a positive integer"),
  ],
)
def test_inconsistent_scale_is_rejected_before_any_training(argv, fragment, capsys, tmp_path):
  code = cli.main([*argv, "--cache-dir", str(tmp_path / "cache")])
  err = capsys.readouterr().err
  assert code == 2
  assert err.count("\n") == 1 and "jaxdiff: error:" in err and fragment in err
  assert not (tmp_path / "cache" / "denoiser").exists()
  assert not any(p.name.startswith("denoiser") for p in (tmp_path / "cache").glob("*"))


def test_module_entry_point_exits_nonzero_with_one_line(tmp_path):
  proc = subprocess.run(
    [sys.executable, "-m", "jaxdiff", "sample", "--steps", "0"],
    capture_output=True,
    text=True,
    cwd=tmp_path,
    timeout=300,
  )
  assert proc.returncode == 2
  assert proc.stdout == ""
  err_lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert err_lines == [
    "jaxdiff: error: argument --steps: expected a positive integer at most 1000, got 0"
  ]


@pytest.mark.parametrize("command, out", [("sample", "grid.png"), ("demo", "report")])
def test_unwritable_out_is_one_error_line_before_any_work(command, out, capsys, tmp_path):
  blocker = tmp_path / "a-file"
  blocker.write_text("not a directory")
  cache = tmp_path / "cache"
  argv = [command, "--out", str(blocker / out), "--cache-dir", str(cache)]
  code, stdout, err = _run(argv, capsys)
  assert code == 2 and stdout == ""
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("jaxdiff: error: argument --out: cannot write")
  assert "is not a directory" in lines[0]
  assert not cache.exists()  # nothing was trained, loaded or cached


def test_negative_scale_after_a_space_is_parsed_as_a_number():
  args = cli.build_parser().parse_args(cli._join_number_values(["sample", "--scale", "-2.5"]))
  assert args.scale == -2.5
  args = cli.build_parser().parse_args(cli._join_number_values(["sample", "--scale", "-1e-3"]))
  assert args.scale == -1e-3


def test_choices_are_the_registries():
  parser = cli.build_parser()
  sample = next(a for a in parser._actions if a.dest == "command").choices["sample"]
  choices = {a.dest: a.choices for a in sample._actions if a.choices}
  # every rule but those that need a distilled network (RuleSpec.keyword: AGD's
  # guidance_scale), which the CLI's plain denoiser cannot run
  plain = tuple(n for n, spec in guidance.REGISTRY.items() if spec.keyword is None)
  assert tuple(choices["guidance"]) == ("none", *plain) and "agd" not in plain
  assert tuple(choices["solver"]) == tuple(solvers.REGISTRY)


def _extended_registry(monkeypatch):
  """The registry plus one line: a CFG copy under a new name, with its own default scale."""
  spec = guidance.RuleSpec("My rule", lambda s, **kw: guidance.cfg(s, **kw), 4.5, 2)
  registry = types.MappingProxyType({**guidance.REGISTRY, "my_rule": spec})
  monkeypatch.setattr(guidance, "REGISTRY", registry)


def test_one_registry_line_adds_a_rule_to_the_cli_and_the_demo(monkeypatch, capsys):
  _extended_registry(monkeypatch)
  parser = cli.build_parser()
  sample = next(a for a in parser._actions if a.dest == "command").choices["sample"]
  (guidance_action,) = [a for a in sample._actions if a.dest == "guidance"]
  assert "my_rule" in guidance_action.choices
  assert parser.parse_args(["sample", "--guidance", "my_rule"]).guidance == "my_rule"
  config = demo.DemoConfig.small()
  assert config.rules[-1] == "my_rule"
  assert demo.DemoConfig.full().rules[-1] == "my_rule"
  assert config.scale_of("my_rule") == 4.5  # the registry's default_scale
  assert demo.rule_label("my_rule") == "My rule"
  assert demo.steps_for_budget("my_rule", 20) == 10
  assert demo.make_rule("my_rule", 2.0) is not None
  # and without it, the name is unknown everywhere
  monkeypatch.undo()
  assert "my_rule" not in demo.DemoConfig.small().rules
  code, _, err = _run(["sample", "--guidance", "my_rule"], capsys)
  assert code == 2 and "invalid choice" in err


@pytest.fixture
def stub_work(monkeypatch, tmp_path):
  """The sample command with its models, data and sampler replaced: no training, ~ms.

  Returns the dict ``calls`` that records what reached the writer."""
  calls = {}
  monkeypatch.setattr(cli, "_use_compilation_cache", lambda cache: None)
  monkeypatch.setattr(demo, "prepare_models", lambda *a, **k: "models")
  monkeypatch.setattr(jaxdiff.models, "load_digits", lambda key: None)
  monkeypatch.setattr(
    demo, "sample_digits", lambda models, *, labels, **k: (np.zeros((len(labels), 8, 8)), 2)
  )
  monkeypatch.setattr(
    jaxdiff.demo._figures, "save_grid", lambda path, x, *a: calls.setdefault("saved", path)
  )
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("JAXDIFF_CACHE_DIR", str(tmp_path / "cache"))
  return calls


def _one_line(capsys, status, code):
  out = capsys.readouterr()
  lines = out.err.splitlines()
  assert code == status, out
  assert len(lines) == 1 and lines[0].startswith("jaxdiff: error: "), out.err
  return lines[0]


def test_stubbed_sample_reaches_the_writer(stub_work, capsys):
  # the stubs are faithful enough that a valid run succeeds: the failures below are real
  assert cli.main(["sample", "--class", "3", "--num", "2"]) == 0
  assert str(stub_work["saved"]) == "grid.png"
  assert "wrote grid.png (2 samples, 2 network evaluations per sample)" in capsys.readouterr().out


def test_disk_full_while_writing_is_one_line_and_exit_1(stub_work, monkeypatch, capsys):
  def full(path, *args):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))

  monkeypatch.setattr(jaxdiff.demo._figures, "save_grid", full)
  line = _one_line(capsys, 1, cli.main(["sample"]))
  assert "No space left on device" in line and "grid.png" in line


def test_non_finite_samples_are_an_error_and_nothing_is_written(stub_work, monkeypatch, capsys):
  def nan_samples(models, *, labels, **kwargs):
    x = np.zeros((len(labels), 8, 8))
    x[1, 2, 3] = np.nan
    return x, 2

  monkeypatch.setattr(demo, "sample_digits", nan_samples)
  line = _one_line(capsys, 1, cli.main(["sample", "--num", "4", "--guidance", "cfg"]))
  assert "1 of 40 samples are not finite" in line and "saved" not in stub_work


def test_unexpected_failure_is_one_line_unless_a_traceback_is_asked_for(
  stub_work, monkeypatch, capsys
):
  def bug(*args, **kwargs):
    raise RuntimeError("boom\nsecond line of a long XLA message")

  monkeypatch.setattr(demo, "prepare_models", bug)
  line = _one_line(capsys, 1, cli.main(["sample"]))
  assert line.startswith("jaxdiff: error: RuntimeError: boom") and "JAXDIFF_TRACEBACK=1" in line
  monkeypatch.setenv("JAXDIFF_TRACEBACK", "1")
  with pytest.raises(RuntimeError, match="boom"):
    cli.main(["sample"])


def test_demo_failure_while_writing_is_one_line(stub_work, monkeypatch, capsys):
  def full(config, *, out_dir, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", str(out_dir / "report.md"))

  monkeypatch.setattr(demo, "run_demo", full)
  line = _one_line(capsys, 1, cli.main(["demo", "--small", "--out", "report"]))
  assert "No space left on device" in line and "report.md" in line


def test_interrupt_exits_130_with_one_line(stub_work, monkeypatch, capsys):
  def interrupt(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(demo, "prepare_models", interrupt)
  code = cli.main(["sample"])
  err = capsys.readouterr().err
  assert code == 130 and err.splitlines() == [
    "jaxdiff: interrupted (checkpoints kept; rerun to resume)"
  ]


def test_checks_leave_no_trace_on_disk(stub_work, tmp_path):
  # the writability probe creates and removes: a rejected run leaves nothing behind
  cache, out = tmp_path / "c" / "d", tmp_path / "o" / "p" / "grid.png"
  code = cli.main(["sample", "--out", str(out), "--cache-dir", str(cache), "--scale", "nan"])
  assert code == 2
  assert cli.main(["sample", "--out", str(out), "--cache-dir", str(cache)]) == 0
  assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_small_flag_does_not_leak_into_the_environment(stub_work, monkeypatch):
  monkeypatch.delenv("JAXDIFF_DEMO_SMALL", raising=False)
  assert cli.main(["sample", "--small"]) == 0
  assert "JAXDIFF_DEMO_SMALL" not in os.environ
