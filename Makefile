# mupso_lite: `make lab` opens the dashboard notebook, `make test` runs every test.
# Both install into .venv first (torch==2.13.0, CPU build, before everything else), then the
# package with one extra: `lab` (JupyterLab and a kernel) or `dev` (everything the tests use).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LAB_STAMP := $(VENV)/.installed-lab
DEV_STAMP := $(VENV)/.installed-dev
BOOK_STAMP := $(VENV)/.installed-book
NOTEBOOK := notebooks/00_playground.ipynb

.PHONY: venv lab test student book check

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
# lab-settings/overrides.json5 holds the lab's JupyterLab settings: closing a notebook's tab
# shuts its kernel down. A kernel no browser tab is connected to (e.g. after the browser was
# closed) and that has run nothing for 30 minutes is shut down too (checked every 5 minutes).
lab: $(LAB_STAMP)
	$(BIN)/jupyter lab --ip=127.0.0.1 $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) \
		--ServerApp.root_dir=. --LabApp.default_url=/lab/tree/$(NOTEBOOK) \
		--LabApp.app_settings_dir=$(CURDIR)/lab-settings \
		--MappingKernelManager.cull_idle_timeout=1800 --MappingKernelManager.cull_interval=300

test: venv
	$(BIN)/python -m pytest -q

# The student copies of the notebooks in build/student/: each exercise's answer replaced by a stub,
# its check kept (notebooks/student.py). Hand these out; the notebooks/ copies hold the answers.
student: $(LAB_STAMP)
	$(BIN)/python notebooks/student.py

# A laptop's check before a lab, run once with the network off: every notebook at its small size
# (MUPSO_SIZE=ci, a few minutes in all) into build/check/. A missing package, an error or a failed
# Checks cell stops it with the cell's traceback. Needs only what `make lab` installs.
check: $(LAB_STAMP)
	for nb in notebooks/[0-9][0-9]_*.ipynb; do \
		MUPSO_SIZE=ci $(BIN)/jupyter nbconvert --to notebook --execute "$$nb" --output-dir build/check \
			--ExecutePreprocessor.timeout=900 || exit 1; \
	done
	@echo "check passed: every notebook ran at its small size"

# The book: a static site at build/book/index.html that opens offline (book/build.py): every
# notebook with its committed outputs and figures, the docs pages, search. Its tools are the
# `book` extra, which the dev extra contains: installed here unless the dev install is current.
$(BOOK_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	[ $(DEV_STAMP) -nt pyproject.toml ] || $(BIN)/python -m pip install torch==2.13.0
	[ $(DEV_STAMP) -nt pyproject.toml ] || $(BIN)/python -m pip install -e ".[book]"
	touch $(BOOK_STAMP)

book: $(BOOK_STAMP)
	$(BIN)/python book/build.py
