# Setia build scaffolding. Everything is installed into .venv from requirements/lock.txt.
SHELL := /bin/bash
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Paths to lint; directories that do not exist (yet) are skipped.
LINT_PATHS := $(wildcard src tests benchmarks scripts)

SETIA_DATABASE_URL      ?= sqlite:///demo.db
SETIA_TEST_DATABASE_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
DEMO_ARGS   ?=
PYTEST_ARGS ?=
# Test processes (pytest-xdist): each runs whole test files, so a file's fixtures and its
# one Redis database stay in one process. 0 runs everything in this process.
PYTEST_WORKERS ?= 2

.PHONY: venv browser demo test lint audit pytest bench lock clean

venv: $(STAMP)

# The browser tests drive Debian's chromium (Playwright never downloads a browser) and need
# a CJK font for the Traditional Chinese pages: installed with apt when missing.
browser:
	@if [ ! -x /usr/bin/chromium ] || ! fc-list 2>/dev/null | grep -qi "wenquanyi"; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	        chromium fonts-wqy-microhei; \
	fi

$(STAMP): requirements/lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements/lock.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

demo: $(STAMP)
	SETIA_DATABASE_URL='$(SETIA_DATABASE_URL)' $(BIN)/setia demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/lint-imports
	$(BIN)/mypy src
	$(MAKE) --no-print-directory audit

# Known vulnerabilities in the pinned dependencies, from PyPI's advisory data (OSV is not
# reachable from here; docs/decisions/dependency-audit.md).
audit: $(STAMP)
	$(BIN)/python scripts/pip_audit_pypi.py -r requirements/lock.txt --disable-pip \
	    --require-hashes --progress-spinner off

# pytest exit code 5 ("no tests collected") is turned into a failure.
pytest: $(STAMP) browser
	export SETIA_TEST_DATABASE_URL='$(SETIA_TEST_DATABASE_URL)'; \
	rc=0; $(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make: pytest collected no tests -- failing" >&2; exit 1; fi; \
	exit $$rc

test: lint
	$(MAKE) --no-print-directory pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/import_bench.py

# Regenerate the pinned lock file with uv (installed into a throwaway venv).
lock:
	set -euo pipefail; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" install -q uv; \
	"$$tmp/venv/bin/uv" pip compile pyproject.toml --extra dev \
	    --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	    --generate-hashes --custom-compile-command 'make lock' \
	    -o requirements/lock.txt

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	rm -f demo.db demo.db-wal demo.db-shm
	find . -name __pycache__ -type d -not -path './.git/*' -prune -exec rm -rf {} +
