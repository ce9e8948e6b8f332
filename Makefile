# The two commands of a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench docs clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml hatch_build.py src/resilience/_speedups.c
	$(PY) -m pip install --quiet -e ".[all,dev,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m demo

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks demo
	$(VENV)/bin/ruff format --check src tests benchmarks demo

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict src/resilience tests/typing/api.py

pytest: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m benchmarks

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache
	rm -f src/resilience/_speedups.*.so src/resilience/_speedups.*.pyd
