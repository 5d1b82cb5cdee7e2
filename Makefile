# The two commands of the README:
#   make lab    set up, make sure the brokers run, open the notebooks in JupyterLab
#   make test   set up, make sure the brokers run, run every test and every notebook
VENV ?= .venv
PYTHON3 ?= python3
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
ARGS ?=

.PHONY: lab test brokers bench lint

# bound to loopback; root (as in a container) must say so explicitly to JupyterLab
LAB_FLAGS ?= --ServerApp.ip=127.0.0.1 $(if $(filter 0,$(shell id -u)),--allow-root)

lab: brokers
	$(VENV)/bin/jupyter lab $(LAB_FLAGS) notebooks/

test: brokers
	PATTERNS_SCALE=small $(PYTHON) -m pytest $(ARGS)

brokers: $(INSTALLED)
	$(PYTHON) -m patterns.brokers up

bench: brokers
	$(PYTHON) -m patterns.bench kit --json

lint: $(INSTALLED)
	$(VENV)/bin/ruff check patterns tests notebooks
	$(VENV)/bin/ruff format --check patterns tests

$(INSTALLED): requirements.txt pyproject.toml
	@$(PYTHON3) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Python 3.11 or newer is needed; $(PYTHON3) is $$($(PYTHON3) --version)."; exit 1; }
	$(PYTHON3) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	touch $@
