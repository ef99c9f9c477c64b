# `make run` and `make test` set up .venv on first use, then run the default job / the tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run test test-all clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev,launchers]"

install: $(BIN)/python

run: $(BIN)/python
	$(BIN)/python main.py

test: $(BIN)/python
	$(BIN)/python -m pytest -m "not slow and not slurm"

# Everything, including the slow end-to-end tests (the Slurm ones need scripts/slurm_local.sh).
test-all: $(BIN)/python
	$(BIN)/python -m pytest

clean:
	rm -rf outputs multirun/*/ .pytest_cache
