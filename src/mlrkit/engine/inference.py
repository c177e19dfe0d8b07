"""A finished run used from its folder alone: load it, evaluate it, predict labels of images,
score any label names. Nothing here builds a training method or a teacher, and no dataset is read
unless one is asked for (``evaluate_run``, ``prepare_from_run``)."""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mlrkit.data import MultiLabelData, create_dataset
from mlrkit.data.feature_cache import extract_features, load_features
from mlrkit.data.protocols import ClassSplit
from mlrkit.distributed import resolve_device
from mlrkit.encoders.frozen import frozen_encoder
from mlrkit.engine.batches import FeatureBatches, ImageBatches
from mlrkit.engine.calibrate import RunCalibration, fit_run_calibration
from mlrkit.engine.checkpoint import load_checkpoint
from mlrkit.engine.recipe import load_recipe
from mlrkit.engine.recipe_schema import Recipe
from mlrkit.engine.run_files import (
    CHECKPOINTS_DIR,
    CHECKSUMS_FILE,
    CONFIG_FILE,
    EVAL_CACHE_DIR,
    METRICS_FILE,
    RESULTS_FILE,
)
from mlrkit.engine.run_folder import (
    changed_files,
    placeholder_spec,
    read_run_info,
    rebuild_encoder,
    stored_label_embeddings,
    write_checksums,
)
from mlrkit.engine.sources import PreparedData, prepare_data, section_label_embeddings
from mlrkit.engine.trainer import evaluate_logits, metrics_log_records, score_report
from mlrkit.methods import Method, create_method
from mlrkit.methods.base import scoring_classes
from mlrkit.methods.encoder_head import EncoderHead
from mlrkit.metrics import zero_shot_metrics
from mlrkit.tagging import DEFAULT_ON, ranked_tags


