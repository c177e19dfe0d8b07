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

#: A class needs at least this many known validation positives for its threshold to be chosen;
#: with fewer, its unknown entries are left unknown (a threshold fitted to 1-2 positives is noise).
MIN_VAL_POSITIVES = 3


@dataclass(frozen=True)
class Thresholds:
    """Per-class decision thresholds and how they were chosen.

    An unknown entry of class ``c`` with probability ``p`` becomes 1 where ``p >= values[c]``, 0
    where ``p < negatives[c]``, and stays unknown in between (``negatives == values``: every
    entry decided). A class not ``chosen`` keeps all its unknown entries unknown
    (``values = inf``, ``negatives = -inf``) unless a negative threshold could still be chosen.

    Attributes:
        values: ``(C,)`` float, the positive threshold.
        negatives: ``(C,)`` float, the negative threshold (``<= values``).
        rule: ``"f1"`` (maximise F1 per class) or ``"precision>=P"`` (with ``+fill-negatives``
            when everything below the positive threshold is a negative).
        chosen: ``(C,)`` bool, whether a positive threshold was chosen.
        val_positives: ``(C,)`` int, known validation positives of each class.
        val_precision, val_recall: ``(C,)`` of the positive decisions on validation (NaN where
            not chosen); val_npv: ``(C,)`` the share of true negatives among validation entries
            below the negative threshold (NaN where none is below).
    """

    values: np.ndarray
    negatives: np.ndarray
    rule: str
    chosen: np.ndarray
    val_positives: np.ndarray
    val_precision: np.ndarray
    val_recall: np.ndarray
    val_npv: np.ndarray

    def rows(self, class_names: list[str]) -> list[dict]:
        """One ``{class, ...}`` row per class (``thresholds.csv``, ``calibration.json``)."""
        return [{"class": name, "positive_threshold": float(self.values[c]),
                 "negative_threshold": float(self.negatives[c]), "chosen": bool(self.chosen[c]),
                 "val_positives": int(self.val_positives[c]),
                 "val_precision": float(self.val_precision[c]),
                 "val_recall": float(self.val_recall[c]), "val_npv": float(self.val_npv[c])}
                for c, name in enumerate(class_names)]


def precision_recall_steps(probs: np.ndarray, labels: np.ndarray, c: int):
    """``(thresholds, precision, recall, npv)`` of class ``c`` of ``probs`` / ``labels``
    ``(N, C)``: the distinct scores high to low and the precision and recall of predicting ``>=``
    each, and the share of negatives among the entries below it (known entries only, ties never
    split); ``None`` when the class has no known positive."""
    known = labels[:, c] >= 0
    scores, truth = probs[known, c], labels[known, c] == 1
    if not truth.any():
        return None
    order = np.argsort(-scores, kind="stable")
    scores, truth = scores[order], truth[order]
    last = np.r_[scores[1:] != scores[:-1], True]  # a cut-off must not split tied scores
    tp = np.cumsum(truth)[last]
    predicted = np.flatnonzero(last) + 1  # entries with p >= cut
    below = len(truth) - predicted  # entries with p < cut
    negatives_below = int((~truth).sum()) - (predicted - tp)
    npv = np.full(len(below), np.nan)
    np.divide(negatives_below, below, out=npv, where=below > 0)
    return scores[last], tp / predicted, tp / truth.sum(), npv


def choose_thresholds(probs: np.ndarray, labels: np.ndarray, precision: float | None = None,
                      fill_negatives: bool = False,
                      min_positives: int = MIN_VAL_POSITIVES) -> Thresholds:
    """Per-class thresholds from validation probabilities ``(N, C)`` and labels ``(N, C)``.

    Without ``precision``: the cut-off that maximises F1 (ties: the highest threshold), every
    entry below it a negative. With ``precision`` in (0, 1]: the lowest positive threshold whose
    validation precision reaches it, and the highest negative threshold (at most the positive
    one) below which the share of negatives reaches it; entries between the two stay unknown
    (``fill_negatives``: everything below the positive threshold is a negative, as with F1). A
    class whose precision target is out of reach gets no positive threshold (``chosen`` False)
    but may still get a negative one (with ``fill_negatives``: all its unknown entries are 0). A class with fewer than ``min_positives`` known validation
    positives gets neither: its unknown entries stay unknown.
    """
    if precision is not None and not 0 < precision <= 1:
        raise ValueError(f"precision target must be in (0, 1], got {precision}")
    num_classes = probs.shape[1]
    out = {key: np.full(num_classes, np.nan) for key in ("precision", "recall", "npv")}
    values, negatives = np.full(num_classes, np.inf), np.full(num_classes, -np.inf)
    chosen = np.zeros(num_classes, dtype=bool)
    positives = (labels == 1).sum(axis=0)
    for c in range(num_classes):
        curve = precision_recall_steps(probs, labels, c)
        if curve is None or positives[c] < min_positives:
            continue
        cut, prec, rec, npv = curve
        i = _positive_cut(prec, rec, precision)
        if i is not None:
            values[c], chosen[c] = cut[i], True
            out["precision"][c], out["recall"][c] = prec[i], rec[i]
        if precision is None or fill_negatives:  # every entry below the positive cut: 0
            negatives[c] = values[c]
            out["npv"][c] = np.nan if i is None else npv[i]
            continue
        j = _negative_cut(npv, precision, i)
        if j is not None:
            negatives[c], out["npv"][c] = cut[j], npv[j]
    rule = "f1" if precision is None else f"precision>={precision:g}"
    rule += "+fill-negatives" if fill_negatives and precision is not None else ""
    return Thresholds(values, negatives, rule, chosen, positives.astype(int), out["precision"],
                      out["recall"], out["npv"])


def _positive_cut(prec: np.ndarray, rec: np.ndarray, precision: float | None) -> int | None:
    """The index of the chosen positive cut (cuts high to low): best F1, or the lowest cut whose
    precision reaches ``precision``; ``None`` when out of reach."""
    if precision is None:
        f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
        return int(np.flatnonzero(f1 == f1.max())[0])
    ok = np.flatnonzero(prec >= precision)
    return int(ok[-1]) if ok.size else None


def _negative_cut(npv: np.ndarray, precision: float, positive: int | None) -> int | None:
    """The highest cut, at most the positive one, below which the share of negatives reaches
    ``precision`` (the most entries decided negative); ``None`` when none does."""
    start = 0 if positive is None else positive
    ok = np.flatnonzero(npv[start:] >= precision)
    return start + int(ok[0]) if ok.size else None


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
        for i, image in enumerate(_image_names(data)):
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


def _image_names(data: MultiLabelData) -> list[str]:
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
            for image, row in zip(_image_names(data), recovered, strict=True):
                writer.writerow([image, ";".join(n for n, v in zip(data.class_names, row,
                                                                    strict=True) if v == 1)])
        else:
            writer.writerow(["image", *data.class_names])
            for image, row in zip(_image_names(data), recovered, strict=True):
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

    run = load_run(run_dir)
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
    out_dir = Path(out_dir)
    files = {"completed": out_dir / "completed.csv", "table": out_dir / "recovered_long.csv",
             "thresholds": out_dir / "thresholds.csv"}
    write_completed_csv(files["completed"], data, recovered, data.extras.get("list_format"))
    write_long_table(files["table"], data, observed, recovered, probs)
    write_thresholds(files["thresholds"], thresholds, list(data.class_names))
    return Recovery(data, observed, recovered, probs, thresholds, files)
