"""The command line: --help documents every option; bad arguments give ONE error line and a
non-zero exit, before any model is loaded or trained."""

import subprocess
import sys

import pytest

from jaxdiff import cli

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
    (["sample", "--guidance", "cfgpp", "--scale", "3"], "lambda in [0, 1]"),
    (["sample", "--guidance", "pag", "--scale", "-1"], ">= 0"),
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
