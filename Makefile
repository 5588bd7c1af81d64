# The two commands of the README: `make run` (the whole pipeline on the local stack, UI on
# localhost:3000) and `make test`. Both install what they need first; every step is idempotent.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-8)
NODE_STAMP := templates/node_modules/.installed-$(shell cat templates/package-lock.json 2>/dev/null | md5sum | cut -c1-8)

.PHONY: install run test bench stop system-packages

install: $(STAMP) $(NODE_STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

$(NODE_STAMP):
	@if [ -f templates/package-lock.json ]; then \
		cd templates && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error && rm -f node_modules/.installed-* && touch ../$@; \
	fi

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

test: install system-packages
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python -m benchmarks
