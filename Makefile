# make quick: set up .venv on first use and train the quick preset; make test: set up and run the tests.
# Only Python 3.10+ (with venv) and make are needed; everything else comes from setup.cfg.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup quick test

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

quick: $(STAMP)
	$(BIN)/python -m apollogan.train --config configs/quick.yaml

test: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest -q
