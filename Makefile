PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install example test check-wheel docs bench

install:
	$(PIP) install -q -e '.[test]'

example:
	$(PIP) install -q -e '.[pyscf]'
	$(PYTHON) scripts/example.py

test: install
	$(PYTHON) -m ruff check qcmb_async tests scripts docs/hooks
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict -q
	$(PYTHON) -m pytest -q -rs
	PYTHON=$(PYTHON) scripts/check_wheel.sh

check-wheel:
	PYTHON=$(PYTHON) scripts/check_wheel.sh

docs: install
	$(PYTHON) -m mkdocs build --strict

bench: install
	$(PYTHON) scripts/bench_threads.py
	$(PYTHON) scripts/bench_executors.py
	$(PYTHON) scripts/bench_dask.py
	$(PYTHON) scripts/bench_psi4.py
	$(PYTHON) scripts/bench.py
