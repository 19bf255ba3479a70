"""Deterministic, resumable training of the small demo networks on sklearn's 8x8 digits.

Determinism is by construction: the minibatch and the noise of step ``s`` are pure functions
of ``(key, s)`` (:func:`batch_indices`, ``fold_in``), training runs in jitted chunks of a
fixed number of steps, and checkpoints are only ever written at chunk boundaries. A run
that is interrupted and resumed from its last checkpoint therefore executes exactly the
same compiled computations on exactly the same inputs as an uninterrupted run, and ends
bit-for-bit identical on the same device (tested on CPU).
"""

from __future__ import annotations

import functools
import inspect
import pathlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from jaxdiff._training._loss import denoising_loss
from jaxdiff._validation import as_key, check_output, check_scalar, import_extra, renamed_kwargs
from jaxdiff.models._checkpoints import verify_digests, write_digests
from jaxdiff.models._checks import check_size
from optim._tree import data_to_keys, keys_to_data

Array = jax.Array
PyTree = Any

__all__ = [
  "Digits",
  "TrainResult",
  "batch_indices",
  "classifier_loss",
  "load_digits",
  "train",
  "v_prediction_loss",
]


class Digits(NamedTuple):
  """The digits split: images ``(N, 8, 8)`` scaled to ``[-1, 1]`` and labels ``(N,)``."""

  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray


@renamed_kwargs(seed="key")
def load_digits(*, test_fraction: float = 0.2, key: Any = 0) -> Digits:
  """sklearn's 1797 handwritten 8x8 digits, scaled from ``0..16`` to ``[-1, 1]``.

  The split is stratified by class and fixed by ``key``; the held-out part is what the
  demo's Frechet distance and precision/recall compare samples against.

  Args:
    test_fraction: fraction of the images held out, in ``(0, 1)``, leaving at least one
      image per class on each side.
    key: the split's randomness: an int seed (sklearn's ``random_state``, as before) or a
      JAX PRNG key (typed or raw; it draws the ``random_state``). ``seed=`` is its
      deprecated spelling.

  Returns:
    A :class:`Digits` of float32 images and int32 labels.

  Example:
    >>> from jaxdiff.models import load_digits
    >>> d = load_digits()
    >>> d.train_x.shape, d.test_x.shape, float(d.train_x.min()), float(d.train_x.max())
    ((1437, 8, 8), (360, 8, 8), -1.0, 1.0)

  References:
    Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits", UCI ML Repository
    (1998); shipped as ``sklearn.datasets.load_digits``.
  """
  caller = "jaxdiff.models.load_digits"
  _sk_load_digits = import_extra("sklearn.datasets", caller=caller).load_digits
  train_test_split = import_extra("sklearn.model_selection", caller=caller).train_test_split

  check_scalar(
    "load_digits: test_fraction", test_fraction, lo=0.0, hi=1.0, lo_open=True, hi_open=True
  )
  bunch = _sk_load_digits()
  n, k = len(bunch.target), len(np.unique(bunch.target))
  if not k <= round(test_fraction * n) <= n - k:  # stratified: every class on both sides
    raise ValueError(
      f"load_digits: test_fraction={test_fraction} leaves fewer than {k} (one per class) "
      f"of the {n} images on one side of the split; use a value in [{k / n:.4f}, {1 - k / n:.4f}]."
    )
  x = (bunch.images.astype(np.float32) / 8.0 - 1.0).astype(np.float32)
  y = bunch.target.astype(np.int32)
  if isinstance(key, (bool, np.bool_)):
    raise TypeError("load_digits: key must be an int seed or a JAX PRNG key, got a bool")
  if isinstance(key, (int, np.integer)):
    if not 0 <= key < 2**32:
      raise ValueError(f"load_digits: an int key (seed) must lie in [0, 2**32), got {key}.")
    state = int(key)
  else:
    state = int(jax.random.randint(as_key(key), (), 0, np.iinfo(np.int32).max))
  tr_x, te_x, tr_y, te_y = train_test_split(
    x, y, test_size=test_fraction, random_state=state, stratify=y
  )
  return Digits(tr_x, tr_y, te_x, te_y)


