"""Recipes inherit (``base:``), protocols get only their own defaults, named sections replace."""

from pathlib import Path

import pytest
import yaml

from mlrkit.engine.recipe import load_recipe

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(path: Path, recipe: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    return path


BASE = {
    "data": {"dataset": "csv", "root": "x", "holdout": {"size": 10}},
    "features": {"encoder": "resnet18"},
    "protocol": {"name": "partial", "known": 0.3, "seed": 4},
    "method": {"name": "sarb", "mixup_epoch": 2},
    "train": {"lr": 0.1, "epochs": 3},
}


def test_child_overrides_base_key_by_key(tmp_path):
    write(tmp_path / "base" / "b.yaml", BASE)
    child = write(tmp_path / "c.yaml", {"base": "base/b.yaml", "name": "c",
                                        "train": {"epochs": 7}, "method": {"mixup_epoch": 1}})
    recipe = load_recipe(child)
    assert recipe["train"] == {"lr": 0.1, "epochs": 7}
    assert recipe["method"] == {"name": "sarb", "mixup_epoch": 1}
    assert recipe["data"]["holdout"] == {"size": 10} and recipe["name"] == "c"
    assert "base" not in recipe


def test_several_bases_apply_in_order_and_paths_are_relative_to_the_including_file(tmp_path):
    write(tmp_path / "a.yaml", BASE)
    write(tmp_path / "sub" / "lr.yaml", {"train": {"lr": 0.5}})
    write(tmp_path / "sub" / "mid.yaml", {"base": ["../a.yaml", "lr.yaml"], "train": {"epochs": 9}})
    recipe = load_recipe(write(tmp_path / "top.yaml", {"base": "sub/mid.yaml"}))
    assert recipe["train"] == {"lr": 0.5, "epochs": 9}


def test_a_protocol_or_method_with_another_name_replaces_the_inherited_one(tmp_path):
    write(tmp_path / "b.yaml", BASE)
    child = write(tmp_path / "c.yaml", {"base": "b.yaml", "protocol": {"name": "single_positive"},
                                        "method": {"name": "linear"}})
    recipe = load_recipe(child)
    # the partial protocol's known/seed do not leak; single_positive gets its own defaults
    assert recipe["protocol"] == {"name": "single_positive", "seed": 1200, "mode": "uniform"}
    assert recipe["method"] == {"name": "linear"}
    over = load_recipe(tmp_path / "b.yaml", ["protocol.name=full", "method.name=ssgrl"])
    assert over["protocol"] == {"name": "full"} and over["method"] == {"name": "ssgrl"}


def test_single_positive_without_mode_gets_its_own_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path / "r.yaml", {**BASE, "protocol": {"name": "single_positive"}}))
    assert recipe["protocol"] == {"name": "single_positive", "seed": 1200, "mode": "uniform"}
    partial = load_recipe(write(tmp_path / "p.yaml", {**BASE, "protocol": {"name": "partial"}}))
    assert partial["protocol"] == {"name": "partial", "known": 0.1, "seed": 0, "mode": "bernoulli"}


def test_unknown_protocol_keys_and_cycles_are_errors(tmp_path):
    bad = write(tmp_path / "r.yaml", {**BASE, "protocol": {"name": "partial", "knwon": 0.9}})
    with pytest.raises(KeyError, match=r"protocol\.knwon.*known keys"):
        load_recipe(bad)
    write(tmp_path / "x.yaml", {"base": "y.yaml"})
    write(tmp_path / "y.yaml", {"base": "x.yaml"})
    with pytest.raises(ValueError, match="cycle"):
        load_recipe(tmp_path / "x.yaml")
    with pytest.raises(FileNotFoundError, match="base of"):
        load_recipe(write(tmp_path / "z.yaml", {"base": "missing.yaml"}))


def test_voc2007_recipes_hold_out_250_training_images_and_test_on_official_val():
    recipe = load_recipe(CONFIGS / "sarb_voc2007_partial.yaml")
    assert recipe["data"]["holdout"] == {"size": 250, "seed": 0, "from": "train", "name": "holdout"}
    assert (recipe["data"]["train_split"], recipe["data"]["val_split"],
            recipe["data"]["test_split"]) == ("train", "holdout", "val")
    assert recipe["protocol"] == {"name": "partial", "known": 0.1, "seed": 0, "mode": "bernoulli"}