def scores_report(method: Method, source, labels: np.ndarray, batch_size: int,
                  device: torch.device, prefix: str, split: ClassSplit | None,
                  all_embeddings: Tensor | None, zsl_forward: str = "unseen") -> dict:
    """Metrics of ``method`` on ``source``; with a class ``split``, ZSL / GZSL
    (:func:`~mlrkit.metrics.zero_shot_metrics`): GZSL from one forward over every class, ZSL from
    a forward over the unseen classes only (``zsl_forward="unseen"``, as MKT and SigRL score it:
    a head that normalises over classes, or relates them in a graph, scores a class differently
    among other classes) or from the unseen columns of the GZSL forward (``"slice"``)."""
    if split is None:
        return score_report(evaluate_logits(method, source, batch_size, device), labels, prefix)
    if zsl_forward not in ("unseen", "slice"):
        raise ValueError(f"zsl_forward must be 'unseen' or 'slice', got {zsl_forward!r}")
    with scoring_classes(method, all_embeddings, split.class_names):
        logits = evaluate_logits(method, source, batch_size, device)
    zsl_logits = None
    if zsl_forward == "unseen":
        unseen = torch.as_tensor(np.asarray(split.unseen), dtype=torch.long)
        with scoring_classes(method, all_embeddings[unseen.to(all_embeddings.device)],
                             [split.class_names[i] for i in split.unseen]):
            zsl_logits = evaluate_logits(method, source, batch_size, device)
    return zero_shot_metrics(logits, labels, split, prefix, zsl_logits=zsl_logits)


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
        """Images ``(B, 3, H, W)`` → logits, in eval mode: the end-to-end model, or the encoder
        that computed the training features (rebuilt once, its weights checked) followed by the
        method."""
        return self._image_model.eval()

    @functools.cached_property
    def _image_model(self) -> EncoderHead:
        if isinstance(self.method, EncoderHead):
            return self.method
        return EncoderHead(rebuild_encoder(self.info["encoder"], pretrained=True), self.method)

    def scoring_model(self) -> EncoderHead:
        """:meth:`image_model` for scoring images (what :meth:`predict` runs): on a CPU, a run on
        cached features gets its encoder frozen to ONNX (:mod:`mlrkit.encoders.frozen`: the same
        outputs to ~1e-5, without importing timm once exported); otherwise the torch model."""
        return self._scoring_model.eval()

    @functools.cached_property
    def _scoring_model(self) -> EncoderHead:
        described = self.info["encoder"]
        if isinstance(self.method, EncoderHead) or self.device.type != "cpu":
            return self._image_model
        frozen = frozen_encoder(
            described["name"], described["weights_id"], described["image_size"],
            lambda: rebuild_encoder(described, pretrained=True),
            data_config=described["data_config"],
        )  # fmt: skip
        return self._image_model if frozen is None else EncoderHead(frozen, self.method)

    @functools.cached_property
    def calibration(self) -> RunCalibration | None:
        """The run's calibration and per-class thresholds (``calibration.json``), if it has them."""
        return RunCalibration.load(self.run_dir)

    def probabilities(self, logits: Tensor) -> np.ndarray:
        """``(N, C)`` float64 probabilities of the run's logits: calibrated, or their sigmoid for
        a run without a calibration."""
        if self.calibration is None:
            return torch.sigmoid(logits.detach().double().cpu()).numpy()
        return self.calibration.probabilities(logits)

    @property
    def transform(self) -> Any:
        """The evaluation transform of the run's images (PIL image → ``(3, H, W)`` tensor)."""
        return self.image_model().encoder.transform(train=False)

    @property
    def thresholds(self) -> np.ndarray:
        """``(C,)`` the probability from which each class's label is on."""
        return self.on_thresholds(len(self.class_names))

    def predict(self, images: Sequence[str | Path], batch_size: int = 16) -> Tensor:
        """``(N, C)`` float64 probabilities of the run's classes for image files (calibrated;
        the sigmoid for a run without a calibration). A file that cannot be decoded is an error
        naming it."""
        model = self.scoring_model().to(self.device)
        source = _image_source(model, images, len(self.class_names))
        logits = evaluate_logits(model, source, batch_size, self.device)
        return torch.from_numpy(self.probabilities(logits))

    def tags(self, images: Sequence[str | Path], top_k: int = 5,
             batch_size: int = 16) -> list[dict]:
        """``[{"image", "labels": [{"label", "score", "on"}, ...]}, ...]``: each image's
        ``top_k`` classes by probability, marked on where they reach :attr:`thresholds`."""
        probs = self.predict(images, batch_size).numpy()
        return ranked_tags(list(images), self.class_names, probs, top_k, on=self.thresholds)

    def on_thresholds(self, num_classes: int) -> np.ndarray:
        """``(C,)`` the probability from which each class's label is on: the run's thresholds, or
        :data:`~mlrkit.tagging.DEFAULT_ON` (for classes scored by name, or no
        calibration)."""
        if self.calibration is None or num_classes != len(self.class_names):
            return np.full(num_classes, DEFAULT_ON)
        return self.calibration.on_thresholds()

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
        return section_label_embeddings(self.info["label_source"], list(names))

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


def load_run(run_dir: str | Path, allow_unfinished: bool = False) -> LoadedRun:
    """Rebuild a finished run from its folder alone, with its best weights (no data needed).

    A run that has not finished (no ``results.json``: still training, killed or failed) is a
    ``ValueError`` saying how far it got, unless ``allow_unfinished`` (then its best checkpoint so
    far is used, and a note on stderr says which epoch).
    """
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)  # first: a folder that is no run folder at all says so
    check_finished(run_dir, allow_unfinished)
    changed = changed_files(run_dir)
    if changed:
        raise ValueError(f"run {run_dir}: {', '.join(changed)} changed since training ended "
                         f"({CHECKSUMS_FILE}); a run is used only as written: restore the files "
                         f"or train again")
    method = create_method(info["method"]["name"], placeholder_spec(run_dir, info),
                           **info["method"]["hparams"])
    if info["end_to_end"] is not None:
        method = EncoderHead(rebuild_encoder(info["encoder"], pretrained=False), method,
                             **info["end_to_end"])
    load_checkpoint(run_dir / CHECKPOINTS_DIR / "best", method)
    return LoadedRun(run_dir, info, method)


