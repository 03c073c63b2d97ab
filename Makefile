# tessera developer commands. `make` (or `make help`) lists them.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

VENV := .venv
PY := $(VENV)/bin/python

# Overridable on the command line, e.g. `make test PYTEST_ARGS='-k jwks -x'`.
PYTEST_ARGS ?=
# Test processes (pytest-xdist; one test file stays on one process). 0: one process, no xdist.
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --dist loadfile
BENCH_ARGS ?=
# Stack options: empty means "what runs now, else the launcher's default"
# (row 4, 3 replicas, https port 8443, auth port 8080, ES256).
PORT ?=
HTTPS_PORT ?=
ALG ?=
ROW ?=
POLICY ?=
REPLICAS ?=
ROWS ?=
ID ?=
NAME ?=
PURGE ?=
HOW ?=
REDIS ?=
FAULTS ?=
MONITORING ?=

STACK := $(PY) -m tessera_stack
DEMO := $(PY) -m tessera_demo
UP_ARGS := $(if $(PORT),--port $(PORT)) $(if $(HTTPS_PORT),--https-port $(HTTPS_PORT)) \
	$(if $(ALG),--alg $(ALG)) $(if $(ROW),--row $(ROW)) $(if $(POLICY),--policy $(POLICY)) \
	$(if $(REPLICAS),--replicas $(REPLICAS)) $(if $(REDIS),--redis $(REDIS)) \
	$(if $(MONITORING),--monitoring)

.PHONY: help bootstrap bootstrap-dev up down status logs demo outage-probe row scale kill-replica kill-redis \
	restart-replicas test test-unit test-fast test-stack lint fmt bench bench-quick clean

help: ## List the targets
	@echo "usage: make TARGET [VAR=value ...]"
	@echo
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  %-17s %s\n", $$1, $$2 }' \
		$(MAKEFILE_LIST)
	@echo
	@echo "variables: ROW=1..6 REPLICAS=N POLICY=least_conn|... HTTPS_PORT=8443 PORT=8080 ALG=ES256"
	@echo "           REDIS=single|sentinel|cluster and MONITORING=1 (Prometheus on 127.0.0.1:9090) (up),"
	@echo "           FAULTS=1|only (demo: Redis, Sentinel and Cluster failures under rows 4-6,"
	@echo "           a few minutes),"
	@echo "           ROW (row), REPLICAS (scale), ID=r2 (kill-replica, restart-replicas), ROWS=1-6 (demo),"
	@echo "           NAME=auth|nginx|nginx-access|r1|postgres|redis|migrate|prometheus (logs), PURGE=1 (down),"
	@echo "           HOW=stop|kill|both (outage-probe),"
	@echo "           PYTEST_ARGS, TEST_WORKERS=2 (test processes; 0: one) (test*), BENCH_ARGS (bench, bench-quick: e.g. '--only validation,rows')"

bootstrap: ## Install missing system packages, create .venv, install the runtime packages
	@deploy/scripts/bootstrap.sh

bootstrap-dev: ## The same, with the dev tools (tests, linters, bench) and Prometheus
	@deploy/scripts/bootstrap.sh --dev

up: ## Start the stack under .run/: PostgreSQL, Redis, auth, replicas, nginx (TLS; MONITORING=1 adds Prometheus)
	@deploy/scripts/bootstrap.sh $(if $(MONITORING),--prometheus)
	@$(STACK) up $(UP_ARGS)

down: ## Stop the local stack (PURGE=1 also deletes .run/: data, logs, secrets)
	@if [ -x $(PY) ]; then $(STACK) down $(if $(PURGE),--purge); fi

status: ## Show which stack processes are alive
	@$(STACK) status

logs: ## Print the end of the stack's logs (NAME=auth for one)
	@$(STACK) logs $(NAME)

demo: bootstrap ## Walk the load-balancer rows 1-6 (ROWS=2,3; FAULTS=1 adds the shared store's failures)
	@$(DEMO) demo $(if $(ROWS),--rows $(ROWS)) $(if $(filter only,$(FAULTS)),--faults-only,$(if $(FAULTS),--faults))

outage-probe: ## Take the stack's Redis away under a stream of GETs, bring it back, print figures
	@$(DEMO) outage-probe $(if $(HOW),--how $(HOW))

row: ## Switch the running stack to another demonstration row (ROW=N, POLICY=...)
	@test -n "$(ROW)" || { echo "usage: make row ROW=1..6 [POLICY=least_conn]" >&2; exit 2; }
	@$(STACK) row $(ROW) $(if $(POLICY),--policy $(POLICY))

scale: ## Add or remove replicas on the running stack (REPLICAS=N); nginx reloads gracefully
	@test -n "$(REPLICAS)" || { echo "usage: make scale REPLICAS=N" >&2; exit 2; }
	@$(STACK) scale $(REPLICAS)

kill-replica: ## SIGKILL one replica to simulate a crash (ID=r2); nginx is not told
	@test -n "$(ID)" || { echo "usage: make kill-replica ID=r2" >&2; exit 2; }
	@$(STACK) kill-replica $(ID)

kill-redis: ## SIGKILL the stack's own Redis (a group's primary); `make up` brings it back
	@$(STACK) kill-redis

restart-replicas: ## Rolling restart of the replicas, one at a time out of nginx (ID=r2 for one)
	@$(STACK) restart-replicas $(ID)

# junit_family=xunit1: record_property (outage figures) works with --junitxml.
test: bootstrap-dev ## Run the test suite (real PostgreSQL, Redis and nginx are started for it)
	$(PY) -m pytest -o junit_family=xunit1 $(XDIST) $(PYTEST_ARGS)

test-unit: bootstrap-dev ## The tightest loop: tests that need no server at all
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

test-fast: bootstrap-dev ## The inner loop: every test but the stack tier (no launcher, no demo)
	$(PY) -m pytest -m "not stack" $(XDIST) $(PYTEST_ARGS)

test-stack: bootstrap-dev ## Only the stack tier: the launcher, rows, outages, demo, bench smoke
	$(PY) -m pytest -o junit_family=xunit1 -m stack $(XDIST) $(PYTEST_ARGS)

lint: bootstrap-dev ## Lint, check formatting, type-check, check import contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: bootstrap-dev ## Format the code and apply safe lint fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: bootstrap-dev ## Benchmark and load test on a stack of its own (~31 min): report in bench/results/
	$(PY) -m bench $(BENCH_ARGS)

bench-quick: bootstrap-dev ## The same, every part with short runs (about 6 min)
	$(PY) -m bench --quick $(BENCH_ARGS)

clean: ## Stop the stack, delete .run/ and caches (keeps .venv)
	@if [ -x $(PY) ]; then $(STACK) down --purge >/dev/null; fi
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache .import_linter_cache build dist
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name '*.egg-info' \) \
		-type d -prune -exec rm -rf {} +
