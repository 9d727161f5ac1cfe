# The two commands of the README:
#   make run   - set up .venv and run the whole default pipeline end to end
#   make test  - set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: setup
	$(BIN)/metagen run

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/meta_step.py
	$(BIN)/python benchmarks/fid.py

clean:
	rm -rf $(VENV) data prepared features checkpoints reports ray_results mlruns mlartifacts mlflow.db .dvc-store
