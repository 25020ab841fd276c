# homeworth: the two commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast faults lint venv services bench clean

# The pinned lock, then the project itself in editable mode (the `homeworth` command; no PYTHONPATH).
$(STAMP): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade "pip==26.3"
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt
	$(VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(VENV)/bin/python -m pip check
	touch $(STAMP)

venv: $(STAMP)

## The main job end to end: replay a market's sales (DATASET, default king_county), ingest through Airflow,
## retrain, summary. `make demo DATASET=melbourne` runs it on the Melbourne sales (docs/datasets.md).
DATASET ?= king_county
demo: $(STAMP)
	source ./env.sh && python -m tools.demo --dataset $(DATASET)

## The whole test suite, every tier (starts local PostgreSQL and Redis for the integration tier if they are down).
test: $(STAMP) services
	source ./env.sh && python -m pytest -q tests

## Unit and DAG tiers only: no training, no scheduler, no services (under 2 minutes).
test-fast: $(STAMP)
	source ./env.sh && python -m pytest -q -m "unit or dag" tests

## The fault-injection suite (tests/faults): SIGKILLs task processes under the real scheduler, checks the
## invariants, ends with "faults injected N, survived N, invariant checks passed N" (docs/reliability.md).
faults: $(STAMP)
	source ./env.sh && python -m pytest -q -m faults tests/faults

lint: $(STAMP)
	source ./env.sh && ruff check .

services:
	@bash tools/services.sh

## A quick benchmark (small size, scratch output); `python -m benchmarks.run --write-docs` updates docs/.
bench: $(STAMP)
	source ./env.sh && python -m benchmarks.run --quick

clean:
	rm -rf .state .airflow demo-summary.json
