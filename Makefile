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

serve: $(STAMP)
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
