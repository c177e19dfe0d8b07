"""From a recipe to everything training needs: the data (:mod:`mlrkit.engine.sources`), the
label embeddings, the teacher's pseudo-labels, the method and the run's description."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel

from mlrkit.data import MultiLabelData
from mlrkit.encoders.imagenet import CLASSIFIER
from mlrkit.engine.pseudo_labels import (
    PseudoLabels,
    pseudo_label_quality,
    teacher_scores,
    vlpl_pseudo_labels,
)
from mlrkit.engine.recipe_schema import FeaturesSection, PseudoLabelsSection, Recipe
from mlrkit.engine.run_folder import run_info, zero_shot_info
from mlrkit.engine.sources import PreparedData, label_source, prepare_data, section_label_embeddings
from mlrkit.methods import Method, TaskSpec, create_method
from mlrkit.methods.encoder_head import EncoderHead

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class PreparedRun(PreparedData):
    """A recipe's data (:class:`~mlrkit.engine.sources.PreparedData`) with the method built for
    it, its ``spec``, ``run.json``'s content (see :mod:`mlrkit.engine.run_folder`) and the
    teacher's pseudo-labels of the training rows, if the recipe has a teacher."""

    method: Method
    spec: TaskSpec
    run_info: dict
    pseudo_labels: PseudoLabels | None = None


def prepare(recipe: Recipe) -> PreparedRun:
    """Read the data, draw the mask, get features (cache) or image sources, build the method."""
    part = prepare_data(recipe)
    data, split = part.data, part.class_split
    written = _as_written(recipe.label_embeddings)
    embeddings = section_label_embeddings(written, data.class_names)
    classes = np.arange(data.num_classes) if split is None else split.seen
    check_trainable(part, None if embeddings is None else embeddings[classes])
    teacher = recipe.pseudo_labels
    pseudo = None if teacher is None else _pseudo_labels(
        teacher, recipe.features, data, part.rows["train"], part.class_names, part.cache)
    spec = TaskSpec(
        num_classes=len(classes),
        feature_shape=part.feature_shape,
        train_targets=part.sources["train"].targets,
        label_embeddings=None if embeddings is None else embeddings[classes],
        class_names=part.class_names,
        pseudo_labels=None if pseudo is None else pseudo.labels,
    )
    torch.manual_seed(recipe.train.seed)
    method = create_method(recipe.method_name, spec, **recipe.method_hparams)
    if recipe.encoder is not None:
        section = recipe.encoder
        method = EncoderHead(part.encoder, method, lr_mult=section.lr_mult,
                             trainable=section.trainable, lr_decay=section.lr_decay)
    description = run_info(recipe, spec, part.encoder, part.cache, masked=part.mask is not None)
    description["label_source"] = label_source(written)
    description["train_labels"] = known_training_labels(part)
    if split is not None:
        description["zero_shot"] = zero_shot_info(split, part.dropped_train_images)
    if pseudo is not None:
        description["pseudo_labels"] = {
            **teacher.model_dump(include={"teacher", "tau", "theta", "negatives"}),
            **pseudo_label_quality(pseudo.labels, part.labels["train"]),
        }
    data_fields = {f.name: getattr(part, f.name) for f in fields(PreparedData)}
    return PreparedRun(**{**data_fields, "eval_embeddings": embeddings}, method=method, spec=spec,
                       run_info=description, pseudo_labels=pseudo)


def check_trainable(part: PreparedData, embeddings: torch.Tensor | None) -> None:
    """Refuse, before training, data a method cannot learn from: no known training label, or
    label embeddings ``(C, E)`` with an all-zero row (nothing to score) or two equal rows (two
    classes the method cannot tell apart)."""
    if not (part.sources["train"].targets >= 0).any():
        raise ValueError(f"the training split of {part.data.name!r} has no known label (every "
                         f"entry is unknown after the protocol {part.recipe.protocol.name!r}); "
                         f"give some labels, or a protocol that keeps some")
    if embeddings is None:
        return
    names = part.class_names
    zero = [names[c] for c in torch.nonzero(~embeddings.any(dim=1)).flatten().tolist()]
    if zero:
        raise ValueError(f"label_embeddings: the vector of {zero} is all zeros (e.g. GloVe knows "
                         f"none of the words); rename the class or use source: minilm")
    _, first, counts = torch.unique(embeddings, dim=0, return_inverse=True, return_counts=True)
    same = [names[c] for c in range(len(names)) if counts[first[c]] > 1]
    if same:
        raise ValueError(f"label_embeddings: classes {same} have the same vector, so no method "
                         f"can tell them apart; rename one of them or use another source")


def known_training_labels(part: PreparedData) -> dict[str, int]:
    """``run.json``'s ``train_labels``: the known entries of the training split as the data gives
    them (``given``) and as the method sees them (``used``: after the protocol's mask). Logs how
    many a simulated protocol hides: a warning when the data itself had unknown entries (a
    user's own labels), else an info line (a benchmark simulating missing labels)."""
    given_labels = part.labels["train"]
    given = int((given_labels >= 0).sum())
    used = int((part.sources["train"].targets >= 0).sum())
    if used < given:
        protocol = part.recipe.protocol.name
        note = (f"protocol {protocol} hides {given - used:,} of the {given:,} known training "
                f"labels the data gives ({used:,} used); a recipe without a protocol section "
                f"trains on them all")
        own_unknowns = bool((given_labels < 0).any())
        logger.log(logging.WARNING if own_unknowns else logging.INFO, note)
    return {"given": given, "used": used}


def _as_written(section: BaseModel | None) -> dict | None:
    """A recipe section with only the keys the recipe wrote (what ``run.json`` records)."""
    return None if section is None else section.model_dump(exclude_unset=True)


def _pseudo_labels(section: PseudoLabelsSection, features: FeaturesSection | None,
                   data: MultiLabelData, train_rows: np.ndarray, class_names: Sequence[str],
                   cache) -> PseudoLabels:
    """The teacher pseudo-labels of the training rows; the ConSE teacher reads cached pooled
    ImageNet ``tf_efficientnet_lite0`` features (dense ConSE its cached maps) when the recipe's
    ``features`` are exactly those."""
    pooled = maps = None
    lite0 = (cache is not None and features is not None
             and (features.encoder, features.weights) == (CLASSIFIER, "imagenet"))
    if lite0 and section.teacher == "conse":
        pooled = np.asarray(cache.pooled[train_rows])
    if lite0 and section.teacher == "dense-conse" and cache.spatial is not None:
        maps = cache.spatial[train_rows]  # read into memory (N x D x h x w, float16)
    images = [Path(p) for p in np.asarray(data.image_paths, dtype=object)[train_rows]]
    scores = teacher_scores(section, class_names, images, pooled, maps)
    return vlpl_pseudo_labels(scores, section.tau, section.theta, section.negatives)
