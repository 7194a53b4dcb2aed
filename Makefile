# The order gateway's two everyday commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKERS ?= 2

.PHONY: run test lint install clean

## The virtualenv with the gateway, the sandboxes and the dev tools; rebuilt when setup.cfg changes.
$(VENV)/.installed: setup.cfg
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

## Start the sandbox backends on 127.0.0.1:8001 and the gateway on 127.0.0.1:8000 (Ctrl-C stops both).
run: install
	WORKERS=$(WORKERS) VENV=$(VENV) scripts/run-local

## Lint, then every test.
test: install lint
	$(BIN)/pytest --cov --cov-report=term

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .coverage *.egg-info
