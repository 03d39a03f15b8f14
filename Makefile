# Two commands for a fresh machine (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-large lint ops

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

setup: $(STAMP)

demo: setup
	$(BIN)/stage1 demo --out demo

lint: setup
	$(BIN)/ruff check stage1_ds tests scripts examples
	$(BIN)/ruff format --check stage1_ds tests scripts examples
	$(BIN)/mypy

# DeepSpeed's C++ ops, built once (cached under ~/.cache/torch_extensions).
ops: setup
	$(BIN)/python scripts/warm_ds_ops.py

# Lint and the op build need nothing of each other: side by side. Then one pytest worker per core, each
# with one torch thread (two torch processes with a thread per core each run many times slower, not twice
# as fast); a module's tests stay on one worker (their module fixtures are built once).
test: setup
	$(MAKE) --no-print-directory -j2 lint ops
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n auto --dist loadscope

# The shipped t5-large configs on CPU (docs/training.md: minutes and peak memory); not part of `make test`.
test-large: setup
	$(BIN)/python scripts/warm_ds_ops.py
	$(BIN)/python -m pytest -m large
