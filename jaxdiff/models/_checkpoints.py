"""Integrity of :func:`jaxdiff.models.train`'s checkpoints: a digest file per saved step.

Orbax stores no checksums, so a damaged array file is found only when restoring it, as an
internal TensorStore error (often after other reads have started, which then print their
own tracebacks) that cannot be told apart from a checkpoint of another model. After each
save, :func:`write_digests` records the size and SHA-256 of every file of the step
(``jaxdiff_digests.json`` in the step directory; orbax ignores it and deletes it with the
step); before a restore, :func:`verify_digests` checks them and names the first file that
is missing or differs. Checkpoints written before digests existed are restored unchecked.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

DIGESTS = "jaxdiff_digests.json"
# Orbax's own step metadata (timestamps) is not covered: orbax reads it leniently and may
# rewrite it; everything that holds the arrays and their tree is.
_UNCOVERED = frozenset({DIGESTS, DIGESTS + ".tmp", "_CHECKPOINT_METADATA"})


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with path.open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _covered(step_dir: pathlib.Path) -> list[str]:
  return sorted(
    p.relative_to(step_dir).as_posix()
    for p in step_dir.rglob("*")
    if p.is_file() and not (p.parent == step_dir and p.name in _UNCOVERED)
  )


def write_digests(step_dir: pathlib.Path) -> None:
  """Records ``{file: [size, sha256]}`` of a finished step (written atomically)."""
  files = {
    rel: [(step_dir / rel).stat().st_size, _sha256(step_dir / rel)] for rel in _covered(step_dir)
  }
  tmp = step_dir / (DIGESTS + ".tmp")
  tmp.write_text(json.dumps({"version": 1, "files": files}))
  os.replace(tmp, step_dir / DIGESTS)


def verify_digests(step_dir: pathlib.Path, where: str) -> bool:
  """Checks a step against its digests: ``True`` when verified, ``False`` when it has none.

  Raises:
    ValueError: one line, ``where`` then the file at fault (the digest file itself, a
      missing file, or one whose size or contents differ from what was saved) and what to
      do.
  """
  path = step_dir / DIGESTS
  if not path.exists():
    return False
  fix = f"delete {step_dir} (training resumes from an earlier checkpoint) or use a fresh directory"
  try:
    files = json.loads(path.read_text())["files"]
    entries = [(str(rel), int(size), str(digest)) for rel, (size, digest) in files.items()]
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
    raise ValueError(f"{where}: its digest file {path} is unreadable ({err}); {fix}") from None
  for rel, size, digest in entries:
    file = step_dir / rel
    if not file.is_file():
      raise ValueError(f"{where}: file {file} is missing; {fix}")
    got = file.stat().st_size
    if got != size:
      raise ValueError(f"{where}: file {file} has {got} bytes, {size} were saved; {fix}")
    if _sha256(file) != digest:
      raise ValueError(f"{where}: file {file} differs from what was saved (SHA-256); {fix}")
  return True
