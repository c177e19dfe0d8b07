"""What a run folder holds so that ``eval`` and ``predict`` need neither the training data nor the
working directory the run was trained from.

Written at train time next to ``config.yaml`` (see :mod:`mlrkit.engine.run`)::

    run.json                      the description below
    label_embeddings.safetensors  {"label_embeddings": (C, E) float32}, when the method had them

``run.json``::

    format, mlrkit_version
    class_names     the C class names, in logit order
    method          {"name", "hparams"}: create_method(name, spec, **hparams)
    spec            {"num_classes": C, "feature_shape": [D] or [D, h, w], "num_train": N}
    label_embeddings  "label_embeddings.safetensors" or null
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
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file, save
from torch import Tensor

import mlrkit
from mlrkit.atomic import atomic_write
from mlrkit.data.feature_cache import FeatureCache
from mlrkit.encoders.image import ImageEncoder, create_image_encoder
from mlrkit.encoders.weights import WEIGHT_FILE_SUFFIXES
from mlrkit.engine.trainer import TrainConfig
from mlrkit.methods import TaskSpec

RUN_FORMAT = 1
RUN_FILE = "run.json"
EMBEDDINGS_FILE = "label_embeddings.safetensors"
MASK_FILE = "mask.npz"


def run_info(
    recipe: dict,
    spec: TaskSpec,
    hparams: dict,
    encoder: ImageEncoder,
    cache: FeatureCache | None,
    masked: bool,
) -> dict[str, Any]:
    """The ``run.json`` of a run prepared from ``recipe``: its task ``spec``, the method's
    ``hparams``, the ``encoder`` (that computed ``cache``'s features, or trained end to end) and
    whether a protocol mask is saved (``masked``)."""
    end_to_end = recipe["encoder"]
    section = end_to_end if end_to_end is not None else {
        "name": recipe["features"]["encoder"], **recipe["features"]
    }
    return {
        "format": RUN_FORMAT,
        "mlrkit_version": mlrkit.__version__,
        "class_names": list(spec.class_names),
        "method": {"name": recipe["method"]["name"], "hparams": hparams},
        "spec": {"num_classes": spec.num_classes, "feature_shape": list(spec.feature_shape),
                 "num_train": spec.num_train},
        "label_embeddings": None if spec.label_embeddings is None else EMBEDDINGS_FILE,
        "encoder": _describe_encoder(section, encoder),
        "end_to_end": None if end_to_end is None else {
            "lr_mult": end_to_end.get("lr_mult", 1.0), "trainable": end_to_end.get("trainable")
        },
        "features": None if cache is None else _describe_features(recipe["features"], cache),
        "data": {"dataset": recipe["data"]["dataset"],
                 "root": str(Path(recipe["data"]["root"]).resolve()),
                 "options": recipe["data"]["options"]},
        "mask": MASK_FILE if masked else None,
        "inference": {"device": recipe["train"].get("device", "auto"),
                      "batch_size": TrainConfig(**recipe["train"]).eval_batch_size},
    }


def _describe_encoder(section: dict, encoder: ImageEncoder) -> dict[str, Any]:
    weights = section.get("weights")
    if weights is not None and Path(str(weights)).suffix in WEIGHT_FILE_SUFFIXES:
        weights = str(Path(weights).resolve())
    return {
        "name": encoder.name,
        "weights": weights,
        "weights_id": encoder.weights_id,
        "image_size": section.get("image_size"),
        "seed": section.get("seed", 0),
        "data_config": json.loads(json.dumps(dict(encoder.data_config))),
    }


def _describe_features(section: dict, cache: FeatureCache) -> dict[str, Any]:
    return {
        "cache": str(cache.path.resolve()),
        "spatial": cache.meta["features"]["spatial"],
        "spatial_dtype": cache.meta["features"]["spatial_dtype"],
        "batch_size": section.get("batch_size", 32),
        "num_workers": section.get("num_workers", 2),
    }


def write_run_files(run_dir: Path, info: dict[str, Any], label_embeddings: Tensor | None) -> None:
    """Write ``label_embeddings.safetensors`` (when given) and then ``run.json``, atomically."""
    if label_embeddings is not None:
        with atomic_write(run_dir / EMBEDDINGS_FILE) as f:
            f.write(save({"label_embeddings": label_embeddings.detach().cpu().contiguous()}))
    with atomic_write(run_dir / RUN_FILE, "w") as f:
        json.dump(info, f, indent=1)


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """The parsed ``run.json`` of ``run_dir``."""
    info = json.loads((run_dir / RUN_FILE).read_text())
    if info.get("format") != RUN_FORMAT:
        raise ValueError(f"{run_dir / RUN_FILE} has format {info.get('format')}; this mlrkit "
                         f"reads format {RUN_FORMAT}")
    return info


def placeholder_spec(run_dir: Path, info: dict[str, Any]) -> TaskSpec:
    """The run's :class:`TaskSpec` with all-unknown ``(N, C)`` training targets (see the module
    docstring) and the stored label embeddings."""
    spec = info["spec"]
    embeddings = None
    if info["label_embeddings"] is not None:
        embeddings = load_file(run_dir / info["label_embeddings"])["label_embeddings"]
    return TaskSpec(
        num_classes=spec["num_classes"],
        feature_shape=tuple(spec["feature_shape"]),
        train_targets=np.full((spec["num_train"], spec["num_classes"]), -1, dtype=np.int8),
        label_embeddings=embeddings,
        class_names=tuple(info["class_names"]),
    )


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

