# Every target sets up what it needs: a fresh clone with Python 3.11+ and make is enough.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: relink run test lint typecheck unit integration bench bench-smoke soak clean test-tools vendor-console

# The venv is rebuilt when the pinned versions or the project metadata change.
$(BIN)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=24"
	$(PIP) install --quiet -c constraints.txt -e ".[dev]" --config-settings editable_mode=strict
	@touch $@

# Strict editable installs link only the files present at install time: re-link before each use.
relink: $(BIN)/.installed
	@$(PIP) install --quiet --no-deps -e . --config-settings editable_mode=strict

run: relink
	$(BIN)/ollama-gate serve

lint: relink
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: relink
	$(BIN)/mypy src tests bench

test: lint typecheck test-tools
	$(BIN)/pytest

unit: relink
	$(BIN)/pytest tests/unit

integration: relink test-tools
	$(BIN)/pytest tests/integration

# What the suite drives besides Python, from Debian's archive when missing: Chromium for the console's
# browser tests (never a downloaded browser), wrk for the bench smoke test.
TEST_TOOLS := chromium:chromium wrk:wrk valgrind:valgrind
test-tools:
	@for tool in $(TEST_TOOLS); do command=$${tool%%:*}; package=$${tool##*:}; \
	  command -v $$command >/dev/null 2>&1 && continue; \
	  if [ "$$(id -u)" = 0 ]; then echo "installing $$package (apt-get)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$package >/dev/null || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$package >/dev/null; } || exit 1; \
	  else echo "$$command is missing: run 'sudo apt-get install -y $$package' (the test suite needs it)" >&2; exit 1; fi; \
	done

# The console's chart library, from the npm registry, with its licence: `make vendor-console UPLOT=1.6.32`.
UPLOT ?= 1.6.32
CONSOLE_VENDOR := src/entrypoints/console/static/vendor
vendor-console:
	@command -v npm >/dev/null 2>&1 || { echo "npm is needed to fetch uPlot" >&2; exit 1; }
	rm -rf .vendor-tmp && mkdir .vendor-tmp
	cd .vendor-tmp && npm pack --silent uplot@$(UPLOT) >/dev/null && tar xzf uplot-*.tgz
	cp .vendor-tmp/package/dist/uPlot.iife.min.js .vendor-tmp/package/dist/uPlot.min.css $(CONSOLE_VENDOR)/
	cp .vendor-tmp/package/LICENSE $(CONSOLE_VENDOR)/uPlot.LICENSE
	@version=$$(node -p "require('./.vendor-tmp/package/package.json').version" 2>/dev/null || echo $(UPLOT)); \
	  echo "uPlot $$version (https://github.com/leeoniya/uPlot), MIT licence: see uPlot.LICENSE. Updated with: make vendor-console UPLOT=<version>" > $(CONSOLE_VENDOR)/README
	rm -rf .vendor-tmp

# Prints the table and writes bench/results.json; installs wrk with apt-get when missing (as root).
bench: relink
	$(BIN)/python -m bench

# A few hundred requests, no thresholds: what tests/integration/test_bench_smoke.py runs.
bench-smoke: relink
	$(BIN)/python -m bench --smoke

# Not part of `make bench`: 10 minutes of mixed traffic, RSS sampled every 10 s (SOAK_MINUTES=3 for less).
SOAK_MINUTES ?= 10
soak: relink
	$(BIN)/python -m bench --soak --minutes $(SOAK_MINUTES)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
