# imagepipe: `make run` starts the pipeline locally, `make test` runs every test.
# Each target installs what it needs on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.imagepipe-installed
CHROMIUM := /usr/bin/chromium

# uv installs from the lock; it lives in a venv of its own, which `uv sync` leaves alone.
UV_VERSION := 0.13.9
UV := $(VENV)/uv/bin/uv
# The project's venv is .venv, on the Python make was given; uv never downloads a Python.
UV_ENV := UV_PROJECT_ENVIRONMENT=$(VENV) UV_PYTHON_DOWNLOADS=never

CHECKOV := $(VENV)/checkov/bin/checkov
CHECKOV_VERSION := 3.3.30

.PHONY: setup lock test-tools browser shellcheck run run-fresh test test-fast lint format deploy destroy \
	clean bench bench-table

setup: $(STAMP)

# What only the tests need: Chromium, checkov and shellcheck. `make run` does without them.
test-tools: browser $(CHECKOV) shellcheck

# Only `make test` needs it: the browser tests drive Debian's Chromium through
# Playwright's driver; Playwright never downloads a browser of its own. Skipped when
# Chromium is already there.
browser: $(CHROMIUM)

$(CHROMIUM):
	@echo "installing Debian's chromium for the browser tests"
	@if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
	elif command -v sudo >/dev/null; then sudo apt-get update -q && sudo apt-get install -y -q chromium; \
	else echo "run as root: apt-get install chromium" >&2; exit 1; fi

# Installs exactly what uv.lock pins (the versions the tests passed with): uv, in a venv of its
# own, syncs .venv to the lock with the test extra (every part and the test tools). Reinstalls
# only when the dependencies or the lock change; the editable install picks up code edits.
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV_ENV) $(UV) sync --quiet --frozen --extra test --python $(PY)
	@touch $(STAMP)

# After editing the dependencies in pyproject.toml: resolve again, within what the lock pins
# unless told (make lock LOCK_ARGS=--upgrade, or --upgrade-package NAME), then commit uv.lock.
lock: $(UV)
	$(UV_ENV) $(UV) lock $(LOCK_ARGS)

$(UV): | $(PY)
	$(PYTHON) -m venv $(VENV)/uv
	$(VENV)/uv/bin/python -m pip install -q uv==$(UV_VERSION)

$(PY):
	$(PYTHON) -m venv $(VENV) || { \
		echo "python3 -m venv failed; installing Debian's python3-venv"; \
		apt-get update -q && apt-get install -y -q python3-venv && $(PYTHON) -m venv $(VENV); }

# checkov (the template's security scan in the tests) pins boto3 and other libraries older than
# the project's, so it lives in a virtual environment of its own.
$(CHECKOV): | $(STAMP)
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/python -m pip install -q --upgrade pip
	$(VENV)/checkov/bin/python -m pip install -q checkov==$(CHECKOV_VERSION)

# shellcheck lints the instances' user data in the tests: a small Debian package, installed
# where apt-get is usable; without it that part of the test is skipped.
shellcheck:
	@command -v shellcheck >/dev/null || ! command -v apt-get >/dev/null || \
		apt-get install -y -q shellcheck >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q shellcheck >/dev/null 2>&1; } || \
		echo "shellcheck could not be installed; the tests will skip it"

# The bucket, queue, table and users stay across runs (docs/local.md); run-fresh starts empty.
run: setup
	$(VENV)/bin/imagepipe run

run-fresh: setup
	$(VENV)/bin/imagepipe run --fresh

# Test processes (pytest-xdist): most tests wait on servers and the model, so three share the
# CI machine's two cores well. Each file's tests run in one process, in order (some build on
# the state an earlier one left); every server a test starts listens on a free port.
TEST_PROCESSES ?= 3

test: setup test-tools
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -n $(TEST_PROCESSES) --dist loadfile

# Skips the tests marked slow (real model, real servers): for a quick edit loop only.
test-fast: setup test-tools
	$(PY) -m pytest -m "not slow"

# Throughput against the processor's own stages, in one run; appends a JSON line to
# bench-results.jsonl. BENCH_ARGS=--help lists the knobs.
bench: setup
	$(PY) -m benchmarks.bench $(BENCH_ARGS)

# The local endpoint at 1,000 and 20,000 stored results: processor rate and gallery page time.
bench-table: setup
	$(PY) -m benchmarks.table_size $(BENCH_ARGS)

# ruff, and the import contracts in pyproject.toml: no upward import, no service importing another.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

format: setup
	$(VENV)/bin/ruff format .

# The whole pipeline on AWS as one CloudFormation stack: make deploy STACK=name
# [PARAMS="-p UseSpot=true -p ProcessorMaxSize=8"]. Credentials and region the usual boto3 way.
deploy: $(STAMP)
	@test -n "$(STACK)" || { echo "usage: make deploy STACK=name [PARAMS='-p Key=Value ...']" >&2; exit 2; }
	$(VENV)/bin/imagepipe deploy --stack "$(STACK)" $(PARAMS)

destroy: $(STAMP)
	@test -n "$(STACK)" || { echo "usage: make destroy STACK=name" >&2; exit 2; }
	$(VENV)/bin/imagepipe destroy --stack "$(STACK)"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info test-artifacts
