# Every target sets itself up: a .venv with the project and its dev extras, and
# (when no Docker engine answers) the broker binaries and toxiproxy-server.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REPORT_DIR ?= reports/conformance
PYTEST_ARGS ?=

.PHONY: setup venv services conformance conformance-all faults test lint format clean

setup: venv services

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

services:
	bash docker/install-local-services.sh

## The main job: the conformance contract against every built-in adapter.
conformance: setup
	$(VENV)/bin/conformance run --suite contract --report-dir $(REPORT_DIR)

conformance-all: setup
	$(VENV)/bin/conformance run --suite all --report-dir $(REPORT_DIR)

faults: setup
	$(VENV)/bin/conformance run --suite faults --report-dir $(REPORT_DIR)

## All tests, with every broker required (a missing one fails the run).
test: setup
	$(PY) -m pytest --require-services $(PYTEST_ARGS)

SHELL_SCRIPTS := docker/install-local-services.sh .ci/run

lint: venv
	$(VENV)/bin/ruff check .
	@command -v shellcheck >/dev/null || { echo "make lint: shellcheck is not installed (apt-get install shellcheck)" >&2; exit 1; }
	shellcheck $(SHELL_SCRIPTS)

format: venv
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) reports .pytest_cache .ruff_cache .hypothesis
