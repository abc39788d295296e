# jetstore: `make demo` and `make test` bootstrap .venv from pyproject.toml by themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck soak bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/jetstore demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict src/jetstore

# The suite runs in TEST_WORKERS processes (pytest-xdist), a test file per process at a time:
# the fsync-bound suites then overlap with the CPU-bound ones (CI has 2 cores).
TEST_WORKERS ?= 2

test: lint typecheck $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

soak: $(STAMP)
	JETSTORE_SOAK=1 $(BIN)/python -m pytest -q -m soak -o addopts='' --timeout=14400

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