def batch_indices(key: Array, step: Array, num_examples: int, batch_size: int) -> Array:
  """Indices of the minibatch of ``step``: epochs of shuffled passes, a pure function.

  Example ``j`` of the batch is position ``p = step * batch_size + j`` of an endless stream
  that visits every example once per epoch ``p // N``, in the order
  ``permutation(fold_in(key, epoch))``.

  Args:
    key: PRNG key of the data order.
    step: training step (int scalar, may be traced).
    num_examples: ``N``.
    batch_size: ``B <= N``.

  Returns:
    int32 indices of shape ``(B,)``.

  Example:
    >>> import jax
    >>> from jaxdiff.models import batch_indices
    >>> a = batch_indices(jax.random.key(0), 0, 10, 5)
    >>> b = batch_indices(jax.random.key(0), 1, 10, 5)
    >>> sorted(list(map(int, a)) + list(map(int, b)))  # one epoch covers every example
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
  """
  num_examples = check_size("batch_indices: num_examples", num_examples)
  batch_size = check_size("batch_indices: batch_size", batch_size)
  if batch_size > num_examples:
    raise ValueError(
      f"batch_indices: batch_size ({batch_size}) must be <= num_examples ({num_examples})."
    )
  pos = jnp.asarray(step, jnp.int32) * batch_size + jnp.arange(batch_size, dtype=jnp.int32)
  epoch, within = pos // num_examples, pos % num_examples
  first = epoch[0]  # a batch spans at most two epochs since B <= N
  perm0 = jax.random.permutation(jax.random.fold_in(key, first), num_examples)
  perm1 = jax.random.permutation(jax.random.fold_in(key, first + 1), num_examples)
  return jnp.where(epoch == first, perm0[within], perm1[within]).astype(jnp.int32)


def v_prediction_loss(schedule, *, label_dropout: float = 0.1, null_label: int = -1):
  """The denoiser's training loss: velocity prediction with label dropout.

  .. math::

    t \\sim \\mathcal U[t_{\\min}, t_{\\max}],\\ \\epsilon \\sim \\mathcal N(0, I),\\
    x_t = \\alpha_t x_0 + \\sigma_t \\epsilon,\\
    \\mathcal L = \\lVert f_\\theta(x_t, t, \\tilde y) - (\\alpha_t \\epsilon - \\sigma_t
    x_0) \\rVert^2

  with ``\\tilde y = -1`` (null) with probability ``label_dropout`` (classifier-free
  guidance training, Ho & Salimans 2022). The data prediction is then
  ``x0 = alpha_t x_t - sigma_t v`` (Salimans & Ho 2022, "Progressive Distillation",
  arXiv:2202.00512, Sec. 4; :func:`jaxdiff.parameterization.from_v`).

  It is :func:`jaxdiff.training.denoising_loss` with ``prediction="v"`` (uniform ``t``,
  the native weighting, squared error).

  Returns:
    ``loss(model, x0, y, key) -> scalar``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdiff import schedules
    >>> from jaxdiff.models import v_prediction_loss
    >>> loss = v_prediction_loss(schedules.vp_cosine())
    >>> zero_net = lambda x, t, y: jnp.zeros_like(x)
    >>> float(loss(zero_net, jnp.zeros((4, 8, 8)), jnp.arange(4), jax.random.key(0))) > 0
    True
  """
  check_scalar("v_prediction_loss: label_dropout", label_dropout, lo=0.0, hi=1.0)
  check_scalar("v_prediction_loss: null_label", null_label, integer=True)
  if not all(hasattr(schedule, a) for a in ("alpha", "sigma", "t_min", "t_max")):
    raise TypeError(
      "v_prediction_loss: schedule must be a jaxdiff schedule (alpha, sigma, t_min, t_max), "
      f"got {type(schedule).__name__}"
    )
  return denoising_loss(
    schedule, prediction="v", label_dropout=label_dropout, null_label=null_label
  )


def classifier_loss(*, noise: float = 0.1):
  """Softmax cross-entropy with Gaussian input noise of std ``noise`` (augmentation).

  Returns:
    ``loss(model, x, y, key) -> scalar``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from jaxdiff.models import classifier_loss
    >>> uniform = lambda x: jnp.zeros((x.shape[0], 10))  # logits of a uniform guess
    >>> x, y = jnp.zeros((4, 8, 8)), jnp.arange(4)
    >>> round(float(classifier_loss()(uniform, x, y, jax.random.key(0))), 4)  # log(10)
    2.3026
  """

  check_scalar("classifier_loss: noise", noise, lo=0.0)

  def loss(model, x, y, key):
    x = x + noise * jax.random.normal(key, x.shape, x.dtype)
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

  return loss


