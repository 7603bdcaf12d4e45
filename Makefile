# Hypertuna Gateway. `make run` and `make test` install whatever is missing first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BRIDGE_STAMP := bridge/node_modules/.installed
INTEROP_STAMP := interop/node_modules/.installed
CLIENTS_STAMP := clients/node_modules/.installed
PYTEST_ARGS ?=

.PHONY: install install-interop install-clients run logs demo-worker-stop demo-worker-start test test-python test-bridge lint format bench clean

install: $(STAMP) $(if $(wildcard bridge/package.json),$(BRIDGE_STAMP))

# The interop suite's worker runtime (test-only; ~400 MB): installed by `make test`, not by `make run`.
install-interop: $(INTEROP_STAMP)

# The Nostr client kits the printed relay URL is checked with (test-only): installed by `make test`.
install-clients: $(CLIENTS_STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $@

$(BRIDGE_STAMP): bridge/package.json bridge/package-lock.json $(wildcard bridge/blind/package-lock.json)
	cd bridge && npm ci --no-audit --no-fund
	@touch $@

$(INTEROP_STAMP): interop/package.json interop/package-lock.json
	cd interop && npm ci --no-audit --no-fund
	@touch $@

$(CLIENTS_STAMP): clients/package.json clients/package-lock.json
	cd clients && npm ci --no-audit --no-fund
	@touch $@

run: install
	$(PY) -m hypertuna.supervisor

# Every process of `make run` logs to $(VAR_DIR)/log/<process>.log; this follows them all.
VAR_DIR ?= $(or $(HYPERTUNA_VAR_DIR),var)
logs:
	@ls $(VAR_DIR)/log/*.log >/dev/null 2>&1 || { echo "no logs in $(VAR_DIR)/log yet: start the gateway with make run"; exit 1; }
	tail -n 20 -F $(VAR_DIR)/log/*.log

# Stop or start only the demo worker of a running `make run` (see the offline fallback, then bring it back).
demo-worker-stop:
	@$(PY) -m hypertuna.console stop demo-worker --var-dir $(VAR_DIR)

demo-worker-start:
	@$(PY) -m hypertuna.console start demo-worker --var-dir $(VAR_DIR)

test: install install-interop install-clients
	$(PY) manage.py check --fail-level ERROR
	$(PY) manage.py makemigrations --check --dry-run
	$(MAKE) --no-print-directory test-python
	$(if $(wildcard bridge/package.json),$(MAKE) --no-print-directory test-bridge)

test-python:
	$(PY) -m pytest $(PYTEST_ARGS)

test-bridge:
	cd bridge && npm test

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy hypertuna relays replicas escrow

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): requirements-bench.txt $(STAMP)
	$(PY) -m pip install --quiet -r requirements-bench.txt
	@touch $@

bench: install install-interop $(BENCH_STAMP)
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var bridge/node_modules interop/node_modules clients/node_modules .pytest_cache .mypy_cache .ruff_cache
