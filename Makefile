# Two commands for a newcomer: `make demo` and `make test`. Both build .venv on first use
# (`make demo` installs the package with its `demo` extra only).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# CPU-only by default on machines without an accelerator; JAX picks a GPU/TPU when present.
export PYTHONHASHSEED := 0

.PHONY: demo test test-integration test-all test-peers lint bench bench-peers notebooks docs clean clean-cache

$(STAMP): pyproject.toml optim/_version.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[demo,test,notebooks,bench]'
	touch $(STAMP)

DEMO_STAMP := $(VENV)/.demo-installed
$(DEMO_STAMP): pyproject.toml optim/_version.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/python -m jaxdiff demo

# Tests run on both cores: split between the two workers, a worker that runs out taking
# half of the other's remaining tests (worksteal), so that neither idles at the end.
# Compiled programs go to JAX's persistent cache in ~/.cache/optim-jaxdiff/jax (set up in
# tests/conftest.py; $XDG_CACHE_HOME moves it), shared by the workers, the subprocesses and
# every clone on the machine, and kept between runs: the first run on a machine compiles
# everything (about 9 minutes on 2 idle cores), later runs about 2.7.
PYTEST   := $(BIN)/python -m pytest -n 2 --dist worksteal
DOCTESTS := --doctest-modules optim jaxdiff --ignore=jaxdiff/__main__.py

# The unit tier (CI runs it first): everything but the `integration` tier and the `slow`
# reproductions, plus every docstring example (doctests).
test: $(STAMP)
	$(PYTEST) -m "not slow and not integration" -q --durations=15 tests $(DOCTESTS) \
	  --ignore=tests/peers

# The integration tier (CI runs it after `make test`): the demo and the CLI on its models,
# the notebooks as a Colab user runs them, the curvature tour, two processes joined by
# jax.distributed, the built wheel and sdist installed in fresh virtual environments
# (these download the dependencies: PyPI), the documentation build (the `docs` extra).
# A few long tests behind module-scoped fixtures (the demo run, the notebooks' environment):
# whole files to a worker, so that no fixture is built twice.
test-integration: $(STAMP) $(VENV)/.docs-installed
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "integration and not slow" -q -rs \
	  --durations=15 tests --ignore=tests/peers

# Parity against the PyTorch peers (the `peers` extra; .ci/run installs it after `make test`).
# Each test skips, naming what is missing, where a peer is not installed.
test-peers: $(STAMP)
	$(BIN)/python -m pytest -p no:xdist -q -rs --durations=5 tests/peers

# Everything, both tiers and the reproductions (tens of minutes on 2 cores).
test-all: $(STAMP)
	$(PYTEST) -q --durations=25 tests $(DOCTESTS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check optim jaxdiff

# Every script whose figures the README quotes (the repro_* scripts are run by hand).
bench: $(STAMP)
	$(BIN)/python bench/bench_curvature.py
	$(BIN)/python bench/bench_optim.py
	$(BIN)/python bench/bench_optim_second_order.py
	$(BIN)/python bench/bench_sampling.py

# Side by side with torch-optimizer, pytorch_optimizer, PyHessian and diffusers (needs the
# `peers` extra: $(BIN)/pip install -e '.[peers]').
bench-peers: $(STAMP)
	$(BIN)/python bench/bench_peers.py

# The notebooks are jupytext pairs: after editing either side, bring the other in line
# (outputs stay empty; tests/test_notebooks.py checks the pairs agree).
notebooks: $(STAMP)
	$(BIN)/jupytext --sync notebooks/[0-9][0-9]_*.py

# The documentation site into docs/_build/html (the `docs` extra: Sphinx + MyST-NB), warnings
# as errors. DOCS_EXECUTE_NOTEBOOKS=1 runs the notebooks (small size) before rendering them.
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): pyproject.toml | $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(STAMP) $(DOCS_STAMP)
	$(BIN)/python -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "docs/_build/html/index.html"

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis .cache/jax

# The compiled programs of the test suite (kept between runs and clones; see `test`).
clean-cache:
	rm -rf "$${XDG_CACHE_HOME:-$$HOME/.cache}/optim-jaxdiff/jax"
