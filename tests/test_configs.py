"""Every recipe in configs/ loads, names a registered method and passes only known options."""

import inspect
from pathlib import Path

import pytest

from mlrkit.data import list_datasets
from mlrkit.engine.recipe import load_recipe
from mlrkit.engine.trainer import TrainConfig
from mlrkit.methods import method_class

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


#: Every recipe configs/ ships: adding or removing one means updating this set.
EXPECTED = {
    "clsl_voc2007_partial",
    "conse_voc2007_zero-shot",
    "devise_voc2007_zero-shot",
    "sigrl_voc12-animals_zero-shot",
    "sigrl_voc2007_zero-shot",
    "linear-an_miml_partial",
    "linear-an_voc12-animals_partial",
    "linear-an_voc2007_partial",
    "linear_miml_partial",
    "linear_miml_single-positive",
    "linear_voc12-animals_partial",
    "linear_voc12-animals_single-positive",
    "linear_voc2007_partial",
    "linear_voc2007_single-positive",
    "mlp_miml_partial",
    "mlp_voc12-animals_partial",
    "mlp_voc2007_partial",
    "sarb_coco2014_partial",
    "sarb_miml_partial",
    "sarb_vg200_partial",
    "sarb_voc12-animals_partial",
    "sarb_voc2007_partial-published",
    "sarb_voc2007_partial",
    "ssgrl_miml_partial",
    "ssgrl_voc12-animals_partial",
    "ssgrl_voc2007_partial",
}


def test_configs_holds_exactly_the_expected_recipes():
    assert {p.stem for p in CONFIGS} == EXPECTED


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
