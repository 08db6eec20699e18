# The README's two commands: `make serve` and `make test`. Both create the virtualenv on first use
# and reuse it afterwards (re-installing only when a requirements file changes). `make serve`
# installs what the server needs (requirements.txt), `make test` that and the development tools
# (requirements-dev.txt).
PYTHON ?= python3.11
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8000
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-requirements
DEV_STAMP := $(VENV)/.installed-requirements-dev

.PHONY: serve test lint system-packages

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	cp requirements.txt $(STAMP)

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	cp requirements-dev.txt $(DEV_STAMP)

# `make serve` is for local development: it sets the development values the server otherwise
# refuses to run with (DEBUG, a known secret key, an open Realtime endpoint), each only when the
# environment does not set it already, and says so. A deployment sets its own (see the README).
# It runs the production process layout, deploy/supervisord.conf: REALTIME_WEB_WORKERS daphne
# workers (unset or 0: one per core) on HOST:PORT and the engine process they share, in the
# foreground; Ctrl-C (or SIGTERM to make) stops them all. REALTIME_RUN_DIR holds supervisord's
# pidfile and sockets (by default one per PORT, so that two `make serve` on other ports coexist).
DEV_SECRET_KEY := dev-only-insecure-key-change-me
serve: export DJANGO_DEBUG ?= 1
serve: export DJANGO_SECRET_KEY ?= $(DEV_SECRET_KEY)
serve: export REALTIME_OPEN_ENDPOINT ?= 1
serve: override export REALTIME_WEB_WORKERS := $(or $(filter-out 0,$(strip $(REALTIME_WEB_WORKERS))),$(shell nproc))
serve: export REALTIME_HOST := $(HOST)
serve: export REALTIME_PORT := $(PORT)
serve: export REALTIME_RUN_DIR ?= $(CURDIR)/var/run/serve-$(PORT)
serve: export PATH := $(abspath $(BIN)):$(PATH)
serve: $(STAMP)
	@echo "make serve: development settings, not for production: DJANGO_DEBUG=$(DJANGO_DEBUG)," \
		"REALTIME_OPEN_ENDPOINT=$(REALTIME_OPEN_ENDPOINT)," \
		"$(if $(filter $(DEV_SECRET_KEY),$(DJANGO_SECRET_KEY)),the development DJANGO_SECRET_KEY,DJANGO_SECRET_KEY from the environment)"
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py make_demo_checkpoint
	mkdir -p "$(REALTIME_RUN_DIR)"
	@echo "make serve: $(REALTIME_WEB_WORKERS) daphne workers on http://$(HOST):$(PORT) and one engine process" \
		"(deploy/supervisord.conf)$(if $(REDIS_URL),,; without REDIS_URL the console sees only the sessions of the worker it reaches)"
	exec $(BIN)/supervisord -n -c deploy/supervisord.conf

test: $(DEV_STAMP) system-packages
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DJANGO_DEBUG=1 $(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/python -m pytest

# What the suite needs from Debian, installed once when missing (this needs root, as on CI): the
# browser tests (console, playground) drive chromium and chromedriver, and the playground's test
# bundles @openai/agents-realtime with node and npm (it runs `npm ci` in tests/browser itself); the
# test session starts throwaway PostgreSQL and Redis servers from their binaries (tests/services.py)
# unless TEST_POSTGRES_URL / TEST_REDIS_URL name servers to use.
SYSTEM_PACKAGES := $(if $(shell command -v chromium),,chromium) \
	$(if $(shell command -v chromedriver),,chromium-driver) \
	$(if $(shell command -v node),,nodejs) \
	$(if $(shell command -v npm),,npm) \
	$(if $(TEST_POSTGRES_URL)$(wildcard /usr/lib/postgresql/*/bin/initdb),,postgresql) \
	$(if $(TEST_REDIS_URL)$(shell command -v redis-server),,redis-server)
system-packages:
	$(if $(strip $(SYSTEM_PACKAGES)),apt-get update -qq && apt-get install -y -qq $(strip $(SYSTEM_PACKAGES)))

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
