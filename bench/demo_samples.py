"""Samples from the demo's cached digits models, saved for a bit-for-bit comparison of two
checkouts (a refactoring must leave them unchanged).

    git worktree add /tmp/old <commit>
    PYTHONPATH=/tmp/old python bench/demo_samples.py /tmp/old.npz
    python bench/demo_samples.py /tmp/new.npz
    python bench/demo_samples.py --compare /tmp/old.npz /tmp/new.npz

Both runs load the models from the demo's cache (trained there on first use): plain
conditional sampling, CFG, APG, FORA with CFG and TaylorSeer (``warmup=1`` where the
keyword exists, the schedule of older checkouts).
"""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

if sys.argv[1] == "--compare":
  a, b = np.load(sys.argv[2]), np.load(sys.argv[3])
  for k in a.files:
    same = np.array_equal(a[k], b[k])
    print(f"{k:10s}", "bit for bit" if same else f"max diff {np.abs(a[k] - b[k]).max():.3g}")
  sys.exit(0)

import jaxdiff  # noqa: E402
from jaxdiff import caching, from_v, guidance, schedules, solvers  # noqa: E402
from jaxdiff.demo._config import DemoConfig, default_cache_dir  # noqa: E402
from jaxdiff.demo._training import prepare_models  # noqa: E402
from jaxdiff.models import load_digits  # noqa: E402

out = sys.argv[1]
cfg = DemoConfig.full()
data = load_digits(key=cfg.seed)
models = prepare_models(cfg, data, pathlib.Path(default_cache_dir()), progress=False)
den = from_v(models.denoiser, models.schedule)
sched = models.schedule
ts = schedules.timesteps(sched, 10)
x_T = jax.random.normal(jax.random.key(0), (20, 8, 8))
y = jnp.arange(20) % 10
res = {}
res["plain"] = np.asarray(jaxdiff.sample(den, solvers.dpmpp_2m(), x_T, ts, key=0, cond=y).x)
res["cfg"] = np.asarray(
  jaxdiff.sample(den, solvers.dpmpp_2m(), x_T, ts, key=0, cond=y, guidance=guidance.cfg(3.0)).x
)
res["apg"] = np.asarray(
  jaxdiff.sample(den, solvers.ddim(), x_T, ts, key=0, cond=y, guidance=guidance.apg(3.0)).x
)
res["fora_cfg"] = np.asarray(
  jaxdiff.sample(
    den,
    solvers.dpmpp_2m(),
    x_T,
    ts,
    key=0,
    cond=y,
    guidance=guidance.cfg(3.0),
    cache=caching.fora(2),
  ).x
)
try:
  ts_rule = caching.taylorseer(3, 2, warmup=1)
except TypeError:
  ts_rule = caching.taylorseer(3, 2)
res["taylor"] = np.asarray(
  jaxdiff.sample(den, solvers.ddim(), x_T, ts, key=0, cond=y, cache=ts_rule).x
)
np.savez(out, **res)
print("saved", out)
