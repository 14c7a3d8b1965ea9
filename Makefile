# imagepipe: `make run` starts the pipeline locally, `make test` runs every test.
# Each target installs what it needs on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.imagepipe-installed

.PHONY: setup run test test-fast lint format clean bench

setup: $(STAMP)

# Reinstalls only when the dependencies change; an editable install picks up code edits.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { \
		echo "python3 -m venv failed; installing Debian's python3-venv"; \
		apt-get update -q && apt-get install -y -q python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

run: setup
	$(VENV)/bin/imagepipe run

test: setup
	$(PY) -m pytest

# Skips the tests marked slow (real model, real servers): for a quick edit loop only.
test-fast: setup
	$(PY) -m pytest -m "not slow"

# Throughput against the processor's own stages, in one run; appends a JSON line to
# bench-results.jsonl. BENCH_ARGS=--help lists the knobs.
bench: setup
	$(PY) -m processor.bench $(BENCH_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
