"""Parity against the PyTorch peers (the ``peers`` extra). Every test here skips, with the
reason, when torch or its peer is not importable; ``.ci/run`` installs the extra and runs
this directory after ``make test`` (``make test`` leaves it out).

The setups (same parameters, gradients, weights and schedule in both frameworks) are the
ones ``bench/bench_peers.py`` times: ``bench/_peers.py`` serves both.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))
