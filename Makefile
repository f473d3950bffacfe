# The two commands a fresh machine needs: `make run` (the studio) and `make test` (the suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export GRADIO_ANALYTICS_ENABLED := False
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: run test test-slow services install lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the dependency list changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/distill-studio up $(if $(STUDIO_USERS)$(STUDIO_USERS_FILE),,--no-auth)

# Services and Debian packages the suite needs (PostgreSQL, Redis, docker-compose, Chromium): started or installed
# by scripts/test-services.sh, which stops here with the exact command to run when it cannot provide one.
services:
	bash scripts/test-services.sh

# Two processes, one per core, each with one torch thread (two threads each would contend for the cores); a file's
# tests stay in one process, so module fixtures (a live studio, a trained teacher) are built once.
test: services $(STAMP)
	$(BIN)/ruff check core app workers storage tests benchmarks
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow" -n 2 --dist loadfile

# The outcome tests (docs/methods.md#outcome-tests): about an hour on 2 cores, so not part of `make test`.
test-slow: services $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/teachers.py

clean:
	rm -rf $(VENV) .pytest_cache
