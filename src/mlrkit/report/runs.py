"""What ``mlrkit report`` reads of a run folder, and how it groups runs that differ only by seed.

Everything comes from the run folder (see :mod:`mlrkit.engine.run`): ``config.yaml``,
``results.json``, ``metrics.jsonl``, ``mask.npz`` and the best checkpoint, which scores the recipe's
test split as ``mlrkit eval`` does (:func:`~mlrkit.engine.inference.load_run`,
:func:`~mlrkit.engine.inference.prepare_from_run`). Shapes: ``N`` images, ``C`` classes; labels int8
``(N, C)``, 1 / 0 / -1 unknown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from mlrkit import metrics
from mlrkit.engine.inference import LoadedRun, load_run, prepare_from_run
from mlrkit.engine.recover import recover
from mlrkit.engine.run_files import CONFIG_FILE, METRICS_FILE, RESULTS_FILE
from mlrkit.engine.run_folder import RESUMABLE_CHANGES, flatten_sections
from mlrkit.engine.sources import PreparedData
from mlrkit.engine.thresholds import Thresholds, choose_thresholds
from mlrkit.engine.trainer import evaluate_logits, metrics_log_records
from mlrkit.loaders import read_json
from mlrkit.methods.base import scoring_classes

#: The files ``mlrkit report`` needs in a run folder, and what to do when one is missing.
REQUIRED_FILES = {
    CONFIG_FILE: "not a run folder; give a folder that 'mlrkit train' wrote",
    RESULTS_FILE: "the run is not finished; finish it with 'mlrkit train --resume' or give a "
                    "finished run",
    METRICS_FILE: "the run has no training log; train it again",
}


@dataclass(frozen=True)
class Recovered:
    """The run's own training split completed as ``mlrkit recover --checkpoint RUN`` (without
    ``--dataset``) completes it, with the hidden truth.

    Attributes:
        probabilities: ``(N, C)`` float64 of the training images.
        observed: ``(N, C)`` int8, the labels the run trained on (its mask applied).
        truth: ``(N, C)`` int8, the dataset's labels of those images.
        recovered: ``(N, C)`` int8, ``observed`` with its unknown entries decided at ``thresholds``.
        thresholds: per-class thresholds chosen on the validation split (maximal F1).
    """

    probabilities: np.ndarray
    observed: np.ndarray
    truth: np.ndarray
    recovered: np.ndarray
    thresholds: Thresholds


@dataclass(frozen=True)
class RunData:
    """One run as the report shows it.

    Attributes:
        run_dir: the run folder.
        recipe_text: ``config.yaml`` as written.
        recipe: ``config.yaml`` parsed.
        results: ``results.json`` (``best_epoch``, validation and test metrics).
        history: the records of ``metrics.jsonl``, one per epoch.
        class_names: the ``C`` test classes (for a zero-shot run, seen and unseen).
        probabilities: ``(N, C)`` float64, sigmoid of the best checkpoint's test logits.
        labels: ``(N, C)`` int8 test labels.
        mask_stats: :meth:`~mlrkit.data.protocols.ProtocolMask.stats` of the saved mask on the
            training labels, or ``None`` without a mask.
        recovered: see :class:`Recovered`; ``None`` when the run has no hidden training label or
            no validation split to choose thresholds on.
    """

    run_dir: Path
    recipe_text: str
    recipe: dict[str, Any]
    results: dict[str, Any]
    history: list[dict[str, Any]]
    class_names: list[str]
    probabilities: np.ndarray
    labels: np.ndarray
    mask_stats: dict[str, float | int] | None
    recovered: Recovered | None

    @property
    def name(self) -> str:
        """The recipe's name and the folder's, e.g. ``linear_voc2007_partial (3f2a...)``."""
        return f"{self.recipe.get('name', '?')} ({self.run_dir.name})"

    @property
    def average_precision(self) -> np.ndarray:
        """``(C,)`` float64 test AP per class (:func:`mlrkit.metrics.average_precision`; NaN for a
        class without a test positive)."""
        return metrics.average_precision(self.probabilities, self.labels).numpy()

    @property
    def mean_ap(self) -> float:
        """Test mAP over the classes with a test positive (as ``results.json``'s ``test_mAP``)."""
        return metrics.mean_average_precision(self.probabilities, self.labels).value


def check_run_folder(run_dir: Path) -> None:
    """Raise ``ValueError`` naming ``run_dir`` (or its missing file) and what to do, unless it is
    a folder holding :data:`REQUIRED_FILES`."""
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: not a folder; give a run folder that 'mlrkit train' wrote")
    for name, advice in REQUIRED_FILES.items():
        if not (run_dir / name).is_file():
            raise ValueError(f"{run_dir / name}: missing; {advice}")


def read_history(path: Path) -> list[dict[str, Any]]:
    """The epoch records of a finished run's ``metrics.jsonl`` (any damaged line is an error)."""
    records = [record for _, record in metrics_log_records(path, drop_torn_last=False)]
    if not records:
        raise ValueError(f"{path}: no epoch logged; train the run again")
    return records


def read_run(run_dir: str | Path) -> RunData:
    """Read the run folder ``run_dir`` and score its test split with its best checkpoint."""
    run_dir = Path(run_dir)
    check_run_folder(run_dir)
    recipe_text = (run_dir / CONFIG_FILE).read_text(encoding="utf-8")
    results = read_json(run_dir / RESULTS_FILE, "train the run again")
    run = load_run(run_dir)
    prepared = prepare_from_run(run)
    if "test" not in prepared.sources:
        raise ValueError(f"{run_dir / 'config.yaml'}: the recipe has no test split; the report "
                         f"scores the test split: give a run trained with data.test_split")
    names = (run.class_names if prepared.class_split is None
             else list(prepared.class_split.class_names))
    mask = prepared.mask
    return RunData(
        run_dir=run_dir,
        recipe_text=recipe_text,
        recipe=yaml.safe_load(recipe_text),
        results=results,
        history=read_history(run_dir / METRICS_FILE),
        class_names=names,
        probabilities=run.probabilities(_logits(run, prepared, "test")),
        labels=prepared.labels["test"],
        mask_stats=None if mask is None else mask.stats(prepared.labels["train"]),
        recovered=_recovered(run, prepared),
    )


def _logits(run: LoadedRun, prepared: PreparedData, split: str) -> torch.Tensor:
    """``(N, C)`` logits of the best checkpoint on ``split``, as ``mlrkit eval`` computes them: a
    zero-shot run's test split is scored over every class, seen and unseen."""
    model, device = run.method.to(run.device), run.device
    batch_size = run.info["inference"]["batch_size"]
    source = prepared.sources[split]
    if prepared.class_split is None or split != "test":
        return evaluate_logits(model, source, batch_size, device)
    with scoring_classes(model, prepared.eval_embeddings, prepared.class_split.class_names):
        return evaluate_logits(model, source, batch_size, device)


def _recovered(run: LoadedRun, prepared: PreparedData) -> Recovered | None:
    """The training split completed as ``mlrkit recover`` does (thresholds of maximal F1 on the
    validation split), or ``None`` without hidden training labels or a validation split."""
    observed = prepared.sources["train"].targets
    if prepared.mask is None or "val" not in prepared.sources or not (observed < 0).any():
        return None
    thresholds = choose_thresholds(run.probabilities(_logits(run, prepared, "val")),
                                   prepared.labels["val"])
    probs = run.probabilities(_logits(run, prepared, "train"))
    return Recovered(probs, observed, prepared.labels["train"],
                     recover(observed, probs, thresholds), thresholds)


def comparable(recipe: dict[str, Any]) -> dict[str, Any]:
    """``recipe`` as ``{"dotted.key": value}`` without its ``seed`` fields and the keys that do
    not change what is trained (``RESUMABLE_CHANGES``: run folder, workers, device, progress)."""
    return {key: value for key, value in flatten_sections(recipe).items()
            if key.rsplit(".", 1)[-1] != "seed" and key not in RESUMABLE_CHANGES}


def seed_groups(recipes: list[dict[str, Any]]) -> list[list[int]]:
    """Indices of ``recipes`` grouped by :func:`comparable` (runs that differ only by seed), in
    first-seen order."""
    groups: dict[str, list[int]] = {}
    for index, recipe in enumerate(recipes):
        key = json.dumps(comparable(recipe), sort_keys=True, default=str)
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def differing_settings(recipes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each recipe (one per group), the :func:`comparable` entries whose value is not the
    same in all ``recipes``."""
    flat = [comparable(recipe) for recipe in recipes]
    keys = dict.fromkeys(key for entries in flat for key in entries)
    varying = [key for key in keys if len({json.dumps(f.get(key), default=str)
                                           for f in flat}) > 1]
    return [{key: f.get(key) for key in varying} for f in flat]
