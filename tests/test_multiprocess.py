"""Two CPU processes joined by ``jax.distributed`` (gloo collectives on localhost) compute
what one process computes: a sharded optimizer step and a sharded ``jaxdiff.sample``.

The processes run ``bench/multiprocess_demo.py`` (the README's "Scaling out" script) with 2
CPU devices each, so the global mesh has 4 devices over 2 processes; the reference runs
here, unsharded, on the same NumPy inputs, while they work. Everything is bounded: a free
port, timeouts on the coordinator's start-up and shutdown, and a wall-clock limit after
which both processes are killed and the test fails.
"""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

_path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "multiprocess_demo.py"
_spec = importlib.util.spec_from_file_location("multiprocess_demo", _path)
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)

pytestmark = pytest.mark.integration  # two fresh processes joined by jax.distributed

TIMEOUT_S = 120  # far above the seconds it takes: a hung collective must not hang CI


def test_two_processes_match_one_process(tmp_path):
  out = tmp_path / "result.npz"
  procs = demo.spawn(2, str(out))
  try:  # the single-process reference, computed while the workers run
    params, grads, x_T, labels = demo.inputs()
    ref_p = jax.jit(demo.steps)(jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, grads))
    ref_x = demo.sample(jnp.asarray(x_T), jnp.asarray(labels))
  finally:
    demo.wait(procs, TIMEOUT_S)
  got = np.load(out)
  # The clip's global norm and AdamP's channel sums are all-reduced across the processes:
  # only the summation order may differ from the single-process result.
  np.testing.assert_allclose(got["w"], ref_p["w"], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(got["b"], ref_p["b"], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(got["x"], ref_x, rtol=1e-6, atol=1e-6)
  assert not np.allclose(got["w"], params["w"])  # the steps moved the parameters
