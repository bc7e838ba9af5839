# The two set-up commands: `make run` (install, then serve on the embedded default)
# and `make test` (install with dev tools, then ruff, mypy and the whole pytest suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test test-dist test-kafka lint docs install install-dev lock dist clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Every install takes its versions from the lock files (made by `make lock`), so the
# development venv, CI and the artifact of `make dist` run the same versions.
$(VENV)/.installed: requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.installed-dev: requirements-dev.lock pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: $(VENV)/.installed
	$(BIN)/playerpulse serve

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The documentation site (docs/, mkdocs.yml), served with live reload; `make test` builds
# it with --strict (tests/unit/test_docs_site.py).
docs: $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -a 127.0.0.1:8001

test: lint
	$(BIN)/pytest -m "not dist" $(PYTEST_ARGS)

# The one-file executable (PyInstaller; docs/deploy.md): Python, the locked dependencies,
# the Java runtime, Kafka's jars and the PostgreSQL binaries, nothing fetched at run time.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
ARTIFACT := dist/playerpulse-$(VERSION)-linux-x86_64
$(ARTIFACT): requirements.lock pyproject.toml scripts/build-dist.sh $(shell find app packaging -type f -not -name '*.pyc')
	PYTHON=$(PYTHON) scripts/build-dist.sh

dist: $(ARTIFACT)

# Builds the executable (when the sources changed) and runs it as on a fresh VM, offline.
test-dist: $(VENV)/.installed-dev $(ARTIFACT)
	$(BIN)/pytest -m dist tests/e2e/test_dist.py $(PYTEST_ARGS)

# The tests marked `kafka` (every integration test, and the end-to-end tests whose outcome
# depends on the broker) again, against a separate Apache Kafka 4.x that the servers under
# test do not own, as in production (app/embedded/kafka.py: JVM and jars through pip,
# started and stopped here).
test-kafka: $(VENV)/.installed-dev
	PYTHON=$(BIN)/python scripts/with-apache-kafka.sh $(BIN)/pytest -m kafka tests/integration tests/e2e $(PYTEST_ARGS)

# Re-resolve both lock files after a change of pyproject.toml's dependencies (uv, from
# PyPI, into a tools venv of its own). The runtime lock is constrained by the dev lock, so
# the two agree on every package they share.
TOOLS := .venv-tools
LOCK_OPTS := --python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header --annotation-style line -q
lock:
	test -x $(TOOLS)/bin/uv || { $(PYTHON) -m venv $(TOOLS) && $(TOOLS)/bin/pip install --quiet uv; }
	$(TOOLS)/bin/uv pip compile pyproject.toml --extra dev $(LOCK_OPTS) -o requirements-dev.lock
	$(TOOLS)/bin/uv pip compile pyproject.toml -c requirements-dev.lock $(LOCK_OPTS) -o requirements.lock

clean:
	rm -rf $(VENV) $(TOOLS) var build dist .pytest_cache .mypy_cache .ruff_cache
