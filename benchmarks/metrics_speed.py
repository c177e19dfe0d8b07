"""Time macro mAP with unknown labels: mlrkit vs torchmetrics vs a scikit-learn per-class loop.

Scores are a seeded ``(40000, 80)`` float32 matrix of probabilities; labels are 10% positive with
30% of the entries unknown (``-1``). The three results must agree to 1e-6 or the script fails.
Repeats are interleaved (one run of each method per round) so that load from other processes
spreads over all three; the table gives the median wall-clock seconds. The last line is
``speedup_vs_torchmetrics=X.XX``.

Usage: ``python benchmarks/metrics_speed.py [--repeats 5] [--seed 0]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from torchmetrics.classification import MultilabelAveragePrecision

from mlrkit.metrics import mean_average_precision

NUM_IMAGES, NUM_CLASSES = 40_000, 80
POSITIVE_RATE, UNKNOWN_RATE = 0.10, 0.30
TOLERANCE = 1e-6


def make_inputs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(N, C)`` float32 scores in [0, 1) and int8 labels in {-1, 0, 1}."""
    rng = np.random.default_rng(seed)
    scores = rng.random((NUM_IMAGES, NUM_CLASSES), dtype=np.float32)
    labels = (rng.random((NUM_IMAGES, NUM_CLASSES)) < POSITIVE_RATE).astype(np.int8)
    labels[rng.random((NUM_IMAGES, NUM_CLASSES)) < UNKNOWN_RATE] = -1
    return scores, labels


def mlrkit_map(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return mean_average_precision(scores, labels).value


def torchmetrics_map(scores: torch.Tensor, labels: torch.Tensor) -> float:
    metric = MultilabelAveragePrecision(
        num_labels=NUM_CLASSES, average="macro", thresholds=None, ignore_index=-1
    )
    metric.update(scores, labels)
    return float(metric.compute())


def sklearn_map(scores: np.ndarray, labels: np.ndarray) -> float:
    per_class = []
    for c in range(labels.shape[1]):
        known = labels[:, c] >= 0
        per_class.append(average_precision_score(labels[known, c], scores[known, c]))
    return float(np.mean(per_class))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    scores, labels = make_inputs(args.seed)
    scores_t, labels_t = torch.from_numpy(scores), torch.from_numpy(labels)
    methods: dict[str, Callable[[], float]] = {
        "mlrkit.metrics.mean_average_precision": lambda: mlrkit_map(scores_t, labels_t),
        "torchmetrics MultilabelAveragePrecision": lambda: torchmetrics_map(
            scores_t, labels_t.long()
        ),
        "sklearn average_precision_score loop": lambda: sklearn_map(scores, labels),
    }

    values = {name: run() for name, run in methods.items()}  # also warms up
    reference = values["sklearn average_precision_score loop"]
    for name, value in values.items():
        if not abs(value - reference) <= TOLERANCE:  # not `assert`: must also fail under -O
            raise AssertionError(
                f"{name} gives mAP {value!r}, scikit-learn gives {reference!r}: "
                f"difference {abs(value - reference):.3g} > {TOLERANCE}"
            )

    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, run in methods.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    ours = median["mlrkit.metrics.mean_average_precision"]

    print(
        f"macro mAP, {NUM_IMAGES} x {NUM_CLASSES}, {UNKNOWN_RATE:.0%} unknown, "
        f"torch threads {torch.get_num_threads()}, median of {args.repeats}; "
        f"mAP = {reference:.6f} (all agree to {TOLERANCE:g})"
    )
    print(f"{'method':42s} {'seconds':>9s} {'mlrkit speedup':>15s}")
    for name, seconds in median.items():
        print(f"{name:42s} {seconds:9.4f} {seconds / ours:14.2f}x")
    print(f"speedup_vs_torchmetrics={median['torchmetrics MultilabelAveragePrecision'] / ours:.2f}")


if __name__ == "__main__":
    main()
