# The two README commands (`make demo`, `make test`) plus lint/typecheck/bench/docs.
# Every target creates .venv when absent and installs torch ($(TORCH)) only when it is not
# importable there, so a CPU wheel already on disk is used and nothing large is downloaded.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: demo test lint typecheck bench docs check venv torch clean

$(PY):
	$(PYTHON) -m venv $(VENV)

venv: $(PY)

torch: venv
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH)"

install-%: torch
	$(PIP) install -e ".[$*]"

demo: install-examples
	$(PY) examples/train.py --config examples/configs/demo.toml $(DEMO_ARGS)

test: install-test
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: install-dev
	$(PY) -m mypy --strict src
	cd examples && $(abspath $(PY)) -m mypy --strict reid_example train.py ablation.py

bench: install-bench
	$(PY) benchmarks/run_all.py --json-dir bench-results
	cp bench-results/benchmarks.md docs/_generated/benchmarks.md

docs: install-docs,examples
	$(PY) -m mkdocs build --strict

check: test lint typecheck

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache site bench-results
