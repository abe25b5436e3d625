# Every target sets up what it needs: a fresh clone with Python 3.11+ and make is enough.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: relink run test lint typecheck unit integration bench bench-smoke clean chromium vendor-console

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

test: lint typecheck chromium
	$(BIN)/pytest

unit: relink
	$(BIN)/pytest tests/unit

integration: relink chromium
	$(BIN)/pytest tests/integration

# The console's browser tests drive Debian's Chromium (never a downloaded one): installed when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }; \
	  else echo "Chromium is missing: run 'sudo apt-get install -y chromium' (the console's browser tests need it)" >&2; exit 1; fi; }

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

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
