"""Recipes: YAML files that say everything a run needs, with ``key=value`` overrides.

A recipe has the sections ``data``, ``features`` (cached-feature training) or ``encoder``
(end-to-end training), ``protocol``, ``label_embeddings``, ``method`` and ``train``; see
``configs/`` for complete examples. Every section is checked against its schema when the recipe is
loaded (:mod:`mlrkit.engine.recipe_schema`), before any data is read. The resolved recipe is
written into every run folder, so a run can be repeated from its folder alone.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from mlrkit.atomic import atomic_write
from mlrkit.data.protocols import PROTOCOL_DEFAULTS
from mlrkit.engine.recipe_schema import (
    OPTIONAL_SECTIONS,
    RecipeError,
    RecipeKeyError,
    validate_recipe,
)

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "run_dir": None,
    "data": {
        "dataset": None,
        "root": None,
        "options": {},
        "split": None,
        "holdout": None,
        "train_split": "train",
        "val_split": "val",
        "test_split": "test",
    },
    "features": None,
    "encoder": None,
    "protocol": {"name": "observed"},  # the labels as given; a simulated protocol only if named
    "label_embeddings": None,
    "method": {"name": "linear"},
    "train": {},
}

#: The defaults of each protocol, filled in after the recipe names its protocol (so that one
#: protocol's options never leak into another's); ``mask_file`` is accepted by all of them.
STRICT_SECTIONS = ("", "data.")  # sections whose keys are fixed; the others go to their code
#: keys a strict section accepts without a default above: a recipe that does not name them
#: resolves (and fingerprints) as before they existed
OPTIONAL_KEYS = {"": tuple(OPTIONAL_SECTIONS), "data.": ("allow_new_classes", "fold")}
NAMED_SECTIONS = ("protocol", "method")  # replaced, not merged, when the name changes


def _merge(base: dict, update: dict, source: Path | str, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if path in STRICT_SECTIONS and key not in out and key not in OPTIONAL_KEYS[path]:
            raise RecipeKeyError(f"{source}: unknown recipe key {path + key!r}; known keys here: "
                                 f"{sorted(out)}")
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, source, f"{path}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _inherit(base: dict, child: dict) -> dict:
    """``child`` over ``base`` (both raw recipes): sections merge key by key, except that a
    ``protocol`` or ``method`` section naming another ``name`` than the base's replaces it whole."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        renamed = (
            key in NAMED_SECTIONS and isinstance(value, dict) and isinstance(out.get(key), dict)
            and "name" in value and value["name"] != out[key].get("name")
        )
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not renamed:
            out[key] = _inherit(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that names a key twice (PyYAML keeps the last
    silently: ``train: {lr: 0.1, lr: 0.01}`` would train at 0.01 without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        self.flatten_mapping(node)
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        problem=f"key {key!r} given twice (lines {seen[key]} and {line}); keep "
                                f"one", problem_mark=key_node.start_mark)
                seen[key] = line
            except TypeError:  # an unhashable key: the base class says so
                break
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """YAML ``text`` as Python values (the safe subset), a key given twice in one mapping being a
    :class:`yaml.YAMLError`."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def _read_raw(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """A recipe file with its ``base:`` chain resolved (paths relative to the including file)."""
    if path.resolve() in chain:
        names = " -> ".join(str(p) for p in (*chain, path.resolve()))
        raise ValueError(f"recipe {path}: 'base' forms a cycle: {names}")
    try:
        raw = load_yaml(path.read_text()) or {}
    except FileNotFoundError:
        where = f" (base of {chain[-1]})" if chain else ""
        raise FileNotFoundError(f"recipe {path} not found{where}") from None
    except yaml.YAMLError as err:
        mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ValueError(f"recipe {where} is not valid YAML: "
                         f"{problem or ' '.join(str(err).split())}") from err
    if not isinstance(raw, dict):
        raise TypeError(f"recipe {path}: expected a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    bases = [base] if isinstance(base, str) else base
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ValueError(f"recipe {path}: 'base' must be a file name or a list of them")
    merged: dict = {}
    for name in bases:
        merged = _inherit(merged, _read_raw(path.parent / name, (*chain, path.resolve())))
    return _inherit(merged, raw)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=0.01"`` → ``(["train", "lr"], 0.01)``; the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"override {text!r} is not key=value (e.g. train.lr=0.01)")
    return key.split("."), load_yaml(value)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> dict:
    """Read a recipe, resolve its ``base:`` files, apply ``key.sub=value`` overrides, fill the
    defaults (those of its protocol too) and check every section against its schema
    (:func:`~mlrkit.engine.recipe_schema.validate_recipe`: unknown keys, types, the method's
    hyperparameters and loss), so that a typo fails here, not after data and features are ready.

    ``base: other.yaml`` (or a list, applied in order) names recipes this one inherits from,
    relative to its own folder: sections merge key by key and this file wins; a ``protocol`` or
    ``method`` section with another ``name`` replaces the inherited one instead of merging, and so
    does an override ``protocol.name=...`` / ``method.name=...`` that changes the name.
    """
    path = Path(path)
    raw = _read_raw(path)
    for text in overrides:
        keys, value = parse_override(text)
        if len(keys) == 2 and keys[0] in NAMED_SECTIONS and keys[1] == "name":
            section = raw.get(keys[0])
            if isinstance(section, dict) and section.get("name") != value:
                raw[keys[0]] = {}  # another protocol or method: the old one's options go
        node = raw
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[keys[-1]] = value
    recipe = _merge(DEFAULTS, raw, path)
    _fill_protocol(recipe, path)
    check_recipe(recipe, path)
    _check_relative_root(recipe["data"]["root"], Path(path))
    return validate_recipe(recipe, path)


def _fill_protocol(recipe: dict, source: Path | str) -> None:
    protocol = recipe["protocol"]
    if not isinstance(protocol, dict):
        raise RecipeError(f"{source}: 'protocol' must be a mapping with a name, got {protocol!r}")
    name = protocol.get("name")
    if name not in PROTOCOL_DEFAULTS:
        raise ValueError(f"{source}: protocol.name {name!r}; use one of {list(PROTOCOL_DEFAULTS)}")
    allowed = {"name", "mask_file", *PROTOCOL_DEFAULTS[name]}
    unknown = sorted(set(protocol) - allowed)
    if unknown:
        keys = ["protocol." + k for k in unknown]
        raise RecipeKeyError(f"{source}: unknown key(s) {keys} for protocol {name!r}; known keys: "
                             f"{sorted(allowed)}")
    recipe["protocol"] = {"name": name, **PROTOCOL_DEFAULTS[name],
                          **{k: v for k, v in protocol.items() if k != "name"}}


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


def _check_relative_root(root: str, recipe_path: Path) -> None:
    """A relative ``data.root`` missing from the working folder but present next to the recipe
    is an error that says both (paths in a recipe are relative to the working folder)."""
    relative = Path(root)
    if relative.is_absolute() or relative.exists():
        return
    beside = recipe_path.parent / relative
    if beside.is_dir():
        raise RecipeError(f"{recipe_path}: data.root {root} does not exist relative to the working "
                          f"folder {Path.cwd()} (recipe paths are relative to it); relative to the "
                          f"recipe's folder it is {beside}, which exists: give that path, or run "
                          f"from the recipe's folder")


def save_recipe(recipe: dict, path: Path) -> None:
    """Write the resolved recipe as YAML, atomically (a kill leaves the old file or the new one)."""
    with atomic_write(path, "w") as f:
        f.write(yaml.safe_dump(recipe, sort_keys=False))
