"""The schema of every recipe section, checked by :func:`~mlrkit.engine.recipe.load_recipe` before
any data is read or any feature is computed.

What checks each section:

- ``name``, ``run_dir``, ``data`` (with ``data.holdout``), ``features``, ``encoder``,
  ``label_embeddings`` and each protocol: the pydantic models below; ``label_embeddings`` also by
  :func:`_check_label_embeddings` (options of another source, the file of ``source: file``);
- ``data.options``: the keyword options of the dataset's reader (and ``create_dataset``'s
  ``extra_splits``), read from its signature;
- ``train``: a model made from :class:`~mlrkit.engine.trainer.TrainConfig`'s fields, then
  ``TrainConfig`` itself (its choices and ranges);
- ``method``: the keyword arguments of the method class's ``__init__``; ``loss`` and
  ``loss_options`` against the loss registry.

An unknown key is an error naming it with the valid keys of its section; a value of the wrong type
is an error naming the key. Numbers and booleans that YAML left as text (PyYAML reads ``1e-3`` as a
string) are read by the key's type and replace the text in the recipe. Every other value stays
exactly as written and no default is added, so a well-typed recipe resolves to the same dict (and
the same run fingerprint) as before these checks.

:class:`Recipe` is the typed view of a checked recipe that ``prepare``, the trainer and ``run.json``
read: the section models with their defaults (which live here and in ``TrainConfig`` only); the
dict stays for ``config.yaml`` and the run fingerprint.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from dataclasses import Field as DataclassField
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from mlrkit.data.protocols import PARTIAL_MODES, SINGLE_POSITIVE_MODES

if TYPE_CHECKING:  # the trainer imports torch: loaded when a recipe is typed, not to read one
    from mlrkit.engine.trainer import TrainConfig


class RecipeError(ValueError):
    """A recipe value its schema does not accept; the message names the file and the key."""


class RecipeKeyError(RecipeError, KeyError):
    """A recipe key its section does not have; the message names the valid ones."""

    def __str__(self) -> str:
        return str(self.args[0])


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HoldoutSection(_Section):
    """``data.holdout``, see :func:`~mlrkit.data.splits.holdout_split`."""

    size: float = Field(gt=0)
    seed: int = 0
    from_: str = Field("train", alias="from")
    name: str = "holdout"


class FoldSection(_Section):
    """``data.fold``, see :func:`~mlrkit.data.splits.fold_split` (set by ``mlrkit audit``)."""

    folds: int = Field(ge=2)
    index: int = Field(ge=0)
    seed: int = 0
    from_: str = Field("train", alias="from")
    name: str = "heldout"

    @model_validator(mode="after")
    def _index_below_folds(self) -> FoldSection:
        if self.index >= self.folds:
            raise ValueError(f"index {self.index} is not one of the {self.folds} folds "
                             f"(0 ... {self.folds - 1})")
        return self


class DataSection(_Section):
    """``data``: the dataset reader, its folder and options, and which splits train and test."""

    dataset: str
    root: str
    options: dict[str, Any] = {}
    split: dict[str, float] | None = None
    holdout: HoldoutSection | None = None
    fold: FoldSection | None = None
    train_split: str | None = "train"
    val_split: str | None = "val"
    test_split: str | None = "test"
    #: train on classes that a class-list-free label file names in very few images (by default
    #: an error: such names are usually typos, see ``mlrkit data summary``)
    allow_new_classes: bool = False


class FeaturesSection(_Section):
    """``features``: train on features cached once by this encoder."""

    encoder: str
    weights: str | None = None
    image_size: int | None = Field(None, ge=1)
    seed: int = 0
    spatial: bool = False
    cache: str | None = None
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(2, ge=0)


class EncoderSection(_Section):
    """``encoder``: train end to end through this image encoder.

    ``lr_decay`` (layer-wise lr decay: block ``i`` of ``L`` at ``lr_decay ** (L - i)``, see
    :meth:`~mlrkit.methods.encoder_head.EncoderHead.param_groups`) and ``teacher`` (a frozen copy of the
    initial tower, SigRL's distillation target) apply to CLIP image towers (``clip:ARCH``) only.
    """

    name: str
    weights: str | None = None
    image_size: int | None = Field(None, ge=1)
    seed: int = 0
    trainable: list[str] | None = None
    lr_mult: float = Field(1.0, ge=0)
    lr_decay: float | None = Field(None, gt=0, le=1)
    teacher: bool = False

    @field_validator("lr_decay", "teacher")
    @classmethod
    def _clip_only(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.data.get("name", "")
        if value not in (None, False) and not name.startswith("clip:"):
            raise ValueError(f"an option of CLIP image towers only (name clip:ARCH, e.g. "
                             f"clip:ViT-B-16-quickgelu), not of {name!r}; remove it")
        return value


class LabelEmbeddingsSection(_Section):
    """``label_embeddings``: see :func:`~mlrkit.encoders.label_embeddings`."""

    source: Literal["glove", "minilm", "clip", "file"]
    allow_unknown: bool = False
    cache_dir: str | None = None
    templates: list[str] | None = None
    path: str | None = None
    names_path: str | None = None
    clip_model: str | None = None
    weights: str | None = None


class PartialProtocol(_Section):
    name: Literal["partial"]
    known: float = Field(gt=0, le=1)
    seed: int
    mode: Literal[PARTIAL_MODES]
    mask_file: str | None = None


class SinglePositiveProtocol(_Section):
    name: Literal["single_positive"]
    seed: int
    mode: Literal[SINGLE_POSITIVE_MODES]
    mask_file: str | None = None


class ObservedProtocol(_Section):
    """The labels as the data gives them (1 / 0 known, -1 unknown): the default. ``full`` is the
    same, named for benchmarks on fully labelled data (where nothing is unknown)."""

    name: Literal["observed", "full"]
    mask_file: str | None = None


class ZeroShotProtocol(_Section):
    """``protocol: {name: zero_shot}``: the unseen classes as names, ``dataset`` (the reader's
    groups), a seeded ``fraction``, or a saved ``split_file`` (exactly one)."""

    name: Literal["zero_shot"]
    unseen: list[str] | Literal["dataset"] | None = None
    fraction: float | None = Field(None, gt=0, lt=1)
    seed: int = 0
    split_file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ZeroShotProtocol:
        given = [k for k in ("unseen", "fraction", "split_file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of unseen, fraction, split_file (got "
                             f"{given or 'none'})")
        if self.unseen == []:
            raise ValueError("unseen lists no class; name the unseen classes, or give fraction")
        if isinstance(self.unseen, list):
            twice = sorted({name for name in self.unseen if self.unseen.count(name) > 1})
            if twice:
                raise ValueError(f"unseen lists {twice} more than once; list each class once")
        return self


class PseudoLabelsSection(_Section):
    """``pseudo_labels``: VLPL's teacher pseudo-labels (:mod:`mlrkit.engine.pseudo_labels`)."""

    teacher: Literal["conse", "dense-conse", "run", "clip"]
    tau: float = Field(0.01, gt=0)
    theta: float = Field(0.3, ge=0, le=1)
    negatives: int = Field(0, ge=0)
    top_t: int = Field(10, ge=1)
    source: Literal["minilm", "glove", "clip"] = "minilm"
    templates: list[str] | None = None
    run: str | None = None
    weights: str | None = None
    clip_model: str = "ViT-B-16"
    batch_size: int = Field(32, ge=1)

    @model_validator(mode="after")
    def _teacher_inputs(self) -> PseudoLabelsSection:
        needed = {"run": "run", "clip": "weights"}.get(self.teacher)
        if needed and getattr(self, needed) is None:
            raise ValueError(f"teacher {self.teacher!r} needs {needed}: (a run folder for run, a "
                             f"local open_clip weights file for clip)")
        return self


class TopLevel(_Section):
    name: str
    run_dir: str | None = None


PROTOCOLS: dict[str, type[BaseModel]] = {
    "observed": ObservedProtocol, "partial": PartialProtocol,
    "single_positive": SinglePositiveProtocol, "full": ObservedProtocol,
    "zero_shot": ZeroShotProtocol,
}
SECTIONS: dict[str, type[BaseModel]] = {
    "data": DataSection, "features": FeaturesSection, "encoder": EncoderSection,
    "label_embeddings": LabelEmbeddingsSection,
}
#: Sections a recipe may add that the defaults leave out, so that the resolved recipes (and run
#: fingerprints) of recipes without them do not change.
OPTIONAL_SECTIONS: dict[str, type[BaseModel]] = {"pseudo_labels": PseudoLabelsSection}


@dataclass(frozen=True)
class Recipe:
    """A checked recipe, typed, with every default filled in once (by the section models above
    and :class:`~mlrkit.engine.trainer.TrainConfig`): what ``prepare``, the trainer and ``run.json``
    read. ``raw`` is the resolved dict as written: what ``config.yaml`` and the run fingerprint
    keep (no default added, see the module docstring).

    ``method_hparams`` are the method's keyword arguments as written (the class's signature holds
    their defaults).
    """

    raw: dict
    name: str
    run_dir: str | None
    data: DataSection
    features: FeaturesSection | None
    encoder: EncoderSection | None
    label_embeddings: LabelEmbeddingsSection | None
    protocol: ObservedProtocol | PartialProtocol | SinglePositiveProtocol | ZeroShotProtocol
    pseudo_labels: PseudoLabelsSection | None
    train: TrainConfig
    method_name: str
    method_hparams: dict[str, Any]

    @classmethod
    def from_dict(cls, recipe: dict) -> Recipe:
        """The typed view of a resolved, checked recipe (:func:`~mlrkit.engine.recipe.load_recipe`'s
        result, possibly edited: it is validated again)."""
        from mlrkit.engine.trainer import TrainConfig

        sections = {key: None if recipe.get(key) is None else model.model_validate(recipe[key])
                    for key, model in {**SECTIONS, **OPTIONAL_SECTIONS}.items()}
        protocol = recipe["protocol"]
        return cls(
            raw=recipe, name=recipe["name"], run_dir=recipe.get("run_dir"), **sections,
            protocol=PROTOCOLS[protocol["name"]].model_validate(protocol),
            train=TrainConfig(**recipe["train"]), method_name=recipe["method"]["name"],
            method_hparams={k: v for k, v in recipe["method"].items() if k != "name"},
        )


def validate_recipe(recipe: dict, source: Path | str) -> dict:
    """``recipe`` (defaults and protocol filled in) checked section by section; returns it with
    text that means a number or boolean read as such (see the module docstring)."""
    out = dict(recipe)
    top = _validate(TopLevel, {k: recipe[k] for k in ("name", "run_dir")}, "", source)
    out.update(top)
    for key, model in SECTIONS.items():
        if recipe[key] is not None:
            out[key] = _validate(model, _mapping(recipe, key, source), f"{key}.", source)
    for key, model in OPTIONAL_SECTIONS.items():
        if key in recipe:
            out[key] = _validate(model, _mapping(recipe, key, source), f"{key}.", source)
    if out["label_embeddings"] is not None:
        _check_label_embeddings(out["label_embeddings"], source)
    protocol = _mapping(recipe, "protocol", source)
    out["protocol"] = _validate(PROTOCOLS[protocol["name"]], protocol, "protocol.", source)
    out["data"]["options"] = _validate_reader_options(out["data"], source)
    out["train"] = _validate_train(_mapping(recipe, "train", source), source)
    out["method"] = _validate_method(_mapping(recipe, "method", source), source)
    _check_zero_shot(out, source)
    return out


def _check_zero_shot(recipe: dict, source: Path | str) -> None:
    """A zero-shot recipe needs an open-vocabulary method and label embeddings; an
    open-vocabulary method needs label embeddings in any recipe."""
    from mlrkit.methods import method_class

    name = recipe["method"]["name"]
    open_vocabulary = method_class(name).open_vocabulary
    if recipe["protocol"]["name"] == "zero_shot" and not open_vocabulary:
        raise RecipeError(f"{source}: method {name!r} is closed-set and cannot score unseen "
                          f"classes; protocol zero_shot needs an open-vocabulary method (devise, "
                          f"conse)")
    if open_vocabulary and recipe["label_embeddings"] is None:
        raise RecipeError(f"{source}: method {name!r} scores label embeddings: add a "
                          f"label_embeddings section (e.g. {{source: minilm}})")


def _check_label_embeddings(section: dict, source: Path | str) -> None:
    """``label_embeddings``: options only for the sources that take them, for ``source: clip`` a
    ``clip_model`` (its ``weights`` file is read when the run starts: a recipe loads without it),
    and
    for ``source: file`` a ``path`` to an existing file (checked now rather than after the features
    are computed)."""
    kind = section["source"]
    only = {"templates": ("clip", "minilm"), "path": ("file",), "names_path": ("file",),
            "allow_unknown": ("glove",), "clip_model": ("clip",), "weights": ("clip",)}
    for key, sources in only.items():
        if section.get(key) not in (None, False) and kind not in sources:
            raise RecipeError(f"{source}: label_embeddings.{key} only applies to source "
                              f"{' or '.join(sources)}, not {kind}; remove it")
    if kind == "clip" and not section.get("clip_model"):
        raise RecipeError(f"{source}: label_embeddings.clip_model is required with source: clip; "
                          f"set it to the open_clip architecture (e.g. ViT-B-16-quickgelu) and "
                          f"label_embeddings.weights to its local weights file")
    if kind != "file":
        return
    if not section.get("path"):
        raise RecipeError(f"{source}: label_embeddings.path is required with source: file; set "
                          f"it to a .npy (with X.names.txt), .pt or .safetensors file of vectors")
    for key in ("path", "names_path"):
        if section.get(key) is not None and not Path(section[key]).is_file():
            raise RecipeError(f"{source}: label_embeddings.{key}: file not found: "
                              f"{section[key]}; check the path (relative to the working folder)")


def _mapping(recipe: dict, key: str, source: Path | str) -> dict:
    """Section ``key`` of ``recipe``, which must be a mapping."""
    section = recipe[key]
    if not isinstance(section, dict):
        raise RecipeError(f"{source}: '{key}' must be a mapping of keys to values, got {section!r}")
    return section


def _validate_reader_options(data: dict, source: Path | str) -> dict:
    """``data.options`` checked against the options of ``data.dataset``'s reader."""
    from mlrkit.data.dataset import READERS, create_dataset, reader_options

    try:
        accepted = reader_options(data["dataset"])
    except ValueError as err:
        raise RecipeError(f"{source}: data.dataset: {err}") from None
    if accepted is None:  # a reader taking **options: nothing to check against
        return data["options"]
    reader = READERS.get(data["dataset"])
    types = {**_parameter_types(create_dataset), **_parameter_types(reader)}
    model = _signature_model(f"options of {data['dataset']}", inspect.signature(reader),
                             types, skip=1)
    model = create_model(model.__name__, __base__=model,
                         extra_splits=(types["extra_splits"], ()))
    return _validate(model, data["options"], "data.options.", source)


def _validate_train(section: dict, source: Path | str) -> dict:
    """``train`` against :class:`TrainConfig`'s fields, then its own checks."""
    from mlrkit.engine.trainer import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    model = create_model(
        "TrainSection", __base__=_Section,
        **{f.name: (hints[f.name], _field_default(f)) for f in fields(TrainConfig)},
    )
    section = _validate(model, section, "train.", source)
    try:
        TrainConfig(**section)
    except ValueError as err:
        raise RecipeError(f"{source}: {err}") from None
    return section


def _field_default(f: DataclassField) -> Any:
    """The pydantic default of dataclass field ``f`` (``...``: required)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return Field(default_factory=f.default_factory)
    return ...


def _validate_method(section: dict, source: Path | str) -> dict:
    """``method``: its name, its hyperparameters by the class's ``__init__``, and its loss."""
    from mlrkit.methods import method_class
    from mlrkit.methods.base import StepInfo, TaskSpec

    try:
        cls = method_class(section.get("name"))
    except ValueError as err:
        raise RecipeError(f"{source}: method.name: {err}") from None
    signature = inspect.signature(cls.__init__)
    types = _parameter_types(cls.__init__, {"TaskSpec": TaskSpec, "StepInfo": StepInfo})
    model = _signature_model(f"method {section['name']}", signature, types, skip=2)
    hparams = {k: v for k, v in section.items() if k != "name"}
    out = {"name": section["name"], **_validate(model, hparams, "method.", source)}
    if "loss" in signature.parameters:
        default = signature.parameters["loss"].default
        out = _validate_loss(out, out.get("loss", default), source)
    return out


def _validate_loss(section: dict, name: Any, source: Path | str) -> dict:
    """``method.loss`` against the loss registry, ``method.loss_options`` against its options."""
    from mlrkit.methods.base import StepInfo, TaskSpec
    from mlrkit.methods.losses.registry import loss_class, loss_options

    try:
        cls = loss_class(name)
    except ValueError as err:
        raise RecipeError(f"{source}: method.loss: {err}") from None
    accepted = loss_options(name)
    types = _parameter_types(cls.options_signature()[0],
                             {"TaskSpec": TaskSpec, "StepInfo": StepInfo})
    model = create_model(
        f"options of loss {name}", __base__=_Section,
        **{key: (types.get(key, Any), ... if p.default is p.empty else p.default)
           for key, p in accepted.items()},
    )
    options = _validate(model, section.get("loss_options") or {}, "method.loss_options.", source)
    if "loss_options" in section:
        section = {**section, "loss_options": section["loss_options"] and options}
    return section


def _parameter_types(fn: Callable, names: dict[str, Any] | None = None) -> dict[str, Any]:
    """The resolved annotations of ``fn``'s parameters (``Any`` for all when one cannot be
    resolved); ``names`` supplies names that its module imports only for type checking."""
    try:
        return typing.get_type_hints(fn, localns=names)
    except (NameError, TypeError):
        return {}


def _signature_model(
    title: str, signature: inspect.Signature, types: dict[str, Any], skip: int
) -> type[BaseModel]:
    """A model of the keyword parameters of ``signature`` after the first ``skip`` (``self``,
    ``spec``, ``root``); it accepts any other key when the signature takes ``**kwargs``."""
    params = list(signature.parameters.values())[skip:]
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    extra = "allow" if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params) else "forbid"
    return create_model(
        title, __config__=ConfigDict(extra=extra),
        **{p.name: (types.get(p.name, Any), ... if p.default is p.empty else p.default)
           for p in params if p.kind not in variadic},
    )


