"""Fill in missing labels with a trained run: per-class thresholds chosen on validation, then the
unknown entries of a label matrix become 1 / 0 (or stay unknown where the run is not sure
enough), each with the model's probability.

Works for every method: it needs only probabilities, the run's calibrated ones
(:meth:`~mlrkit.engine.inference.LoadedRun.probabilities`).

Shapes: ``N`` images, ``C`` classes. Labels follow the mlrkit convention (1 / 0 / -1 unknown).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlrkit.atomic import atomic_write
from mlrkit.data import MultiLabelData
from mlrkit.engine.thresholds import (
    MIN_VAL_POSITIVES,
    Thresholds,
    choose_thresholds,
)


def recover(observed: np.ndarray, probs: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """``(N, C)`` int8: known entries of ``observed`` kept; an unknown one becomes 1 at or above
    its class's positive threshold, 0 below its negative threshold, and stays -1 in between."""
    decided = np.where(probs >= thresholds.values[None, :], 1,
                       np.where(probs < thresholds.negatives[None, :], 0, -1))
    return np.where(observed >= 0, observed, decided).astype(np.int8)


def write_long_table(path: Path, data: MultiLabelData, observed: np.ndarray,
                     recovered: np.ndarray, probs: np.ndarray) -> None:
    """One row per (image, class): ``image,class,observed,recovered,probability`` (observed and
    recovered are empty where unknown), atomically."""
    with atomic_write(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image", "class", "observed", "recovered", "probability"])
        for i, image in enumerate(image_names(data)):
            for c, name in enumerate(data.class_names):
                seen = "" if observed[i, c] < 0 else int(observed[i, c])
                decided = "" if recovered[i, c] < 0 else int(recovered[i, c])
                writer.writerow([image, name, seen, decided, f"{probs[i, c]:.6f}"])


def write_thresholds(path: Path, thresholds: Thresholds, class_names: list[str]) -> None:
    """``thresholds.csv``: one row per class (:meth:`Thresholds.rows`, with the rule), atomically."""
    rows = thresholds.rows(class_names)
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, ["class", "rule", *list(rows[0])[1:]], lineterminator="\n")
        writer.writeheader()
        writer.writerows({**row, "rule": thresholds.rule} for row in rows)


def image_names(data: MultiLabelData) -> list[str]:
    """The images as the label file named them (CSV reader), else relative to the root."""
    names = data.extras.get("image_name")
    return data.image_ids() if names is None else [str(n) for n in names]


