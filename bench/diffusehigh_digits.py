"""DiffuseHigh on the digits: progressive 8x8 -> 16x16 sampling with structure guidance
against direct 16x16 sampling by a model trained at 16x16, at the same number of network
evaluations, over paired seeds.

Data: sklearn's 8x8 digits upsampled to 16x16 (bicubic, clipped to [-1, 1];
``jaxdiff.demo._training.upsample_digits``). Models (all through the demo's training code,
cached in the demo's cache directory): the demo's 8x8 denoiser (``DemoConfig.full()``: DiT
dim 64, depth 2, 2000 steps) and a 16x16 denoiser of the same width, depth and steps
(``prepare_highres_model``, 4x4 patches: 16 tokens, so one evaluation costs about the same
at either size); a control 16x16 model trained twice as long (the progressive pipeline
uses two trained models); a 16x16 classifier (the demo's classifier recipe on 256
inputs) for the full-resolution metrics.

Runs at 16x16, ``NFE`` evaluations per sample, DPM-Solver++(2M) on logSNR grids, plain
conditional sampling (``jaxdiff.demo._highres.HighresSampler``):

* direct: ``NFE`` steps of the 16x16 model from 16x16 noise;
* progressive + structure guidance: ``NFE - n`` steps of the 8x8 model, bicubic
  upsampling and unsharp masking (``jaxdiff.progressive_sample``'s defaults), re-noising
  to the grid point that leaves ``n`` steps, ``n`` steps of the 16x16 model with the low
  Haar band of x0_hat taken from the reference in the first ``n/3`` (the paper's 15 of 50
  re-noised, 5 of them guided);
* the same without the guidance (ablation), and with the guidance but without the
  unsharp mask (sharpness 0); the upsampled 8x8 sample alone (no 16x16 stage).

Metrics (as the demo computes them, ``jaxdiff.demo._evaluation.Evaluator``): FD of the
demo's 8x8 classifier features of the samples 2x2-pooled to 8x8 against the pooled
held-out 16x16 digits (global structure); FD, class accuracy, precision and recall in the
16x16 classifier's features against the held-out 16x16 digits (full resolution); and the
detail residual ``RMS(x - clip(U(P(x))))`` (``P`` 2x2 pooling, ``U`` bicubic): how far a
sample's fine detail is from that of an upsampled digit (the data's own, near 0).
Every seed draws all runs from one key (paired); tables give mean +- s.e. over seeds and
the per-seed paired differences.

    python bench/diffusehigh_digits.py            # about 6 minutes of CPU on 2 cores
    python bench/diffusehigh_digits.py --quick    # smoke run (tiny models, writes to /tmp)

Writes bench/results/diffusehigh_digits.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from _digits import class_labels, demo_models
from _timing import output_path
from flax import nnx

import optim
from jaxdiff.demo._config import DemoConfig, default_cache_dir
from jaxdiff.demo._evaluation import Evaluator
from jaxdiff.demo._highres import METHODS, HighresSampler, noising_split, pool2
from jaxdiff.demo._training import _lr, prepare_highres_model, upsample_digits
from jaxdiff.models import DigitClassifier, classifier_loss, train

CONTROL = "direct 16x16, model trained 2x longer"
UNSHARP = METHODS[4]  # progressive with structure guidance, no unsharp mask
KEYS = ("fd8", "fd16", "accuracy", "precision", "recall", "detail_rms")


def classifier16(config: DemoConfig, data16, cache_dir: pathlib.Path):
  """The demo's classifier recipe (``prepare_models``) on the 16x16 digits (256 inputs)."""
  clf = DigitClassifier(in_features=256, rngs=nnx.Rngs(config.seed + 2))
  tx = optim.diffgrad(_lr(config.classifier_lr, config.classifier_steps), weight_decay=1e-4)
  key = config.key_of("xla_opt_level", "seed", "batch_size", "classifier_steps", "classifier_lr")
  return train(
    clf,
    classifier_loss(),
    tx,
    (data16.train_x, data16.train_y),
    steps=config.classifier_steps,
    batch_size=config.batch_size,
    key=config.seed + 2,
    chunk=config.chunk,
    checkpoint_dir=cache_dir / f"classifier16-{key}",
    progress=False,
    compiler_options=config.compiler_options,
  ).model


def detail_rms(x) -> float:
  """``RMS(x - clip(U(P(x))))``: fine detail not explained by an upsampled 8x8 image."""
  x = jnp.clip(jnp.asarray(x), -1, 1)
  up = jax.image.resize(jnp.asarray(pool2(np.asarray(x))), x.shape, method="cubic")
  return float(jnp.sqrt(jnp.mean((x - jnp.clip(up, -1, 1)) ** 2)))


def score(x, labels, ev8, ev16) -> dict:
  r16 = ev16(x, labels)
  return {
    "fd8": ev8(pool2(x), labels)["fd"],
    "fd16": r16["fd"],
    "accuracy": r16["accuracy"],
    "precision": r16["precision"],
    "recall": r16["recall"],
    "detail_rms": detail_rms(x),
  }


