# Every target installs what it needs: a virtualenv in .venv with the project
# (editable) and its test tools from PyPI; python3-venv from Debian when the
# interpreter lacks ensurepip.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Coverage floor: it only ever rises.
COV_FLOOR ?= 91
PYTEST_FLAGS ?=

.PHONY: all venv demo test check lint typecheck cov bench clean

all: check

$(VENV)/.installed: pyproject.toml $(wildcard scripts/*)
	@if ! $(PYTHON) -m venv $(VENV) >/dev/null 2>&1; then \
		echo "python3 -m venv failed; installing Debian's python3-venv"; \
		rm -rf $(VENV); \
		apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && \
		$(PYTHON) -m venv $(VENV); \
	fi
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

# The main job end to end, on an embedded default: no outside server needed.
demo: venv
	$(BIN)/python -m pysendmail.demo

test: venv
	$(BIN)/python -m pytest -q -W error $(PYTEST_FLAGS)

lint: venv
	$(BIN)/ruff check pysendmail tests bench
	$(BIN)/ruff format --check pysendmail tests bench

typecheck: venv
	$(BIN)/mypy --strict pysendmail

cov: venv
	$(BIN)/python -m pytest -q -W error --cov=pysendmail --cov-branch \
		--cov-report=term --cov-fail-under=$(COV_FLOOR) $(PYTEST_FLAGS)

check: lint typecheck cov

bench: venv
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage build *.egg-info
