"""Fill in missing labels with a trained run: per-class thresholds chosen on validation, then the
unknown entries of a label matrix become 1 / 0, each with the model's probability.

Works for every method: it needs only probabilities, from :func:`run_probabilities`.

Shapes: ``N`` images, ``C`` classes. Labels follow the mlrkit convention (1 / 0 / -1 unknown).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mlrkit.atomic import atomic_write
from mlrkit.data import MultiLabelData

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Thresholds:
    """Per-class decision thresholds and how they were chosen.

    Attributes:
        values: ``(C,)`` float, predict positive where ``probability >= value``.
        rule: ``"f1"`` (maximise F1 per class) or ``"precision>=P"``.
        chosen: ``(C,)`` bool, False where the validation split could not decide (no positive, or
            the precision target unreachable) and ``DEFAULT_THRESHOLD`` (or 1.0) was used.
        val_precision, val_recall: ``(C,)`` at the chosen thresholds on validation (NaN where
            undefined).
    """

    values: np.ndarray
    rule: str
    chosen: np.ndarray
    val_precision: np.ndarray
    val_recall: np.ndarray


def precision_recall_steps(probs: np.ndarray, labels: np.ndarray, c: int):
    """``(thresholds, precision, recall)`` of class ``c`` of ``probs`` / ``labels`` ``(N, C)``:
    the distinct scores high to low and the precision and recall of predicting ``>=`` each
    (known entries only, ties never split); ``None`` when the class has no known positive."""
    known = labels[:, c] >= 0
    scores, truth = probs[known, c], labels[known, c] == 1
    if not truth.any():
        return None
    order = np.argsort(-scores, kind="stable")
    scores, truth = scores[order], truth[order]
    last = np.r_[scores[1:] != scores[:-1], True]  # a cut-off must not split tied scores
    tp = np.cumsum(truth)[last]
    predicted = np.flatnonzero(last) + 1
    return scores[last], tp / predicted, tp / truth.sum()


def choose_thresholds(probs: np.ndarray, labels: np.ndarray,
                      precision: float | None = None) -> Thresholds:
    """Per-class thresholds from validation probabilities ``(N, C)`` and labels ``(N, C)``.

    Without ``precision``: the cut-off that maximises F1 (ties: the highest threshold). With
    ``precision`` in (0, 1]: the lowest threshold whose validation precision reaches it (most
    recall at that precision); a class that never reaches it gets threshold 1.0 (nothing is
    recovered as positive above the model's reach) and ``chosen`` False. A class without a known
    validation positive gets ``DEFAULT_THRESHOLD`` and ``chosen`` False.
    """
    if precision is not None and not 0 < precision <= 1:
        raise ValueError(f"precision target must be in (0, 1], got {precision}")
    num_classes = probs.shape[1]
    values = np.full(num_classes, DEFAULT_THRESHOLD)
    chosen = np.zeros(num_classes, dtype=bool)
    val_p, val_r = np.full(num_classes, np.nan), np.full(num_classes, np.nan)
    for c in range(num_classes):
        curve = precision_recall_steps(probs, labels, c)
        if curve is None:
            continue
        cut, prec, rec = curve
        if precision is None:
            f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
            i = int(np.flatnonzero(f1 == f1.max())[0])
        else:
            ok = np.flatnonzero(prec >= precision)
            if ok.size == 0:
                values[c] = 1.0
                continue
            i = int(ok[-1])
        values[c], chosen[c], val_p[c], val_r[c] = cut[i], True, prec[i], rec[i]
    rule = "f1" if precision is None else f"precision>={precision:g}"
    return Thresholds(values, rule, chosen, val_p, val_r)


def recover(observed: np.ndarray, probs: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """``(N, C)`` int8: known entries of ``observed`` kept, unknown ones ``probs >= threshold``."""
    decided = (probs >= thresholds.values[None, :]).astype(np.int8)
    return np.where(observed >= 0, observed, decided).astype(np.int8)


def write_long_table(path: Path, data: MultiLabelData, observed: np.ndarray,
                     recovered: np.ndarray, probs: np.ndarray) -> None:
    """One row per (image, class): ``image,class,observed,recovered,probability`` (observed is
    empty where unknown), atomically."""
    with atomic_write(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image", "class", "observed", "recovered", "probability"])
        for i, image in enumerate(_image_names(data)):
            for c, name in enumerate(data.class_names):
                seen = "" if observed[i, c] < 0 else int(observed[i, c])
                writer.writerow([image, name, seen, int(recovered[i, c]), f"{probs[i, c]:.6f}"])


def _image_names(data: MultiLabelData) -> list[str]:
    """The images as the label file named them (CSV reader), else relative to the root."""
    names = data.extras.get("image_name")
    return data.image_ids() if names is None else [str(n) for n in names]


def write_completed_csv(path: Path, data: MultiLabelData, recovered: np.ndarray,
                        list_format: np.ndarray | None = None) -> None:
    """The completed labels in the input's CSV format: ``image`` + one 1/0 column per class, or,
    where the CSV reader marked the rows ``list_format``, ``image,labels`` with the positive names
    joined by ``;``."""
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
                writer.writerow([image, *row.tolist()])


def probabilities(logits: torch.Tensor) -> np.ndarray:
    """``(N, C)`` float64 sigmoid probabilities of logits."""
    return torch.sigmoid(logits.double()).numpy()


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
        filled = int((self.recovered[unknown] == 1).sum())
        undecided = [n for n, ok in zip(self.data.class_names, self.thresholds.chosen,
                                        strict=True) if not ok]
        head = (f"{total:,} unknown entries in {len(self.observed):,} images: {filled:,} "
                f"recovered as positive, {total - filled:,} as negative (thresholds: "
                f"{self.thresholds.rule}, chosen on the run's validation split)")
        lines = [head]
        if undecided:
            why = "no validation positive" if self.thresholds.rule == "f1" else "out of reach"
            lines.append(f"no threshold chosen for {', '.join(undecided)} ({why})")
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
    cache_dir: str | Path | None = None,
) -> Recovery:
    """Complete a label matrix with a trained run and write the results to ``out_dir``.

    Thresholds are chosen on the run's validation split (its known entries; per class, maximal
    F1 or the lowest threshold reaching ``precision``). The labels completed are those of
    ``dataset`` at ``root`` (its unknown entries; ``split`` selects part of it, default all), or,
    without ``dataset``, the run's own training split as the run saw it (its saved mask).

    Writes ``completed.csv`` (``image`` + one 1/0 column per class, or ``image,labels`` when the
    input CSV lists names) and ``recovered_long.csv`` (``image,class,observed,recovered,
    probability``), atomically.
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

    def probs_of(source) -> np.ndarray:
        return probabilities(evaluate_logits(model, source, batch, device))

    thresholds = choose_thresholds(probs_of(prepared.sources["val"]), prepared.labels["val"],
                                   precision)
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
    files = {"completed": out_dir / "completed.csv", "table": out_dir / "recovered_long.csv"}
    write_completed_csv(files["completed"], data, recovered, data.extras.get("list_format"))
    write_long_table(files["table"], data, observed, recovered, probs)
    return Recovery(data, observed, recovered, probs, thresholds, files)
