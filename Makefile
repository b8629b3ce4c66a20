# mupso_lite: `make lab` opens the dashboard notebook, `make test` runs every test.
# Both install into .venv first (torch==2.13.0, CPU build, before everything else), then the
# package with one extra: `lab` (JupyterLab and a kernel) or `dev` (everything the tests use).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LAB_STAMP := $(VENV)/.installed-lab
DEV_STAMP := $(VENV)/.installed-dev
NOTEBOOK := notebooks/00_playground.ipynb

.PHONY: venv lab test student

venv: $(DEV_STAMP)

# Each install is redone only when pyproject.toml is newer than its stamp. The dev extra
# contains the lab extra, so the dev install stamps both: `make test` then `make lab`
# installs nothing more, and `make lab` then `make test` adds the dev set.
$(LAB_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e ".[lab]"
	touch $(LAB_STAMP)

$(DEV_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(DEV_STAMP) $(LAB_STAMP)

# JupyterLab on localhost only, with its default token authentication. It serves the whole
# repository (notebooks/ and docs/ with the results and figures) and opens the dashboard
# notebook: the link it prints is http://127.0.0.1:8888/lab/tree/$(NOTEBOOK)?token=...
# (--allow-root only when run as root, e.g. in a container: JupyterLab refuses root otherwise.)
lab: $(LAB_STAMP)
	$(BIN)/jupyter lab --ip=127.0.0.1 $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) \
		--ServerApp.root_dir=. --LabApp.default_url=/lab/tree/$(NOTEBOOK)

test: venv
	$(BIN)/python -m pytest -q

# The student copies of the notebooks in build/student/: each exercise's answer replaced by a stub,
# its check kept (notebooks/student.py). Hand these out; the notebooks/ copies hold the answers.
student: $(LAB_STAMP)
	$(BIN)/python notebooks/student.py
