# `make test` and `make demo` work on a fresh clone: the virtual environment is created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data
export HF_HUB_OFFLINE := 1
# Python caches the bytecode of what it imports in the venvs: with PYTHONDONTWRITEBYTECODE set
# (as on some CI machines) each of the ~40 processes the tests start would compile torch again.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: test demo lint bench clean

# Packages install with uv (from PyPI, bootstrapped by pip into each venv): the same versions as
# pip resolves, in about 45 s instead of 3 min on a fresh 2-core machine.
UV_VERSION := 0.13.8

$(BIN)/mlrkit: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e '.[test]'
	touch $@

# Label Studio, the annotation server tests/test_review.py starts, lives in a venv of its own: it
# pins numpy (< 2.3, through opencv) and pyarrow (< 25) below mlrkit's. About 20 s to install.
REVIEW_VENV := .venv-review
LABEL_STUDIO_VERSION := 1.23.2
LABEL_STUDIO := $(REVIEW_VENV)/.installed-label-studio-$(LABEL_STUDIO_VERSION)

$(LABEL_STUDIO):
	test -x $(REVIEW_VENV)/bin/python || $(PYTHON) -m venv $(REVIEW_VENV)
	echo '*' > $(REVIEW_VENV)/.gitignore
	$(REVIEW_VENV)/bin/pip install --quiet uv==$(UV_VERSION)
	$(REVIEW_VENV)/bin/uv pip install --python $(REVIEW_VENV)/bin/python --quiet \
		label-studio==$(LABEL_STUDIO_VERSION)
	touch $@

# The two venvs install side by side; the tests run in two worker processes (pytest-xdist), each
# test file on one worker in its own order (some modules share a model loaded by an earlier test),
# the files in tests/conftest.py's order (SLOW_MODULES), not xdist's (most tests first), each
# worker and the processes it starts at one torch thread: two workers on two cores (at torch's
# default of one thread per core, pytest took 5 min 33 s here instead of 4 min 45 s).
test:
	$(MAKE) --no-print-directory -j2 $(BIN)/mlrkit $(LABEL_STUDIO)
	$(BIN)/ruff check src tests benchmarks
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# The main job: VOC 2007 at 10% known labels, linear baseline vs the semantic-decoupling
# baseline vs SARB, on the same mask, at each recipe's own lr and weight decay (features are
# extracted once into runs/cache/).
demo: $(BIN)/mlrkit
	$(BIN)/mlrkit data summary --dataset voc2007 --root $(DATA)/voc2007 --protocol partial --known 0.1 --seed 0
	$(BIN)/python benchmarks/partial_labels.py --known 0.1 --methods linear ssgrl sarb --seeds 0 --no-tune --no-full --out-dir runs/demo

lint: $(BIN)/mlrkit
	$(BIN)/ruff check src tests benchmarks

bench: $(BIN)/mlrkit
	$(BIN)/uv pip install --python $(BIN)/python --quiet -e '.[test,bench]'
	$(BIN)/python benchmarks/metrics_speed.py
	$(BIN)/python benchmarks/extract_speed.py
	$(BIN)/python benchmarks/decoupling_memory.py
	$(BIN)/python benchmarks/partial_labels.py
	$(BIN)/python benchmarks/single_positive.py
	$(BIN)/python benchmarks/label_issues.py --datasets voc2007 coco2014-6k

clean:
	rm -rf $(VENV) $(REVIEW_VENV) build *.egg-info src/*.egg-info
