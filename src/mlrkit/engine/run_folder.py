"""What a run folder holds so that ``eval`` and ``predict`` need neither the training data nor the
working directory the run was trained from.

Written at train time next to ``config.yaml`` (see :mod:`mlrkit.engine.run`)::

    run.json                      the description below
    label_embeddings.safetensors  {"label_embeddings": (C, E) float32}, when the method had them

``run.json``::

    format, mlrkit_version
    source_hash     mlrkit.provenance.source_hash() of the code that started the run
    class_names     the C class names, in logit order
    method          {"name", "hparams"}: create_method(name, spec, **hparams)
    spec            {"num_classes": C, "feature_shape": [D] or [D, h, w], "num_train": N}
    label_embeddings  "label_embeddings.safetensors" or null
    label_source    the recipe's label_embeddings section (how new class names are embedded for
                    an open-vocabulary method: ``mlrkit tag --checkpoint``), or null
    zero_shot       for the zero-shot protocol: {"split": "class_split.json", "class_names": all C
                    names, "unseen": [...], "dropped_train_images": n}; ``class_names`` above are
                    then the seen classes (the training logits) and the embeddings file also holds
                    ``eval_label_embeddings`` (all C)
    encoder         {"name", "weights", "weights_id", "image_size", "seed", "data_config"}
    end_to_end      {"lr_mult", "trainable"} (the encoder's weights are in the checkpoint), or
                    null: the method was trained on cached features of the encoder as built
    features        {"cache", "spatial", "spatial_dtype", "batch_size", "num_workers"} or null
    data            {"dataset", "root", "options"}: the recipe's dataset
    mask            "mask.npz" (the protocol mask) or null
    inference       {"device", "batch_size"}

Paths of files inside the run folder are relative to it; other paths (dataset root, feature cache,
a weights file) are absolute. A method is rebuilt on a placeholder ``TaskSpec`` whose
``train_targets`` are all unknown, of the recorded ``(N, C)`` shape: whatever a method derives from
the training targets (a co-occurrence adjacency, per-sample label estimates) lives in its
``state_dict``, so loading the checkpoint restores it.

A folder holds one run: :func:`open_run_folder` refuses a new run into a folder that holds one
(unless ``overwrite``, which removes the old run's :data:`RUN_ARTIFACTS` first) and a resume with
another recipe (only the keys in :data:`RESUMABLE_CHANGES` may differ).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import save
from torch import Tensor

from mlrkit._version import __version__
from mlrkit.atomic import atomic_write
from mlrkit.data.feature_cache import FeatureCache
from mlrkit.data.protocols import ClassSplit
from mlrkit.encoders.image import ImageEncoder, create_image_encoder
from mlrkit.encoders.weights import WEIGHT_FILE_SUFFIXES, file_sha256
from mlrkit.engine.recipe import load_recipe
from mlrkit.engine.recipe_schema import EncoderSection, FeaturesSection, Recipe
from mlrkit.engine.run_files import (
    CHECKED_FILES,
    CHECKED_FOLDER,
    CHECKSUMS_FILE,
    CONFIG_FILE,
    EMBEDDINGS_FILE,
    MASK_FILE,
    RUN_ARTIFACTS,
    RUN_FILE,
    SPLIT_FILE,
)
from mlrkit.engine.trainer import TrainConfig
from mlrkit.loaders import read_json, read_safetensors
from mlrkit.methods import TaskSpec
from mlrkit.provenance import source_hash

RUN_FORMAT = 1
#: What to do about a damaged run.json: load_run writes a missing one again from config.yaml.
REWRITE_RUN_FILE = ("delete it and write it again from config.yaml and the data with "
                    "'mlrkit upgrade-run RUN'")


def run_info(
    recipe: Recipe,
    spec: TaskSpec,
    encoder: ImageEncoder,
    cache: FeatureCache | None,
    masked: bool,
) -> dict[str, Any]:
    """The ``run.json`` of a run prepared from ``recipe``: its task ``spec``, the method's
    hyperparameters, the ``encoder`` (that computed ``cache``'s features, or trained end to end)
    and whether a protocol mask is saved (``masked``)."""
    end_to_end = recipe.encoder
    return {
        "format": RUN_FORMAT,
        "mlrkit_version": __version__,
        "source_hash": source_hash(),
        "class_names": list(spec.class_names),
        "method": {"name": recipe.method_name, "hparams": recipe.method_hparams},
        "spec": {"num_classes": spec.num_classes, "feature_shape": list(spec.feature_shape),
                 "num_train": spec.num_train},
        "label_embeddings": None if spec.label_embeddings is None else EMBEDDINGS_FILE,
        "label_source": None,  # set by prepare: the section, a weights file's path resolved
        "zero_shot": None,
        "encoder": _describe_encoder(end_to_end or recipe.features, encoder),
        "end_to_end": None if end_to_end is None else {
            "lr_mult": end_to_end.lr_mult, "trainable": end_to_end.trainable
        },
        "features": None if cache is None else _describe_features(recipe.features, cache),
        "data": {"dataset": recipe.data.dataset, "root": str(Path(recipe.data.root).resolve()),
                 "options": recipe.data.options},
        "mask": MASK_FILE if masked else None,
        "inference": {"device": recipe.train.device, "batch_size": recipe.train.eval_batch_size},
    }


def _describe_encoder(section: EncoderSection | FeaturesSection,
                      encoder: ImageEncoder) -> dict[str, Any]:
    weights = section.weights
    if weights is not None and Path(str(weights)).suffix in WEIGHT_FILE_SUFFIXES:
        weights = str(Path(weights).resolve())
    return {
        "name": encoder.name,
        "weights": weights,
        "weights_id": encoder.weights_id,
        "image_size": section.image_size,
        "seed": section.seed,
        "data_config": json.loads(json.dumps(dict(encoder.data_config))),
    }


def _describe_features(section: FeaturesSection, cache: FeatureCache) -> dict[str, Any]:
    return {
        "cache": str(cache.path.resolve()),
        "spatial": cache.meta["features"]["spatial"],
        "spatial_dtype": cache.meta["features"]["spatial_dtype"],
        "batch_size": section.batch_size,
        "num_workers": section.num_workers,
    }


def write_run_files(run_dir: Path, info: dict[str, Any], label_embeddings: Tensor | None,
                    eval_label_embeddings: Tensor | None = None) -> None:
    """Write ``label_embeddings.safetensors`` (when given; with ``eval_label_embeddings``, the
    zero-shot protocol's embeddings of all classes, as a second tensor) and then ``run.json``,
    atomically."""
    if label_embeddings is not None:
        tensors = {"label_embeddings": label_embeddings}
        if eval_label_embeddings is not None:
            tensors["eval_label_embeddings"] = eval_label_embeddings
        with atomic_write(run_dir / EMBEDDINGS_FILE) as f:
            f.write(save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))
    with atomic_write(run_dir / RUN_FILE, "w") as f:
        json.dump(info, f, indent=1)


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """The parsed ``run.json`` of run folder ``run_dir``.

    Raises:
        FileNotFoundError: ``run_dir`` is no run folder, or one from before run folders had a
            ``run.json`` (``mlrkit upgrade-run`` writes it).
    """
    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: no {CONFIG_FILE} in it; give "
                                f"the folder 'mlrkit train' wrote")
    if not (run_dir / RUN_FILE).is_file():
        raise FileNotFoundError(
            f"{run_dir} has no {RUN_FILE} (trained before run folders had one); write it once "
            f"with 'mlrkit upgrade-run {run_dir}' from the working directory it was trained in")
    info = read_json(run_dir / RUN_FILE, REWRITE_RUN_FILE)
    if info.get("format") != RUN_FORMAT:
        raise ValueError(f"{run_dir / RUN_FILE} has format {info.get('format')}; this mlrkit "
                         f"reads format {RUN_FORMAT}")
    return info


def placeholder_spec(run_dir: Path, info: dict[str, Any]) -> TaskSpec:
    """The run's :class:`TaskSpec` with all-unknown ``(N, C)`` training targets (see the module
    docstring) and the stored label embeddings."""
    spec = info["spec"]
    return TaskSpec(
        num_classes=spec["num_classes"],
        feature_shape=tuple(spec["feature_shape"]),
        train_targets=np.full((spec["num_train"], spec["num_classes"]), -1, dtype=np.int8),
        label_embeddings=stored_label_embeddings(run_dir, info),
        class_names=tuple(info["class_names"]),
    )


def stored_label_embeddings(run_dir: Path, info: dict[str, Any],
                            name: str = "label_embeddings") -> Tensor | None:
    """A tensor of the run's ``label_embeddings.safetensors``: ``label_embeddings`` ``(C, E)``
    of the classes trained on, or ``eval_label_embeddings`` of all classes of a zero-shot run;
    ``None`` for a run without label embeddings."""
    if info["label_embeddings"] is None:
        return None
    fix = "delete it and run.json, then write them again with 'mlrkit upgrade-run'"
    tensors = read_safetensors(run_dir / info["label_embeddings"], fix)
    if name not in tensors:
        raise ValueError(f"{run_dir / info['label_embeddings']} has no {name!r}; {fix}")
    return tensors[name]


def rebuild_encoder(description: dict[str, Any], pretrained: bool) -> ImageEncoder:
    """The run's image encoder, with the preprocessing recorded at train time.

    Args:
        description: ``run.json``'s ``encoder``.
        pretrained: load the weights it was built from and check that they are the recorded ones
            (the encoder of a run on cached features); ``False`` initialises it randomly, for an
            end-to-end checkpoint to fill.

    Raises:
        ValueError: the weights are not the ones the run's features were computed with.
    """
    encoder = create_image_encoder(
        description["name"], weights=description["weights"] if pretrained else None,
        image_size=description["image_size"], seed=description["seed"],
    )  # fmt: skip
    if pretrained and encoder.weights_id != description["weights_id"]:
        raise ValueError(
            f"encoder {description['name']!r} with weights {description['weights']!r} is now "
            f"{encoder.weights_id!r}, but the run was trained on features of "
            f"{description['weights_id']!r}; restore those weights"
        )
    encoder.data_config = {
        k: tuple(v) if isinstance(v, list) else v for k, v in description["data_config"].items()
    }
    return encoder


# --- one run per folder ------------------------------------------------------------------------

#: The recipe keys that may differ when a run is resumed: where the run folder is and how fast
#: the work goes, never what is trained (data, protocol and mask, features, method, optimisation,
#: seeds and epochs all stay as the run began).
RESUMABLE_CHANGES = ("run_dir", "train.progress", "train.num_workers", "train.device",
                     "features.num_workers")

_UNSET = "<unset>"


def open_run_folder(run_dir: Path, recipe: dict, *, resume: bool,
                    overwrite: bool) -> tuple[bool, list[str]]:
    """Check that ``run_dir`` can take a run of ``recipe``; returns whether the run resumes and
    the old run's files that ``overwrite`` replaces (removed by the caller with
    :func:`remove_run_files` once the new run's data has been read and it starts writing, so that
    a recipe or data error leaves the old run as it was).

    ``resume`` continues the run in the folder when its ``config.yaml`` is this recipe (up to
    :data:`RESUMABLE_CHANGES`); a folder without ``config.yaml`` starts a new run. Otherwise the
    folder must hold no run, unless ``overwrite``, so that a folder never mixes two runs.

    Raises:
        ValueError: ``resume`` with another recipe, or ``resume`` together with ``overwrite``.
        FileExistsError: a new run into a folder that holds one, without ``overwrite``.
    """
    if resume and overwrite:
        raise ValueError(f"{run_dir}: --resume continues the run there and --overwrite deletes "
                         f"it; give one of them")
    saved = run_dir / CONFIG_FILE
    if resume and saved.is_file():
        check_same_recipe(saved, recipe)
        return True, []
    existing = [name for name in RUN_ARTIFACTS if (run_dir / name).exists()]
    if existing and not overwrite:
        what = "files of a run but no config.yaml to resume from" if resume else "a run"
        raise FileExistsError(
            f"{run_dir}: already holds {what} ({', '.join(existing)}); "
            f"{'' if resume else 'continue it with --resume, '}replace it with --overwrite, or "
            f"train into another --run-dir"
        )
    return False, existing


def remove_run_files(run_dir: Path, names: list[str]) -> None:
    """Remove the run files ``names`` (:data:`RUN_ARTIFACTS`) from ``run_dir``."""
    for name in names:
        _remove(run_dir / name)


def check_same_recipe(saved: Path, recipe: dict) -> None:
    """Refuse to resume the run whose recipe is ``saved`` (its ``config.yaml``) with another
    ``recipe``, naming the first keys that differ."""
    differences = recipe_differences(saved, recipe)
    if differences:
        raise ValueError(
            f"{saved}: --resume with another recipe: {differences}; resume with the run's own "
            f"recipe, or start a new run with --overwrite or another --run-dir"
        )


def recipe_differences(saved: Path, recipe: dict) -> str:
    """The first keys (up to 3) in which ``recipe`` differs from the run recipe ``saved``, as
    ``"train.lr is 0.01 in the run, 0.1 now"``; empty when they agree (up to
    :data:`RESUMABLE_CHANGES`)."""
    old, new = _comparable(load_recipe(saved)), _comparable(recipe)
    differing = [key for key in dict.fromkeys([*old, *new])
                 if old.get(key, _UNSET) != new.get(key, _UNSET)]
    shown = ", ".join(f"{key} is {old.get(key, _UNSET)!r} in the run, {new.get(key, _UNSET)!r}"
                      f" now" for key in differing[:3])
    more = f" (and {len(differing) - 3} more)" if len(differing) > 3 else ""
    return shown + more


def _comparable(recipe: dict) -> dict[str, Any]:
    """``recipe`` as ``{"dotted.key": value}``, its train section with TrainConfig's defaults
    filled in and the :data:`RESUMABLE_CHANGES` left out."""
    flat = flatten_sections({**recipe, "train": asdict(TrainConfig(**recipe["train"]))})
    return {k: v for k, v in flat.items() if k not in RESUMABLE_CHANGES}


def flatten_sections(node: dict, prefix: str = "") -> dict[str, Any]:
    """Nested sections as ``{"section.key": value}``; an empty section is one value."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.update(flatten_sections(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _remove(path: Path) -> None:
    """Delete a file or a folder with its contents (a link, not what it points to)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def zero_shot_info(split: ClassSplit, dropped: int) -> dict:
    """``run.json``'s ``zero_shot`` entry: the split file, all class names (the order the test
    split is scored in), the unseen ones, and the training images dropped."""
    return {"split": SPLIT_FILE, "class_names": list(split.class_names),
            "unseen": [split.class_names[c] for c in split.unseen],
            "dropped_train_images": int(dropped)}


def _checked_paths(run_dir: Path) -> list[str]:
    """The run files under checksum that exist, relative to ``run_dir``."""
    names = [name for name in CHECKED_FILES if (run_dir / name).is_file()]
    best = run_dir / CHECKED_FOLDER
    names += sorted(p.relative_to(run_dir).as_posix() for p in best.rglob("*") if p.is_file())
    return names


def write_checksums(run_dir: Path) -> None:
    """Write ``checksums.json``: the SHA-256 of each file a finished run is used from
    (:data:`~mlrkit.engine.run_files.CHECKED_FILES` and the best checkpoint), atomically."""
    sums = {name: file_sha256(run_dir / name) for name in _checked_paths(run_dir)}
    with atomic_write(run_dir / CHECKSUMS_FILE, "w") as f:
        json.dump(sums, f, indent=1)


def changed_files(run_dir: Path) -> list[str]:
    """The files of a finished run that differ from ``checksums.json`` (edited, replaced, removed
    or added since training ended); empty for a run without one (trained before it existed)."""
    path = run_dir / CHECKSUMS_FILE
    if not path.is_file():
        return []
    recorded = read_json(path, "retrain the run, or delete checksums.json to use it unchecked")
    now = set(_checked_paths(run_dir))
    differing = [name for name, digest in recorded.items()
                 if name not in now or file_sha256(run_dir / name) != digest]
    return differing + sorted(now - set(recorded))
