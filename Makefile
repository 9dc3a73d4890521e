# The README's two commands: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedser-installed

.PHONY: demo test test-fast test-containers lint docs bench study venv clean

# Fresh machine -> virtual environment -> install (re-run when pyproject.toml changes).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

## The main job on the embedded default: synthetic corpus, pretrain, all six regimes x five folds
## (federated ones through flwr run on a local Flower/Ray simulation), report; tiny preset, outputs/.
demo: $(STAMP)
	$(BIN)/fedser demo

## Lint + type check (common/) + the whole test suite in one process per core (slow end-to-end
## tests included; CI runs this via .ci/run). worksteal: an idle worker takes queued tests from the
## other, so the suite does not end on one core; the slowest tests are listed (the 10-minute budget).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy common
	$(BIN)/mkdocs build --strict --quiet
	$(BIN)/python -m pytest -n auto --dist worksteal --durations=15

## The docker-compose stack for real: engine (dockerd started if needed), image build, up, two
## regimes through the TLS SuperLink, down -v (tests/test_containers.py; skips without an engine).
test-containers: $(STAMP)
	$(BIN)/python -m pytest -m containers -rP

## Without the slow end-to-end tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n auto -m "not slow"

## The documentation site (docs/ -> .site/); --strict: a broken link or anchor is an error.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy common

## Benchmarks print figures; they are never part of the tests.
bench: $(STAMP)
	$(BIN)/python benchmarks/features.py
	$(BIN)/python benchmarks/gan.py --skip-paper
	$(BIN)/python benchmarks/federation.py

clean:
	rm -rf outputs .pytest_cache .ruff_cache .mypy_cache

## pretrain + study on the embedded default (what `make demo` does without the corpus steps).
study: $(STAMP)
	$(BIN)/fedser pretrain
	$(BIN)/fedser study
