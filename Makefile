# Two entry points (README): `make demo` and `make test`. Both build .venv from scratch on a
# fresh machine with Python 3.11; stamps make repeat runs skip the install.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.stamp-base: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[server]"
	touch $@

$(VENV)/.stamp-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[postgres,redis,client,server,bench,cluster]' --group dev
	touch $@ $(VENV)/.stamp-base

demo: $(VENV)/.stamp-base
	$(BIN)/contactmatch demo

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(VENV)/.stamp-dev
	$(BIN)/mypy

unit: $(VENV)/.stamp-dev
	$(BIN)/pytest

test: lint typecheck unit

# Every benchmark with --check, then a summary of missed goals (non-zero if any). QUICK=1: small
# sizes in a few minutes, outputs in benchmarks/results/quick/, goals printed but not enforced.
QUICK ?=
bench: $(VENV)/.stamp-dev
	$(BIN)/python benchmarks/run_all.py $(if $(filter-out 0 no false,$(QUICK)),--quick)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build dist