def _validate(model: type[BaseModel], section: dict, prefix: str, source: Path | str) -> dict:
    """``section`` validated by ``model``; errors name ``prefix`` + the key (e.g. ``train.lr``)."""
    try:
        validated = model.model_validate(section).model_dump(by_alias=True)
    except ValidationError as err:
        raise _recipe_error(err, model, prefix, source) from None
    return _read_text_values(section, validated)


def _read_text_values(original: dict, validated: dict) -> dict:
    """``original`` with each text value that ``validated`` read as something else (a number, a
    boolean) replaced by it, nested mappings included; every other value as it was."""
    out = {}
    for key, value in original.items():
        new = validated.get(key)
        if isinstance(value, str) and isinstance(new, (bool, int, float)):
            value = new
        elif isinstance(value, dict) and isinstance(new, dict):
            value = _read_text_values(value, new)
        out[key] = value
    return out


def _recipe_error(
    err: ValidationError, model: type[BaseModel], prefix: str, source: Path | str
) -> Exception:
    """One line for all of ``err``'s problems: unknown keys first (a :class:`RecipeKeyError`
    listing the valid keys), else each key's type problem (a :class:`RecipeError`)."""
    errors = err.errors()
    unknown = [e["loc"] for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        names = [prefix + ".".join(map(str, loc)) for loc in unknown]
        section = prefix + ".".join(map(str, unknown[0][:-1]))
        valid = _keys(_model_at(model, unknown[0][:-1]))
        return RecipeKeyError(f"{source}: unknown key(s) {names}; valid keys of "
                              f"'{section.rstrip('.') or 'the recipe'}': {valid}")
    problems = []
    for e in errors:
        key = prefix + ".".join(str(part) for part in e["loc"])
        if e["type"] == "missing":
            problems.append(f"{key} is required; set it in the recipe or with --set {key}=VALUE")
        else:
            problems.append(f"{key}: {e['msg']} (got {e['input']!r})")
    return RecipeError(f"{source}: {'; '.join(problems)}")


def _model_at(model: type[BaseModel], path: tuple) -> type[BaseModel]:
    """The model of the nested section at ``path`` (keys) of ``model``."""
    for key in path:
        field = next(f for name, f in model.model_fields.items() if (f.alias or name) == key)
        candidates = (field.annotation, *typing.get_args(field.annotation))
        model = next(t for t in candidates if isinstance(t, type) and issubclass(t, BaseModel))
    return model


def _keys(model: type[BaseModel]) -> list[str]:
    return sorted(f.alias or name for name, f in model.model_fields.items())
