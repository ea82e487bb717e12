# wsrelay developer targets (GNU make).
#
#   make run        serve conf/relay.ini in the foreground
#   make test       every gate: lint, typecheck, pytest
#   make check      the fast tier, under a minute: the tests that run in
#                   memory, no socket or process (pytest -m check; the
#                   selection is in tests/conftest.py); run it after each
#                   change, and `make test` before committing
#   make lint       ruff check + ruff format --check
#   make typecheck  mypy (settings in pyproject.toml)
#   make bench      the benchmark suite beside nginx and HAProxy (BENCHMARKS.md)
#   make conformance  the whole Autobahn|Testsuite through kosoku (docs/conformance.md)
#   make soak       ten minutes of traffic and killed backends, memory drawn
#                   in soak.png (SOAK_MINUTES=120 for the long one)
#   make changelog VERSION=x.y.z  news fragments into CHANGELOG.md (towncrier)
#   make hooks      install the pre-commit hooks (ruff, mypy) into .git
#   make clean      remove the virtualenv, build output and caches

PY ?= python3
VENV = .venv
BIN = $(VENV)/bin
PYTHON = $(BIN)/python

# Folders that exist among these are linted.
LINT_PATHS = $(wildcard wsrelay tests twisted bench examples)

# Build tools installed into the venv before the project: setup.cfg needs
# setuptools>=69, and tests/test_packaging.py builds the wheel without
# isolation, with the venv's own setuptools and wheel.
BUILD_TOOLS = pip 'setuptools>=69' wheel

.PHONY: all run test check lint typecheck pytest clean conformance soak changelog hooks

all: test

# Create the virtualenv. On a fresh Debian, `python3 -m venv` fails without
# ensurepip (package python3-venv) and leaves a half-made folder behind: as
# root, install the package once and try again; otherwise say what is missing.
$(PYTHON):
	@if ! $(PY) -m venv $(VENV); then \
	    rm -rf $(VENV); \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	        echo "venv failed: installing python3-venv" >&2; \
	        apt-get update && apt-get install -y python3-venv && \
	        $(PY) -m venv $(VENV); \
	    else \
	        echo "$(PY) -m venv failed: install python3-venv (as root) and retry" >&2; \
	        exit 1; \
	    fi; \
	fi

# The project is installed editable in setuptools' *compat* mode, which puts
# the repository itself on sys.path through a .pth file. twistd finds its
# subcommands by scanning every twisted/plugins/ folder on sys.path, so it
# then sees this repository's twisted/plugins/wsrelay_plugin.py. The default
# (strict) editable mode maps only the listed modules through an import hook
# and hides that dropin folder from twistd.
#
# The stamps depend on the packaging files, so a repeated `make test` does
# not reinstall unless they changed.
#
# `make run` also installs RUN_TOOLS: websockets gives the interactive
# client of README's "Try it" (`python -m websockets URL`). It is not a
# dependency of wsrelay (the relay never imports it), so it is not in
# setup.cfg's install_requires; the test extras have it too. The Makefile
# is a prerequisite so that a checkout made before this line gets it.
RUN_TOOLS = websockets

$(VENV)/.stamp-run: setup.cfg pyproject.toml Makefile | $(PYTHON)
	$(PYTHON) -m pip install --upgrade $(BUILD_TOOLS)
	$(PYTHON) -m pip install -e . --config-settings editable_mode=compat
	$(PYTHON) -m pip install $(RUN_TOOLS)
	touch $@

$(VENV)/.stamp-test: setup.cfg pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install --upgrade $(BUILD_TOOLS)
	$(PYTHON) -m pip install -e '.[test]' --config-settings editable_mode=compat
	touch $@ $(VENV)/.stamp-run

run: $(VENV)/.stamp-run
	@echo "wsrelay: clients on ws://127.0.0.1:8080/, the dashboard on http://127.0.0.1:8081/"
	$(BIN)/twistd --pidfile= -n wsrelay --config conf/relay.ini

# Every gate runs even when an earlier one fails; the target fails if any did.
# Debian packages the tests use, installed once (through sudo unless root):
# chromium renders the admin dashboard in its test; redis-server is the
# real Redis the redis source's tests start (each its own, on its own port:
# never the system service the package may start on 6379). A test whose
# program cannot be had skips with the reason. TEST_PROGRAMS are the
# programs the packages give, checked before installing.
TEST_PACKAGES = chromium redis-server
TEST_PROGRAMS = chromium redis-server

