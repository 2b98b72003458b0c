# Two commands do all the set-up: `make run` (the main job) and `make test` (the test suite).
# Each creates .venv when it is missing and installs the project into it (editable), re-installing
# only when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test clean

run: $(VENV)/.installed
	$(BIN)/trainflow run

test: $(VENV)/.installed-dev
	$(BIN)/ruff check trainlib tasks flows deployments tests
	$(BIN)/python -m pytest -q

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@ $(VENV)/.installed

clean:
	rm -rf .trainflow mlruns mlflow.db .pytest_cache
