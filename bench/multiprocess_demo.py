"""Scaling out: one sharded optimizer step and one sharded ``jaxdiff.sample`` across
processes joined by ``jax.distributed`` (CPU collectives over gloo).

Every process runs this file with the same coordinator address and its own process id;
together their devices form one global mesh, the inputs are split over it along their
first axis (each process hands over only its own shards), and the results are gathered
back to every process. Process 0 prints them, and writes them to ``--out`` when given.
``tests/test_multiprocess.py`` runs it with 2 processes and checks the results equal one
process's.

One command per process (hosts: use the first host's address instead of localhost):

    C="--coordinator localhost:29500 --num-processes 2"
    python bench/multiprocess_demo.py $C --process-id 0 &
    python bench/multiprocess_demo.py $C --process-id 1

or let it start them all on this machine, on a free port: ``--spawn 2``.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys

LOCAL_DEVICES = 2  # CPU devices per process: the global mesh spans 2 x num_processes


def inputs():
  """The global inputs as NumPy arrays (identical in every process and in the test)."""
  import numpy as np

  rng = np.random.default_rng(0)
  f = np.float32
  params = {"w": rng.standard_normal((8, 4)).astype(f), "b": np.zeros(8, f)}
  grads = [
    {"w": rng.standard_normal((8, 4)).astype(f), "b": rng.standard_normal(8).astype(f)}
    for _ in range(2)
  ]
  x_T = rng.standard_normal((8, 2)).astype(f)
  labels = (np.arange(8) % 2).astype(np.int32)
  return params, grads, x_T, labels


def steps(params, grads):
  """Two steps of a chain whose reductions cross the sharded axis: the global-norm clip
  (over the whole tree) and AdamP's per-channel sums over the kernel's rows."""
  import optax

  import optim

  tx = optax.chain(optax.clip_by_global_norm(1.0), optim.diffgrad(1e-2), optim.adamp(1e-2))
  state = tx.init(params)
  for g in grads:
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
  return params


def sample(x_T, labels):
  """DPM-Solver++(2M), 10 steps, on the exact denoiser of a 2-class Gaussian mixture."""
  import jax
  import numpy as np

  import jaxdiff
  from jaxdiff import schedules, solvers
  from jaxdiff.testing import GaussianMixture

  gmm = GaussianMixture(np.array([[-2.0, 0.0], [2.0, 1.0]]), 0.1)
  sched = schedules.vp_cosine()
  ts = schedules.timesteps(sched, 10, spacing="logsnr")
  den = gmm.denoiser(sched)
  return jaxdiff.sample(den, solvers.dpmpp_2m(), x_T, ts, key=jax.random.key(0), cond=labels).x


def run(coordinator: str, num_processes: int, process_id: int, out: str | None) -> None:
  """One process: join, compute on the global mesh, gather, shut down."""
  import jax

  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", LOCAL_DEVICES)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the default; explicit
  jax.distributed.initialize(
    coordinator_address=coordinator,
    num_processes=num_processes,
    process_id=process_id,
    initialization_timeout=60,  # seconds: a missing peer is an error, not a hang
    shutdown_timeout_seconds=30,
  )
  import numpy as np
  from jax.experimental import multihost_utils
  from jax.sharding import NamedSharding, PartitionSpec

  assert jax.device_count() == LOCAL_DEVICES * num_processes, jax.devices()
  mesh = jax.make_mesh((jax.device_count(),), ("batch",))
  rows = NamedSharding(mesh, PartitionSpec("batch"))
  shard = lambda a: jax.make_array_from_callback(a.shape, rows, lambda idx: a[idx])

  params, grads, x_T, labels = inputs()
  p_out = jax.jit(steps)(jax.tree.map(shard, params), jax.tree.map(shard, grads))
  # The labels stay a host array that every process holds whole: `jaxdiff.sample`
  # range-checks concrete labels with NumPy, which cannot read an array spanning processes.
  x_out = sample(shard(x_T), labels)  # jaxdiff.sample compiles itself
  assert not x_out.is_fully_addressable  # the samples live on every process's devices

  gathered = multihost_utils.process_allgather({**p_out, "x": x_out}, tiled=True)
  if process_id == 0:
    print(f"{num_processes} processes, {jax.device_count()} devices; samples:")
    print(np.asarray(gathered["x"]).round(3))
    if out is not None:
      np.savez(out, **{k: np.asarray(v) for k, v in gathered.items()})
  jax.distributed.shutdown()


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def spawn(num_processes: int, out: str | None = None) -> list[subprocess.Popen]:
  """Starts ``num_processes`` copies of this script on this machine (free port, CPU only,
  without the caller's ``XLA_FLAGS``); returns them running, output piped."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  args = [sys.executable, os.path.abspath(__file__), "--coordinator", f"localhost:{free_port()}"]
  args += ["--num-processes", str(num_processes)] + (["--out", out] if out else [])
  return [
    subprocess.Popen(
      args + ["--process-id", str(i)],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(num_processes)
  ]


def wait(procs: list[subprocess.Popen], timeout: float) -> list[str]:
  """Each process's output; a process still running after ``timeout`` seconds is killed
  (all of them are), and any non-zero exit is a ``RuntimeError`` with every log."""
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=timeout)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  codes = [p.returncode for p in procs]
  if codes != [0] * len(procs):
    raise RuntimeError(f"exit codes {codes}:\n" + "\n---\n".join(logs))
  return logs


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--coordinator", help="HOST:PORT of process 0")
  ap.add_argument("--num-processes", type=int, default=2)
  ap.add_argument("--process-id", type=int)
  ap.add_argument("--spawn", type=int, metavar="N", help="start N processes here and wait")
  ap.add_argument("--out", help="process 0 writes the gathered results here (.npz)")
  a = ap.parse_args()
  if a.spawn:
    print(wait(spawn(a.spawn, a.out), timeout=300)[0], end="")
  elif a.coordinator is None or a.process_id is None:
    ap.error("give --coordinator and --process-id (one process), or --spawn N")
  else:
    run(a.coordinator, a.num_processes, a.process_id, a.out)


if __name__ == "__main__":
  main()
