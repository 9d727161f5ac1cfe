# The two commands of the README:
#   make run   - set up .venv and run the whole default pipeline end to end
#   make test  - set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-deps run test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# PostgreSQL backs one integration test (MLflow's production backend); install it when missing.
system-deps:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
	  echo "note: PostgreSQL is not available; its test will be skipped"

run: setup
	$(BIN)/metagen run

test: setup system-deps
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/meta_step.py
	$(BIN)/python benchmarks/fid.py
	$(BIN)/python benchmarks/bootstrap.py
	$(BIN)/python benchmarks/bootstrap.py --dims 2048 --classes 20 --reference 1 --models 3
	$(BIN)/python benchmarks/ray_train.py
	$(BIN)/python benchmarks/threads.py
	$(BIN)/python benchmarks/eval_kernels.py

clean:
	rm -rf $(VENV) data prepared features checkpoints reports ray_results mlruns mlartifacts mlflow.db .dvc-store
