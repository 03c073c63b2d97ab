# tessera developer commands. `make` (or `make help`) lists them.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

VENV := .venv
PY := $(VENV)/bin/python

# Overridable on the command line, e.g. `make test PYTEST_ARGS='-k jwks -x'`.
PYTEST_ARGS ?=
BENCH_ARGS ?=
PORT ?= 8080
ALG ?= ES256
NAME ?=
PURGE ?=

.PHONY: help bootstrap up down status logs test lint fmt bench clean

help: ## List the targets
	@echo "usage: make TARGET [VAR=value ...]"
	@echo
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z_-]+:.*## / { printf "  %-10s %s\n", $$1, $$2 }' \
		$(MAKEFILE_LIST)
	@echo
	@echo "variables: PORT=$(PORT) ALG=$(ALG) (up), NAME=auth|migrate|postgres|redis (logs),"
	@echo "           PURGE=1 (down), PYTEST_ARGS (test), BENCH_ARGS (bench)"

bootstrap: ## Install missing system packages, create .venv, install the project
	@deploy/scripts/bootstrap.sh

up: bootstrap ## Start the local stack (PostgreSQL, Redis, auth) under .run/
	@$(PY) -m tessera_stack up --port $(PORT) --alg $(ALG)

down: ## Stop the local stack (PURGE=1 also deletes .run/: data, logs, secrets)
	@if [ -x $(PY) ]; then $(PY) -m tessera_stack down $(if $(PURGE),--purge); fi

status: ## Show which stack processes are alive
	@$(PY) -m tessera_stack status

logs: ## Print the end of the stack's logs (NAME=auth for one)
	@$(PY) -m tessera_stack logs $(NAME)

test: bootstrap ## Run the test suite (real PostgreSQL and Redis are started for it)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: bootstrap ## Lint, check formatting, type-check, check import contracts
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: bootstrap ## Format the code and apply safe lint fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: bootstrap ## Run the micro-benchmarks
	$(PY) -m bench.micro $(BENCH_ARGS)

clean: ## Stop the stack, delete .run/ and caches (keeps .venv)
	@if [ -x $(PY) ]; then $(PY) -m tessera_stack down --purge >/dev/null; fi
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache .import_linter_cache build dist
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name '*.egg-info' \) \
		-type d -prune -exec rm -rf {} +