def write_completed_csv(path: Path, data: MultiLabelData, recovered: np.ndarray,
                        list_format: np.ndarray | None = None) -> None:
    """The completed labels in the input's CSV format: ``image`` + one 1/0 column per class (an
    entry left unknown: empty), or, where the CSV reader marked the rows ``list_format``,
    ``image,labels`` with the positive names joined by ``;`` (positives only: an entry left
    unknown is listed nowhere, see ``recovered_long.csv``)."""
    as_list = list_format is not None and bool(np.asarray(list_format).all())
    with atomic_write(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        if as_list:
            writer.writerow(["image", "labels"])
            for image, row in zip(image_names(data), recovered, strict=True):
                writer.writerow([image, ";".join(n for n, v in zip(data.class_names, row,
                                                                    strict=True) if v == 1)])
        else:
            writer.writerow(["image", *data.class_names])
            for image, row in zip(image_names(data), recovered, strict=True):
                writer.writerow([image, *("" if v < 0 else v for v in row.tolist())])


@dataclass(frozen=True)
class Recovery:
    """What :func:`recover_run` wrote and decided.

    Attributes:
        data: the images whose labels were completed (their ``labels`` are the observed ones).
        observed, recovered: ``(N, C)`` int8 before and after.
        probabilities: ``(N, C)`` float64.
        thresholds: the per-class :class:`Thresholds` from the run's validation split.
        files: the written files (``completed``: the CSV in the input's format, ``table``: the long
            table).
    """

    data: MultiLabelData
    observed: np.ndarray
    recovered: np.ndarray
    probabilities: np.ndarray
    thresholds: Thresholds
    files: dict[str, Path]

    def summary(self) -> str:
        unknown = self.observed < 0
        total = int(unknown.sum())
        positive, negative = (int((self.recovered[unknown] == v).sum()) for v in (1, 0))
        head = (f"{total:,} unknown entries in {len(self.observed):,} images: {positive:,} "
                f"recovered as positive, {negative:,} as negative, "
                f"{total - positive - negative:,} left unknown (thresholds: "
                f"{self.thresholds.rule}, chosen on the run's validation split)")
        lines = [head]
        few = self.thresholds.val_positives < MIN_VAL_POSITIVES
        names = np.asarray(self.data.class_names, dtype=object)
        if few.any():
            lines.append(f"left unknown, fewer than {MIN_VAL_POSITIVES} validation positives: "
                         f"{', '.join(names[few])}")
        unreached = ~self.thresholds.chosen & ~few
        if unreached.any():
            lines.append(f"no positive threshold reaches {self.thresholds.rule}: "
                         f"{', '.join(names[unreached])}")
        lines += [f"{name}: {path}" for name, path in self.files.items()]
        return "\n".join(lines)


def recover_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    dataset: str | None = None,
    root: str | Path | None = None,
    options: dict | None = None,
    split: str | None = None,
    precision: float | None = None,
    fill_negatives: bool = False,
    cache_dir: str | Path | None = None,
    allow_unfinished: bool = False,
    overwrite: bool = False,
) -> Recovery:
    """Complete a label matrix with a trained run and write the results to ``out_dir``.

    Thresholds are chosen on the run's validation split (:func:`choose_thresholds`: per class,
    maximal F1, or ``precision`` for both the positives and the negatives, the entries in between
    left unknown unless ``fill_negatives``). The labels completed are those of
    ``dataset`` at ``root`` (its unknown entries; ``split`` selects part of it, default all), or,
    without ``dataset``, the run's own training split as the run saw it (its saved mask).

    Writes ``completed.csv`` (``image`` + one 1/0 column per class, empty where left unknown, or
    ``image,labels`` when the input CSV lists names), ``recovered_long.csv`` (``image,class,
    observed,recovered,probability``) and ``thresholds.csv`` (per class: the thresholds and their
    validation precision, recall and negative share), atomically.
    """
    from mlrkit.engine.inference import eval_cache_dir, load_run, prepare_from_run, source_for
    from mlrkit.engine.trainer import evaluate_logits

    out_dir = Path(out_dir)
    files = {"completed": out_dir / "completed.csv", "table": out_dir / "recovered_long.csv",
             "thresholds": out_dir / "thresholds.csv"}
    existing = [path.name for path in files.values() if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"--out {out_dir}: already holds {', '.join(existing)} of an "
                              f"earlier recovery; add --overwrite to replace them, or give "
                              f"another --out")
    run = load_run(run_dir, allow_unfinished)
    prepared = prepare_from_run(run)
    if "val" not in prepared.sources:
        raise ValueError(f"run {run.run_dir} has no validation split to choose thresholds on; "
                         f"train it with data.val_split set (or data.holdout)")
    device, batch = run.device, run.info["inference"]["batch_size"]
    model = run.method.to(device)

    def probs_of(source) -> np.ndarray:  # calibrated (the run's calibration.json), (N, C)
        return run.probabilities(evaluate_logits(model, source, batch, device))

    thresholds = choose_thresholds(probs_of(prepared.sources["val"]), prepared.labels["val"],
                                   precision, fill_negatives)
    if dataset is None:
        data = prepared.data.subset(prepared.recipe.data.train_split)
        source = prepared.sources["train"]
        observed = source.targets
    else:
        if root is None:
            raise ValueError(f"dataset {dataset!r} needs its root folder")
        from mlrkit.data import create_dataset

        data = create_dataset(dataset, root, **(options or {}))
        run.check_classes(data)
        data = data if split is None else data.subset(split)
        cache = Path(cache_dir or eval_cache_dir(run.run_dir, dataset, root, options, split))
        source, observed = source_for(run, data, cache), data.labels
    probs = probs_of(source)
    recovered = recover(observed, probs, thresholds)
    write_completed_csv(files["completed"], data, recovered, data.extras.get("list_format"))
    write_long_table(files["table"], data, observed, recovered, probs)
    write_thresholds(files["thresholds"], thresholds, list(data.class_names))
    return Recovery(data, observed, recovered, probs, thresholds, files)
