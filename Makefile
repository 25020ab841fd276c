# homeworth: the two commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test venv services bench clean

$(STAMP): requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade "pip==26.3"
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt
	$(VENV)/bin/python -m pip check
	touch $(STAMP)

venv: $(STAMP)

## The main job end to end: replay King County sales, ingest through Airflow, retrain, summary.
demo: $(STAMP)
	source ./env.sh && python tools/demo.py

## The whole test suite (starts local PostgreSQL and Redis for the integration tests if they are down).
test: $(STAMP) services
	source ./env.sh && python -m pytest -q -p no:cacheprovider tests

services:
	@bash tools/services.sh

bench: $(STAMP)
	source ./env.sh && python -m benchmarks.run

clean:
	rm -rf .state .airflow demo-summary.json
