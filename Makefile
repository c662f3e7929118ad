# Two commands matter: `make demo` and `make test`. Each creates .venv if missing and installs
# what it needs; torch is pinned to the CPU build 2.13.0 (a plain `torch` pulls CUDA).
VENV     ?= .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
PYTHON   ?= python3
export ORT_DISABLE_TELEMETRY := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test lint typecheck pytest install clean bench promtool chromium wrk

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

# promtool (Debian's prometheus package) runs the alert-rule tests in tests/monitoring.
promtool:
	@command -v promtool >/dev/null || (apt-get update -qq && \
		apt-get install -y -qq --no-install-recommends prometheus) || \
		echo "warning: could not install promtool; the promtool tests will say they were skipped"

# chromium (Debian's package) renders the analysis report in tests/analysis.
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && \
		apt-get install -y -qq --no-install-recommends chromium) || \
		echo "warning: could not install chromium; the report-rendering tests will say they were skipped"

# wrk (Debian's package) drives the benchmarks' HTTP cells (benchmarks/_wrk.py).
wrk:
	@command -v wrk >/dev/null || (apt-get update -qq && \
		apt-get install -y -qq --no-install-recommends wrk) || \
		echo "warning: could not install wrk; the benchmarks fall back to benchmarks/_load.py"

pytest: $(STAMP) promtool chromium wrk
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

demo: $(STAMP)
	$(VENV)/bin/shipyard demo --repo models

bench: $(STAMP) wrk
	$(PY) benchmarks/serving.py

clean:
	rm -rf $(VENV) models .cache .mypy_cache .ruff_cache .pytest_cache
