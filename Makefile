# The order gateway's two everyday commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKERS ?= 2

.PHONY: run test bench lint install system-packages clean

## The virtualenv with the gateway, the sandboxes and the dev tools; rebuilt when setup.cfg changes.
$(VENV)/.installed: setup.cfg
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

## Start the sandboxes on 127.0.0.1:8001, the gateway on 127.0.0.1:8000 and its event worker (Ctrl-C stops all).
run: install
	WORKERS=$(WORKERS) VENV=$(VENV) scripts/run-local

## Debian packages the tests need (redis-server, chromium, chromium-driver), installed when missing.
system-packages:
	scripts/install-system-packages

## Lint, then every test: pytest (with schemathesis and headless Chromium, through Selenium for the console), then
## the Postman collection in newman.
test: install system-packages lint
	$(BIN)/pytest --cov --cov-report=term
	VENV=$(VENV) scripts/run-newman

## The benchmarks: translation against zeep, HTTP load (wrk) against passthrough and direct, memory, bulk,
## profiles; figures in bench/RESULTS.md. Installs wrk (and the test suite's Debian packages) when missing, and the
## bench extra (zeep, pyinstrument, psutil, matplotlib).
bench: install
	scripts/install-system-packages bench
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/run_all.py

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .coverage *.egg-info var node_modules
