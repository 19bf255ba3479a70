"""AdamP's two schedules of the same update, side by side: the direction stored to a
temporary and read twice, or recomputed inside the output pass (``optim._adamp``'s
``_RECOMPUTE_ABOVE_BYTES`` picks one by model size). Interleaved rounds, ratio to
``optax.adam`` and of recompute to store, for models of 2 to 10 leaves of 1000 x 1000.

    .venv/bin/python bench/adamp_store_vs_recompute.py
"""

from __future__ import annotations

import functools
import os
import pathlib
import sys

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_cpu_copy_insertion_use_region_analysis=true"
)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from _timing import Stateful, compare, ratio  # noqa: E402

import optim  # noqa: E402
from optim import _adamp  # noqa: E402


def _step(tx, grads, recompute: bool):
  @functools.partial(jax.jit, donate_argnums=0)
  def step(carry):
    p, s = carry
    u, s = tx.update(grads, s, p)
    return optax.apply_updates(p, u), s

  def run(carry):  # the schedule is chosen when the step is traced (first call)
    _adamp._RECOMPUTE_ABOVE_BYTES = -1 if recompute else 2**62
    return step(carry)

  return run


def main():
  saved = _adamp._RECOMPUTE_ABOVE_BYTES
  print(f"{'params':>8} {'store x adam':>13} {'recompute x adam':>17} {'recompute / store':>18}")
  for leaves in (2, 4, 6, 10):
    keys = jax.random.split(jax.random.key(0), leaves)
    params = {f"w{i}": 0.02 * jax.random.normal(k, (1000, 1000)) for i, k in enumerate(keys)}
    grads = jax.tree.map(lambda x: 1e-3 * jnp.sin(50.0 * x), params)
    fns = {}
    for name, tx, recompute in (
      ("adam", optax.adam(1e-3), False),
      ("store", optim.adamp(1e-3, weight_decay=1e-2), False),
      ("recompute", optim.adamp(1e-3, weight_decay=1e-2), True),
    ):
      p = jax.tree.map(jnp.copy, params)
      fns[name] = Stateful(_step(tx, grads, recompute), (p, tx.init(p)))
    t = compare(fns, baseline="adam", rounds=15, calls_per_round=5)
    print(
      f"{leaves:>7}M {t['store'].ratio:13.2f} {t['recompute'].ratio:17.2f} "
      f"{ratio(t['recompute'], t['store']):18.2f}"
    )
  _adamp._RECOMPUTE_ABOVE_BYTES = saved


if __name__ == "__main__":
  main()
