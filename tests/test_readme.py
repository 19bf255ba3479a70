"""The README's code runs: every ```python block executes, in order, in one namespace (as a
reader would paste them). Its links are checked in tests/test_skeleton.py."""

import contextlib
import io
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _python_blocks(text: str) -> list[str]:
  return re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)


def test_readme_has_a_quick_tour_block():
  assert _python_blocks(README.read_text()), "no ```python block in README.md"


def test_readme_python_blocks_execute():
  namespace: dict = {"__name__": "__readme__"}
  out = io.StringIO()
  for i, block in enumerate(_python_blocks(README.read_text())):
    code = compile(block, f"README.md block {i}", "exec")
    with contextlib.redirect_stdout(out):
      exec(code, namespace)  # noqa: S102 - the README's own code
  # The quick tour prints what its comment promises.
  assert "(64, 2) 40" in out.getvalue(), out.getvalue()
