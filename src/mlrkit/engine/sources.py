"""A recipe's data, ready for a method: splits, protocol mask, and batches of cached features or
images. Training (:mod:`mlrkit.engine.prepare`) and inference (:mod:`mlrkit.engine.inference`)
both start here; nothing here builds a method or a teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mlrkit.data import MultiLabelData, create_dataset
from mlrkit.data.feature_cache import FeatureCache, extract_features, load_features
from mlrkit.data.protocols import ClassSplit, ProtocolMask, class_split, draw_mask
from mlrkit.data.splits import apply_recipe_splits
from mlrkit.data.summary import refuse_misspelt_classes
from mlrkit.distributed import current_info, resolve_device
from mlrkit.engine.batches import FeatureBatches, ImageBatches
from mlrkit.engine.recipe_schema import EncoderSection, FeaturesSection, Recipe
from mlrkit.methods import method_class

#: The key of the fold a recipe's ``data.fold`` holds out of training, in ``PreparedData``'s
#: ``rows``, ``labels`` and ``sources`` (see :mod:`mlrkit.engine.audit`).
HELDOUT = "heldout"


@dataclass(kw_only=True)
class PreparedData:
    """A recipe's data with its mask and batch sources.

    ``rows`` index ``data`` for each split the recipe defines; ``labels`` are those rows' full
    labels and ``sources`` their batches (the training source yields the mask's observed labels).
    For the zero-shot protocol, the training and validation labels hold the seen classes only,
    ``class_split`` is the split, ``dropped_train_images`` the number of training images without
    a seen positive, and ``eval_embeddings`` ``(C, E)`` the label embeddings of all classes (what
    the test split is scored with; set by whoever built them: the run's or the recipe's).
    """

    recipe: Recipe
    data: MultiLabelData
    mask: ProtocolMask | None
    rows: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    sources: dict[str, torch.utils.data.Dataset]
    feature_shape: tuple[int, ...]
    encoder: nn.Module
    cache: FeatureCache | None
    class_split: ClassSplit | None = None
    dropped_train_images: int = 0
    eval_embeddings: Tensor | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        """The names of the classes trained on: every class, or the seen ones."""
        names = self.data.class_names
        if self.class_split is None:
            return tuple(names)
        return tuple(names[c] for c in self.class_split.seen)


def create_encoder(section: EncoderSection | FeaturesSection) -> nn.Module:
    """The image encoder of a recipe's ``encoder`` or ``features`` section (a CLIP tower for
    ``clip:ARCH`` names, with its frozen teacher when ``encoder.teacher`` is set)."""
    from mlrkit.encoders import create_image_encoder

    teacher = isinstance(section, EncoderSection) and section.teacher
    name = section.name if isinstance(section, EncoderSection) else section.encoder
    return create_image_encoder(name, weights=section.weights, image_size=section.image_size,
                                seed=section.seed, **({"teacher": True} if teacher else {}))


def section_label_embeddings(section: dict | None, class_names: list[str]) -> Tensor | None:
    """``(C, E)`` embeddings of ``class_names`` as a resolved ``label_embeddings`` section says;
    ``source: clip`` embeds them with the text tower of ``clip_model`` and ``weights`` (``null``:
    a random initialisation, seed 0)."""
    if not section:
        return None
    from mlrkit.encoders import create_clip, label_embeddings

    options = {k: v for k, v in section.items() if k not in ("source", "clip_model", "weights")}
    if section["source"] == "clip":
        options["clip_model"] = create_clip(section["clip_model"], section.get("weights"), seed=0)
    vectors = label_embeddings(class_names, source=section["source"], **options)
    return torch.as_tensor(np.asarray(vectors), dtype=torch.float32)


def label_source(section: dict | None) -> dict | None:
    """``run.json``'s ``label_source``: the section, a CLIP weights file as an absolute path (the
    run embeds new class names with it from any working directory)."""
    if not section or section.get("weights") is None:
        return section
    return {**section, "weights": str(Path(section["weights"]).resolve())}


def prepare_data(recipe: Recipe) -> PreparedData:
    """Read the data, split it, draw the mask, and get features (cache) or image sources."""
    section = recipe.data
    data = create_dataset(section.dataset, section.root, **section.options)
    if not section.allow_new_classes:
        refuse_misspelt_classes(data)
    data = apply_recipe_splits(data, section.model_dump(by_alias=True))
    names = {"train": section.train_split, "val": section.val_split, "test": section.test_split}
    if section.fold is not None:  # the fold held out of training (mlrkit audit scores it)
        names[HELDOUT] = section.fold.name
    rows = {s: data.split_index(name) for s, name in names.items() if name is not None}
    labels = {s: data.labels[i] for s, i in rows.items()}
    split, dropped = None, 0
    protocol = recipe.protocol.model_dump()
    if recipe.protocol.name == "zero_shot":
        split = class_split(protocol, data)
        keep = split.training_images(labels["train"])
        dropped = len(labels["train"]) - len(keep)
        rows["train"] = rows["train"][keep]
        labels["train"] = labels["train"][keep][:, split.seen]  # the unseen columns are gone
        if "val" in labels:
            labels["val"] = labels["val"][:, split.seen]
    mask = draw_mask(protocol, labels["train"])
    observed = labels["train"] if mask is None else mask.observed(labels["train"])
    targets = {s: observed if s == "train" else labels[s] for s in rows}
    spatial = method_class(recipe.method_name).input_kind == "spatial"
    if recipe.features is not None:
        encoder, cache, sources, shape = _feature_sources(recipe, data, rows, targets, spatial)
    else:
        encoder, cache = create_encoder(recipe.encoder), None
        sources, shape = _image_sources(encoder, data, rows, targets, spatial)
    return PreparedData(recipe=recipe, data=data, mask=mask, rows=rows, labels=labels,
                        sources=sources, feature_shape=shape, encoder=encoder, cache=cache,
                        class_split=split, dropped_train_images=dropped)


def _feature_sources(recipe: Recipe, data: MultiLabelData, rows: dict[str, np.ndarray],
                     targets: dict[str, np.ndarray], spatial: bool):
    """The recipe's encoder, its feature cache (extracted where missing), the cached features of
    each split as batches, and the ``feature_shape`` of one image."""
    feat = recipe.features
    encoder = create_encoder(feat)
    cache_dir = feat.cache or f"runs/cache/{data.name}-{feat.encoder}"
    device = resolve_device(recipe.train.device, current_info().local_rank)
    # under torchrun every rank computes its share of the images into the one cache
    extract_features(data, encoder, cache_dir, spatial=feat.spatial, batch_size=feat.batch_size,
                     num_workers=feat.num_workers, device=device)
    cache = load_features(cache_dir, data=data, encoder=encoder)
    array = cache.spatial if spatial else cache.pooled
    if array is None:
        raise ValueError(f"method {recipe.method_name} needs spatial features; set "
                         f"features.spatial=true")
    sources = {s: FeatureBatches(array[i], targets[s]) for s, i in rows.items()}
    return encoder, cache, sources, tuple(array.shape[1:])


def _image_sources(encoder: nn.Module, data: MultiLabelData, rows: dict[str, np.ndarray],
                   targets: dict[str, np.ndarray], spatial: bool):
    """Each split's images through the encoder's transform (training augmentation for the
    training split), and the ``feature_shape`` the encoder gives one image."""
    paths = np.asarray(data.image_paths, dtype=object)
    sources = {s: ImageBatches(paths[i], targets[s], encoder.transform(train=(s == "train")))
               for s, i in rows.items()}
    with torch.no_grad():
        probe = encoder.eval()(torch.zeros(1, *encoder.input_size))
    return sources, tuple((probe.spatial if spatial else probe.pooled).shape[1:])
