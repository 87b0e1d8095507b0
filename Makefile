# videoq: `make demo` and `make test` work from a fresh clone; both depend on `install`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp

.PHONY: install demo test lint bench chaos clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/python -m videoq.demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench

# Faults with real processes, and every crash point of the paid stages with 400 pairs of them;
# writes the figures into docs/reliability.md (docs/reliability.md says what each means).
chaos: install
	mkdir -p .videoq && rm -f .videoq/crash-points.jsonl
	VIDEOQ_CRASH_PAIRS=400 VIDEOQ_CRASH_REPORT=.videoq/crash-points.jsonl \
		$(BIN)/python -m pytest -q tests/providers/test_crash_points.py
	$(BIN)/python -m bench.chaos --crash-report .videoq/crash-points.jsonl

clean:
	rm -rf $(VENV) .videoq
