"""From a recipe to a finished run folder: data → protocol mask → features or images → method → fit.

A run folder holds everything needed to repeat, evaluate or use the run::

    config.yaml      the resolved recipe
    run.json         what eval and predict need without the data (see engine.run_folder)
    label_embeddings.safetensors   the (C, E) label embeddings the method was built with, if any
    mask.npz         the protocol's known-label mask of the training split (ProtocolMask)
    metrics.jsonl    one line per epoch
    checkpoints/     best/ and the last epoch (see engine.checkpoint)
    results.json     best epoch, validation and test metrics, the source_hash of the code that
                     finished the run (mlrkit.provenance)
    train.lock       while a process trains into the folder (see engine.run_lock)

One process trains into a folder at a time, and a folder holds one run (see
:func:`~mlrkit.engine.run_folder.open_run_folder`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mlrkit.atomic import atomic_write, naming_errors
from mlrkit.data import MultiLabelData, create_dataset
from mlrkit.data.feature_cache import extract_features, load_features
from mlrkit.data.protocols import (
    ClassSplit,
    ProtocolMask,
    partial_labels,
    single_positive,
)
from mlrkit.data.splits import apply_recipe_splits
from mlrkit.engine.batches import FeatureBatches, ImageBatches
from mlrkit.engine.checkpoint import load_checkpoint
from mlrkit.engine.distributed import current_info, init_distributed, resolve_device
from mlrkit.engine.pseudo_labels import (
    PSEUDO_FILE,
    PseudoLabels,
    pseudo_label_quality,
    pseudo_labels_section,
    teacher_scores,
    vlpl_pseudo_labels,
)
from mlrkit.engine.recipe import load_recipe, save_recipe
from mlrkit.engine.run_folder import (
    MASK_FILE,
    RUN_FILE,
    open_run_folder,
    placeholder_spec,
    read_run_info,
    rebuild_encoder,
    run_info,
    write_run_files,
)
from mlrkit.engine.run_lock import run_lock
from mlrkit.engine.trainer import TrainConfig, evaluate_logits, fit, score_report
from mlrkit.engine.zero_shot import (
    SPLIT_FILE,
    class_split,
    scoring_classes,
    seen_training_rows,
    zero_shot_info,
    zero_shot_metrics,
)
from mlrkit.methods import Method, MethodOutput, StepInfo, TaskSpec, create_method, method_class
from mlrkit.provenance import source_hash


class EncoderHead(Method):
    """An image encoder followed by a method: end-to-end training, and prediction from images.

    ``inputs`` are images ``(B, 3, H, W)``; the method receives the encoder's pooled ``(B, D)`` or
    spatial ``(B, D, h, w)`` features (a CLIP tower's token layout ``(B, R, E)``), as its
    ``input_kind`` asks. ``trainable`` lists the parameter-name prefixes of the encoder that are
    fine-tuned (``None``: all of it; ``[]``: none, e.g. SARB's ``["model.layer4"]``); frozen
    encoder modules stay in eval mode, so their BatchNorm statistics do not move. What the encoder
    lists in ``frozen_prefixes`` (a CLIP tower's teacher) is never trained. ``lr_decay`` scales the
    learning rate of the encoder layer by layer (:meth:`param_groups`; encoders with ``layer_of``
    and ``num_blocks``, i.e. CLIP towers).
    """

    def __init__(self, encoder: nn.Module, method: Method, lr_mult: float = 1.0,
                 trainable: list[str] | None = None, lr_decay: float | None = None) -> None:
        super().__init__(method.spec)
        self.encoder, self.method, self.lr_mult = encoder, method, lr_mult
        self.trainable, self.lr_decay = trainable, lr_decay
        self._frozen = tuple(getattr(encoder, "frozen_prefixes", ()))
        self._check_trainable()
        self._check_lr_decay()
        for name, param in self.encoder.named_parameters():
            param.requires_grad_(self._is_trainable(name))

    @classmethod
    def from_section(cls, encoder: nn.Module, method: Method, section: dict) -> EncoderHead:
        """The head a recipe's resolved ``encoder`` section describes."""
        return cls(encoder, method, lr_mult=section.get("lr_mult", 1.0),
                   trainable=section.get("trainable"), lr_decay=section.get("lr_decay"))

    def _check_trainable(self) -> None:
        """Each ``trainable`` prefix names encoder parameters, none of them frozen."""
        names = [n for n, _ in self.encoder.named_parameters()]
        for prefix in self.trainable or ():
            frozen = [f for f in self._frozen if _inside(prefix, f) or _inside(f, prefix)]
            if frozen:
                raise ValueError(f"encoder.trainable: {prefix!r} covers the encoder's frozen "
                                 f"{frozen[0]!r}, which is never trained; name parts outside it")
            if not any(_inside(n, prefix) for n in names):
                tops = sorted({".".join(n.split(".")[:2]) for n in names})
                raise ValueError(f"encoder.trainable: {prefix!r} names no parameter of encoder "
                                 f"{getattr(self.encoder, 'name', '?')!r}; its parameters lie "
                                 f"under {', '.join(tops[:8])}")

    def _check_lr_decay(self) -> None:
        """``lr_decay`` in ``(0, 1]``, for an encoder whose blocks are numbered."""
        if self.lr_decay is None:
            return
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"encoder.lr_decay is {self.lr_decay}; give a value in (0, 1] "
                             f"(SigRL: 0.65), or null for none")
        if not (hasattr(self.encoder, "layer_of") and hasattr(self.encoder, "num_blocks")):
            raise ValueError(f"encoder.lr_decay: encoder {getattr(self.encoder, 'name', '?')!r} "
                             f"has no numbered blocks; layer-wise decay applies to CLIP image "
                             f"towers (clip:ARCH); remove lr_decay")

    @property
    def has_unused_parameters(self) -> bool:
        """The wrapped method's (e.g. SARB's alpha/beta before ``mixup_epoch``), for DDP."""
        return self.method.has_unused_parameters

    @property
    def training_free(self) -> bool:
        """The wrapped method's: nothing to train (then the encoder is not trained either)."""
        return self.method.training_free

    def _is_trainable(self, name: str) -> bool:
        """Whether parameter or module ``name`` lies inside one of the trainable prefixes and
        outside the frozen ones."""
        if any(_inside(name, f) for f in self._frozen):
            return False
        return self.trainable is None or any(_inside(name, p) for p in self.trainable)

    def encode(self, images: Tensor) -> Tensor:
        out = self.encoder(images)
        return out.spatial if self.method.input_kind == "spatial" else out.pooled

    def forward(self, inputs: Tensor, targets: Tensor | None = None, index: Tensor | None = None,
                step: StepInfo | None = None) -> MethodOutput:
        return self.method(self.encode(inputs), targets, index, step)

    def train(self, mode: bool = True) -> EncoderHead:
        super().train(mode)
        for name, module in self.encoder.named_modules():
            if not self._is_trainable(name):
                module.training = False  # this module only: its trainable children keep mode
        return self

    def param_groups(self) -> list[dict]:
        """The method's groups, then the trainable encoder parameters: one group at ``lr_mult``,
        or with ``lr_decay`` one group per depth ``d`` (``encoder.layer_of``) at ``lr_mult *
        lr_decay ** (L + 1 - d)``: block ``i`` of ``L`` (depth ``i + 1``) at ``lr_decay ** (L -
        i)``, what follows the blocks (ln_post, proj) at 1 and the stem (depth 0) at ``lr_decay
        ** (L + 1)``, as SigRL's (BEiT's) ``param_groups_lrd``. The method's own groups keep
        their scale (1)."""
        groups = self.method.param_groups()
        named = [(n, p) for n, p in self.encoder.named_parameters() if p.requires_grad]
        if not named:
            return groups
        if self.lr_decay is None:
            return [*groups, {"params": [p for _, p in named], "lr_mult": self.lr_mult}]
        by_depth: dict[int, list[nn.Parameter]] = {}
        for name, param in named:
            by_depth.setdefault(self.encoder.layer_of(name), []).append(param)
        top = self.encoder.num_blocks + 1
        return [*groups, *({"params": params, "lr_mult": self.lr_mult * self.lr_decay ** (top - d)}
                           for d, params in sorted(by_depth.items()))]

    def on_train_epoch_start(self, epoch, train_batches, epochs=None) -> None:
        def encoded():
            with torch.no_grad():
                for images, targets, index in train_batches():
                    yield self.encode(images), targets, index

        self.method.on_train_epoch_start(epoch, encoded, epochs)


def _inside(name: str, prefix: str) -> bool:
    """Whether dotted ``name`` is ``prefix`` or lies under it."""
    return name == prefix or name.startswith(prefix + ".")


@dataclass
class PreparedRun:
    """Everything built from a recipe, before training.

    For the zero-shot protocol ``spec``, the training and validation labels hold the seen classes
    only; ``class_split`` is the split, ``eval_embeddings`` ``(C, E)`` the label embeddings of all
    classes (what the test split is scored with) and ``dropped_train_images`` the number of
    training images without a seen positive.
    """

    recipe: dict
    data: MultiLabelData
    mask: ProtocolMask | None
    method: Method
    sources: dict[str, torch.utils.data.Dataset]
    labels: dict[str, np.ndarray]
    spec: TaskSpec
    run_info: dict  # run.json, see engine.run_folder
    class_split: ClassSplit | None = None
    eval_embeddings: Tensor | None = None
    dropped_train_images: int = 0
    pseudo_labels: PseudoLabels | None = None


def draw_mask(protocol: dict, train_labels: np.ndarray) -> ProtocolMask | None:
    """The recipe's protocol applied to the training labels (or loaded from ``mask_file``).

    ``protocol`` is a resolved recipe section: :func:`~mlrkit.engine.recipe.load_recipe` filled in
    the defaults of its protocol (``PROTOCOL_DEFAULTS``)."""
    if protocol.get("mask_file"):
        return ProtocolMask.load(protocol["mask_file"])
    name = protocol["name"]
    if name == "partial":
        return partial_labels(train_labels, protocol["known"], seed=protocol["seed"],
                              mode=protocol["mode"])
    if name == "single_positive":
        return single_positive(train_labels, seed=protocol["seed"], mode=protocol["mode"])
    return None


def _create_encoder(section: dict) -> nn.Module:
    """The image encoder of a resolved ``encoder`` or ``features`` section (a CLIP tower for
    ``clip:ARCH`` names, with its frozen teacher when ``teacher`` is set)."""
    from mlrkit.encoders import create_image_encoder

    options = {"teacher": True} if section.get("teacher") else {}
    return create_image_encoder(section["name"], weights=section.get("weights"),
                                image_size=section.get("image_size"),
                                seed=section.get("seed", 0), **options)


def _label_embeddings(section: dict | None, class_names: list[str]) -> Tensor | None:
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


def _label_source(section: dict | None) -> dict | None:
    """``run.json``'s ``label_source``: the section, a CLIP weights file as an absolute path (the
    run embeds new class names with it from any working directory)."""
    if not section or section.get("weights") is None:
        return section
    return {**section, "weights": str(Path(section["weights"]).resolve())}


def prepare(recipe: dict) -> PreparedRun:
    """Read the data, draw the mask, get features (cache) or image sources, build the method."""
    cfg_data = recipe["data"]
    data = create_dataset(cfg_data["dataset"], cfg_data["root"], **cfg_data["options"])
    data = apply_recipe_splits(data, cfg_data)
    index = {
        s: None if cfg_data[f"{s}_split"] is None else data.split_index(cfg_data[f"{s}_split"])
        for s in ("train", "val", "test")
    }
    labels = {s: data.labels[i] for s, i in index.items() if i is not None}
    split, dropped = None, 0
    if recipe["protocol"]["name"] == "zero_shot":
        split = class_split(recipe["protocol"], data)
        keep = seen_training_rows(split, labels["train"])
        dropped = len(labels["train"]) - len(keep)
        index["train"] = index["train"][keep]
        labels["train"] = labels["train"][keep][:, split.seen]  # the unseen columns are gone
        if "val" in labels:
            labels["val"] = labels["val"][:, split.seen]
    mask = draw_mask(recipe["protocol"], labels["train"])
    observed = labels["train"] if mask is None else mask.observed(labels["train"])
    kind = method_class(recipe["method"]["name"]).input_kind

    if recipe["features"] is not None:
        feat = recipe["features"]
        encoder = _create_encoder({"name": feat["encoder"], **feat})
        cache_dir = feat.get("cache") or f"runs/cache/{data.name}-{feat['encoder']}"
        device = resolve_device(recipe["train"].get("device", "auto"), current_info().local_rank)
        # under torchrun every rank computes its share of the images into the one cache
        extract_features(data, encoder, cache_dir, spatial=bool(feat.get("spatial")),
                         batch_size=feat.get("batch_size", 32),
                         num_workers=feat.get("num_workers", 2), device=device)
        cache = load_features(cache_dir, data=data, encoder=encoder)
        array = cache.spatial if kind == "spatial" else cache.pooled
        if array is None:
            raise ValueError(f"method {recipe['method']['name']} needs spatial features; set "
                             f"features.spatial=true")
        sources = {s: FeatureBatches(array[i], observed if s == "train" else labels[s])
                   for s, i in index.items() if i is not None}
        feature_shape = tuple(array.shape[1:])
    else:
        enc, cache = recipe["encoder"], None
        encoder = _create_encoder(enc)
        paths = np.asarray(data.image_paths, dtype=object)
        sources = {
            s: ImageBatches(paths[i], observed if s == "train" else labels[s],
                            encoder.transform(train=(s == "train")))
            for s, i in index.items() if i is not None
        }
        size = encoder.input_size
        with torch.no_grad():
            probe = encoder.eval()(torch.zeros(1, *size))
        feature_shape = tuple((probe.spatial if kind == "spatial" else probe.pooled).shape[1:])

    embeddings = _label_embeddings(recipe["label_embeddings"], data.class_names)
    classes = np.arange(data.num_classes) if split is None else split.seen
    names = tuple(data.class_names[c] for c in classes)
    teacher = pseudo_labels_section(recipe) if recipe.get("pseudo_labels") else None
    pseudo = None if teacher is None else _pseudo_labels(teacher, recipe["features"], data,
                                                         index["train"], names, cache)
    spec = TaskSpec(
        num_classes=len(classes),
        feature_shape=feature_shape,
        train_targets=observed,
        label_embeddings=None if embeddings is None else embeddings[classes],
        class_names=names,
        pseudo_labels=None if pseudo is None else pseudo.labels,
    )
    torch.manual_seed(recipe["train"].get("seed", 0))
    hparams = {k: v for k, v in recipe["method"].items() if k != "name"}
    method = create_method(recipe["method"]["name"], spec, **hparams)
    if recipe["encoder"] is not None:
        method = EncoderHead.from_section(encoder, method, recipe["encoder"])
    description = run_info(recipe, spec, hparams, encoder, cache, masked=mask is not None)
    description["label_source"] = _label_source(recipe["label_embeddings"])
    if split is not None:
        description["zero_shot"] = zero_shot_info(split, dropped)
    if pseudo is not None:
        description["pseudo_labels"] = {
            **{k: teacher[k] for k in ("teacher", "tau", "theta", "negatives")},
            **pseudo_label_quality(pseudo.labels, labels["train"]),
        }
    return PreparedRun(recipe, data, mask, method, sources, labels, spec, description, split,
                       embeddings, dropped, pseudo)


def _pseudo_labels(section: dict, features: dict | None, data: MultiLabelData,
                   train_rows: np.ndarray, class_names: Sequence[str], cache) -> PseudoLabels:
    """The teacher pseudo-labels of the training rows (``section``: the recipe's
    ``pseudo_labels`` with its defaults); the ConSE teacher reads cached pooled ImageNet
    ``tf_efficientnet_lite0`` features when the recipe's ``features`` are exactly those."""
    feat = features or {}
    pooled = None
    if (section["teacher"] == "conse" and cache is not None
            and feat.get("encoder") == "tf_efficientnet_lite0" and feat.get("weights") == "imagenet"):
        pooled = np.asarray(cache.pooled[train_rows])
    images = [Path(p) for p in np.asarray(data.image_paths, dtype=object)[train_rows]]
    scores = teacher_scores(section, class_names, images, pooled)
    return vlpl_pseudo_labels(scores, section["tau"], section["theta"], section["negatives"])


def train_run(recipe: dict, run_dir: str | Path, *, resume: bool = False,
              overwrite: bool = False) -> dict:
    """Train the recipe into ``run_dir`` and return the results (also written to results.json).

    The folder is locked for the whole call (a second process stops at once, see
    :mod:`mlrkit.engine.run_lock`). ``resume`` continues the run of this same recipe in
    ``run_dir`` from its last finished epoch, or starts one where the folder has no config.yaml;
    a new run into a folder that holds one needs ``overwrite``, which removes the old run's files
    first (:func:`~mlrkit.engine.run_folder.open_run_folder`).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cfg = TrainConfig(**recipe["train"])
    info = init_distributed(resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0"))))
    with run_lock(run_dir) if info.is_main else nullcontext():
        if info.is_main:  # the other torchrun ranks follow rank 0's folder
            resume = open_run_folder(run_dir, recipe, resume=resume, overwrite=overwrite)
        return _train(recipe, run_dir, cfg, resume, started)


def _train(recipe: dict, run_dir: Path, cfg: TrainConfig, resume: bool, started: float) -> dict:
    """The body of :func:`train_run`, once the folder is locked and checked."""
    info = current_info()
    prepared = prepare(recipe)
    if info.is_main:
        with naming_errors(run_dir / "config.yaml"):
            save_recipe(recipe, run_dir / "config.yaml")
        if prepared.mask is not None:
            prepared.mask.save(run_dir / MASK_FILE)
        if prepared.class_split is not None:
            prepared.class_split.save(run_dir / SPLIT_FILE)
        if prepared.pseudo_labels is not None:
            prepared.pseudo_labels.save(run_dir / PSEUDO_FILE)
        write_run_files(run_dir, prepared.run_info, prepared.spec.label_embeddings,
                        prepared.eval_embeddings if prepared.class_split is not None else None)
    result = fit(prepared.method, prepared.sources["train"], prepared.sources.get("val"),
                 prepared.labels.get("val"), cfg, run_dir, resume=resume)
    results = {
        "name": recipe["name"],
        "method": recipe["method"]["name"],
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "threads": torch.get_num_threads(),
        "source_hash": source_hash(),
        **result.best_val,
    }
    if prepared.class_split is not None:
        results["dropped_train_images"] = prepared.dropped_train_images
    if "test" in prepared.sources:
        results.update(_evaluate(prepared, "test", cfg))
    results["seconds"] = time.perf_counter() - started
    if info.is_main:  # written last and atomically: its presence means the run is complete
        with atomic_write(run_dir / "results.json", "w") as f:
            json.dump(results, f, indent=1)
    return results


def _evaluate(prepared: PreparedRun, split: str, cfg: TrainConfig) -> dict[str, float]:
    """The test metrics: :func:`score_report`, or for the zero-shot protocol the ZSL / GZSL
    figures over all classes (:func:`~mlrkit.engine.zero_shot.zero_shot_metrics`)."""
    device = resolve_device(cfg.device, current_info().local_rank)
    return _scores_report(prepared.method, prepared.sources[split], prepared.labels[split],
                          cfg.eval_batch_size, device, f"{split}_", prepared.class_split,
                          prepared.eval_embeddings)


def _scores_report(method: Method, source, labels: np.ndarray, batch_size: int,
                   device: torch.device, prefix: str, split: ClassSplit | None,
                   all_embeddings: Tensor | None) -> dict:
    """Metrics of ``method`` on ``source``; with a class ``split`` scored over every class
    (``all_embeddings``) as ZSL / GZSL."""
    if split is None:
        return score_report(evaluate_logits(method, source, batch_size, device), labels, prefix)
    with scoring_classes(method, all_embeddings, split.class_names):
        logits = evaluate_logits(method, source, batch_size, device)
    return zero_shot_metrics(logits, labels, split, prefix)


@dataclass
class LoadedRun:
    """A finished run rebuilt from its folder alone (``run.json``, see
    :mod:`mlrkit.engine.run_folder`) with its best weights."""

    run_dir: Path
    info: dict
    method: Method  # an EncoderHead for end-to-end runs

    @property
    def class_names(self) -> list[str]:
        return self.info["class_names"]

    @property
    def device(self) -> torch.device:
        return resolve_device(self.info["inference"]["device"])

    def image_model(self) -> EncoderHead:
        """Images ``(B, 3, H, W)`` → logits: the end-to-end model, or the encoder that computed
        the training features (rebuilt, its weights checked) followed by the method."""
        if isinstance(self.method, EncoderHead):
            return self.method
        return EncoderHead(rebuild_encoder(self.info["encoder"], pretrained=True), self.method)

    @property
    def open_vocabulary(self) -> bool:
        """Whether the run's method scores any class names (``Method.open_vocabulary``)."""
        return getattr(self.method, "method", self.method).open_vocabulary

    def embed_class_names(self, names: Sequence[str]) -> Tensor:
        """``(C', E)`` label embeddings of ``names`` from the run's label-embedding source (the
        recipe's ``label_embeddings`` section, in ``run.json``)."""
        if self.info.get("label_source") is None:
            raise ValueError(f"run {self.run_dir} records no label-embedding source (trained "
                             f"before run.json had one, or without label embeddings)")
        return _label_embeddings(self.info["label_source"], list(names))

    def check_classes(self, data: MultiLabelData) -> None:
        """Refuse ``data`` unless it has the run's class names in the run's order."""
        names = list(data.class_names)
        if names == self.class_names:
            return
        missing = [c for c in self.class_names if c not in names]
        extra = [c for c in names if c not in self.class_names]
        detail = f"missing {missing}, extra {extra}" if missing or extra else "another order"
        raise ValueError(
            f"dataset {data.name!r} at {data.root} does not have the classes of run "
            f"{self.run_dir} ({detail}); the run predicts {len(self.class_names)} classes: "
            f"{', '.join(self.class_names)}"
        )


def load_run(run_dir: str | Path) -> LoadedRun:
    """Rebuild a finished run from its folder alone, with its best weights (no data needed)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder: no config.yaml in it")
    if not (run_dir / RUN_FILE).is_file():
        _describe_older_run(run_dir)
    info = read_run_info(run_dir)
    method = create_method(info["method"]["name"], placeholder_spec(run_dir, info),
                           **info["method"]["hparams"])
    if info["end_to_end"] is not None:
        method = EncoderHead(rebuild_encoder(info["encoder"], pretrained=False), method,
                             **info["end_to_end"])
    load_checkpoint(run_dir / "checkpoints" / "best", method)
    return LoadedRun(run_dir, info, method)


def _describe_older_run(run_dir: Path) -> None:
    """Write the run files of a run trained before run folders had them, from its recipe and
    data (read from the working directory it was trained in)."""
    recipe = load_recipe(run_dir / "config.yaml")
    if (run_dir / MASK_FILE).is_file():
        recipe["protocol"]["mask_file"] = str(run_dir / MASK_FILE)
    prepared = prepare(recipe)
    write_run_files(run_dir, prepared.run_info, prepared.spec.label_embeddings)


def evaluate_run(
    run_dir: str | Path,
    split: str | None = None,
    *,
    dataset: str | None = None,
    root: str | Path | None = None,
    options: dict | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, float]:
    """Metrics of a finished run's best checkpoint, named after the split (``test_mAP``, ...).

    A zero-shot run's test split is scored over all classes, as at train time (``test_zsl_mAP``,
    ``test_gzsl_mAP``, ...; :func:`~mlrkit.engine.zero_shot.zero_shot_metrics`); its train and
    validation splits over the seen classes.

    Args:
        run_dir: the run folder.
        split: without ``dataset``, ``"train"``, ``"val"`` or ``"test"`` (the default) as the
            recipe defines them; with ``dataset``, a split of that dataset (default: all its
            images, metrics ``all_...``).
        dataset, root, options: another dataset (reader name, folder, reader options): with the
            run's class names, or any class names for an open-vocabulary run (embedded as the run
            embeds its classes); default: the recipe's, where it was at train time.
        cache_dir: where a run on cached features stores the features of ``dataset`` (default
            ``<run_dir>/eval-cache/<dataset>-<split>-<hash of root, options>``).

    Raises:
        ValueError: the dataset's class names differ from a closed-set run's.
    """
    run = load_run(run_dir)
    class_split, embeddings, names = None, None, None
    if dataset is None:
        if root is not None or options:
            raise ValueError("root and options describe another dataset: give its reader too")
        split = split or "test"
        prepared = prepare_from_run(run)
        if split not in prepared.sources:
            raise ValueError(f"split {split!r} is not part of this run's recipe")
        source, labels = prepared.sources[split], prepared.labels[split]
        if prepared.class_split is not None and labels.shape[1] == prepared.data.num_classes:
            class_split, embeddings = prepared.class_split, prepared.eval_embeddings
    else:
        if root is None:
            raise ValueError(f"dataset {dataset!r} needs its root folder")
        data = create_dataset(dataset, root, **(options or {}))
        if run.open_vocabulary:  # any class names, embedded as the run embeds its classes
            names = list(data.class_names)
            embeddings = run.embed_class_names(names)
        else:
            run.check_classes(data)
        cache_dir = cache_dir or _eval_cache(run.run_dir, dataset, root, options, split)
        data = data if split is None else data.subset(split)
        source, labels = _source_for(run, data, Path(cache_dir)), data.labels
    device, batch_size = run.device, run.info["inference"]["batch_size"]
    prefix = f"{split or 'all'}_"
    model = run.method.to(device)
    if names is None:
        return _scores_report(model, source, labels, batch_size, device, prefix, class_split,
                              embeddings)
    with scoring_classes(model, embeddings, names):
        logits = evaluate_logits(model, source, batch_size, device)
    return score_report(logits, labels, prefix)


def prepare_from_run(run: LoadedRun) -> PreparedRun:
    """The run's recipe prepared again (data, saved mask, features), read through the paths of
    run.json (absolute, or in the run folder) from any working directory; its class names are
    checked against the run's."""
    info, recipe = run.info, load_recipe(run.run_dir / "config.yaml")
    recipe["data"]["root"] = info["data"]["root"]
    section = recipe["features"] if info["end_to_end"] is None else recipe["encoder"]
    section["weights"] = info["encoder"]["weights"]
    if info["features"] is not None:
        section["cache"] = info["features"]["cache"]
    if info["mask"] is not None:
        recipe["protocol"]["mask_file"] = str(run.run_dir / info["mask"])
    if info.get("zero_shot") is not None:
        recipe["protocol"]["split_file"] = str(run.run_dir / info["zero_shot"]["split"])
    prepared = prepare(recipe)
    if prepared.class_split is None:
        run.check_classes(prepared.data)
    elif list(prepared.spec.class_names) != run.class_names:
        raise ValueError(f"the seen classes of the recipe's split are not the {len(run.class_names)} "
                         f"classes run {run.run_dir} was trained on")
    return prepared