$(VENV)/.stamp-packages: Makefile | $(PYTHON)
	@missing=; for p in $(TEST_PROGRAMS); do \
	    command -v $$p >/dev/null 2>&1 || missing=yes; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "installing $(TEST_PACKAGES) (Debian packages) for the tests" >&2; \
	    { $(SUDO) apt-get update && \
	      $(SUDO) apt-get install -y --no-install-recommends $(TEST_PACKAGES); } || \
	    echo "could not install $(TEST_PACKAGES); the tests that need it skip" >&2; \
	fi
	touch $@

test: $(VENV)/.stamp-test $(VENV)/.stamp-packages
	@status=0; \
	$(MAKE) --no-print-directory lint || status=1; \
	$(MAKE) --no-print-directory typecheck || status=1; \
	$(MAKE) --no-print-directory pytest || status=1; \
	if [ $$status -ne 0 ]; then echo "make test: a gate failed" >&2; fi; \
	exit $$status

lint: $(VENV)/.stamp-test
	@status=0; \
	$(BIN)/ruff check $(LINT_PATHS) || status=1; \
	$(BIN)/ruff format --check $(LINT_PATHS) || status=1; \
	exit $$status

typecheck: $(VENV)/.stamp-test
	$(BIN)/mypy

pytest: $(VENV)/.stamp-test
	$(PYTHON) -m pytest -p no:cacheprovider

# The fast tier: unit and in-memory tests (iosim, Clock), marked `check`
# by tests/conftest.py; `make test` runs them with everything else.
check: $(VENV)/.stamp-test
	$(PYTHON) -m pytest -p no:cacheprovider -q -m check

# The benchmark suite of bench/ (about 11 minutes; BENCH_ARGS=--quick for
# about 2, --help for the rest). It needs Debian's nginx and haproxy,
# installed here when missing (through sudo unless root), and picows and
# uvloop in the venv for its load generators. The stamp keeps a repeated
# run from reinstalling them.
BENCH_ARGS ?=
SUDO = $(if $(filter 0,$(shell id -u)),,sudo)
BENCH_PROGRAMS = PATH="$$PATH:/usr/sbin:/sbin" command -v

$(VENV)/.stamp-bench: $(VENV)/.stamp-run
	$(PYTHON) -m pip install picows uvloop
	touch $@

.PHONY: bench
bench: $(VENV)/.stamp-bench
	@if ! $(BENCH_PROGRAMS) nginx >/dev/null || \
	    ! $(BENCH_PROGRAMS) haproxy >/dev/null; then \
	    echo "installing nginx and haproxy (Debian packages)" >&2; \
	    $(SUDO) apt-get update && $(SUDO) apt-get install -y nginx haproxy; \
	fi
	$(PYTHON) -m bench $(BENCH_ARGS)

# A release's notes: the fragments of newsfragments/ written into
# CHANGELOG.md and removed (CONTRIBUTING.md says how to write one).
changelog: $(VENV)/.stamp-test
	@if [ -z "$(VERSION)" ]; then echo "usage: make changelog VERSION=x.y.z" >&2; exit 2; fi
	$(BIN)/towncrier build --yes --version $(VERSION)

# ruff and mypy before each commit, from .venv (.pre-commit-config.yaml).
hooks: $(VENV)/.stamp-test
	$(BIN)/pre-commit install

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache \
	    .pytest_cache .hypothesis _trial_temp* twistd.pid twistd.log \
	    soak.log soak.png
	rm -f twisted/plugins/dropin.cache
	find . -path ./.git -prune -o -name __pycache__ -type d -prune \
	    -exec rm -rf {} +

# The whole Autobahn|Testsuite, both directions, every data path (about 35
# minutes); `make test` runs a fast subset.
conformance: $(VENV)/.stamp-test
	$(PYTHON) -m bench.conformance --full --together -p 2

# Mixed traffic with backends killed on a schedule (SOAK_MINUTES, 10 by
# default; docs/reliability.md), its table kept in soak.log, then the
# relay's memory drawn in soak.png with the slope of the last hour
# (bench/soakplot.py). matplotlib draws it: a test extra (its test draws a
# PNG), never a dependency of the relay.
SOAK_MINUTES ?= 10

soak: $(VENV)/.stamp-test
	@status=0; \
	$(PYTHON) -m bench.soak --minutes $(SOAK_MINUTES) --log soak.log || status=$$?; \
	$(PYTHON) -m bench.soakplot soak.log --png soak.png || status=1; \
	exit $$status
