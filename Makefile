# Two commands matter: `make demo` and `make test`. Each creates .venv if missing and installs
# what it needs; torch is pinned to the CPU build 2.13.0 (a plain `torch` pulls CUDA).
VENV     ?= .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
PYTHON   ?= python3
export ORT_DISABLE_TELEMETRY := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test lint typecheck pytest install clean bench

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

demo: $(STAMP)
	$(VENV)/bin/shipyard demo --repo models

bench: $(STAMP)
	$(PY) benchmarks/serving.py

clean:
	rm -rf $(VENV) models .mypy_cache .ruff_cache .pytest_cache
