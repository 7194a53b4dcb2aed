# The order gateway's two everyday commands: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKERS ?= 2
# What the virtualenv holds: one lock file of requirements/ (exact versions and hashes, made by scripts/lock from
# setup.cfg's ranges). `make bench` builds a virtualenv of its own from requirements/bench.txt.
LOCK ?= requirements/dev.txt
BENCH_VENV ?= .venv-bench

.PHONY: run test bench lint docs install lock upgrade system-packages clean

## The virtualenv holds exactly build.txt and $(LOCK) (pip freeze equals them, checked) and the project itself,
## installed without its dependencies; it is made anew whenever a lock changes, so nothing unlocked stays in it.
$(VENV)/.installed: $(LOCK) requirements/build.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/build.txt
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python scripts/lock --check-installed $(LOCK)
	echo $(LOCK) > $@

install: $(VENV)/.installed

## After editing setup.cfg's requirements: relock, keeping every locked version its ranges still allow.
lock: install
	$(BIN)/python scripts/lock

## The newest versions setup.cfg's ranges allow (it prints what changed, for CHANGES.md); then `make test` decides.
upgrade: install
	$(BIN)/python scripts/lock --upgrade

## Check the configuration (GATEWAY_CONFIG, by default config/sandbox.toml as scripts/run-local reads it) and stop on
## any problem; then start the sandboxes on 127.0.0.1:8001, the gateway on 127.0.0.1:8000 and its event worker.
## Ctrl-C or SIGTERM to make stops all three: the last line execs scripts/run-local, so make's forwarded SIGTERM
## reaches it.
run: install
	GATEWAY_CONFIG="$${GATEWAY_CONFIG:-config/sandbox.toml}" $(BIN)/python -m gateway check
	exec env WORKERS=$(WORKERS) VENV=$(VENV) scripts/run-local

## Debian packages the tests need (redis-server, chromium, chromium-driver), installed when missing.
system-packages:
	scripts/install-system-packages

## Lint, then every test: pytest (with schemathesis and headless Chromium, through Selenium for the console), then
## the Postman collection in newman. pytest runs in TEST_WORKERS parallel processes (pytest-xdist): most tests wait
## on servers and timeouts rather than on the CPU, so even 2 cores keep more than 2 workers busy (`TEST_WORKERS=0`
## runs them in this one process). Tests marked xdist_group stay in one worker together (--dist loadgroup).
TEST_WORKERS ?= 4
test: install system-packages lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup --cov --cov-report=term
	VENV=$(VENV) scripts/run-newman

## The benchmarks: translation against zeep, HTTP load (wrk) against passthrough and direct, memory, features,
## webhook intake, hostile inputs; figures in bench/RESULTS.md. Installs wrk (and the test suite's Debian packages)
## when missing, and the bench extra (zeep, py-spy, psutil, matplotlib), in a virtualenv of its own.
bench:
	scripts/install-system-packages bench
	$(MAKE) install VENV=$(BENCH_VENV) LOCK=requirements/bench.txt
	$(BENCH_VENV)/bin/python bench/run_all.py

## docs/configuration.md from the settings' declarations (gateway/config.py, gateway/backends/*/backend.py); a test
## fails while the committed file differs from what this writes.
docs: install
	$(BIN)/python -m gateway configuration-reference > docs/configuration.md

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .ruff_cache .coverage *.egg-info var node_modules