@functools.lru_cache(maxsize=16)
def _chunk_runner(
  graphdef, loss_fn, optimizer, batch_size: int, compiler_options=None, takes_step=False
):
  """The jitted ``lax.scan`` over a chunk of steps, shared by every :func:`train` call with
  the same architecture, loss, optimizer and batch size (so resuming does not recompile).
  Data and keys are arguments, not constants baked into the executable."""

  options = None if compiler_options is None else dict(compiler_options)

  @functools.partial(jax.jit, static_argnums=8, compiler_options=options)
  def run(params, opt_state, rest, x_all, y_all, data_key, loss_key, start, length):
    n = x_all.shape[0]

    def one_step(carry, step):
      params, opt_state = carry
      idx = batch_indices(data_key, step, n, batch_size)
      step_key = jax.random.fold_in(loss_key, step)

      def objective(p):
        model = nnx.merge(graphdef, p, rest)
        if takes_step:  # step-dependent losses (a curriculum's timestep sampler)
          out = loss_fn(model, x_all[idx], y_all[idx], step_key, step=step)
        else:
          out = loss_fn(model, x_all[idx], y_all[idx], step_key)
        hint = "reduce the loss (e.g. take its mean over the batch) first"
        return check_output(
          out,
          scalar=True,
          name="loss_fn(model, x, y, key)",
          where="train",
          what="loss",
          hint=hint if jnp.ndim(out) else "",
        )

      loss, grads = jax.value_and_grad(objective)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    steps = start + jnp.arange(length, dtype=jnp.int32)
    (params, opt_state), losses = jax.lax.scan(one_step, (params, opt_state), steps)
    return params, opt_state, losses

  return run


def _check_train_objects(model, loss_fn, optimizer, progress, compiler_options) -> None:
  if not isinstance(model, nnx.Module):
    raise TypeError(f"train: model must be a flax.nnx.Module, got {type(model).__name__}.")
  if not callable(loss_fn):
    raise TypeError(f"train: loss_fn must be callable loss_fn(model, x, y, key), got {loss_fn!r}.")
  if not (
    callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
  ):
    raise TypeError(
      f"train: optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}."
    )
  if not isinstance(progress, (bool, str)):
    raise TypeError(f"train: progress must be a bool or a description string, got {progress!r}.")
  if compiler_options is not None and not isinstance(compiler_options, dict):
    raise TypeError(f"train: compiler_options must be a dict or None, got {compiler_options!r}.")


def _takes_step(loss_fn) -> bool:
  try:
    return "step" in inspect.signature(loss_fn).parameters
  except (TypeError, ValueError):  # builtins without a signature
    return False


def _check_data(data, batch_size: int) -> tuple[Array, Array]:
  if not isinstance(data, (tuple, list)) or len(data) != 2:
    raise TypeError(f"train: data must be a pair (x, y) of arrays, got {type(data).__name__}.")
  try:
    x_all, y_all = jnp.asarray(data[0]), jnp.asarray(data[1])
  except (TypeError, ValueError) as e:
    raise TypeError(f"train: data must be a pair (x, y) of numeric arrays: {e}") from e
  if x_all.ndim < 1 or y_all.ndim < 1 or x_all.shape[0] != y_all.shape[0]:
    raise ValueError(
      f"train: data (x, y) must share one leading size N, got shapes {x_all.shape}, {y_all.shape}."
    )
  if batch_size > x_all.shape[0]:
    raise ValueError(
      f"train: batch_size ({batch_size}) must be <= the number of examples ({x_all.shape[0]})."
    )
  if not jnp.issubdtype(x_all.dtype, jnp.floating):
    raise TypeError(f"train: data x must be floating point, got {x_all.dtype}.")
  return x_all, y_all


def _check_checkpoint_dir(checkpoint_dir) -> pathlib.Path | None:
  if checkpoint_dir is None:
    return None
  if not isinstance(checkpoint_dir, (str, pathlib.PurePath)) or str(checkpoint_dir) == "":
    raise TypeError(f"train: checkpoint_dir must be a path or None, got {checkpoint_dir!r}.")
  path = pathlib.Path(checkpoint_dir).absolute()
  if path.exists() and not path.is_dir():
    raise ValueError(f"train: checkpoint_dir {str(path)!r} exists and is not a directory.")
  return path


def _first_line(e: BaseException) -> str:
  """The first line of an exception's message (orbax's run to pages), at most 200 chars."""
  lines = str(e).strip().splitlines()
  line = lines[0] if lines else type(e).__name__
  return line if len(line) <= 200 else line[:197] + "..."


