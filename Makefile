PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install example test lint bench

install:
	$(PIP) install -q -e '.[test]'

example:
	$(PIP) install -q -e '.[pyscf]'
	$(PYTHON) scripts/example.py

test: install
	$(PYTHON) -m ruff check qcmb_async tests scripts
	$(PYTHON) -m pytest -q -rs

bench: install
	$(PYTHON) scripts/bench_threads.py
