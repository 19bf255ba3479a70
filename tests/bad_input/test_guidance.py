# ruff: noqa: E501 - one-line reproducers are the point of the table
"""Hostile inputs to jaxdiff.guidance (factories, registry, rules inside jaxdiff.sample) and
jaxdiff.models (networks, data, training), one line a case.

Fixtures are tiny and built once: a 3-class 2-D :class:`GaussianMixture` ``GMM`` with its
exact denoiser ``DEN``, a 4-step grid ``TS``, a batch ``X`` of 4 samples with labels ``Y``,
a nearest-mean classifier ``CLF_FN`` and three shared rules (``CFG``, ``CLF``, ``GF``) whose
compiled samplers every sampling case reuses (``SAMPLE``). ``APPLY`` calls a rule eagerly on
concrete labels, where invalid labels raise; inside :func:`jaxdiff.sample` (and any ``jit``)
concrete labels are checked against the mixture's classes before tracing; under an outer
``jit`` (``JIT_*``) labels are traced, and the samples that carry an invalid one are NaN
(poisoned).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxdiff
from jaxdiff import StepContext, schedules, solvers
from jaxdiff import guidance as G
from jaxdiff import models as M
from jaxdiff.testing import GaussianMixture
from tests.bad_input.harness import Case, params, raises, returns, run

nan, inf = float("nan"), float("inf")
MEANS = jnp.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
SCHED = schedules.vp_cosine()
GMM = GaussianMixture(MEANS, 0.2)
DEN = GMM.denoiser(SCHED)
TS = schedules.timesteps(SCHED, 4, spacing="logsnr")
SOLVER = solvers.ddim()
X = jax.random.normal(jax.random.key(0), (4, 2))
Y = jnp.array([0, 1, 2, 0])
NULL = -jnp.ones(4, jnp.int32)
CLF_FN = lambda z: -0.5 * jnp.sum((z[:, None] - MEANS[None]) ** 2, axis=-1)
CFG, CLF, GF = G.cfg(3.0), G.classifier(CLF_FN, 3, 1.0), G.gfcg(CLF_FN, 3, 1.0)
_T = jnp.asarray(0.5)
CTX = StepContext(_T, SCHED.alpha(_T), SCHED.sigma(_T), jnp.int32(0), jnp.int32(4), None)


def SAMPLE(rule, cond):
  return jaxdiff.sample(DEN, SOLVER, X, TS, key=0, cond=cond, guidance=rule).x


def APPLY(rule, cond, den=DEN):
  return rule.apply(den, X, cond, CTX, rule.init(X, cond))[0].x0


UNCOND = SAMPLE(None, NULL)
TRACED_AG = jax.jit(lambda v: APPLY(G.adaptive(3.0, v), Y))
TRACED_RESCALE = jax.jit(lambda v: APPLY(G.cfg(3.0, rescale=v), Y))
TRACED_CLF = jax.jit(lambda y: APPLY(CLF, y))
JIT_CLF, JIT_GF, JIT_CFG = (jax.jit(lambda c, r=r: SAMPLE(r, c)) for r in (CLF, GF, CFG))
NOFLAG = lambda x, t, c, *, perturb=None: DEN(x, t, c)
R = nnx.Rngs(0)
NET = M.DigitDenoiser(dim=8, depth=1, num_heads=2, rngs=nnx.Rngs(0))
XI, TI = jnp.zeros((2, 8, 8)), jnp.full((2,), 0.5)
LOSS, OPT = M.classifier_loss(), optax.sgd(0.1)
DATA = (np.zeros((8, 8, 8), np.float32), np.arange(8) % 10)
KEY = jax.random.key(0)
FILE = __file__

NS = {
  **{k: v for k, v in globals().items() if k.isupper() and not k.startswith("_")},
  "G": G,
  "M": M,
  "jax": jax,
  "jnp": jnp,
  "np": np,
  "nnx": nnx,
  "nan": nan,
  "inf": inf,
}

_rows_nan = lambda *rows: (
  lambda r: (
    [bool(np.isnan(np.asarray(r[i])).any()) for i in range(len(r))]
    == [i in rows for i in range(len(r))]
  )
)
_all_nan = lambda r: bool(np.isnan(np.asarray(r)).all())
_rule = lambda r: isinstance(r, jaxdiff.GuidanceRule)
_uncond = lambda r: np.allclose(r, UNCOND, atol=1e-5)
POISON = "traced labels cannot raise: the samples with an invalid label are NaN (poisoned)"
TRACED = "a traced hyperparameter out of range (or NaN) poisons the rule's output with NaN"
NULLP = "the null label -1 gets no guidance term: the sample is the unconditional one"

CASES = [
  # -- scalar hyperparameters: NaN, inf, None, str, bool, arrays, complex, range -------------
  Case("G.cfg(nan)", raises(ValueError, "cfg: scale must be a number, got NaN")),
  Case("G.cfg(inf)", raises(ValueError, "cfg: scale must be finite")),
  Case("G.cfg(None)", raises(TypeError, "cfg: scale must be a real number")),
  Case("G.cfg('3')", raises(TypeError, "cfg: scale")),
  Case("G.cfg(True)", raises(TypeError, "cfg: scale must be a real number, got a bool")),
  Case("G.cfg(jnp.ones(2))", raises(TypeError, "cfg: scale must be a scalar")),
  Case("G.cfg(1 + 2j)", raises(TypeError, "cfg: scale")),
  Case("G.cfg(2.0, rescale=1.5)", raises(ValueError, r"cfg: rescale must lie in \[0, 1\]")),
  Case("G.cfg(2.0, rescale=-0.1)", raises(ValueError, "cfg: rescale")),
  Case("G.cfg(jnp.float32(2.0))", returns(_rule, "a 0-d array scale is a scalar")),
  Case("G.apg(nan)", raises(ValueError, "apg: scale")),
  Case("G.apg(2.0, momentum=-1.0)", raises(ValueError, r"apg: momentum must lie in \(-1, 0\]")),
  Case("G.apg(2.0, momentum=0.5)", raises(ValueError, "apg: momentum")),
  Case("G.apg(2.0, norm_threshold=0.0)", raises(ValueError, "apg: norm_threshold")),
  Case("G.apg(2.0, norm_threshold=nan)", raises(ValueError, "apg: norm_threshold")),
  Case("G.apg(2.0, norm_threshold=inf)", returns(_rule, "inf disables APG's clipping")),
  Case("G.apg(2.0, eta=-inf)", raises(ValueError, "apg: eta must be finite")),
  Case("G.apg(2.0, eta=np.bool_(True))", raises(TypeError, "apg: eta")),
  Case("G.cfgpp(1.5)", raises(ValueError, r"cfgpp: scale must lie in \[0, 1\]")),
  Case("G.cfgpp(-0.1)", raises(ValueError, "cfgpp: scale")),
  Case("G.adaptive(3.0, nan)", raises(ValueError, "adaptive: threshold must be a number")),
  Case("G.adaptive(nan, 0.9)", raises(ValueError, "adaptive: scale")),
  Case("G.adaptive(3.0, None)", raises(TypeError, "adaptive: threshold")),
  Case("G.adaptive(3.0, 1.5)", returns(_rule, "threshold > 1 never switches: plain CFG")),
  Case("G.pag(-1.0)", raises(ValueError, r"pag: scale must lie in \[0, inf\)")),
  Case("G.pag(1.0, cfg_scale=nan)", raises(ValueError, "pag: cfg_scale")),
  Case("G.autoguidance(None, 2.0)", raises(TypeError, "autoguidance: weak_denoise")),
  Case("G.autoguidance(DEN, inf)", raises(ValueError, "autoguidance: scale")),
  Case("G.classifier(CLF_FN, 1, 1.0)", raises(ValueError, "classifier: num_classes")),
  Case("G.classifier(CLF_FN, 2.5, 1.0)", raises(ValueError, "classifier: num_classes must be an integer")),
  Case("G.classifier(CLF_FN, None, 1.0)", raises(TypeError, "classifier: num_classes")),
  Case("G.classifier(CLF_FN, 3, -1.0)", raises(ValueError, "classifier: scale")),
  Case("G.classifier('clf', 3, 1.0)", raises(TypeError, "classifier: classifier_fn must be callable")),
  Case("G.classifier(CLF_FN, 3, 1.0, variant='x_t')", raises(ValueError, "classifier: variant")),
  Case("G.classifier(CLF_FN, 3, 1.0, joint_temperature=0.0)", raises(ValueError, "joint_temperature")),
  Case("G.classifier(CLF_FN, 3, 1.0, marginal_temperature=-1.0)", raises(ValueError, "marginal_temperature")),
  Case("G.classifier(CLF_FN, 3, 1.0, guide_conditional='yes')", raises(TypeError, "guide_conditional")),
  Case("G.gfcg(CLF_FN, 3, nan)", raises(ValueError, "gfcg: scale")),
  Case("G.gfcg(CLF_FN, 3, 1.0, cfg_scale=inf)", raises(ValueError, "gfcg: cfg_scale")),
  Case("G.gfcg(CLF_FN, 3, 1.0, weak_denoise=1.0)", raises(TypeError, "gfcg: weak_denoise")),
  Case("G.gfcg(None, 3, 1.0)", raises(TypeError, "gfcg: classifier_fn")),
  Case("G.rcfg(2.0)", raises(ValueError, "rcfg: the self-negative variant needs `reference`")),
  Case("G.rcfg(2.0, variant='twice')", raises(ValueError, "rcfg: variant must be one of")),
  Case("G.rcfg(2.0, variant='onetime', reference=X)", raises(ValueError, "rcfg: reference is used only")),
  Case("G.rcfg(2.0, reference=jnp.full((4, 2), nan))", raises(ValueError, "rcfg: reference must be finite")),
  Case("G.rcfg(2.0, reference='x0')", raises(TypeError, "rcfg: reference must be an array")),
  Case("G.rcfg(2.0, variant='onetime', delta=-1.0)", raises(ValueError, "rcfg: delta")),
  Case("G.linear_ag(2.0, jnp.zeros((3, 2)), jnp.zeros(3, bool))", raises(ValueError, "linear_ag: coefficients must have shape")),
  Case("G.linear_ag(2.0, jnp.full((3, 3), nan), jnp.zeros(3, bool))", raises(ValueError, "linear_ag: coefficients must be finite")),
  Case("G.linear_ag(2.0, jnp.zeros((3, 3)), jnp.ones(3, bool))", raises(ValueError, r"linear_ag: estimate\[0\]")),
  Case("G.linear_ag(2.0, jnp.zeros((3, 3)), jnp.zeros(4, bool))", raises(ValueError, "linear_ag: estimate must be a bool array of shape")),
  Case("G.linear_ag(2.0, jnp.zeros((3, 3)), jnp.zeros(3))", raises(ValueError, "linear_ag: estimate")),
  Case("G.linear_ag(2.0, None, jnp.zeros(3, bool))", raises(TypeError, "linear_ag: coefficients")),
  Case("G.linear_ag(2.0, jnp.zeros((0, 3)), jnp.zeros(0, bool))", raises(ValueError, "num_steps >= 1")),
  Case("G.smooth_relu(jnp.zeros(2), beta=0.0)", raises(ValueError, "smooth_relu: beta")),
  Case("G.fit_linear_ag(jnp.zeros((3, 2, 2)), jnp.zeros((3, 2, 3)))", raises(ValueError, "cond_preds and uncond_preds")),
  Case("G.cfg(2.0, null_cond=None)", raises(TypeError, "cfg: null_cond")),
  Case("G.apg(2.0, null_cond='null')", raises(TypeError, "apg: null_cond")),
  Case("G.cfgpp(0.5, null_cond=[object()])", raises(TypeError, "cfgpp: null_cond")),
  # -- registry --------------------------------------------------------------------------
  Case("G.make('nope')", raises(ValueError, "unknown guidance rule 'nope'; known: adaptive")),
  Case("G.make(None)", raises(ValueError, "unknown guidance rule None")),
  Case("G.make('autoguidance')", raises(ValueError, "guidance rule 'autoguidance' needs weak_denoise")),
  Case("G.make('classifier', classifier_fn=CLF_FN)", raises(ValueError, "needs num_classes")),
  Case("G.make('cfg', nan)", raises(ValueError, "cfg: scale")),
  Case("G.make('cfg', 2.0, bogus=1)", raises(TypeError, "bogus")),
  Case("G.make('apg', momentum=2.0)", raises(ValueError, "apg: momentum")),
  Case("G.make('cfg', weak_denoise=DEN)", returns(_rule, "resources a rule does not use are ignored")),
  Case("G.make('rcfg', variant='self')", raises(ValueError, "rcfg: the self-negative variant")),
  # -- labels through jaxdiff.sample (traced) and eager apply (concrete) ------------------
  Case("SAMPLE(CLF, Y)", returns(None, "valid labels guide every sample")),
  Case("SAMPLE(CLF, NULL)", returns(_uncond, NULLP)),
  Case("SAMPLE(GF, NULL)", returns(_uncond, NULLP)),
  Case("SAMPLE(CFG, NULL)", returns(_uncond, "cfg of the null label is the unconditional model")),
  Case("SAMPLE(CLF, jnp.array([0, 3, 1, 2]))", raises(ValueError, r"cond: class labels must lie in \[0, 3\) or the null label -1.*got 3")),
  Case("JIT_CLF(jnp.array([0, 3, 1, 2]))", returns(_rows_nan(1), POISON, nan_ok=True)),
  Case("SAMPLE(GF, jnp.array([0, 1, -2, 2]))", raises(ValueError, "cond: .*got -2")),
  Case("JIT_GF(jnp.array([0, 1, -2, 2]))", returns(_rows_nan(2), POISON, nan_ok=True)),
  Case("JIT_GF(NULL)", returns(_uncond, NULLP)),
  Case("SAMPLE(CFG, jnp.array([0, 7, 1, 2]))", raises(ValueError, "cond: .*got 7")),
  Case("JIT_CFG(jnp.array([0, 7, 1, 2]))", returns(_rows_nan(1), POISON, nan_ok=True)),
  Case("SAMPLE(CLF, jnp.array([0.0, 1.0, 2.0, 0.0]))", raises(TypeError, "cond")),
  Case("SAMPLE(CLF, Y[:3])", raises(ValueError, "cond must be batch-first")),
  Case("SAMPLE(G.linear_ag(2.0, jnp.zeros((3, 3)), jnp.zeros(3, bool)), Y)", raises(ValueError, "linear_ag: the coefficients were fitted for 3 steps")),
  Case("TRACED_CLF(jnp.array([0, 3, 1, 2]))", returns(_rows_nan(1), POISON, nan_ok=True)),
  Case("APPLY(CLF, jnp.array([0, 3, 1, 2]))", raises(ValueError, r"classifier: cond: class labels must lie in \[0, 3\).*got 3")),
  Case("APPLY(GF, jnp.array([0, 1, -5, 2]))", raises(ValueError, "gfcg: cond: .*got -5")),
  Case("APPLY(CLF, jnp.array([0.0, 1.0, 1.0, 2.0]))", raises(TypeError, "classifier: cond must be an integer label array")),
  Case("APPLY(CLF, jnp.array([True, False, True, True]))", raises(TypeError, "classifier: cond")),
  Case("APPLY(CLF, None)", raises(TypeError, "classifier: cond")),
  Case("APPLY(CLF, Y[:, None])", raises(TypeError, r"classifier: cond must be an integer label array of shape \(B,\)")),
  Case("APPLY(CLF, NULL)", returns(lambda r: np.allclose(r, DEN(X, jnp.full(4, 0.5), NULL)), NULLP)),
  Case("APPLY(CFG, None)", raises(ValueError, "cfg: this guidance rule needs a conditional batch")),
  Case("APPLY(G.cfg(2.0, null_cond=-1.5), Y)", raises(TypeError, "cfg: null_cond of dtype float")),
  Case("APPLY(G.cfg(2.0, null_cond=jnp.array([-1, -1])), Y)", raises(ValueError, "cfg: null_cond of shape")),
  Case("APPLY(G.cfg(2.0, null_cond=lambda c: (c, c)), Y)", raises(ValueError, r"cfg: null_cond\(cond\) must have the structure")),
  Case("APPLY(G.apg(2.0, null_cond=lambda c: c[:2]), Y)", raises(ValueError, r"apg: null_cond\(cond\) is int32\(2,\)")),
  Case("APPLY(G.classifier(lambda z: z, 3, 1.0), Y)", raises(ValueError, r"logits of shape \(B, num_classes\)")),
  Case("APPLY(G.pag(1.0), Y)", raises(TypeError, "pag: the denoiser does not accept the keyword argument `perturb`")),
  Case("APPLY(G.pag(1.0), Y, NOFLAG)", raises(ValueError, "pag: the denoiser's output does not depend on `perturb`")),
  Case("APPLY(G.autoguidance(lambda x, t, c: x[:, :1], 2.0), Y)", raises(ValueError, r"autoguidance: weak_denoise\(x, t, cond\) must return .*\(4, 2\)")),
  Case("APPLY(G.rcfg(2.0, reference=jnp.zeros((3, 2))), Y)", raises(ValueError, r"rcfg: reference has shape \(3, 2\)")),
  # -- traced hyperparameters --------------------------------------------------------------
  Case("TRACED_AG(nan)", returns(_all_nan, TRACED, nan_ok=True)),
  Case("TRACED_AG(0.9)", returns(None, "a traced threshold in range is used as is")),
  Case("TRACED_RESCALE(1.5)", returns(_all_nan, TRACED, nan_ok=True)),
  Case("jax.jit(lambda w: G.cfg(w))(jnp.ones(2))", raises(TypeError, "cfg: scale must be a scalar, got a traced array")),
  Case("jax.jit(lambda n: G.classifier(CLF_FN, n, 1.0))(3)", raises(TypeError, "classifier: num_classes must be a concrete Python number")),
  # -- models: constructors ----------------------------------------------------------------
  Case("M.DigitDenoiser(patch=3, rngs=R)", raises(ValueError, r"DigitDenoiser: patch \(3\) must divide")),
  Case("M.DigitDenoiser(dim=0, rngs=R)", raises(ValueError, r"DigitDenoiser: dim must lie in \[1, inf\)")),
  Case("M.DigitDenoiser(dim=30, num_heads=4, rngs=R)", raises(ValueError, "multiple of num_heads")),
  Case("M.DigitDenoiser(dim=9, num_heads=3, rngs=R)", raises(ValueError, "DigitDenoiser: dim .* must be even")),
  Case("M.DigitDenoiser(depth=0, rngs=R)", raises(ValueError, "DigitDenoiser: depth")),
  Case("M.DigitDenoiser(num_classes=None, rngs=R)", raises(TypeError, "DigitDenoiser: num_classes")),
  Case("M.DigitDenoiser(mlp_ratio=1.5, rngs=R)", raises(ValueError, "DigitDenoiser: mlp_ratio must be an integer")),
  Case("M.DigitDenoiser(image_size=-8, rngs=R)", raises(ValueError, "DigitDenoiser: image_size")),
  Case("M.DigitDenoiser(pag_layers=[5], rngs=R)", raises(ValueError, "DigitDenoiser: pag_layers")),
  Case("M.DigitDenoiser(pag_layers=[0.5], rngs=R)", raises(ValueError, "DigitDenoiser: pag_layers must be an integer")),
  Case("M.DigitClassifier(num_classes=1, rngs=R)", raises(ValueError, "DigitClassifier: num_classes")),
  Case("M.DigitClassifier(hidden=True, rngs=R)", raises(TypeError, "DigitClassifier: hidden")),
  Case("M.DigitClassifier(in_features='64', rngs=R)", raises(TypeError, "DigitClassifier: in_features")),
  Case("M.SelfAttention(6, 4, rngs=R)", raises(ValueError, r"SelfAttention: dim \(6\) must be a positive multiple of num_heads")),
  Case("M.SelfAttention(8, 0, rngs=R)", raises(ValueError, "SelfAttention: num_heads")),
  Case("M.SelfAttention('8', 2, rngs=R)", raises(TypeError, "SelfAttention: dim")),
  # -- models: calls -----------------------------------------------------------------------
  Case("NET(XI, TI, jnp.array([0, 10]))", raises(ValueError, r"DigitDenoiser: cond: class labels must lie in \[0, 10\).*got 10")),
  Case("NET(XI, TI, jnp.array([0, -3]))", raises(ValueError, "DigitDenoiser: cond: .*got -3")),
  Case("NET(XI, TI, jnp.array([0.0, 1.0]))", raises(TypeError, "DigitDenoiser: cond must hold integer class labels")),
  Case("NET(XI, TI, jnp.array([0, -1]))", returns(lambda r: r.shape == (2, 8, 8), "-1 is the learned null label")),
  Case("NET(XI[:, :7], TI, jnp.array([0, 1]))", raises(ValueError, r"DigitDenoiser: expected x of shape \(B, 8, 8\)")),
  Case("NET(XI.astype(int), TI, jnp.array([0, 1]))", raises(TypeError, "DigitDenoiser: x must be floating")),
  Case("NET(XI, TI, jnp.array([0, 1]), perturb=jnp.ones(3, bool))", raises(ValueError, "SelfAttention: perturb must be a bool array")),
  # -- models: data, losses, training ------------------------------------------------------
  Case("M.load_digits(test_fraction=0.0)", raises(ValueError, r"load_digits: test_fraction must lie in \(0, 1\)")),
  Case("M.load_digits(test_fraction=nan)", raises(ValueError, "load_digits: test_fraction must be a number")),
  Case("M.load_digits(test_fraction=None)", raises(TypeError, "load_digits: test_fraction")),
  Case("M.load_digits(test_fraction=0.999)", raises(ValueError, "load_digits: test_fraction=0.999 leaves fewer than 10")),
  Case("M.load_digits(key=True)", raises(TypeError, "load_digits: key")),
  Case("M.load_digits(key='a')", raises(TypeError, "key must be an int seed or a JAX PRNG key")),
  Case("M.load_digits(key=-1)", raises(ValueError, r"load_digits: an int key \(seed\)")),
  Case("M.batch_indices(KEY, 0, 10, 11)", raises(ValueError, r"batch_indices: batch_size \(11\) must be <= num_examples")),
  Case("M.batch_indices(KEY, 0, 10, 0)", raises(ValueError, "batch_indices: batch_size")),
  Case("M.v_prediction_loss(SCHED, label_dropout=nan)", raises(ValueError, "v_prediction_loss: label_dropout")),
  Case("M.v_prediction_loss(SCHED, null_label=-0.5)", raises(ValueError, "v_prediction_loss: null_label")),
  Case("M.v_prediction_loss(None)", raises(TypeError, "v_prediction_loss: schedule")),
  Case("M.classifier_loss(noise=-1.0)", raises(ValueError, "classifier_loss: noise")),
  Case("M.train(NET, LOSS, OPT, DATA, steps=0, batch_size=2)", raises(ValueError, "train: steps")),
  Case("M.train(NET, LOSS, OPT, DATA, steps=1.5, batch_size=2)", raises(ValueError, "train: steps must be an integer")),
  Case("M.train(NET, LOSS, OPT, DATA, steps=1, batch_size=9)", raises(ValueError, r"train: batch_size \(9\) must be <=")),
  Case("M.train(NET, LOSS, OPT, DATA, steps=1, batch_size=None)", raises(TypeError, "train: batch_size")),
  Case("M.train(NET, LOSS, OPT, DATA, steps=1, batch_size=2, chunk=0)", raises(ValueError, "train: chunk")),
  Case("M.train(NET, LOSS, OPT, DATA, steps=1, batch_size=2, stop_after=-1)", raises(ValueError, "train: stop_after")),
  Case("M.train(NET, LOSS, OPT, DATA, steps=1, batch_size=2, key=jnp.zeros(2))", raises(TypeError, "key must be")),
  Case("M.train(NET, LOSS, OPT, DATA, steps=1, batch_size=2, checkpoint_dir=3)", raises(TypeError, "train: checkpoint_dir must be a path")),
  Case("M.train(NET, LOSS, OPT, DATA, steps=1, batch_size=2, checkpoint_dir=FILE)", raises(ValueError, "train: checkpoint_dir .* is not a directory")),
  Case("M.train('net', LOSS, OPT, DATA, steps=1, batch_size=2)", raises(TypeError, "train: model")),
  Case("M.train(NET, None, OPT, DATA, steps=1, batch_size=2)", raises(TypeError, "train: loss_fn")),
  Case("M.train(NET, LOSS, 'adam', DATA, steps=1, batch_size=2)", raises(TypeError, "train: optimizer")),
  Case("M.train(NET, LOSS, OPT, DATA[0], steps=1, batch_size=2)", raises(TypeError, r"train: data must be a pair \(x, y\)")),
  Case("M.train(NET, LOSS, OPT, (DATA[0], DATA[1][:7]), steps=1, batch_size=2)", raises(ValueError, "train: data")),
  Case("M.train(NET, LOSS, OPT, (DATA[0].astype(int), DATA[1]), steps=1, batch_size=2)", raises(TypeError, "train: data x must be floating")),
]  # fmt: skip


def test_the_table_is_large_enough():
  assert len(CASES) >= 60


@params(CASES)
def test_case(case):
  run(case, NS)
