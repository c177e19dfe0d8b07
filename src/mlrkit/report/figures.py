"""The figures of ``mlrkit report``, one function per figure, and the counts they draw.

Each figure function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global
backend state); :func:`png` renders it with the Agg canvas, so no display is needed.

Shapes: ``N`` images, ``C`` classes, ``T`` thresholds. Labels are int8 ``(N, C)``: 1 positive,
0 negative, -1 unknown (an unknown entry counts nowhere).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mlrkit.engine.thresholds import precision_recall_steps

#: Where a probability counts as a predicted positive (the threshold of CF1 / OF1 in results.json).
PREDICTED_THRESHOLD = 0.5
#: At most this many classes get their count written into the co-occurrence cells.
ANNOTATED_CLASSES = 20


def png(fig: Figure) -> bytes:
    """``fig`` as PNG bytes, rendered by the Agg canvas at the figure's dpi."""
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# What the figures count
# --------------------------------------------------------------------------------------------------


def cooccurrence(labels: np.ndarray) -> np.ndarray:
    """``(C, C)`` int64: entry ``[i, j]`` is the number of images positive for both ``i`` and
    ``j`` (the diagonal: each class's positives); ``labels`` ``(N, C)``, only 1 counts."""
    positive = (np.asarray(labels) == 1).astype(np.int64)
    return positive.T @ positive


def predicted_labels(probabilities: np.ndarray,
                     threshold: float = PREDICTED_THRESHOLD) -> np.ndarray:
    """``(N, C)`` int8: 1 where ``probabilities`` ``(N, C)`` reach ``threshold``, else 0."""
    return (np.asarray(probabilities) >= threshold).astype(np.int8)


def positives_per_class(labels: np.ndarray) -> np.ndarray:
    """``(C,)`` int64: the positives of each class in ``labels`` ``(N, C)``."""
    return (np.asarray(labels) == 1).sum(axis=0).astype(np.int64)


