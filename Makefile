# Two commands matter: `make test` and `make demo`. Both set up .venv first if needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: setup test demo bench clean

setup: $(VENV)/.installed

# Re-install only when requirements.txt changes.
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

test: setup
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) out-demo .pytest_cache
