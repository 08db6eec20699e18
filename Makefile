# The README's two commands: `make serve` and `make test`. Both create the virtualenv on first use
# and reuse it afterwards (re-installing only when requirements.txt changes).
PYTHON ?= python3.11
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8000
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-requirements

.PHONY: serve test lint demo-checkpoint browser

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	cp requirements.txt $(STAMP)

# `make serve` is for local development: it sets the development values the server otherwise
# refuses to run with (DEBUG, a known secret key, an open Realtime endpoint), each only when the
# environment does not set it already, and says so. A deployment sets its own (see the README).
DEV_SECRET_KEY := dev-only-insecure-key-change-me
serve: export DJANGO_DEBUG ?= 1
serve: export DJANGO_SECRET_KEY ?= $(DEV_SECRET_KEY)
serve: export REALTIME_OPEN_ENDPOINT ?= 1
serve: $(STAMP)
	@echo "make serve: development settings, not for production: DJANGO_DEBUG=$(DJANGO_DEBUG)," \
		"REALTIME_OPEN_ENDPOINT=$(REALTIME_OPEN_ENDPOINT)," \
		"$(if $(filter $(DEV_SECRET_KEY),$(DJANGO_SECRET_KEY)),the development DJANGO_SECRET_KEY,DJANGO_SECRET_KEY from the environment)"
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py make_demo_checkpoint
	$(BIN)/daphne --bind $(HOST) --port $(PORT) --websocket_timeout -1 \
		--websocket-max-message-size 16777216 --websocket-max-frame-size 16777216 \
		realtime_project.asgi:application

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The staff console's browser test drives Debian's chromium and chromedriver: installed once, when missing.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
