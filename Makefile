# Relay development tasks. `make` lists them; `make run` brings up the whole app.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
ARGS ?=

# Prerequisites run in the order written (services before migrate, migrate before demo).
.NOTPARALLEL:
.DEFAULT_GOAL := help
.PHONY: help venv services migrate demo run test faults lint bench clean

# How to run a command as root, empty when this user can't (not root, no passwordless sudo).
AS_ROOT = $(shell if [ "$$(id -u)" = 0 ]; then echo env; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then echo sudo -n env; fi)
APT_GET = $(AS_ROOT) DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0

help:
	@echo "Relay: make <target>"
	@echo "  venv      create $(VENV) and install the dependencies with the dev extra"
	@echo "  services  start Redis, and PostgreSQL when DATABASE_URL names it (bin/services)"
	@echo "  migrate   apply the database migrations"
	@echo "  demo      create the demo user and print how to log in"
	@echo "  run       venv, services, migrate and demo, then web, worker, beat and webhooks (Procfile)"
	@echo "  test      run the test suite, browser tests included (pytest options: ARGS='...')"
	@echo "  faults    run the fault tests (tests/faults) at their large counts"
	@echo "  lint      ruff check, ruff format --check, and check for missing migrations"
	@echo "  bench     run the benchmarks in bench/"
	@echo "  clean     remove test artifacts (the venv, dev database and bench results stay)"

venv: $(VENV)/.installed

# The venv is made once (Debian needs python3-venv for it); the dependencies are installed
# again whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	@if ! $(PY) -m pip --version >/dev/null 2>&1; then \
	  echo "$(PYTHON) -m venv $(VENV)"; \
	  if ! $(PYTHON) -m venv $(VENV); then \
	    if [ -z "$(AS_ROOT)" ] || ! command -v apt-get >/dev/null; then \
	      echo "'$(PYTHON) -m venv' failed: install python3-venv (apt-get install python3-venv)," \
	        "or point PYTHON at a Python 3.11+ that has venv and ensurepip" >&2; \
	      exit 1; \
	    fi; \
	    echo "installing python3-venv with apt-get"; \
	    $(APT_GET) install python3-venv || { $(APT_GET) update && $(APT_GET) install python3-venv; } \
	      || exit 1; \
	    $(PYTHON) -m venv $(VENV) || exit 1; \
	  fi; \
	fi
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

services:
	bin/services redis
	bin/services postgres

migrate: venv
	$(PY) manage.py migrate --noinput

demo: venv
	$(PY) manage.py setup_demo

# When one process ends, honcho stops the others; nothing is restarted here (a crash is a bug to
# see; deploy/systemd restarts in production), and make fails saying so. On the way out, by
# Ctrl-C or a crash, the Redis that `services` started for this run is stopped.
run: export SERVICES_STARTED := $(CURDIR)/var/services-started
run: venv services migrate demo
	@trap 'bin/services stop' EXIT; \
	VENV=$(VENV) $(VENV)/bin/honcho start -f Procfile; rc=$$?; \
	if [ $$rc -ne 130 ]; then \
	  echo "make run: a process ended (exit status $$rc), so honcho stopped the others:" \
	    "the first 'stopped' line above names it" >&2; \
	  exit 1; \
	fi

test: venv services
	bin/services chromium
	bin/services pushpin
	$(PY) -m pytest $(ARGS)

# The fault tests (killed workers, Redis and web restarts, dropped streams, stops racing the
# end) at the counts they document, FAULT_SCALE=large: minutes. `make test` runs them too, at the
# small counts CI can afford.
faults: venv services
	FAULT_SCALE=large $(PY) -m pytest -m faults --timeout=1800 $(ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) manage.py makemigrations --check --dry-run

bench: venv services
	$(PY) bench/fanout.py
	$(PY) bench/runs.py
	$(PY) bench/concurrency.py
	$(PY) bench/tools.py
	$(PY) bench/retries.py

clean:
	rm -rf var/test.sqlite3 var/test.sqlite3-wal var/test.sqlite3-shm tests/artifacts .pytest_cache
