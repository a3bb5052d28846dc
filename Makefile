# Terrazzo: everything anyone needs is `make demo` and `make test`.
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEMO_DIR ?= out/demo

.PHONY: install browser demo test test-fast test-all smoke lint format bench clean image

$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) on PATH"; exit 1; }
	$(PY) -m venv $(VENV)

# torch==2.13.0 resolves to the CPU wheel on disk (see DESIGN.md, Facts).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) browser

# The headless Chromium the report tests render HTML in (tests/unit/report/test_report_browser.py):
# Debian's chromium-headless-shell, driven by Playwright (dev extra). `playwright install` would
# download its own build from a CDN, which these machines cannot reach; apt can. Needs root (CI
# and the dev machines run as root); elsewhere it says what to install and the tests skip.
BROWSER_PKG := chromium-headless-shell
browser:
	@command -v chromium-headless-shell >/dev/null 2>&1 || command -v chromium >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing $(BROWSER_PKG) (apt)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(BROWSER_PKG) >/dev/null; \
	else echo "make browser: install $(BROWSER_PKG) (Debian) or chromium; the browser report tests skip without it"; fi

demo: $(STAMP)
	$(BIN)/python -m terrazzo.demo --out $(DEMO_DIR)

test: $(STAMP) browser
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not integration" tests

# A quick check (well under 60 s on 2 cores): the CLI starts, a tiny model compiles and its
# bundle verifies, and a handful of fast unit tests (IR, dialect, cost model, placement,
# CLI, import contracts) pass.
SMOKE_TESTS := tests/unit/ir/test_graph.py tests/unit/ir/test_dialect.py tests/unit/costmodel/test_costmodel.py \
	tests/unit/placement/test_placement.py tests/unit/commands/test_cli.py tests/unit/test_import_contracts.py
SMOKE_DIR ?= out/smoke

smoke: $(STAMP)
	$(BIN)/terrazzo --help >/dev/null
	$(BIN)/terrazzo compile zoo:mlp --fleet examples/fleets/mixed.yaml --sla 50ms \
		-o $(SMOKE_DIR)/mlp.tzb --json >/dev/null
	$(BIN)/terrazzo verify $(SMOKE_DIR)/mlp.tzb
	$(BIN)/python -m pytest -q -m "not slow and not integration" $(SMOKE_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check terrazzo tests benchmarks
	$(BIN)/ruff format --check terrazzo tests benchmarks
	$(BIN)/mypy terrazzo
	$(BIN)/lint-imports --no-cache --no-logo

format: $(STAMP)
	$(BIN)/ruff format terrazzo tests benchmarks
	$(BIN)/ruff check --fix terrazzo tests benchmarks

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache

# The slim serving image (TVM runtime only) that `terrazzo deploy k8s` manifests run. Skipped
# with a message where no Docker daemon answers; the Dockerfile is linted by the test suite.
IMAGE ?= terrazzo-serve:0.1.0
image:
	@if docker info >/dev/null 2>&1; then docker build -t $(IMAGE) . ; \
	else echo "make image: no Docker daemon here; skipped (tests lint the Dockerfile)"; fi