def check_finished(run_dir: Path, allow_unfinished: bool) -> None:
    """Refuse (or, with ``allow_unfinished``, note on stderr) a run without ``results.json``."""
    if (run_dir / RESULTS_FILE).is_file():
        return
    log = run_dir / METRICS_FILE
    epochs = len(metrics_log_records(log)) if log.is_file() else 0
    state = f"{epochs} epoch(s) logged" if epochs else "no epoch logged"
    if not allow_unfinished:
        raise ValueError(f"run {run_dir} has not finished ({state}, no {RESULTS_FILE}); wait for "
                         f"it, resume it with 'mlrkit train --resume', or use its best checkpoint "
                         f"so far with --allow-unfinished")
    print(f"mlrkit: note: run {run_dir} has not finished ({state}); using its best checkpoint so "
          f"far", file=sys.stderr)


def evaluate_run(
    run_dir: str | Path,
    split: str | None = None,
    *,
    dataset: str | None = None,
    root: str | Path | None = None,
    options: dict | None = None,
    cache_dir: str | Path | None = None,
    allow_unfinished: bool = False,
) -> dict[str, float]:
    """Metrics of a finished run's best checkpoint, named after the split (``test_mAP``, ...).

    A zero-shot run's test split is scored over all classes, as at train time (``test_zsl_mAP``,
    ``test_gzsl_mAP``, ...; :func:`~mlrkit.metrics.zero_shot_metrics`); its train and
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
    run = load_run(run_dir, allow_unfinished)
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
        cache_dir = cache_dir or eval_cache_dir(run.run_dir, dataset, root, options, split)
        data = data if split is None else data.subset(split)
        source, labels = source_for(run, data, Path(cache_dir)), data.labels
    device, batch_size = run.device, run.info["inference"]["batch_size"]
    prefix = f"{split or 'all'}_"
    model = run.method.to(device)
    if names is None:
        return scores_report(model, source, labels, batch_size, device, prefix, class_split,
                              embeddings)
    with scoring_classes(model, embeddings, names):
        logits = evaluate_logits(model, source, batch_size, device)
    return score_report(logits, labels, prefix)


def calibrate_run(run_dir: str | Path, allow_unfinished: bool = False) -> RunCalibration:
    """Fit a finished run's calibration and thresholds on its validation split again (as
    training does at its end) and write ``calibration.json``; returns them."""
    run = load_run(run_dir, allow_unfinished)
    prepared = prepare_from_run(run)
    if "val" not in prepared.sources:
        raise ValueError(f"run {run.run_dir} has no validation split to calibrate on; train it "
                         f"with data.val_split set (or data.holdout)")
    model = run.method.to(run.device)
    logits = evaluate_logits(model, prepared.sources["val"], run.info["inference"]["batch_size"],
                             run.device)
    fitted = fit_run_calibration(logits, prepared.labels["val"], list(prepared.class_names))
    fitted.save(run.run_dir)
    if (run.run_dir / CHECKSUMS_FILE).is_file():  # the new calibration is part of the run now
        write_checksums(run.run_dir)
    return fitted


def prepare_from_run(run: LoadedRun) -> PreparedData:
    """The run's recipe's data prepared again (data, saved mask, features; no method, no
    teacher), read through the paths of run.json (absolute, or in the run folder) from any
    working directory; its class names are checked against the run's. A zero-shot run's
    ``eval_embeddings`` are the ones it stored."""
    info, recipe = run.info, load_recipe(run.run_dir / CONFIG_FILE)
    recipe["data"]["root"] = info["data"]["root"]
    if not Path(info["data"]["root"]).is_dir():
        raise ValueError(
            f"{info['data']['root']}: the data run {run.run_dir} was trained on is no longer "
            f"there; if it moved, give the run the data where it is now: --dataset "
            f"{recipe['data']['dataset']} --root NEW_FOLDER (eval, recover)")
    section = recipe["features"] if info["end_to_end"] is None else recipe["encoder"]
    section["weights"] = info["encoder"]["weights"]
    if info["features"] is not None:
        section["cache"] = info["features"]["cache"]
    if info["mask"] is not None:
        recipe["protocol"]["mask_file"] = str(run.run_dir / info["mask"])
    if info.get("zero_shot") is not None:
        recipe["protocol"] = {"name": "zero_shot",  # the saved split replaces unseen / fraction
                              "split_file": str(run.run_dir / info["zero_shot"]["split"])}
    prepared = prepare_data(Recipe.from_dict(recipe))
    if prepared.class_split is None:
        run.check_classes(prepared.data)
        return prepared
    if list(prepared.class_names) != run.class_names:
        raise ValueError(f"the seen classes of the recipe's split are not the {len(run.class_names)} "
                         f"classes run {run.run_dir} was trained on")
    prepared.eval_embeddings = stored_label_embeddings(run.run_dir, info, "eval_label_embeddings")
    return prepared


def eval_cache_dir(run_dir: Path, dataset: str, root: str | Path, options: dict | None,
                split: str | None) -> Path:
    """The default feature cache of another dataset's split under the run folder."""
    key = json.dumps([dataset, str(Path(root).resolve()), options or {}, split], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return run_dir / EVAL_CACHE_DIR / f"{dataset}-{split or 'all'}-{digest}"


def source_for(run: LoadedRun, data: MultiLabelData, cache_dir: Path) -> torch.utils.data.Dataset:
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
    run_dir: str | Path, images: list[str | Path], top_k: int = 5, batch_size: int = 16,
    allow_unfinished: bool = False,
) -> list[dict]:
    """Class probabilities of a finished run for image files, best first; needs only the run
    folder (and, for a run on cached features, the encoder's weights).

    Returns one ``{"image", "labels": [{"label", "score", "on"}, ...]}`` per image, with the
    ``top_k`` classes by probability (all of them when ``top_k`` exceeds the number of classes):
    the calibrated probability (``calibration.json``; the sigmoid for a run without one) and
    whether it reaches the class's threshold (:meth:`LoadedRun.tags`).

    Raises:
        ValueError: ``top_k`` is below 1.
    """
    if top_k < 1:
        raise ValueError(f"top_k (--top-k) is {top_k}; give at least 1, the number of labels "
                         f"listed per image")
    return load_run(run_dir, allow_unfinished).tags(images, top_k, batch_size)


def score_label_names(
    run_dir: str | Path, images: list[str | Path], label_names: Sequence[str],
    batch_size: int = 16,
    allow_unfinished: bool = False,
) -> np.ndarray:
    """``(N, L)`` scores of an open-vocabulary run for image files and any label names.

    The names are embedded as the run embedded its classes (``run.json``'s ``label_source``) and
    scored from the images through the run's encoder; the scores are the method's logits (a
    ranking per image; for ``devise`` ``scale x`` cosine, for ``conse`` the cosine).

    Raises:
        ValueError: the run is closed-set, or a name cannot be embedded.
    """
    run = load_run(run_dir, allow_unfinished)
    if not run.open_vocabulary:
        raise ValueError(f"run {run.run_dir} ({run.info['method']['name']}) is closed-set: it "
                         f"scores only its {len(run.class_names)} classes")
    embeddings = run.embed_class_names(label_names)
    model = run.scoring_model().to(run.device)
    source = _image_source(model, images, len(label_names))
    with scoring_classes(model, embeddings, label_names):
        logits = evaluate_logits(model, source, batch_size, run.device)
    return logits.float().cpu().numpy()
