# The two set-up commands: `make run` (install, then serve on the embedded default)
# and `make test` (install with dev tools, then ruff, mypy and the whole pytest suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test test-kafka lint docs install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
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
	$(BIN)/pytest $(PYTEST_ARGS)

# The tests marked `kafka` (every integration test, and the end-to-end tests whose outcome
# depends on the broker) again, against a separate Apache Kafka 4.x that the servers under
# test do not own, as in production (app/embedded/kafka.py: JVM and jars through pip,
# started and stopped here).
test-kafka: $(VENV)/.installed-dev
	PYTHON=$(BIN)/python scripts/with-apache-kafka.sh $(BIN)/pytest -m kafka tests/integration tests/e2e $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
