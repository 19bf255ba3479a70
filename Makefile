# Two commands for a newcomer: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# CPU-only by default on machines without an accelerator; JAX picks a GPU/TPU when present.
export PYTHONHASHSEED := 0

.PHONY: demo test test-all lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,notebooks,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m jaxdiff demo

# Fast suite (CI): everything but `slow` reproductions, plus every docstring example
# (doctests), on both cores.
DOCTESTS := --doctest-modules optim jaxdiff --ignore=jaxdiff/__main__.py
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not slow" -q --durations=15 tests $(DOCTESTS)

# Everything, reproductions included (tens of minutes on 2 cores).
test-all: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -q --durations=25 tests $(DOCTESTS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check optim jaxdiff

bench: $(STAMP)
	$(BIN)/python bench/bench_curvature.py
	$(BIN)/python bench/bench_optim.py
	$(BIN)/python bench/bench_sampling.py

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
