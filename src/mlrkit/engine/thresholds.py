"""Per-class decision thresholds chosen on validation probabilities: maximal F1, or a precision
target for the positives and the negatives with the entries between left unknown. Used by
``recover`` (:mod:`mlrkit.engine.recover`) and by a run's calibration
(:mod:`mlrkit.engine.calibrate`).

Shapes: ``N`` images, ``C`` classes. Labels follow the mlrkit convention (1 / 0 / -1 unknown).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
