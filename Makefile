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

# The main job: VOC 2007 at 10% known labels, linear baseline vs the semantic-decoupling
# baseline vs SARB, on the same mask, at each recipe's own lr and weight decay (features are
# extracted once into runs/cache/).
demo: $(BIN)/mlrkit
	$(BIN)/mlrkit data summary --dataset voc2007 --root $(DATA)/voc2007 --protocol partial --known 0.1 --seed 0
	$(BIN)/python benchmarks/partial_labels.py --known 0.1 --methods linear ssgrl sarb --seeds 0 --no-tune --no-full --out-dir runs/demo

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
