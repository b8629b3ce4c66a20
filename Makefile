# mupso_lite: `make lab` opens the dashboard notebook, `make test` runs every test.
# Both install into .venv first (torch==2.13.0, CPU build, before everything else).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv lab test

venv: $(STAMP)

# Reinstalls only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

# JupyterLab on localhost only, with its default token authentication.
# (--allow-root only when run as root, e.g. in a container: JupyterLab refuses root otherwise.)
lab: venv
	$(BIN)/jupyter lab --ip=127.0.0.1 $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) notebooks/00_playground.ipynb

test: venv
	$(BIN)/python -m pytest -q
