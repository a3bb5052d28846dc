# Terrazzo: everything anyone needs is `make demo` and `make test`.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO_DIR ?= out/demo

.PHONY: install demo test test-fast test-all lint format bench clean

$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) on PATH"; exit 1; }
	$(PY) -m venv $(VENV)

# torch==2.13.0 resolves to the CPU wheel on disk (see DESIGN.md, Facts).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m terrazzo.demo --out $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not integration" tests

lint: $(STAMP)
	$(BIN)/ruff check terrazzo tests benchmarks
	$(BIN)/ruff format --check terrazzo tests benchmarks
	$(BIN)/mypy terrazzo

format: $(STAMP)
	$(BIN)/ruff format terrazzo tests benchmarks
	$(BIN)/ruff check --fix terrazzo tests benchmarks

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
