# The two commands of the README: `make run` (the whole pipeline on the local stack, UI on
# localhost:3000) and `make test`. Both install what they need first; every step is idempotent.
# Python packages come from uv.lock (exactly what CI tested); see the README for updating it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
UV_VENV := .venv-uv/$(UV_VERSION)
UV := $(UV_VENV)/bin/uv
# A changed lock or pyproject.toml reinstalls (and `uv sync --locked` refuses a pyproject.toml
# changed without relocking).
STAMP := $(VENV)/.installed-$(shell cat uv.lock pyproject.toml | md5sum | cut -c1-8)
NODE_STAMP := templates/node_modules/.installed-$(shell cat templates/package-lock.json 2>/dev/null | md5sum | cut -c1-8)
TOOLS_STAMP := tools/node_modules/.installed-$(shell cat tools/package-lock.json | md5sum | cut -c1-8)
LINT_PATHS := panel_pipeline panel_pipeline_tests benchmarks

.PHONY: install lock run test lint bench stop system-packages

install: $(STAMP) $(NODE_STAMP) $(TOOLS_STAMP)

# uv itself, pinned, in a venv of its own (the machine has no uv).
$(UV):
	$(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/pip install --quiet uv==$(UV_VERSION)

# uv compiles bytecode only when asked, and PYTHONDONTWRITEBYTECODE is set here, so imports never write
# it: without it a run process imports the code location in 6 s instead of 2. The install checks it did.
CHECK_BYTECODE := import importlib.util, pathlib, sys, sysconfig; \
	init = pathlib.Path(sysconfig.get_path('purelib'), 'dagster', '__init__.py'); \
	sys.exit(None if pathlib.Path(importlib.util.cache_from_source(str(init))).is_file() else \
	'make install: no .pyc for dagster in ' + str(init.parent) + ': uv sync --compile-bytecode compiled nothing')

$(STAMP): uv.lock pyproject.toml | $(UV)
	UV_PYTHON_DOWNLOADS=never $(UV) sync --locked --compile-bytecode --extra dev --python $(PYTHON)
	$(BIN)/python -c "$(CHECK_BYTECODE)"
	rm -f $(VENV)/.installed-* && touch $@

# Re-resolves uv.lock after pyproject.toml's dependencies changed; LOCK_ARGS="--upgrade-package NAME"
# (or "--upgrade") moves versions on.
lock: | $(UV)
	UV_PYTHON_DOWNLOADS=never $(UV) lock --python $(PYTHON) $(LOCK_ARGS)

$(NODE_STAMP):
	@if [ -f templates/package-lock.json ]; then \
		cd templates && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error && rm -f node_modules/.installed-* && touch ../$@; \
	fi

# mongosh, for the tests that run the queries the docs give operators.
$(TOOLS_STAMP): tools/package-lock.json
	cd tools && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error && rm -f node_modules/.installed-* && touch ../$@

# Debian packages the tests use: PostgreSQL (the production instance test), Chromium and its
# driver (the UI test).
SYSTEM_PACKAGES := postgresql chromium chromium-driver
system-packages:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v chromedriver >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	fi

run: install
	$(BIN)/python -m panel_pipeline.local dev

stop:
	$(BIN)/python -m panel_pipeline.local stack down

# The lint and type gate first (seconds), then the suite.
# Two pytest sessions side by side on the 2 cores: the tests marked `stack` (a local stack or a daemon
# each, run one after another as ever) and the rest, whose output is printed when both are done.
test: lint system-packages
	@$(BIN)/python -m pytest -m "not stack" -p no:cacheprovider > .pytest-units.log 2>&1 & units=$$!; \
	$(BIN)/python -m pytest -m stack; stack=$$?; \
	wait $$units; unit=$$?; cat .pytest-units.log; \
	echo "stack tests: exit $$stack; other tests: exit $$unit"; test $$stack -eq 0 -a $$unit -eq 0

# Every check runs, so one run lists all that fails.
lint: install
	@status=0; \
	$(BIN)/ruff check $(LINT_PATHS) || status=1; \
	$(BIN)/ruff format --check $(LINT_PATHS) || status=1; \
	$(BIN)/mypy panel_pipeline || status=1; \
	exit $$status

bench: install
	$(BIN)/python -m benchmarks
