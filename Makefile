# `make test` and `make demo` work on a fresh clone: the virtual environment is created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
export HF_HUB_OFFLINE := 1

.PHONY: test demo lint bench clean

$(BIN)/mlrkit: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

test: $(BIN)/mlrkit
	$(BIN)/python -m pytest -q

demo: $(BIN)/mlrkit
	$(BIN)/mlrkit data summary --dataset csv --root $(DATA)/voc12-animals --protocol partial --known 0.1 --seed 0

lint: $(BIN)/mlrkit
	$(BIN)/ruff check src tests benchmarks

bench: $(BIN)/mlrkit
	$(BIN)/python benchmarks/metrics_speed.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
