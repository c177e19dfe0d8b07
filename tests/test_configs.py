"""Every recipe in configs/ loads, names a registered method and passes only known options."""

import inspect
from pathlib import Path

import pytest

from mlrkit.data import list_datasets
from mlrkit.engine.recipe import load_recipe
from mlrkit.engine.trainer import TrainConfig
from mlrkit.methods import method_class

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_recipes():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipe_is_consistent(path):
    recipe = load_recipe(path)
    assert recipe["name"] == path.stem
    assert recipe["data"]["dataset"] in list_datasets()
    cls = method_class(recipe["method"]["name"])
    accepted = inspect.signature(cls.__init__).parameters
    unknown = set(recipe["method"]) - {"name"} - set(accepted)
    assert not unknown, f"{path.name}: {cls.__name__} takes no {sorted(unknown)}"
    TrainConfig(**recipe["train"])
    if cls.input_kind == "spatial" and recipe["features"] is not None:
        assert recipe["features"]["spatial"], f"{path.name}: the method needs spatial features"
