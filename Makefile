# AEAMC — developer entry points. `make test` and `make demo` set up everything they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PY_STAMP := $(VENV)/.installed
PY_INPUTS := requirements/constraints.txt requirements/dev.txt \
	shared/pyproject.toml agent/pyproject.toml coordinator/pyproject.toml
NODE_STAMP := node_modules/.installed
DEB_STAMP := $(VENV)/.debian-packages
# Test processes: most tests wait on real coordinators, agents, anvil and Chromium rather
# than compute, so more workers than cores keep both cores busy.
TEST_WORKERS ?= 3

.PHONY: help deps test lint typecheck format slither demo bench lock clean

help:
	@echo "make test    install what is missing, then lint, type-check and run every test with coverage"
	@echo "make demo    run a local network (chain, coordinator, agents) and show the result"
	@echo "             options: make demo ARGS='--agents 8 --tasks 30' (see aeamc devnet --help)"
	@echo "make bench   run the benchmarks; results in bench/results/ and docs/performance.md"
	@echo "make lint    ruff check and format check"
	@echo "make typecheck  mypy: strict for the protocol core and the coordinator's services, checked elsewhere"
	@echo "make format  apply ruff formatting"
	@echo "make slither  static analysis of contracts/*.sol (also part of make test)"
	@echo "make lock    re-resolve requirements/constraints.txt from requirements/dev.txt"
	@echo "make packages  build dist/aeamc-agent_*.deb and dist/microblock-coordinator_*.deb"
	@echo "make release-wheels  build dist/release/*.whl, an agent release for fleet updates"
	@echo "make clean   remove the virtualenv, node_modules and caches"

$(PY_STAMP): $(PY_INPUTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c requirements/constraints.txt -r requirements/dev.txt
	$(BIN)/python -m pip install -q --no-build-isolation --no-deps \
		-e shared -e agent -e coordinator
	@touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(DEB_STAMP): requirements/debian.txt | $(PY_STAMP)
	tools/ensure-debian-packages requirements/debian.txt
	@touch $@

deps: $(PY_STAMP) $(NODE_STAMP) $(DEB_STAMP)

lint: $(PY_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Configured in pyproject.toml [tool.mypy]; incremental through .mypy_cache.
typecheck: $(PY_STAMP)
	$(BIN)/mypy

format: $(PY_STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Offline, with the pinned npm solc; see contracts/README.md.
slither: $(PY_STAMP) $(NODE_STAMP)
	$(BIN)/python tools/run_slither.py

test: deps lint typecheck
	rm -f .coverage .coverage.*
	@# Tests start hundreds of coordinator and agent processes: compiled once here, the
	@# sources are not recompiled by each of them (as when PYTHONDONTWRITEBYTECODE is set).
	$(BIN)/python -m compileall -q shared/src agent/src coordinator/src
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope \
		--cov --cov-report=term --cov-fail-under=80

demo: deps
	$(BIN)/aeamc devnet demo $(ARGS)

# Debian packages: a self-contained venv under /opt each (docs/packaging.md).
.PHONY: packages
packages: $(PY_STAMP)
	$(BIN)/python packaging/build.py --out dist

# The wheels of an agent release, for `aeamc-coordinator release publish` (docs/updates.md).
.PHONY: release-wheels
release-wheels: $(PY_STAMP)
	$(BIN)/python packaging/build.py --release --out dist/release

bench: deps
	$(BIN)/python -m bench.run $(ARGS)

lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q -r requirements/dev.txt
	{ echo "# Pinned versions tested together: a fresh machine installs exactly these."; \
	  echo "# Regenerate with: make lock"; \
	  .lock-venv/bin/python -m pip freeze --all | grep -v '^pip=='; } > requirements/constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache .mypy_cache .hypothesis .coverage \
		.coverage.* htmlcov
