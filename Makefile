# `make test` and `make demo` work on a fresh clone: the virtual environment is created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
export HF_HUB_OFFLINE := 1

.PHONY: test demo lint bench clean

$(BIN)/mlrkit: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

test: $(BIN)/mlrkit
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

# The main job: VOC 2012 animals at 10% known labels, linear baseline vs the semantic-decoupling
# baseline vs SARB, on the same mask (features are extracted once into runs/cache/).
demo: $(BIN)/mlrkit
	$(BIN)/mlrkit data summary --dataset csv --root $(DATA)/voc12-animals --protocol partial --known 0.1 --seed 0
	$(BIN)/python benchmarks/partial_labels.py --datasets voc12-animals --known 0.1 --methods linear ssgrl sarb --out-dir runs/demo

lint: $(BIN)/mlrkit
	$(BIN)/ruff check src tests benchmarks

bench: $(BIN)/mlrkit
	$(BIN)/python benchmarks/metrics_speed.py
	$(BIN)/python benchmarks/extract_speed.py
	$(BIN)/python benchmarks/decoupling_memory.py
	$(BIN)/python benchmarks/partial_labels.py
	$(BIN)/python benchmarks/single_positive.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
