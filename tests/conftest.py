"""Fixtures and helpers shared by several test modules."""

import os
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def real_data(name: str) -> Path:
    """The real data set ``../shared/data/<name>``. When it is missing its test is skipped, but
    fails under CI (``CI=true``): there a skip would hide that nothing was checked.

    Import it in a test module with ``from conftest import real_data``.
    """
    root = DATA / name
    if not root.is_dir():
        message = f"real data set {name!r} not found at {root}"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{message}; CI must provide ../shared/data", pytrace=False)
        pytest.skip(message)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors gain nothing from intra-op threads; on a busy 2-core machine waiting threads
    cost up to 10x. Modules opt in with ``pytestmark = pytest.mark.usefixtures(...)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: Test files in the order the two xdist workers of ``make test`` take them (``--dist loadfile
#: --no-loadscope-reorder``: one file per worker at a time), longest first so that both finish
#: together. Seconds per module at one torch thread per worker: sigrl_real 231, recipe_run 43,
#: review 42, engine 40, feature_cache 32, reliability_runs 17, benchmark_reuse 15, zero_shot 11.
#: xdist gives the first worker a second file at once when the first has at most two tests left,
#: as test_sigrl_real has: the quick test_metrics goes there, the others to the second worker.
SLOW_MODULES = ("test_sigrl_real.py", "test_recipe_run.py", "test_metrics.py", "test_review.py",
                "test_engine.py", "test_feature_cache.py", "test_reliability_runs.py",
                "test_benchmark_reuse.py", "test_zero_shot.py", "test_report.py")


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: i for i, name in enumerate(SLOW_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# Encoders are not frozen to ONNX in the suite (tests/test_frozen.py turns it on and compares):
# the torch encoder is the reference, and an export per random test encoder would cost seconds.
os.environ["MLRKIT_FROZEN"] = "0"
