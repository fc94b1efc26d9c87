# mvssl: two commands on a fresh machine.
#   make book   create .venv, install everything, build the HTML book into _build/html
#   make test   create .venv, install everything, run the whole test suite
#   make results  rerun the experiments whose results/ files the book loads
#   make lab    add JupyterLab to .venv (the `lab` extra) and open the chapters as notebooks
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make lab` has its own stamp, so it never makes `make test` / `make book` reinstall.
LAB_STAMP := $(VENV)/.installed-lab
LAB_ARGS ?=

# torch and torchvision are installed first, as a matched pair.
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH_PAIR ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1
endif

.PHONY: install test book bench results clean lab

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_PAIR)
	$(BIN)/pip install --quiet -e ".[book,dev]"
	touch $@

# tests/test_browser.py opens the built book in Debian's chromium: install it when running as root.
test: $(STAMP)
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
	  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
	  echo "make test: could not install chromium; tests/test_browser.py will be skipped" >&2
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The book: fetch the offline JavaScript (MathJax, widget manager) into _vendor/, execute every
# chapter (a failing cell fails the build), treat warnings as errors, and refuse any page that
# still shows a traceback. MVSSL_BOOK_BUILD=1 makes each live_or_frames control (mvssl_core/widgets.py)
# draw its figures at build time, so it works in the HTML with no kernel.
book: $(STAMP)
	scripts/vendor_js.sh
	MVSSL_BOOK_BUILD=1 $(BIN)/jupyter-book build . --all -W -n --keep-going
	@pages=$$(grep -rl --include='*.html' 'class="output traceback"' _build/html || true); \
	if [ -n "$$pages" ]; then echo "make book: cell tracebacks in: $$pages" >&2; exit 1; fi
	@echo "Book built. Open file://$(CURDIR)/_build/html/index.html"

# JupyterLab on 127.0.0.1 in the repo root (blocks while the server runs; LAB_ARGS=--no-browser etc.).
# The chapters' kernelspec is `python3`: the venv's own kernel, since the server runs from the venv.
# The venv is also registered for this user as kernel `mvssl` ("Python (mvssl)"), which a system-wide
# Jupyter can pick to import mvssl_core. scripts/jupyterlab_overrides.json, copied to the venv's
# JupyterLab settings (overrides.json), makes Jupytext Notebook the default viewer of .md files.
$(LAB_STAMP): $(STAMP) pyproject.toml scripts/jupyterlab_overrides.json
	$(BIN)/pip install --quiet -e ".[book,dev,lab]"
	$(BIN)/python -m ipykernel install --user --name mvssl --display-name "Python (mvssl)"
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp scripts/jupyterlab_overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $@

# (Jupyter refuses to run as root without --allow-root: added for root, as in a container.)
lab: $(LAB_STAMP)
	$(BIN)/jupyter lab --ip=127.0.0.1 --ServerApp.root_dir="$(CURDIR)" \
	  --LabApp.default_url=/lab/tree/book/intro.md \
	  $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

bench: $(STAMP)
	$(BIN)/python scripts/bench_core.py

# Regenerate every shipped results file (about 3 h 20 min on 2 cores; book/reproduce.md has each file's time).
results: $(STAMP)
	$(BIN)/python scripts/experiments/train_critics.py
	$(BIN)/python scripts/experiments/ssl_runs.py --jobs 2
	$(BIN)/python scripts/experiments/mi_not_enough.py

clean:
	rm -rf _build _vendor .pytest_cache