def _eval_cache(run_dir: Path, dataset: str, root: str | Path, options: dict | None,
                split: str | None) -> Path:
    """The default feature cache of another dataset's split under the run folder."""
    key = json.dumps([dataset, str(Path(root).resolve()), options or {}, split], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return run_dir / "eval-cache" / f"{dataset}-{split or 'all'}-{digest}"


def _source_for(run: LoadedRun, data: MultiLabelData, cache_dir: Path) -> torch.utils.data.Dataset:
    """Batches of ``data`` for the run's model: its images for an end-to-end run, else their
    features, extracted into (or reused from) ``cache_dir`` with the run's encoder."""
    if run.info["features"] is None:
        return ImageBatches(data.image_paths, data.labels,
                            run.method.encoder.transform(train=False))
    feat = run.info["features"]
    spatial = run.method.input_kind == "spatial"
    encoder = rebuild_encoder(run.info["encoder"], pretrained=True)
    extract_features(data, encoder, cache_dir, spatial=spatial,
                     spatial_dtype=feat["spatial_dtype"] or "float16",
                     batch_size=feat["batch_size"], num_workers=feat["num_workers"],
                     device=run.device)
    cache = load_features(cache_dir, data=data, encoder=encoder)
    return FeatureBatches(cache.spatial if spatial else cache.pooled, data.labels)


def _image_source(model: EncoderHead, images: Sequence[str | Path],
                  num_classes: int) -> ImageBatches:
    """The image files through the model's evaluation transform, with placeholder labels."""
    return ImageBatches([Path(p) for p in images], np.zeros((len(images), num_classes), np.int8),
                        model.encoder.transform(train=False))


def predict_images(
    run_dir: str | Path, images: list[str | Path], top_k: int = 5, batch_size: int = 16
) -> list[dict]:
    """Class probabilities of a finished run for image files, best first; needs only the run
    folder (and, for a run on cached features, the encoder's weights).

    Returns one ``{"image", "labels": [{"label", "score"}, ...]}`` per image, with the ``top_k``
    classes by probability (all of them when ``top_k`` exceeds the number of classes).

    Raises:
        ValueError: ``top_k`` is below 1.
    """
    if top_k < 1:
        raise ValueError(f"top_k (--top-k) is {top_k}; give at least 1, the number of labels "
                         f"listed per image")
    run = load_run(run_dir)
    model = run.image_model().to(run.device)
    source = _image_source(model, images, len(run.class_names))
    logits = evaluate_logits(model, source, batch_size, run.device)
    probs = torch.sigmoid(logits)
    top = probs.topk(min(top_k, probs.shape[1]), dim=1)
    names = run.class_names
    return [
        {
            "image": str(path),
            "labels": [{"label": names[c], "score": round(float(s), 6)}
                       for s, c in zip(scores.tolist(), classes.tolist(), strict=True)],
        }
        for path, scores, classes in zip(images, top.values, top.indices, strict=True)
    ]


def score_label_names(
    run_dir: str | Path, images: list[str | Path], label_names: Sequence[str],
    batch_size: int = 16,
) -> np.ndarray:
    """``(N, L)`` scores of an open-vocabulary run for image files and any label names.

    The names are embedded as the run embedded its classes (``run.json``'s ``label_source``) and
    scored from the images through the run's encoder; the scores are the method's logits (a
    ranking per image; for ``devise`` ``scale x`` cosine, for ``conse`` the cosine).

    Raises:
        ValueError: the run is closed-set, or a name cannot be embedded.
    """
    run = load_run(run_dir)
    if not run.open_vocabulary:
        raise ValueError(f"run {run.run_dir} ({run.info['method']['name']}) is closed-set: it "
                         f"scores only its {len(run.class_names)} classes")
    embeddings = run.embed_class_names(label_names)
    model = run.image_model().to(run.device)
    source = _image_source(model, images, len(label_names))
    with scoring_classes(model, embeddings, label_names):
        logits = evaluate_logits(model, source, batch_size, run.device)
    return logits.float().cpu().numpy()
