# Two commands do all the set-up: `make run` (the main job) and `make test` (the test suite, every tier).
# `make check` is the inner loop: ruff and the unit tier (tests/tiers.py), in about a minute.
# Each creates .venv when it is missing and installs the project into it (editable), re-installing
# only when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The UI tests drive Debian's Chromium (Playwright's own browser download needs the internet); the scale-out
# tests start a PostgreSQL server of their own from Debian's binaries.
CHROMIUM := /usr/bin/chromium
POSTGRES := /usr/lib/postgresql
LINTED   := cli trainlib tasks flows deployments tests bench
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test check bench clean

run: $(VENV)/.installed
	$(BIN)/trainflow run

# Two lanes, each a test file at a time on a core of its own (tests/conftest.py), the heaviest tiers first (tests/tiers.py);
# --durations: where the time goes.
test: $(VENV)/.installed-dev $(CHROMIUM) $(POSTGRES)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25

check: $(VENV)/.installed-dev
	$(BIN)/ruff check $(LINTED)
	$(BIN)/python -m pytest -q -m unit --durations=25

# The benchmarks (not tests; about two hours): the figures in docs/benchmarks.md.
bench: $(VENV)/.installed
	for b in engine overhead startup worker data memory scaleout fanout recipes predict scale calibration serving; do $(BIN)/python -m bench.$$b || exit 1; done

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@ $(VENV)/.installed

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

$(POSTGRES):
	$(SUDO) apt-get update -qq
	$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql

clean:
	rm -rf .trainflow mlruns mlflow.db .pytest_cache .hypothesis test-output
