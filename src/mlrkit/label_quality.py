"""How much to trust each *known* label, from out-of-fold probabilities: confident learning
(Northcutt et al., JAIR 2021) for multi-label data, one class at a time (as in Thyagarajan et al.,
ICASSP 2023), adapted to partial labels: an unknown entry is never an issue and every per-class
statistic is taken over the known entries only.

For a known entry of class ``c`` with given label ``y`` and out-of-fold probability ``p`` (from a
model that did not see this image's labels):

* its *self-confidence* is the probability of the given label: ``p`` for a positive, ``1 - p``
  for a negative;
* the class's thresholds are the mean self-confidence of its known positives,
  ``t_pos[c] = mean p``, and of its known negatives, ``t_neg[c] = mean (1 - p)``: what "confident"
  means for that class, so that rare and common classes are judged on their own scale;
* its *quality* is the self-confidence (the default, as cleanlab's
  ``get_label_quality_scores_per_class``), or with ``score="normalized"`` the self-confidence
  divided by its own side's threshold: how far the label falls below the confidence typical of
  its class and side. The lower, the more suspect. On VOC 2007 with 5% of the known labels
  flipped uniformly (mostly negatives turned positive), the self-confidence ranks better
  (``benchmarks/label_issues.py``); the normalized score weighs missed positives and wrong
  positives alike;
* *how many* of a class's given labels are wrong is estimated from the confident joint, over its
  known entries only: an entry is confidently positive when ``p >= t_pos[c]``, confidently
  negative when ``1 - p >= t_neg[c]`` (both: the likelier side, ``p`` against 0.5); among the given
  positives that are confidently either, the share confidently negative, times the number of
  given positives, is the number of wrong positives ``n_pos[c]`` (and alike ``n_neg[c]`` for the
  given negatives): the calibrated confident joint of cleanlab's ``prune_by_noise_rate``;
* *flagged* (an issue) are, per class and side, the ``n`` given labels with the lowest
  self-confidence, among those the model decides against (``p < 0.5`` for a given positive,
  ``p >= 0.5`` for a given negative), as cleanlab keeps only issues whose prediction differs from
  the given label.

Shapes: ``N`` images, ``C`` classes; labels are int8 ``1`` / ``0`` / ``-1`` (unknown).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: How entries are scored (see the module docstring).
QUALITY_SCORES = ("self_confidence", "normalized")
#: What ``mlrkit audit`` writes (see :mod:`mlrkit.engine.audit`) and ``mlrkit export`` reads.
ISSUES_FILE = "label_issues.csv"
ISSUES_HEADER = ["image", "class", "given", "probability", "quality", "flagged"]
SUMMARY_FILE = "class_summary.csv"


@dataclass(frozen=True)
class LabelIssues:
    """Label quality of every known entry.

    Attributes:
        quality: ``(N, C)`` float64, lower is more suspect; NaN where the label is unknown.
        flagged: ``(N, C)`` bool, the known entries the model confidently contradicts.
        thresholds: ``(C, 2)`` float64, per class the mean self-confidence of its known negatives
            (column 0) and known positives (column 1); NaN for a side with no known entry.
    """

    quality: np.ndarray
    flagged: np.ndarray
    thresholds: np.ndarray

    def ranked(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)`` of the known entries, most suspect first (lowest quality; ties in
        row-major order)."""
        known = np.flatnonzero(~np.isnan(self.quality.ravel()))
        order = known[np.argsort(self.quality.ravel()[known], kind="stable")]
        return np.unravel_index(order, self.quality.shape)


def self_confidence(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``(N, C)`` the probability of each given label: ``p`` for a positive, ``1 - p`` for a
    negative; NaN where unknown."""
    probs = np.asarray(probs, dtype=np.float64)
    return np.where(labels == 1, probs, np.where(labels == 0, 1.0 - probs, np.nan))


def class_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``(C, 2)`` per class the mean self-confidence of its known negatives and known positives
    (NaN for a side without a known entry)."""
    confidence = self_confidence(labels, probs)
    out = np.full((labels.shape[1], 2), np.nan)
    for side in (0, 1):
        given = labels == side
        counts = given.sum(axis=0)
        sums = np.where(given, confidence, 0.0).sum(axis=0)
        out[:, side] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return out


def find_label_issues(labels: np.ndarray, probs: np.ndarray,
                      score: str = "self_confidence") -> LabelIssues:
    """Quality and flags of the known entries of ``labels`` ``(N, C)`` under out-of-fold
    probabilities ``probs`` ``(N, C)`` (see the module docstring); ``score`` is
    ``"self_confidence"`` or ``"normalized"`` (self-confidence over its class's threshold)."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.shape != probs.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and probabilities {probs.shape} must both be "
                         f"(N, C)")
    if score not in QUALITY_SCORES:
        raise ValueError(f"score must be one of {list(QUALITY_SCORES)}, got {score!r}")
    known = labels >= 0
    if np.isnan(probs[known]).any():
        raise ValueError("a known entry has no probability (NaN); score every labelled image")
    thresholds = class_thresholds(labels, probs)
    confidence = self_confidence(labels, probs)
    if score == "normalized":
        side = thresholds[np.arange(labels.shape[1])[None, :], np.clip(labels, 0, 1)]
        quality = confidence / np.maximum(side, np.finfo(np.float64).tiny)
    else:
        quality = confidence
    flagged = _pruned_flags(labels, probs, thresholds, confidence)
    return LabelIssues(np.where(known, quality, np.nan), flagged, thresholds)


def _pruned_flags(labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray,
                  confidence: np.ndarray) -> np.ndarray:
    """``(N, C)`` the flags of the module docstring: per class and given side, the estimated
    number of wrong labels with the lowest ``confidence``, where the model decides otherwise."""
    decided_positive = probs >= 0.5
    above_pos = probs >= thresholds[None, :, 1]  # NaN thresholds compare False
    above_neg = 1.0 - probs >= thresholds[None, :, 0]
    confident_pos = above_pos & (~above_neg | decided_positive)
    confident_neg = above_neg & (~above_pos | ~decided_positive)
    flagged = np.zeros(labels.shape, dtype=bool)
    for side, same, other, disagrees in ((1, confident_pos, confident_neg, ~decided_positive),
                                         (0, confident_neg, confident_pos, decided_positive)):
        given = labels == side
        for c in range(labels.shape[1]):
            rows = np.flatnonzero(given[:, c])
            wrong, right = int(other[rows, c].sum()), int(same[rows, c].sum())
            count = round(wrong / (wrong + right) * len(rows)) if wrong else 0
            lowest = rows[np.argsort(confidence[rows, c], kind="stable")[:count]]
            flagged[lowest, c] = disagrees[lowest, c]
    return flagged


def precision_at(ranked: tuple[np.ndarray, np.ndarray], truth: np.ndarray, k: int) -> float:
    """The share of the first ``k`` ranked entries that are true issues (``truth`` ``(N, C)``
    bool)."""
    rows, cols = ranked
    k = min(k, len(rows))
    return float(truth[rows[:k], cols[:k]].mean()) if k else float("nan")