class TrainResult(NamedTuple):
  """What :func:`train` returns.

  Attributes:
    model: the trained nnx module (a new object; the input module is not mutated).
    losses: per-step training losses, float32 ``(steps_done,)``.
    steps_done: number of steps trained (``< steps`` only when stopped early).
    resumed_from: the checkpoint step training resumed from (0 for a fresh run).
    opt_state: the final optimizer state (e.g. the weight average of
      :func:`optim.weight_ema`, read with :func:`optim.ema_params`).
  """

  model: nnx.Module
  losses: np.ndarray
  steps_done: int
  resumed_from: int
  opt_state: Any = None


@renamed_kwargs(seed="key")
def train(
  model: nnx.Module,
  loss_fn: Callable[..., Array],
  optimizer: optax.GradientTransformation,
  data: tuple[np.ndarray, np.ndarray],
  *,
  steps: int,
  batch_size: int,
  key: Any = 0,
  chunk: int = 50,
  checkpoint_dir: str | pathlib.Path | None = None,
  checkpoint_every: int | None = None,
  stop_after: int | None = None,
  progress: bool | str = True,
  compiler_options: dict[str, Any] | None = None,
) -> TrainResult:
  """Trains ``model`` on ``data``; resumable from orbax checkpoints, bit-for-bit.

  Step ``s`` uses the minibatch :func:`batch_indices` ``(fold_in(key, 0), s)`` and the
  loss key ``fold_in(fold_in(key, 1), s)``, so the whole run is a pure function of
  ``key``. Steps run in jitted ``lax.scan`` chunks of
  ``chunk`` steps; every ``checkpoint_every`` steps (a multiple of ``chunk``) and at the
  end the parameters, optimizer state and loss history are saved under
  ``checkpoint_dir``. A later call with the same directory restores the newest checkpoint
  and continues (or returns at once when it is complete). ``KeyboardInterrupt`` saves the
  last completed chunk before propagating.

  Args:
    model: an initialised nnx module (only its ``nnx.Param`` state is trained).
    loss_fn: ``loss_fn(model, x, y, key) -> scalar``, a real floating-point scalar (checked
      when the chunk is traced: anything else is an error naming ``loss_fn``); a loss that
      takes a keyword ``step`` (a :func:`jaxdiff.training.curriculum` sampler's) is called
      with the step.
    optimizer: an optax transformation (``update`` receives ``params``).
    data: ``(x, y)`` arrays with a shared leading axis.
    steps: total number of training steps.
    batch_size: minibatch size.
    key: PRNG key of the data order and the loss noise (a typed key, a raw key or an
      int seed ``n``, which means ``jax.random.key(n)``); ``seed=`` is its deprecated
      spelling.
    chunk: steps per jitted call (progress-bar granularity); ``steps`` need not be a
      multiple.
    checkpoint_dir: where to save/restore (``None``: no checkpoints).
    checkpoint_every: checkpoint interval in steps (default: only at the end).
    stop_after: stop once this many steps are done (simulates an interruption; tests).
    progress: show a tqdm bar (``True`` or a description string).
    compiler_options: XLA options for the jitted chunk (e.g.
      ``{"xla_backend_optimization_level": 1}`` trades little speed for faster compilation
      on CPU). They do not change the numerics' determinism: resume with the same options.

  Every argument is checked before any work, naming the one at fault: counts are ints
  ``>= 1``, ``batch_size`` at most the number of examples, ``checkpoint_dir`` a directory
  path (a checkpoint there that does not fit the model/optimizer raises ``ValueError``).

  Returns:
    A :class:`TrainResult`.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from flax import nnx
    >>> from jaxdiff.models import classifier_loss, train
    >>> flat = lambda x: x.reshape(x.shape[0], -1)
    >>> net = nnx.Sequential(flat, nnx.Linear(64, 10, rngs=nnx.Rngs(0)))
    >>> data = (jnp.zeros((8, 8, 8)), jnp.arange(8) % 10)
    >>> out = train(net, classifier_loss(), optax.sgd(0.1), data, steps=3, batch_size=4,
    ...             key=0, chunk=3, progress=False)
    >>> out.steps_done, out.losses.shape
    (3, (3,))
  """
  steps, chunk = check_size("train: steps", steps), check_size("train: chunk", chunk)
  batch_size = check_size("train: batch_size", batch_size)
  every = (
    steps if checkpoint_every is None else check_size("train: checkpoint_every", checkpoint_every)
  )
  if every % chunk and every != steps:
    raise ValueError(f"train: checkpoint_every ({every}) must be a multiple of chunk ({chunk}).")
  if stop_after is not None:
    stop_after = check_size("train: stop_after", stop_after, lo=0)
  _check_train_objects(model, loss_fn, optimizer, progress, compiler_options)
  x_all, y_all = _check_data(data, batch_size)
  checkpoint_dir = _check_checkpoint_dir(checkpoint_dir)
  key = as_key(key)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  opt_state = optimizer.init(params)
  data_key, loss_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
  options = None if compiler_options is None else tuple(sorted(compiler_options.items()))
  run = _chunk_runner(graphdef, loss_fn, optimizer, batch_size, options, _takes_step(loss_fn))

  def run_chunk(params, opt_state, start, length):
    return run(params, opt_state, rest, x_all, y_all, data_key, loss_key, start, length)

  manager = None
  start, losses = 0, np.zeros((0,), np.float32)
  if checkpoint_dir is not None:
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    manager = ocp.CheckpointManager(checkpoint_dir, options=options)
    latest = manager.latest_step()
    if latest is not None:
      like = {
        "params": keys_to_data(params),
        "opt_state": keys_to_data(opt_state),
        "losses": np.zeros((latest,), np.float32),
      }
      where = f"train: checkpoint_dir {str(checkpoint_dir)!r} holds a checkpoint (step {latest})"
      try:
        # Damaged files are named here, before orbax reads (and fails on) them.
        intact = verify_digests(checkpoint_dir / str(latest), f"{where} that is damaged")
      except ValueError:
        manager.close()
        raise
      try:
        restored = manager.restore(latest, args=ocp.args.StandardRestore(like))
      except Exception as e:  # noqa: BLE001 - orbax/TensorStore raise bare Exceptions too
        manager.close()
        if intact:
          raise ValueError(
            f"{where} that does not match this model/optimizer (its files are intact); "
            "use a fresh directory."
          ) from e
        raise ValueError(
          f"{where} that could not be restored: it does not match this model/optimizer or "
          f"a file of it is damaged (it predates integrity digests; orbax: "
          f"{_first_line(e)}); use a fresh directory."
        ) from e
      params = data_to_keys(restored["params"], params)
      opt_state = data_to_keys(restored["opt_state"], opt_state)
      start, losses = latest, np.asarray(restored["losses"], np.float32)

  # (step, params, opt_state, losses) of the last completed chunk, replaced by ONE
  # assignment so that an interrupt never sees a half-updated state.
  done = (start, params, opt_state, losses)

  def save(state):
    step, params, opt_state, losses = state
    if manager is not None and step > 0 and manager.latest_step() != step:
      tree = {
        "params": keys_to_data(params),
        "opt_state": keys_to_data(opt_state),
        "losses": np.asarray(losses, np.float32),
      }
      manager.save(step, args=ocp.args.StandardSave(tree))
      manager.wait_until_finished()
      write_digests(checkpoint_dir / str(step))

  resumed_from = start
  end = steps if stop_after is None else min(steps, stop_after)
  bar = None
  if progress and start < end:
    tqdm = import_extra("tqdm.auto", caller="jaxdiff.models.train (progress=True)").tqdm

    desc = progress if isinstance(progress, str) else "train"
    bar = tqdm(total=steps, initial=start, desc=desc, unit="step", leave=False)
  try:
    while done[0] < end:
      step, params, opt_state, losses = done
      length = min(chunk, end - step)
      params, opt_state, chunk_losses = run_chunk(params, opt_state, jnp.int32(step), length)
      chunk_losses = np.asarray(chunk_losses, np.float32)
      done = (step + length, params, opt_state, np.concatenate([losses, chunk_losses]))
      if bar is not None:
        bar.update(length)
        bar.set_postfix(loss=f"{float(np.mean(chunk_losses)):.4f}")
      if done[0] % every == 0 or done[0] == steps:
        save(done)
    if done[0] < steps and done[0] % chunk == 0:
      save(done)  # stopped early (stop_after): keep what was done, as an interrupt would
  except KeyboardInterrupt:
    if done[0] % chunk == 0:
      save(done)
    raise
  finally:
    if bar is not None:
      bar.close()
    if manager is not None:
      manager.close()
  step, params, opt_state, losses = done
  if losses.size and not np.isfinite(losses[-1]):
    raise FloatingPointError(f"train: the loss became non-finite by step {step}.")
  return TrainResult(nnx.merge(graphdef, params, rest), losses, step, resumed_from, opt_state)
