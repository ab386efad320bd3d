# Set-up and the two entry points of README.md. Everything installs from this repository's own files.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test bench

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m lit_pref fit --config configs/demo.yaml

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) bench/step_time.py
