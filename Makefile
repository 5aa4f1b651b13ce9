# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast lint bench demo clean

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=python3 ...'"; exit 2; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(VENV)/bin/python pyproject.toml constraints.txt
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	@touch $(STAMP)

## run: set up, seed the embedded store with a demo when it is empty, start the dashboard
run: $(STAMP)
	$(PY) -m collector.cli demo --if-empty
	$(PY) -m dashboard.serve

## test: set up and run the whole suite (what CI runs)
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2

## test-fast: the fast set (no subprocess-heavy, PostgreSQL or browser tests), in seconds
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not postgres and not browser" -q -n 2

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
