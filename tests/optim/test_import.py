"""`import optim` stays light: flax only with optim.layers, on first use."""

import subprocess
import sys


def test_import_optim_does_not_import_flax_until_layers_is_used():
  code = (
    "import sys, optim; assert 'flax' not in sys.modules, 'flax'; "
    "optim.layers.GhostBatchNorm; assert 'flax' in sys.modules"
  )
  subprocess.run([sys.executable, "-c", code], check=True)
