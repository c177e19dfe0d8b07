"""A run is reproducible to the digit: the same recipe trained twice gives identical metrics."""

from pathlib import Path

import pytest
import torch
import yaml
from test_recipe_run import make_dataset

from mlrkit.engine.recipe import load_recipe
from mlrkit.engine.run import train_run


@pytest.fixture
def sarb_recipe(tmp_path: Path) -> Path:
    make_dataset(tmp_path / "data", n=64)
    recipe = {
        "name": "tiny-sarb",
        "data": {"dataset": "csv", "root": str(tmp_path / "data")},
        "features": {"encoder": "resnet18", "weights": None, "image_size": 64, "seed": 0,
                     "cache": str(tmp_path / "cache"), "num_workers": 0, "spatial": True},
        "protocol": {"name": "partial", "known": 0.5, "seed": 0},
        "label_embeddings": {"source": "glove"},
        "method": {"name": "sarb", "image_dim": 32, "inter_dim": 16, "mixup_epoch": 1,
                   "num_prototypes": 2, "prototype_interval": 1},
        "train": {"epochs": 4, "batch_size": 8, "lr": 0.01, "progress": False, "device": "cpu"},
    }
    path = tmp_path / "sarb.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_sarb_trained_twice_from_one_recipe_gives_identical_metrics(sarb_recipe, tmp_path):
    recipe = load_recipe(sarb_recipe)
    first = train_run(recipe, tmp_path / "one")
    second = train_run(load_recipe(sarb_recipe), tmp_path / "two")
    timing = {"seconds"}
    assert {k: v for k, v in first.items() if k not in timing} == {
        k: v for k, v in second.items() if k not in timing}
    history = [(tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in ("one", "two")]
    strip = [[{k: v for k, v in yaml.safe_load(line).items() if k != "epoch_seconds"}
              for line in lines] for lines in history]
    assert strip[0] == strip[1]          # every logged loss part, alpha, beta, val metric, lr
    assert len(strip[0]) == 4 and strip[0][-1]["train_alpha"] != 0.5   # blending really ran


def test_the_thread_count_is_a_recipe_setting_and_recorded(sarb_recipe, tmp_path):
    """SARB's selections (hard mining, k-means) make it sensitive to how float sums are split
    across threads at full size, so a run states and records its thread count."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        one = train_run(load_recipe(sarb_recipe, ["train.threads=1"]), tmp_path / "t1")
        assert torch.get_num_threads() == 1 and one["threads"] == 1
        again = train_run(load_recipe(sarb_recipe, ["train.threads=1"]), tmp_path / "t1b")
    finally:
        torch.set_num_threads(threads)
    assert {k: v for k, v in one.items() if k != "seconds"} == {
        k: v for k, v in again.items() if k != "seconds"}
    with pytest.raises(ValueError, match="threads"):
        load_recipe(sarb_recipe, ["train.threads=0"])
