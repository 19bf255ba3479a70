"""The public API speaks one vocabulary (docs/design.md, "API conventions").

Every public function, factory, class constructor and public method reachable from the
packages' ``__all__`` is inspected: no forbidden parameter name, ``key`` keyword-only,
accumulator dtypes named ``mu_dtype``, optimizer aliases shaped alike, a runnable example
in every docstring; every deprecated spelling is documented and every contract name in
the design document resolves.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import pathlib
import re
import warnings

import pytest

from optim._validation import MISSING, renamed_kwargs, warn_default

ROOT = pathlib.Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"

MODULES = (
  "optim",
  "optim.bilevel",
  "optim.compander",
  "optim.constrained",
  "optim.curvature",
  "optim.data_scores",
  "optim.games",
  "optim.layers",
  "optim.layouts",
  "optim.local",
  "optim.loops",
  "optim.losses",
  "optim.ot",
  "optim.pruning",
  "optim.quant",
  "optim.schedules",
  "optim.unnormalized",
  "optim.xla",
  "optim.zeroth_order",
  "jaxdiff",
  "jaxdiff.correctors",
  "jaxdiff.distill",
  "jaxdiff.finetune",
  "jaxdiff.caching",
  "jaxdiff.guidance",
  "jaxdiff.inverse",
  "jaxdiff.solvers",
  "jaxdiff.schedules",
  "jaxdiff.search",
  "jaxdiff.metrics",
  "jaxdiff.multiplicative",
  "jaxdiff.noise2score",
  "jaxdiff.parameterization",
  "jaxdiff.testing",
  "jaxdiff.training",
  "jaxdiff.wavelets",
  "jaxdiff.models",
)

FORBIDDEN = ("kind", "method", "estimator", "input", "error_dtype", "buffer_dtype", "seed", "rng")

# Known synonyms of the iteration and tolerance vocabulary (docs/design.md, "API
# conventions"): a parameter spelled so is flagged with the one name to use instead.
SYNONYMS = {
  "num_iters": "num_iterations",
  "num_iter": "num_iterations",
  "n_iters": "num_iterations (n_iters is a result field)",
  "n_iter": "num_iterations",
  "niter": "num_iterations",
  "iterations": "num_iterations",
  "max_iters": "max_iterations",
  "max_iter": "max_iterations",
  "maxiter": "max_iterations",
  "max_steps": "max_iterations",
  "max_newton": "max_iterations",
  "num_sinkhorn": "sinkhorn_num_iterations",
  "max_search": "search_max_iterations",
  "max_linesearch": "linesearch_max_iterations",
  "cg_maxiter": "cg_max_iterations",
  "grad_tol": "tol",
  "tolerance": "tol",
  "eps_tol": "tol",
  "num_newton": "n_iters",
}
# The same synonyms behind an inner solver's prefix (``cg_maxiter``, ``ls_tolerance``).
_SYNONYM_SUFFIX = re.compile(r"_(maxiters?|max_iters?|num_iters?|n_iters?|niters?|tolerance)$")

# Every iterative solver's result (a loop to a tolerance or a cap): the stop flag and the
# iteration count under one name each, and the stopping criterion's history where kept.
SOLVER_RESULTS = {
  "optim.curvature.EigenResult": ("converged", "n_iters"),
  "optim.curvature.LanczosResult": ("converged", "n_iters"),
  "optim.loops.RegNewtonResult": ("converged", "n_iters", "errors"),
  "optim.ot.SNSResult": ("converged", "n_iters", "errors"),
  "optim.data_scores.KMeansResult": ("converged", "n_iters"),
  "optim.games.NashFlowResult": ("converged", "n_iters", "errors"),
  "optim.curvature.CGResult": ("converged", "n_iters", "errors"),
  "optim.bilevel.HypergradResult": ("converged", "n_iters", "errors"),
  "optim.constrained.EALSketchResult": ("converged", "n_iters", "errors"),
  "optim.bilevel.LVHBAResult": ("converged", "n_iters", "errors"),
  "optim.bilevel.MAIDResult": ("converged", "n_iters", "errors"),
  "optim.bilevel.BOREPResult": ("converged", "n_iters", "errors"),
  "optim.bilevel.BSVRBResult": ("converged", "n_iters", "errors"),
  "optim.zeroth_order.FederatedZOResult": ("converged", "n_iters", "errors"),
}
# The solvers that return them: a cap (or fixed count) and a tolerance under one name each.
SOLVERS = {
  "optim.curvature.top_eigenvalues": ("max_iterations", "tol"),
  "optim.curvature.lanczos": ("num_iterations", "breakdown_tol"),
  "optim.loops.reg_newton_minimize": ("max_iterations", "tol"),
  "optim.ot.sinkhorn_newton_sparse": ("max_iterations", "tol"),
  "optim.data_scores.kmeans": ("max_iterations", "tol"),
  "optim.games.nash_flow": ("max_iterations", "tol"),
  "optim.curvature.conjugate_gradient": ("max_iterations", "tol"),
  "optim.bilevel.implicit_hypergradient": ("max_iterations", "tol"),
  "optim.constrained.eal_sketch_minimize": ("max_iterations", "tol"),
  "optim.bilevel.lvhba": ("max_iterations", "tol"),
  "optim.bilevel.maid": ("max_iterations", "tol"),
  "optim.bilevel.borep": ("max_iterations", "tol"),
  "optim.bilevel.bsvrb": ("max_iterations", "tol"),
  "optim.zeroth_order.fzoos_minimize": ("max_iterations", "tol"),
  "optim.zeroth_order.fedzo_minimize": ("max_iterations", "tol"),
}

# The optimizer aliases (``<x>`` = weight decay + ``scale_by_<x>`` + learning rate).
ALIASES = (
  "diffgrad",
  "adamp",
  "sgdp",
  "adahessian",
  "sophia",
  "mfac",
  "dp_sgd",
  "dice_sgd",
  "normalized_gd",
  "hesso",
  "reg_newton",
  "diff2",
  "robust_mean_sgd",
  "exponentiated_gradient",
)
# Optimizers with a first-order accumulator (momentum, error feedback, gradient window),
# aliases and bare preconditioners alike.
_WITHOUT_ACCUMULATOR = ("dp_sgd", "normalized_gd", "reg_newton", "robust_mean_sgd")
_WITHOUT_ACCUMULATOR += ("exponentiated_gradient",)  # multiplicative, no momentum
# hesso's accumulators live in its base optimizer (the alias passes mu_dtype to it);
# scale_by_hesso, a projection, has none.
_WITHOUT_ACCUMULATOR += ("hesso",)
WITH_ACCUMULATOR = tuple(
  prefix + name
  for name in ALIASES
  if name not in _WITHOUT_ACCUMULATOR
  for prefix in ("", "scale_by_")
)

# A positional ``key`` is kept only where it is the first argument by jax.random
# convention or by a protocol that our own loop calls positionally.
POSITIONAL_KEY_OK = {
  "jaxdiff.testing.GaussianMixture.sample": "jax.random convention: sample(key, n), like "
  "jax.random.normal(key, shape)",
  "jaxdiff.testing.LowRankGaussianMixture.sample": "GaussianMixture.sample's signature "
  "(a drop-in testbed): sample(key, n)",
  "jaxdiff.testing.LogNormalMixture.sample": "GaussianMixture.sample's signature (the "
  "testbed is its pushforward through exp): sample(key, n)",
  "jaxdiff.models.batch_indices": "jax.random convention: a pure function of (key, step) "
  "that the training loop calls inside jit",
  "jaxdiff.solvers.*.step": "the solver protocol step(state, x, i, pred, key) that "
  "jaxdiff.sample calls positionally",
}

# Public callables without an ``Example:`` section, and why.
NO_EXAMPLE_OK = {
  "jaxdiff.guidance.RuleSpec": "a registry record; jaxdiff.guidance.make's example uses it",
  "jaxdiff.solvers.SolverSpec": "a registry record; jaxdiff.solvers.make's example uses it",
  "jaxdiff.solvers.Solver": "the base class; each solver factory has the example",
  "jaxdiff.solvers.DDIM": "built by solvers.ddim, whose docstring has the example",
  "jaxdiff.solvers.DDPM": "built by solvers.ddpm, whose docstring has the example",
  "jaxdiff.solvers.DPMSolverPP2M": "built by solvers.dpmpp_2m (example there)",
  "jaxdiff.solvers.DPMSolverPP2MSDE": "built by solvers.dpmpp_2m_sde (example there)",
  "jaxdiff.solvers.DPMSolverPP3M": "built by solvers.dpmpp_3m (example there)",
  "jaxdiff.solvers.Euler": "built by solvers.euler (example there)",
  "jaxdiff.solvers.Heun": "built by solvers.heun (example there)",
  "jaxdiff.solvers.UniPC": "built by solvers.unipc (example there)",
  "jaxdiff.solvers.USF": "built by solvers.usf (example there)",
  "jaxdiff.schedules.EDM": "built by schedules.edm (example there)",
  "jaxdiff.schedules.DiscreteVP": "built by schedules.from_alphas_cumprod (example there)",
  "jaxdiff.schedules.Flow": "built by schedules.flow (example there)",
  "jaxdiff.schedules.VPCosine": "built by schedules.vp_cosine (example there)",
  "jaxdiff.schedules.VPLinear": "built by schedules.vp_linear (example there)",
  "jaxdiff.parameterization.Wrapped": "built by from_eps/from_v/from_flow/from_x0 (examples there)",
  "jaxdiff.testing.GMMDenoiser": "built by GaussianMixture.denoiser (example there)",
  "jaxdiff.inverse.Operator": "built by random_mask/box_mask/avg_pool/gaussian_blur/matrix "
  "(examples there)",
  "jaxdiff.testing.EmpiricalDenoiser": "built by testing.empirical_denoiser (example there)",
  "jaxdiff.testing.WienerDenoiser": "built by testing.wiener_denoiser (example there)",
  "jaxdiff.training.DenoisingLoss": "built by training.denoising_loss (example there)",
  "jaxdiff.training.Uniform": "built by training.uniform (example there)",
  "jaxdiff.training.LogitNormal": "built by training.logit_normal (example there)",
  "jaxdiff.training.UShaped": "built by training.u_shaped (example there)",
  "jaxdiff.training.Curriculum": "built by training.curriculum (example there)",
  "optim.curvature.LinearOperator": "built by hessian_matvec/ggn_matvec/fisher_matvec "
  "(examples there)",
}


def _ours(obj) -> bool:
  return getattr(obj, "__module__", "").split(".")[0] in ("optim", "jaxdiff")


def _is_record(obj) -> bool:
  """A NamedTuple (optimizer states, estimator results): data, positional by nature."""
  return inspect.isclass(obj) and issubclass(obj, tuple) and hasattr(obj, "_fields")


def _collect():
  """(public name, object, is a method) for every public callable, each object once."""
  found, seen = [], set()
  for modname in MODULES:
    mod = importlib.import_module(modname)
    for name in mod.__all__:
      obj = getattr(mod, name)
      if inspect.ismodule(obj) or not callable(obj) or id(obj) in seen:
        continue
      seen.add(id(obj))
      found.append((f"{modname}.{name}", obj, False))
      if inspect.isclass(obj) and _ours(obj) and not _is_record(obj):
        for mname, member in vars(obj).items():
          if mname.startswith("_"):
            continue
          if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
          if inspect.isfunction(member):
            found.append((f"{modname}.{name}.{mname}", member, True))
  return found


PUBLIC = _collect()
IDS = [name for name, _, _ in PUBLIC]


def _signature(obj) -> inspect.Signature:
  sig = inspect.signature(obj)
  params = list(sig.parameters.values())
  # flax.nnx modules expose (*args, **kwargs) through their metaclass: read __init__.
  variadic = [inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]
  if inspect.isclass(obj) and [p.kind for p in params] == variadic:
    sig = inspect.signature(obj.__init__)
    sig = sig.replace(parameters=list(sig.parameters.values())[1:])
  return sig


def _params(obj) -> dict[str, inspect.Parameter]:
  return dict(_signature(obj).parameters)


def _exempt(name: str, table: dict[str, str]) -> bool:
  return any(fnmatch.fnmatchcase(name, pattern) for pattern in table)


def test_public_api_is_walked():
  # The walk itself can break silently (a renamed module, an empty __all__).
  assert len(PUBLIC) > 100, len(PUBLIC)
  for must in ("optim.sophia", "optim.curvature.hutchinson_trace", "jaxdiff.sample"):
    assert must in IDS


@pytest.mark.parametrize("name,obj,is_method", PUBLIC, ids=IDS)
def test_no_forbidden_parameter_name(name, obj, is_method):
  bad = sorted(set(_params(obj)) & set(FORBIDDEN))
  assert not bad, f"{name}: forbidden parameter name(s) {bad}; see docs/design.md vocabulary"


def _synonym(param: str) -> str | None:
  if param in SYNONYMS:
    return SYNONYMS[param]
  match = _SYNONYM_SUFFIX.search(param)
  if match:
    return param[: match.start()] + ("_tol" if "tol" in match.group(1) else "_max_iterations")
  return None


@pytest.mark.parametrize("name,obj,is_method", PUBLIC, ids=IDS)
def test_no_synonym_of_the_iteration_vocabulary(name, obj, is_method):
  # Records are included: a result's field is a name the user reads, as a parameter is
  # (there ``n_iters`` is the one name of the iteration count).
  record = _is_record(obj)
  bad = {p: _synonym(p) for p in _params(obj) if _synonym(p) and not (record and p == "n_iters")}
  assert not bad, f"{name}: use the vocabulary's names: {bad}; see docs/design.md"


def test_synonym_check_flags_what_it_should():
  # The check itself can be too loose (a rename of the table, a regex that stops matching).
  for param in ("max_iters", "cg_maxiter", "grad_tol", "ls_tolerance", "inner_n_iters"):
    assert _synonym(param), param
  for param in ("max_iterations", "cg_max_iterations", "tol", "cg_tol", "num_steps", "rtol"):
    assert _synonym(param) is None, param


@pytest.mark.parametrize("name", sorted(SOLVER_RESULTS))
def test_every_solver_result_has_converged_and_n_iters(name):
  fields = _resolve(name)._fields
  missing = [f for f in SOLVER_RESULTS[name] if f not in fields]
  assert not missing, f"{name}: missing field(s) {missing} (fields {fields})"


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_every_iterative_solver_speaks_the_vocabulary(name):
  params = _params(_resolve(name))
  missing = [p for p in SOLVERS[name] if p not in params]
  assert not missing, f"{name}: missing parameter(s) {missing}"
  # ``threshold`` is a decision threshold (clip, cache reuse, early exit), never a
  # solver's stopping tolerance.
  assert "threshold" not in params, f"{name}: a stopping tolerance is `tol`"


def test_solver_tables_list_every_solver_result():
  # A new ...Result with a convergence flag joins SOLVER_RESULTS, so its names are checked.
  found = {
    name
    for name, obj, _ in PUBLIC
    if _is_record(obj) and name.endswith("Result") and "converged" in obj._fields
  }
  assert found <= set(SOLVER_RESULTS), sorted(found - set(SOLVER_RESULTS))


@pytest.mark.parametrize("name,obj,is_method", PUBLIC, ids=IDS)
def test_key_is_keyword_only(name, obj, is_method):
  params = _params(obj)
  if "key" not in params or _is_record(obj) or _exempt(name, POSITIONAL_KEY_OK):
    return
  assert params["key"].kind is inspect.Parameter.KEYWORD_ONLY, (
    f"{name}: `key` must be keyword-only (or listed in POSITIONAL_KEY_OK with a reason)"
  )


def test_positional_key_exemptions_exist_and_are_positional():
  # An exemption that no longer matches anything (or is keyword-only already) is stale.
  for pattern in POSITIONAL_KEY_OK:
    matched = [(n, o) for n, o, _ in PUBLIC if fnmatch.fnmatchcase(n, pattern)]
    assert matched, f"POSITIONAL_KEY_OK: {pattern} matches no public callable"
    for name, obj in matched:
      kind = _params(obj)["key"].kind
      assert kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, f"{name}: key is {kind}"


def _optim(name):
  import optim

  return getattr(optim, name)


def test_every_alias_is_listed():
  # A new alias (first parameter learning_rate) must join ALIASES, so the checks cover it.
  import optim

  found = set()
  for name in optim.__all__:
    obj = getattr(optim, name)
    if inspect.isfunction(obj) and list(_params(obj))[:1] == ["learning_rate"]:
      found.add(name)
  assert found == set(ALIASES)


@pytest.mark.parametrize("name", ALIASES)
def test_learning_rate_is_the_first_required_parameter(name):
  params = list(_params(_optim(name)).values())
  assert params[0].name == "learning_rate", f"optim.{name}: first parameter {params[0].name}"
  # Required; a default being removed is the MISSING sentinel (warns when omitted).
  assert params[0].default in (inspect.Parameter.empty, MISSING), (
    f"optim.{name}: learning_rate has a default {params[0].default!r}"
  )


@pytest.mark.parametrize("name", ALIASES)
def test_weight_decay_comes_with_weight_decay_mask(name):
  params = _params(_optim(name))
  if "weight_decay" in params:
    assert "weight_decay_mask" in params, f"optim.{name}: weight_decay without weight_decay_mask"


@pytest.mark.parametrize("name", WITH_ACCUMULATOR)
def test_accumulator_dtype_is_mu_dtype(name):
  params = _params(_optim(name))
  assert "mu_dtype" in params, f"optim.{name}: no mu_dtype"


@pytest.mark.parametrize("name,obj,is_method", PUBLIC, ids=IDS)
def test_no_other_dtype_parameter_in_optimizers(name, obj, is_method):
  # Accumulator dtypes are ``mu_dtype`` (optax's name); a curvature estimator has none.
  # The flax layers of optim.layers keep flax's ``dtype`` / ``param_dtype`` (drop-in
  # replacements of nnx.BatchNorm and nnx.Dropout's call), not optimizer accumulators.
  if not name.startswith("optim.") or name.startswith("optim.layers."):
    return
  other = [p for p in _params(obj) if p.endswith("_dtype") and p != "mu_dtype"]
  assert not other, f"{name}: dtype parameter(s) {other}; the accumulator dtype is mu_dtype"


@pytest.mark.parametrize(
  "name,obj", [(n, o) for n, o, m in PUBLIC if not m], ids=[n for n, _, m in PUBLIC if not m]
)
def test_public_callable_has_a_runnable_example(name, obj):
  if _is_record(obj) or name in NO_EXAMPLE_OK:
    return  # records document their fields; exemptions say where the example is
  doc = inspect.getdoc(obj) or ""
  has_example = bool(re.search(r"^\s*Examples?:\s*$", doc, re.M)) and ">>>" in doc
  assert has_example, (
    f"{name}: docstring needs an `Example:` section with a doctest (or a reason in NO_EXAMPLE_OK)"
  )


def test_example_exemptions_are_public():
  for name in NO_EXAMPLE_OK:
    assert name in IDS, f"NO_EXAMPLE_OK: {name} is not public (stale exemption)"


# ---------------------------------------------------------------------------------------
# Deprecated spellings and the design document.


def _section(title: str) -> str:
  text = DESIGN.read_text()
  match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^## )", text, re.M | re.S)
  assert match, f"docs/design.md has no section {title!r}"
  return match.group(1)


def _deprecations(obj) -> dict:
  for target in (obj, getattr(obj, "__init__", None)):
    found = getattr(target, "deprecated_kwargs", None)
    if found:
      return found
  return {}


def _renamed(new) -> str:
  return new if isinstance(new, str) else new[0]  # (new_name, translate) pairs


def test_every_deprecated_keyword_is_documented():
  rows = [line for line in _section("Deprecated spellings").splitlines() if line.startswith("|")]
  missing = []
  for name, obj, _ in PUBLIC:
    for old, new in _deprecations(obj).items():
      new = _renamed(new)
      assert new in _params(obj), f"{name}: deprecated {old!r} maps to unknown {new!r}"
      pair = f"`{old}` -> `{new}`"
      if not any(f"`{name}`" in row and pair in row for row in rows):
        missing.append(f"{name}: {pair}")
  assert not missing, "add to docs/design.md 'Deprecated spellings': " + "; ".join(missing)


def _resolve(dotted: str):
  parts = dotted.split(".")
  for i in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module(".".join(parts[:i]))
    except ImportError:
      continue
    for attr in parts[i:]:
      obj = getattr(obj, attr)  # AttributeError names the missing part
    return obj
  raise ImportError(dotted)


_DOTTED = re.compile(r"`((?:optim|jaxdiff)(?:\.[A-Za-z_]\w*)+)")


def test_documented_deprecations_are_implemented():
  # The table is a promise: each documented keyword rename exists on the wrapper.
  missing = []
  for row in _section("Deprecated spellings").splitlines():
    names = _DOTTED.findall(row)
    pairs = re.findall(r"`(\w+)` -> `(\w+)`", row)
    for name in names:
      obj = _resolve(name)
      if not callable(obj):
        continue  # a module attribute alias (KINDS)
      table = {old: _renamed(new) for old, new in _deprecations(obj).items()}
      missing += [f"{name}: {o} -> {n}" for o, n in pairs if table.get(o) != n]
  assert not missing, "documented but not kept by renamed_kwargs: " + "; ".join(missing)


def test_every_name_in_the_design_document_resolves():
  # Every backticked optim./jaxdiff. name the design document mentions (the protocols of the
  # contract, the vocabulary, the policies, the deprecated spellings) exists.
  names = sorted(set(_DOTTED.findall(DESIGN.read_text())))
  assert len(names) > 30, names  # the parse found the document's names
  unresolved = []
  for name in names:
    try:
      _resolve(name)
    except (ImportError, AttributeError) as e:
      unresolved.append(f"{name} ({e})")
  assert not unresolved, "docs/design.md names that do not resolve: " + "; ".join(unresolved)


def test_design_contract_is_the_api_pages():
  # The contract is each namespace's __all__ plus its API page; the design document points
  # there instead of repeating the names (tests/test_docs.py checks the pages list them all).
  assert "](api/index.md)" in _section("The contract: public names")
  for modname in MODULES:
    assert (ROOT / "docs" / "api" / f"{modname}.rst").is_file(), f"no docs/api/{modname}.rst"


# ---------------------------------------------------------------------------------------
# Our own DeprecationWarnings are errors in tests (pyproject filterwarnings), except where a
# test asks for them with pytest.warns.


@renamed_kwargs(old="new")
def _renamed_fn(*, new=1):
  return new


def _defaulted_fn(learning_rate=MISSING):
  return warn_default(learning_rate, "learning_rate", 0.1, "_defaulted_fn")


def test_our_deprecation_warnings_are_errors_in_tests():
  with pytest.raises(DeprecationWarning):
    _renamed_fn(old=2)
  with pytest.raises(DeprecationWarning):
    _defaulted_fn()


def test_pytest_warns_still_captures_them():
  with pytest.warns(DeprecationWarning, match="new=..."):
    assert _renamed_fn(old=2) == 2
  with pytest.warns(DeprecationWarning, match="learning_rate"):
    assert _defaulted_fn() == 0.1
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert _renamed_fn(new=3) == 3  # the new spelling is silent


def test_renamed_kwargs_keeps_the_new_signature():
  assert list(inspect.signature(_renamed_fn).parameters) == ["new"]
