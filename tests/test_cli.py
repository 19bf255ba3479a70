"""The command line: --help documents every option; bad arguments give ONE error line and a
non-zero exit, before any model is loaded or trained."""

import subprocess
import sys
import types

import pytest

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
  with pytest.raises(SystemExit) as exc:
    cli.main(argv)
  out = capsys.readouterr()
  return exc.value.code, out.out, out.err


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
    (["sample", "--steps", "0"], "positive integer"),
    (["sample", "--steps", "ten"], "positive integer"),
    (["sample", "--class", "10"], "digit class 0-9"),
    (["sample", "--class", "x"], "digit class 0-9"),
    (["sample", "--guidance", "magic"], "invalid choice"),
    (["sample", "--solver", "rk45"], "invalid choice"),
    (["sample", "--scale", "nan"], "finite number"),
    (["sample", "--scale", "-inf"], "finite number"),
    (["sample", "--scale", "inf"], "finite number"),
    (["sample", "--scale", "-nan"], "finite number"),
    (["sample", "--scale", "big"], "expected a number"),
    (["sample", "--out", "grid.jpg"], ".png"),
    (["sample", "--num", "-3"], "positive integer"),
    (["sample", "--frobnicate"], "unrecognized arguments"),
    (["fly"], "invalid choice"),
    ([], "required"),
  ],
)
def test_bad_arguments_give_one_error_line_and_exit_2(argv, fragment, capsys):
  code, out, err = _run(argv, capsys)
  assert code == 2
  assert out == ""
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert lines[0].startswith("jaxdiff: error:") and fragment in lines[0]


@pytest.mark.parametrize(
  "argv, fragment",
  [
    (["sample", "--guidance", "cfgpp", "--scale", "3"], "does not suit --guidance cfgpp"),
    (["sample", "--guidance", "pag", "--scale", "-1"], "does not suit --guidance pag"),
    (["sample", "--guidance", "classifier", "--scale", "-1e3"], "--scale -1000 does not suit"),
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
  assert err_lines == ["jaxdiff: error: argument --steps: expected a positive integer, got 0"]


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


def test_out_that_is_a_directory_is_rejected_for_sample(capsys, tmp_path):
  (tmp_path / "grid.png").mkdir()
  code, _, err = _run(["sample", "--out", str(tmp_path / "grid.png")], capsys)
  assert code == 2 and "it is a directory" in err and err.count("\n") == 1


def test_negative_scale_after_a_space_is_parsed_as_a_number():
  args = cli.build_parser().parse_args(cli._join_number_values(["sample", "--scale", "-2.5"]))
  assert args.scale == -2.5
  args = cli.build_parser().parse_args(cli._join_number_values(["sample", "--scale", "-1e-3"]))
  assert args.scale == -1e-3


def test_choices_are_the_registries():
  parser = cli.build_parser()
  sample = next(a for a in parser._actions if a.dest == "command").choices["sample"]
  choices = {a.dest: a.choices for a in sample._actions if a.choices}
  assert tuple(choices["guidance"]) == ("none", *guidance.REGISTRY)
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


def test_demo_config_rejects_unknown_rules_and_solvers():
  with pytest.raises(ValueError, match="rules: unknown"):
    demo.DemoConfig(rules=("none", "magic"))
  with pytest.raises(ValueError, match="solvers: unknown"):
    demo.DemoConfig(solvers=("rk45",))
