"""The accuracy benchmarks reuse a finished run only when it was made from the same recipe."""

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from recipe_grid import run_recipe
from test_recipe_run import make_dataset


def test_a_run_is_reused_only_for_the_same_resolved_recipe(tmp_path):
    make_dataset(tmp_path / "data", n=32)
    recipe = {
        "name": "tiny", "data": {"dataset": "csv", "root": str(tmp_path / "data")},
        "features": {"encoder": "resnet18", "weights": None, "image_size": 32,
                     "cache": str(tmp_path / "cache"), "num_workers": 0},
        "method": {"name": "linear"},
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "device": "cpu"},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    first = run_recipe(path, ["protocol.known=0.5"], tmp_path / "runs")
    again = run_recipe(path, ["protocol.known=0.5"], tmp_path / "runs")
    assert not first["reused"] and again["reused"] and again["test_mAP"] == first["test_mAP"]
    changed = run_recipe(path, ["protocol.known=0.3"], tmp_path / "runs")   # another mask
    assert not changed["reused"] and changed["run_dir"] != first["run_dir"]
    recipe["train"]["lr"] = 0.02                                             # the file changed
    path.write_text(yaml.safe_dump(recipe))
    edited = run_recipe(path, ["protocol.known=0.5"], tmp_path / "runs")
    assert not edited["reused"] and edited["run_dir"] != first["run_dir"]
