# Every target sets itself up: a .venv with the project and its dev extras, and
# (when no Docker engine answers) the broker binaries and toxiproxy-server.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REPORT_DIR ?= reports/conformance
# pytest-xdist workers of `make conformance` (each starts its own brokers); 1 runs in-process.
# The contract waits on brokers and timers far more than it computes (about a quarter of
# 2 cores busy with 2 workers), so 4 workers suit 2 cores, as for `make test`
CONFORMANCE_WORKERS ?= 4
# pytest-xdist workers of `make test`, whole files per worker (a file's module fixtures run
# once); most tests wait on brokers and timers, so 4 workers suit 2 cores; 1 runs in-process
TEST_WORKERS ?= 4
PYTEST_ARGS ?=
# The engine `make docker-engine` starts: the standard socket by default (every Docker client
# finds it); set another path for a private engine and export DOCKER_HOST=unix://<path>.
DOCKER_ENGINE_SOCKET ?= /var/run/docker.sock
ENGINE := HARNESS_DOCKER_SOCKET=$(DOCKER_ENGINE_SOCKET) bash docker/engine.sh

.PHONY: setup venv services conformance conformance-all faults test lint format clean \
	docker-engine docker-engine-stop docker-engine-purge docker-images mutation mutation-summary bench

setup: venv services

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

services:
	bash docker/install-local-services.sh

## The main job: the conformance contract against every built-in adapter, on
## $(CONFORMANCE_WORKERS) workers (most checks wait on brokers and timers: on 2 cores,
## 2026-12-07, 4 workers took 108-119 s, 2 workers 165 s).
conformance: setup
	$(VENV)/bin/conformance run --suite contract --report-dir $(REPORT_DIR) \
	  $(if $(filter-out 1,$(CONFORMANCE_WORKERS)),-n $(CONFORMANCE_WORKERS))

conformance-all: setup
	$(VENV)/bin/conformance run --suite all --report-dir $(REPORT_DIR)

faults: setup
	$(VENV)/bin/conformance run --suite faults --report-dir $(REPORT_DIR)

## All tests, with every broker required (a missing one fails the run).
test: setup
	$(PY) -m pytest --require-services $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) \
	  --dist loadfile --no-loadscope-reorder) $(PYTEST_ARGS)

## Benchmarks (benchmarks/bench.py): our adapters against the raw clients and FastStream in
## one process, interleaved in rounds; writes benchmarks/results.json and results.md.
## BENCH_ARGS="--rounds 1 --contract none" for a quick look.
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_ARGS ?=
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

bench: setup $(BENCH_STAMP)
	$(PY) benchmarks/bench.py $(BENCH_ARGS)

## Mutation testing (tools/mutation/run.py, mutmut): the contract checks against the in-memory
## adapters kill mutants of the adapters and their SPI bases; cached in ./mutants, summary in
## reports/mutation/summary.md. MUTATION_MODULES="memory.stores spi.store_base" narrows it.
MUTATION_MODULES ?=
MUTATION_WORKERS ?= 2
mutation: venv
	$(PY) tools/mutation/run.py run $(MUTATION_MODULES) --workers $(MUTATION_WORKERS)

mutation-summary: venv
	$(PY) tools/mutation/run.py summary $(MUTATION_MODULES)

## A Docker engine here (docker.io, debootstrap, dockerd without NAT) and the service
## images built from source; the docker provider is then auto-selected.
docker-engine: venv services
	$(ENGINE) install
	$(ENGINE) start
	$(MAKE) docker-images

docker-images: venv
	DOCKER_HOST=unix://$(DOCKER_ENGINE_SOCKET) $(VENV)/bin/harness images build
	DOCKER_HOST=unix://$(DOCKER_ENGINE_SOCKET) $(VENV)/bin/harness images build service

docker-engine-stop:
	$(ENGINE) stop

## Stop a private engine and delete its data (images, build cache): the next
## `make docker-engine` on that socket builds every image from nothing.
docker-engine-purge:
	$(ENGINE) purge

SHELL_SCRIPTS := docker/install-local-services.sh docker/engine.sh .ci/run .ci/docker-part .ci/steps.sh

lint: venv
	$(VENV)/bin/ruff check .
	@command -v shellcheck >/dev/null || { echo "make lint: shellcheck is not installed (apt-get install shellcheck)" >&2; exit 1; }
	shellcheck -x $(SHELL_SCRIPTS)

format: venv
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) reports mutants .pytest_cache .ruff_cache .hypothesis
