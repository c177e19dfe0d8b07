"""Recipes: YAML files that say everything a run needs, with ``key=value`` overrides.

A recipe has the sections ``data``, ``features`` (cached-feature training) or ``encoder``
(end-to-end training), ``protocol``, ``label_embeddings``, ``method`` and ``train``; see
``configs/`` for complete examples. The resolved recipe is written into every run folder, so a run
can be repeated from its folder alone.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "run_dir": None,
    "data": {
        "dataset": None,
        "root": None,
        "options": {},
        "train_split": "train",
        "val_split": "val",
        "test_split": "test",
    },
    "features": None,
    "encoder": None,
    "protocol": {"name": "partial", "known": 0.1, "seed": 0, "mode": "bernoulli"},
    "label_embeddings": None,
    "method": {"name": "linear"},
    "train": {},
}

STRICT_SECTIONS = ("", "data.")  # sections whose keys are fixed; the others go to their code


def _merge(base: dict, update: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if path in STRICT_SECTIONS and key not in out:
            raise KeyError(f"unknown recipe key {path + key!r}; known keys here: {sorted(out)}")
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, f"{path}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=0.01"`` → ``(["train", "lr"], 0.01)``; the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"override {text!r} is not key=value (e.g. train.lr=0.01)")
    return key.split("."), yaml.safe_load(value)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> dict:
    """Read a recipe, fill defaults, apply ``key.sub=value`` overrides, and check it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"recipe {path} not found") from None
    except yaml.YAMLError as err:
        raise ValueError(f"recipe {path} is not valid YAML: {err}") from err
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[keys[-1]] = value
    recipe = _merge(DEFAULTS, raw)
    check_recipe(recipe, path)
    return recipe


def check_recipe(recipe: dict, source: Path | str = "recipe") -> None:
    data = recipe["data"]
    for key in ("dataset", "root"):
        if not data.get(key):
            raise ValueError(f"{source}: data.{key} is required")
    if (recipe["features"] is None) == (recipe["encoder"] is None):
        raise ValueError(
            f"{source}: give exactly one of 'features' (train on cached features) or 'encoder' "
            f"(train end to end)"
        )
    protocol = recipe["protocol"]["name"]
    if protocol not in ("partial", "single_positive", "full"):
        raise ValueError(f"{source}: protocol.name {protocol!r}; use partial, single_positive or full")


def save_recipe(recipe: dict, path: Path) -> None:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
