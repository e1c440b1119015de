# The two commands of the README. Both make a virtual environment in .venv on first use.
# torch==2.13.0 is pinned here so pip takes the CPU wheel; for CUDA see README.rst ("Using a GPU").
PYTHON ?= python3
VENV   := .venv
PIP    := $(VENV)/bin/python -m pip
TORCH  ?= torch==2.13.0

.PHONY: demo test install lint

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

install: $(VENV)/bin/python
	$(PIP) install -q --disable-pip-version-check "$(TORCH)" -e ".[test,beam,kafka,kafka-test,stac]"

demo: install
	$(VENV)/bin/lazytiles demo

# ruff (lint, format) and strict mypy, configured in ruff.toml and mypy.ini; then the tests
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/python -m pytest
