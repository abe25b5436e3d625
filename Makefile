# Every target sets up what it needs: a fresh clone with Python 3.11+ and make is enough.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: relink run test lint typecheck unit integration bench bench-smoke soak clean

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

test: lint typecheck
	$(BIN)/pytest

unit: relink
	$(BIN)/pytest tests/unit

integration: relink
	$(BIN)/pytest tests/integration

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