def best_and_worst(ap: np.ndarray, k: int) -> tuple[list[int], list[int]]:
    """The indices of the ``k`` highest and the ``k`` lowest APs of ``ap`` ``(C,)``, NaN
    (no positive) left out, each list best first; the lists do not overlap."""
    ranked = [int(c) for c in np.argsort(-np.nan_to_num(ap, nan=-np.inf), kind="stable")
              if not np.isnan(ap[c])]
    k = min(k, len(ranked) // 2)
    if k == 0:  # at most one class with a positive: it is the best, none is the worst
        return ranked[:1], []
    return ranked[:k], ranked[-k:]


def pr_curve(probabilities: np.ndarray, labels: np.ndarray,
             c: int) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision ``(G + 1,)`` of class ``c`` (which has a known positive) at each of
    its distinct scores from the highest down to the first that reaches full recall (``G`` of
    them), led by the point at recall 0; drawn as steps (precision ``precision[g]`` on
    ``(recall[g - 1], recall[g]]``), whose area is the class's non-interpolated AP."""
    _, precision, recall, _ = precision_recall_steps(probabilities, labels, c)
    end = int(np.argmax(recall >= recall[-1])) + 1  # lower scores add no recall, only negatives
    return np.r_[0.0, recall[:end]], np.r_[precision[0], precision[:end]]


def step_area(recall: np.ndarray, precision: np.ndarray) -> float:
    """The area under the step curve of :func:`pr_curve`: ``sum_g (R_g - R_{g-1}) P_g``."""
    return float(np.sum(np.diff(recall) * precision[1:]))


def recovery_curve(probabilities: np.ndarray, observed: np.ndarray, truth: np.ndarray,
                   thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall ``(T,)`` of the hidden entries recovered as positive at each threshold.

    The hidden entries are those unknown in ``observed`` and known in ``truth`` (all ``(N, C)``).
    At threshold ``t`` an entry is recovered as positive when its probability is ``>= t``:
    ``precision = TP / recovered positives`` (NaN when none is), ``recall = TP / hidden
    positives`` (NaN when there is none).
    """
    hidden = (np.asarray(observed) < 0) & (np.asarray(truth) >= 0)
    scores = np.sort(np.asarray(probabilities)[hidden])
    positive_scores = np.sort(np.asarray(probabilities)[hidden & (np.asarray(truth) == 1)])
    thresholds = np.asarray(thresholds, dtype=np.float64)
    predicted = len(scores) - np.searchsorted(scores, thresholds, side="left")
    tp = len(positive_scores) - np.searchsorted(positive_scores, thresholds, side="left")
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), np.nan)
        recall = tp / len(positive_scores) if len(positive_scores) else np.full(len(tp), np.nan)
    return precision, recall


def recovered_precision_recall(observed: np.ndarray, truth: np.ndarray,
                               recovered: np.ndarray) -> tuple[float, float]:
    """Precision and recall of the hidden entries (unknown in ``observed``, known in ``truth``)
    that ``recovered`` (all ``(N, C)``) sets to 1; NaN where undefined."""
    hidden = (np.asarray(observed) < 0) & (np.asarray(truth) >= 0)
    chosen, positive = hidden & (recovered == 1), hidden & (truth == 1)
    tp = int((chosen & positive).sum())
    precision = tp / int(chosen.sum()) if chosen.any() else float("nan")
    recall = tp / int(positive.sum()) if positive.any() else float("nan")
    return precision, recall


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def loss_keys(history: Sequence[dict]) -> list[str]:
    """The logged loss parts of ``metrics.jsonl`` records (``train_*`` keys), in first-seen order."""
    return list(dict.fromkeys(k for record in history for k in record if k.startswith("train_")))


def training_curves(history: Sequence[dict], best_epoch: int) -> Figure:
    """Left: every logged loss part per epoch; right: validation mAP per epoch. The selected
    epoch ``best_epoch`` is a dashed line on both and a marker on the mAP curve."""
    fig = Figure(figsize=(10, 3.6), dpi=100, layout="constrained")
    losses, val = fig.subplots(1, 2)
    for key in loss_keys(history):
        points = [(r["epoch"], r[key]) for r in history if key in r]
        losses.plot(*zip(*points, strict=True), marker=".", label=key.removeprefix("train_"))
    losses.set(title="training loss parts (epoch means)", xlabel="epoch", ylabel="loss")
    losses.legend(fontsize="small")
    scored = [(r["epoch"], 100 * r["val_mAP"]) for r in history if "val_mAP" in r]
    if scored:
        val.plot(*zip(*scored, strict=True), marker=".", color="tab:green", label="val mAP")
        best = [m for e, m in scored if e == best_epoch]
        if best:
            val.plot([best_epoch], best, marker="*", markersize=14, color="tab:red",
                     linestyle="none", label=f"selected: epoch {best_epoch} ({best[0]:.2f})")
        val.legend(fontsize="small")
    else:
        val.text(0.5, 0.5, "no validation split: the last epoch is kept", ha="center",
                 va="center", transform=val.transAxes)
    val.set(title="validation mAP", xlabel="epoch", ylabel="mAP (%)")
    for ax in (losses, val):
        ax.axvline(best_epoch, color="tab:red", linestyle="--", linewidth=1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    return fig


def per_class_ap(names: Sequence[str], ap: np.ndarray, positives: np.ndarray) -> Figure:
    """Horizontal bars of the AP ``(C,)`` of each class, best at the top, each labelled with its
    number of test positives ``(C,)``; a class without a positive (AP NaN) is listed last, empty."""
    order = np.argsort(-np.nan_to_num(ap, nan=-np.inf), kind="stable")
    fig = Figure(figsize=(8, 1.2 + 0.28 * len(names)), dpi=100, layout="constrained")
    ax = fig.subplots()
    rows = np.arange(len(order))
    values = 100 * np.nan_to_num(ap[order], nan=0.0)
    ax.barh(rows, values, color="tab:blue")
    ax.set_yticks(rows, [f"{names[c]} ({positives[c]})" for c in order])
    for row, c in zip(rows, order, strict=True):
        text = "no positive" if np.isnan(ap[c]) else f"{100 * ap[c]:.1f}"
        ax.text(values[row] + 0.5, row, text, va="center", fontsize="small")
    ax.invert_yaxis()
    ax.set(xlim=(0, 108), xlabel="AP (%)",
           title="average precision per class (test positives in brackets)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def pr_curves(probabilities: np.ndarray, labels: np.ndarray, names: Sequence[str],
              best: Sequence[int], worst: Sequence[int]) -> Figure:
    """Precision against recall of the ``best`` and ``worst`` classes (indices), one panel each
    group; a step per distinct score, so the area under each curve is the class's AP."""
    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    panels = fig.subplots(1, 2, sharey=True)
    for ax, classes, title in ((panels[0], best, "best classes"),
                               (panels[1], worst, "worst classes")):
        for c in classes:
            recall, precision = pr_curve(probabilities, labels, c)
            ax.step(recall, precision, where="pre",
                    label=f"{names[c]} (AP {100 * step_area(recall, precision):.1f})")
        ax.set(title=title, xlabel="recall", xlim=(0, 1.02), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        if classes:
            ax.legend(fontsize="small", loc="lower left")
    panels[0].set_ylabel("precision")
    return fig


def cooccurrence_matrices(true_counts: np.ndarray, predicted_counts: np.ndarray,
                          names: Sequence[str]) -> Figure:
    """The true and the predicted label co-occurrence counts ``(C, C)`` side by side, on one
    square-root colour scale (rare pairs stay visible); counts written in the cells when there are at most :data:`ANNOTATED_CLASSES`."""
    size = 3 + 0.22 * len(names)
    fig = Figure(figsize=(2 * size + 1, size), dpi=100, layout="constrained")
    panels = fig.subplots(1, 2)
    top = max(int(true_counts.max()), int(predicted_counts.max()), 1)
    for ax, counts, title in ((panels[0], true_counts, "true labels"),
                              (panels[1], predicted_counts,
                               f"predicted (probability >= {PREDICTED_THRESHOLD:g})")):
        image = ax.imshow(counts, cmap="viridis", norm=PowerNorm(0.5, vmin=0, vmax=top))
        ticks = np.arange(len(names))
        ax.set_xticks(ticks, names, rotation=90, fontsize="small")
        ax.set_yticks(ticks, names, fontsize="small")
        ax.set_title(title)
        if len(names) <= ANNOTATED_CLASSES:
            for (i, j), value in np.ndenumerate(counts):
                ax.text(j, i, str(value), ha="center", va="center", fontsize="x-small",
                        color="black" if value > 0.36 * top else "white")  # sqrt scale: 0.6
    fig.colorbar(image, ax=panels, shrink=0.8, label="images with both labels")
    return fig


def recovery_vs_threshold(thresholds: np.ndarray, precision: np.ndarray, recall: np.ndarray,
                          chosen: tuple[float, float]) -> Figure:
    """Precision and recall ``(T,)`` of the recovered hidden labels against one threshold for
    every class, with the ``(precision, recall)`` of the per-class thresholds ``chosen`` (what
    ``mlrkit recover`` writes) as dotted lines."""
    fig = Figure(figsize=(7, 3.8), dpi=100, layout="constrained")
    ax = fig.subplots()
    ax.plot(thresholds, 100 * precision, label="precision", color="tab:blue")
    ax.plot(thresholds, 100 * recall, label="recall", color="tab:orange")
    for value, name, color in ((chosen[0], "precision", "tab:blue"),
                               (chosen[1], "recall", "tab:orange")):
        ax.axhline(100 * value, color=color, linestyle=":",
                   label=f"{name} at the per-class F1 thresholds: {100 * value:.1f}")
    ax.set(xlabel="threshold on the probability (all classes)", ylabel="%", ylim=(0, 102),
           title="recovered training labels (hidden entries)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def comparison(groups: Sequence[str], values: Sequence[Sequence[float]]) -> Figure:
    """Test mAP of each group of runs (``values``: fractions, one list per group): a bar at the
    mean with the standard deviation as error bar when a group has several runs, each run a dot."""
    fig = Figure(figsize=(8, 1.4 + 0.45 * len(groups)), dpi=100, layout="constrained")
    ax = fig.subplots()
    rows = np.arange(len(groups))
    means = [100 * float(np.mean(v)) for v in values]
    spreads = [100 * float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in values]
    ax.barh(rows, means, xerr=spreads, color="tab:blue", alpha=0.6, capsize=4)
    for row, group in zip(rows, values, strict=True):
        ax.plot([100 * v for v in group], [row] * len(group), "o", color="black", markersize=4)
    ax.set_yticks(rows, groups)
    ax.invert_yaxis()
    ax.set(xlabel="test mAP (%)", title="test mAP per group (mean ± std over seeds; dots: runs)")
    ax.grid(axis="x", alpha=0.3)
    return fig
