# imagepipe: `make run` starts the pipeline locally, `make test` runs every test.
# Each target installs what it needs on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.imagepipe-installed
CHROMIUM := /usr/bin/chromium

.PHONY: setup browser run test test-fast lint format clean

setup: $(STAMP)

# Only `make test` needs it: the browser tests drive Debian's Chromium through
# Playwright's driver; Playwright never downloads a browser of its own. Skipped when
# Chromium is already there.
browser: $(CHROMIUM)

$(CHROMIUM):
	@echo "installing Debian's chromium for the browser tests"
	@if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
	elif command -v sudo >/dev/null; then sudo apt-get update -q && sudo apt-get install -y -q chromium; \
	else echo "run as root: apt-get install chromium" >&2; exit 1; fi

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

test: setup browser
	$(PY) -m pytest

# Skips the tests marked slow (real model, real servers): for a quick edit loop only.
test-fast: setup
	$(PY) -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info test-artifacts
