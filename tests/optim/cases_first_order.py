"""First-order optimizers in the shared generic table (tests/optim/test_generic.py)."""

import jax
import jax.numpy as jnp
import optax

import optim
from tests.optim.cases import OptCase


def _matrices_only(params):
  """A callable ``weight_decay_mask``: decay kernels, not vectors (optax's usual mask)."""
  return jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)


def _parabola_per_example_grads(params):
  """DIFF2's ``grad_fn``: the generic parabola's per-example gradients (imported lazily:
  the problem lives in the test module that imports this table)."""
  from tests.optim.test_generic import PARABOLA

  return PARABOLA.grads(params, True)


def _even_rows_of_b(params):
  """MaskSparsity's mask as a callable: every other row of 'b' (whatever its length)."""
  return [jnp.arange(params["b"].shape[0]) % 2 == 0]


# First-layer inputs for TrAct on the parabola's (8, 2) leaf: 16 rows of fan-in 8.
_TRACT_INPUTS = jnp.linspace(-1.0, 1.0, 128).reshape(16, 8) ** 3


FIRST_ORDER_CASES: list[OptCase] = [
  OptCase(
    name="diffgrad",
    make=lambda learning_rate: optim.diffgrad(learning_rate),
    lr=0.1,
    rosenbrock_lr=0.05,
  ),
  OptCase(
    name="diffgrad_mu_f32",
    make=lambda learning_rate: optim.diffgrad(learning_rate, mu_dtype=jnp.float32),
    lr=0.1,
    note="float32 accumulators; bf16 gradients must still give bf16 updates",
  ),
  OptCase(
    name="diffgrad_wd_masked",
    make=lambda learning_rate: optim.diffgrad(
      learning_rate, weight_decay=1e-4, weight_decay_mask=_matrices_only
    ),
    lr=0.1,
    note="coupled decay 1e-4 on 2-D leaves only (optax.masked state)",
  ),
  OptCase(
    name="adamp",
    make=lambda learning_rate: optim.adamp(learning_rate),
    lr=0.1,
    rosenbrock_lr=0.05,
  ),
  OptCase(
    name="adamp_nesterov_wd",
    make=lambda learning_rate: optim.adamp(learning_rate, nesterov=True, weight_decay=1e-4),
    lr=0.1,
    note="decoupled decay 1e-4 moves the optimum by ~1e-4 relative: inside the tolerance",
  ),
  OptCase(
    name="sgdp",
    make=lambda learning_rate: optim.sgdp(learning_rate, momentum=0.9),
    lr=0.05,
    rosenbrock_lr=2e-3,
  ),
  OptCase(
    name="sgdp_wd_masked",
    make=lambda learning_rate: optim.sgdp(
      learning_rate, momentum=0.9, weight_decay=1e-4, weight_decay_mask=_matrices_only
    ),
    lr=0.05,
    note="decay 1e-4 / (1 - 0.9) on 2-D leaves only, applied inside the projection step",
  ),
  OptCase(
    name="perp_grad_sgd",
    make=lambda learning_rate: optax.chain(optim.perp_grad(), optax.sgd(learning_rate)),
    lr=0.02,
    steps=600,
    note=(
      "⊥Grad preserves each leaf's norm to first order; the generic parabola's start and "
      "target have equal leaf norms so it is solvable. Rosenbrock's is not (|x0| != |x*|)."
    ),
    tol=3e-2,
  ),
  OptCase(
    name="coordinate_clip_threshold_sgd",
    make=lambda learning_rate: optax.chain(
      optim.coordinate_clip(threshold=0.5), optax.sgd(learning_rate, momentum=0.5)
    ),
    lr=0.2,
    note=(
      "Rosenbrock: clipped SGD crawls along the valley (best |x - 1|_inf 0.108 after 2000 "
      "steps over lr in 1e-3..1e-2), so no Rosenbrock entry. "
      "The adaptive `fraction` rule is not in this table: clipping to the k-th largest "
      "coordinate stalls once fewer than k coordinates are unconverged (see its docstring)"
    ),
  ),
  OptCase(
    name="coordinate_clip_threshold_adam",
    make=lambda learning_rate: optax.chain(
      optax.scale_by_adam(),
      optim.coordinate_clip(threshold=0.5),
      optax.scale_by_learning_rate(learning_rate),
    ),
    lr=0.1,
    rosenbrock_lr=0.05,
  ),
  OptCase(
    name="normalized_gd",
    make=lambda learning_rate: optim.normalized_gd(learning_rate),
    lr=0.5,
    note=(
      "the step is divided by the loss, so the generic parabola carries a +1 offset; "
      "Rosenbrock's minimum value is 0, where a loss-normalized step is not meant to converge"
    ),
  ),
  OptCase(
    name="dp_sgd",
    make=lambda learning_rate: optim.dp_sgd(
      learning_rate, l2_norm_clip=10.0, noise_multiplier=0.01, key=0
    ),
    lr=0.2,
    per_example=True,
    note="clip larger than every per-example gradient near the optimum: no clipping bias",
  ),
  OptCase(
    name="dice_sgd",
    make=lambda learning_rate: optim.dice_sgd(
      learning_rate, clip1=0.3, clip2=0.6, noise_multiplier=0.01, key=0
    ),
    lr=0.2,
    per_example=True,
    note="small clip thresholds: the error feedback must still remove the clipping bias",
  ),
  OptCase(
    name="dice_sgd_mu_f32",
    make=lambda learning_rate: optim.dice_sgd(
      learning_rate, clip1=0.3, clip2=0.6, noise_multiplier=0.01, key=0, mu_dtype=jnp.float32
    ),
    lr=0.2,
    per_example=True,
    note="float32 error accumulator; bf16 gradients must still give bf16 updates",
  ),
  OptCase(
    name="diff2",
    make=lambda learning_rate: optim.diff2(
      learning_rate, 2.0, 1.0, noise_multiplier=0.002, restart_every=5, num_clients=2, key=0
    ),
    lr=0.2,
    per_example=True,
    extra_args=lambda obj_fn, params, grads: {"grad_fn": _parabola_per_example_grads},
    note="grad_fn: the parabola's per-example gradients at DIFF2's stored previous params",
  ),
  OptCase(
    name="tract_sgd",
    make=lambda learning_rate: optax.chain(optim.scale_by_tract(0.1), optax.sgd(learning_rate)),
    lr=0.2,
    extra_args=lambda obj_fn, params, grads: {"first_layer_inputs": _TRACT_INPUTS},
    note="fixed inputs: TrAct is then a fixed SPD preconditioner on the 2-D leaf 'b'",
  ),
  OptCase(
    name="weight_ema_sgd",
    make=lambda learning_rate: optax.chain(optax.sgd(learning_rate), optim.weight_ema(0.9)),
    lr=0.3,
    note=(
      "a weight average passes the updates through: the convergence rows test optax.sgd, "
      "the rest the average's state (dtype, structure, sharding, checkpoints); no "
      "Rosenbrock entry, plain SGD crawls along its valley"
    ),
  ),
  OptCase(
    name="hesso_sgd_groups_b_rows",
    make=lambda learning_rate: optim.hesso(
      learning_rate, [{"b": 0}], target_group_sparsity=0.0, momentum=0.5
    ),
    lr=0.2,
    note=(
      "the rows of 'b' declared as groups, no pruning target (pruning moves the optimum): "
      "checks the contract (dtypes, inject_hyperparams, state, no retrace) of the projection"
    ),
  ),
  OptCase(
    name="mask_sparsity_sgd",
    make=lambda learning_rate: optax.chain(
      optim.mask_sparsity(1e-3, [{"b": 0}], _even_rows_of_b), optax.sgd(learning_rate)
    ),
    lr=0.3,
    note=(
      "L1 1e-3 on every other row of 'b' moves those coordinates' optimum by 1e-3: inside "
      "the tolerance; no Rosenbrock entry (no 'b' leaf there, and plain SGD crawls)"
    ),
  ),
  OptCase(
    name="robust_mean_sgd_winsorize",
    make=lambda learning_rate: optim.robust_mean_sgd(learning_rate, c=1),
    lr=0.2,
    per_example=True,
    note=(
      "winsorized GD (c=1 of 8 examples): the fixed point is the target plus the winsorized "
      "mean of the zero-mean offsets, 1.3e-2 relative, hence tol 3e-2"
    ),
    tol=3e-2,
  ),
  OptCase(
    name="robust_mean_sgd_m3",
    make=lambda learning_rate: optim.robust_mean_sgd(
      learning_rate, variant="median_of_means", num_groups=3
    ),
    lr=0.2,
    per_example=True,
    note=(
      "M3 (median of 3 group means, sizes 3/3/2): the fixed point moves by the median of the "
      "offsets' group means, 2.6e-2 relative, hence tol 4e-2"
    ),
    tol=4e-2,
  ),
]