def mean_se(values) -> tuple[float, float]:
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="smoke run: tiny models, 2 seeds")
  ap.add_argument("--seeds", type=int, default=5)
  ap.add_argument("--per-class", type=int, default=50)
  ap.add_argument("--nfe", type=int, nargs="+", default=[20, 10])
  args = ap.parse_args()
  t0, c0 = time.perf_counter(), time.process_time()

  if args.quick:
    base_cfg = DemoConfig.small()
    cache = pathlib.Path(tempfile.gettempdir()) / "jaxdiff-bench-quick" / "cache"
    seeds, per_class, nfes = 2, 3, [4]
    hr_cfg = base_cfg
  else:
    base_cfg, cache = DemoConfig.full(), default_cache_dir()
    seeds, per_class, nfes = args.seeds, args.per_class, args.nfe
    # The 16x16 model: the 8x8 denoiser's width, depth and training steps.
    hr_cfg = dataclasses.replace(
      base_cfg,
      highres_dim=base_cfg.dim,
      highres_depth=base_cfg.depth,
      highres_steps=base_cfg.denoiser_steps,
    )
  ctl_cfg = dataclasses.replace(hr_cfg, highres_steps=2 * hr_cfg.highres_steps)

  if args.quick:
    from jaxdiff.demo._training import prepare_models
    from jaxdiff.models import load_digits

    data = load_digits(key=base_cfg.seed)
    models = prepare_models(base_cfg, data, cache, progress=False)
  else:
    _, data, models, _ = demo_models(base_cfg)
  data16 = upsample_digits(data)
  high = prepare_highres_model(hr_cfg, data16, cache, progress=False)
  control = prepare_highres_model(ctl_cfg, data16, cache, progress=False)
  clf16 = classifier16(base_cfg, data16, cache)
  t_train = time.perf_counter() - t0
  print(f"models ready in {t_train:.0f} s", flush=True)

  ev8 = Evaluator(models.classifier, pool2(data16.test_x), base_cfg.seed)
  ev16 = Evaluator(clf16, data16.test_x, base_cfg.seed)
  clf16_acc = float(
    np.mean(np.asarray(clf16(jnp.asarray(data16.test_x))).argmax(-1) == data16.test_y)
  )
  labels = class_labels(per_class)
  rng = np.random.default_rng(base_cfg.seed)
  ref_idx = rng.permutation(len(data16.train_x))[: len(labels)]
  reference = score(data16.train_x[ref_idx], data16.train_y[ref_idx], ev8, ev16)
  print(f"16x16 classifier held-out accuracy {clf16_acc:.3f}; real digits {reference}", flush=True)

  sampler = HighresSampler(models.denoiser, models.schedule, high)
  ctl_sampler = HighresSampler(models.denoiser, models.schedule, control)
  results = {}
  for nfe in nfes:
    per_seed = {m: [] for m in (*METHODS, CONTROL)}
    for seed in range(seeds):
      key = jax.random.key(1000 + seed)
      runs = sampler(labels, key, nfe=nfe)
      runs[CONTROL] = ctl_sampler(labels, key, nfe=nfe, methods=METHODS[:1])[METHODS[0]]
      for name, r in runs.items():
        per_seed[name].append({"nfe": r["nfe"], **score(r["x"], labels, ev8, ev16)})
      print(
        f"nfe {nfe} seed {seed}: "
        + "; ".join(
          f"{m}: fd8 {per_seed[m][-1]['fd8']:.2f} fd16 {per_seed[m][-1]['fd16']:.2f} "
          f"acc {per_seed[m][-1]['accuracy']:.3f}"
          for m in per_seed
        ),
        flush=True,
      )
    summary = {
      m: {k: mean_se([r[k] for r in rows]) for k in KEYS} | {"nfe": rows[0]["nfe"]}
      for m, rows in per_seed.items()
    }
    pairs = {
      "guided - direct": (METHODS[1], METHODS[0]),
      "guided - unguided": (METHODS[1], METHODS[2]),
      "guided - upsampled only": (METHODS[1], METHODS[3]),
      "guided without sharpening - unguided": (UNSHARP, METHODS[2]),
      "guided without sharpening - direct": (UNSHARP, METHODS[0]),
      "guided - direct (2x trained)": (METHODS[1], CONTROL),
    }
    diffs = {
      name: {k: mean_se([a[k] - b[k] for a, b in zip(per_seed[p], per_seed[q])]) for k in KEYS}
      for name, (p, q) in pairs.items()
    }
    base_steps, n, guided = noising_split(nfe)
    results[str(nfe)] = {
      "setting": {"base_steps": base_steps, "noising_steps": n, "guided_steps": guided},
      "per_seed": per_seed,
      "summary": summary,
      "paired_differences": diffs,
    }
    print(f"\nNFE {nfe} (base {base_steps} + re-noised {n}, {guided} guided), mean +- s.e.:")
    print("| method | NFE | " + " | ".join(KEYS) + " |")
    for m, s in summary.items():
      cells = " | ".join(f"{s[k][0]:.3f} +- {s[k][1]:.3f}" for k in KEYS)
      print(f"| {m} | {s['nfe']} | {cells} |")
    for name, d in diffs.items():
      cells = " | ".join(f"{d[k][0]:+.3f} +- {d[k][1]:.3f}" for k in KEYS)
      print(f"| {name} | | {cells} |")

  out = {
    "setting": {
      "seeds": seeds,
      "samples_per_seed": len(labels),
      "base_model": {
        "dim": base_cfg.dim,
        "depth": base_cfg.depth,
        "steps": base_cfg.denoiser_steps,
      },
      "highres_model": {
        "dim": hr_cfg.highres_dim,
        "depth": hr_cfg.highres_depth,
        "patch": hr_cfg.highres_patch,
        "steps": hr_cfg.highres_steps,
      },
      "control_steps": ctl_cfg.highres_steps,
      "solver": "dpmpp_2m",
      "quick": args.quick,
    },
    "classifier16_test_accuracy": clf16_acc,
    "reference_real_digits": reference,
    "results": results,
    "seconds": time.perf_counter() - t0,
    "cpu_seconds": time.process_time() - c0,
    "models_seconds": t_train,
  }
  path = output_path("diffusehigh_digits.json", args.quick)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1))
  print(f"wrote {path} in {out['seconds']:.0f} s (CPU {out['cpu_seconds']:.0f} s)")


if __name__ == "__main__":
  main()
