"""Time macro mAP with unknown labels: mlrkit vs torchmetrics vs a scikit-learn per-class loop.

Scores are a seeded ``(40000, 80)`` float32 matrix of probabilities; labels are 10% positive with
30% of the entries unknown (``-1``). The three results must agree to 1e-6 or the script fails.
Repeats are interleaved (one run of each method per round) so that load from other processes
spreads over all three; the table gives the median wall-clock seconds. The last line is
``speedup_vs_torchmetrics=X.XX``.

The table, that line, the command and the machine are also written to
``<out-dir>/metrics_speed.md`` and ``.json`` (default ``benchmarks/results/``). ``--quick`` shrinks
the matrix to ``(2000, 20)`` to check that the script works; its timings mean nothing, so give it
another ``--out-dir``.

Usage: ``python benchmarks/metrics_speed.py [--repeats 5] [--seed 0] [--out-dir DIR] [--quick]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from recipe_grid import ROOT, markdown_table, write_result
from sklearn.metrics import average_precision_score
from torchmetrics.classification import MultilabelAveragePrecision

from mlrkit.metrics import mean_average_precision

NUM_IMAGES, NUM_CLASSES = 40_000, 80
QUICK_IMAGES, QUICK_CLASSES = 2_000, 20
POSITIVE_RATE, UNKNOWN_RATE = 0.10, 0.30
TOLERANCE = 1e-6


def make_inputs(
    seed: int, num_images: int = NUM_IMAGES, num_classes: int = NUM_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """``(N, C)`` float32 scores in [0, 1) and int8 labels in {-1, 0, 1}."""
    rng = np.random.default_rng(seed)
    scores = rng.random((num_images, num_classes), dtype=np.float32)
    labels = (rng.random((num_images, num_classes)) < POSITIVE_RATE).astype(np.int8)
    labels[rng.random((num_images, num_classes)) < UNKNOWN_RATE] = -1
    return scores, labels


def mlrkit_map(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return mean_average_precision(scores, labels).value


def torchmetrics_map(scores: torch.Tensor, labels: torch.Tensor) -> float:
    metric = MultilabelAveragePrecision(
        num_labels=labels.shape[1], average="macro", thresholds=None, ignore_index=-1
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
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results",
                        help="where metrics_speed.md and .json go (default: benchmarks/results)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_IMAGES} x {QUICK_CLASSES} scores: a smoke test, not a result")
    args = parser.parse_args()
    num_images, num_classes = (QUICK_IMAGES, QUICK_CLASSES) if args.quick else (
        NUM_IMAGES, NUM_CLASSES)

    scores, labels = make_inputs(args.seed, num_images, num_classes)
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
    speedup = median["torchmetrics MultilabelAveragePrecision"] / ours

    summary = (
        f"macro mAP, {num_images} x {num_classes}, {UNKNOWN_RATE:.0%} unknown, "
        f"torch threads {torch.get_num_threads()}, median of {args.repeats}; "
        f"mAP = {reference:.6f} (all agree to {TOLERANCE:g})"
    )
    print(summary)
    print(f"{'method':42s} {'seconds':>9s} {'mlrkit speedup':>15s}")
    for name, seconds in median.items():
        print(f"{name:42s} {seconds:9.4f} {seconds / ours:14.2f}x")
    key_line = f"speedup_vs_torchmetrics={speedup:.2f}"

    rows = [[name, f"{seconds:.4f}", f"{seconds / ours:.2f}x"] for name, seconds in median.items()]
    body = [
        (f"Seed {args.seed}: {POSITIVE_RATE:.0%} positive labels; median wall-clock seconds, "
         "repeats interleaved (one run of each method per round)."
         + (" `--quick`: a smoke test, not a result." if args.quick else "")),
        "",
        summary,
        "",
        *markdown_table(["method", "seconds", "mlrkit speedup"], rows),
        "",
        key_line,
    ]
    data = {
        "num_images": num_images,
        "num_classes": num_classes,
        "positive_rate": POSITIVE_RATE,
        "unknown_rate": UNKNOWN_RATE,
        "seed": args.seed,
        "repeats": args.repeats,
        "quick": args.quick,
        "torch_threads": torch.get_num_threads(),
        "mAP": values,
        "tolerance": TOLERANCE,
        "median_seconds": median,
        "seconds": times,
        "speedup_vs_torchmetrics": speedup,
    }
    write_result(args.out_dir, "metrics_speed",
                 "Macro mAP with unknown labels: mlrkit vs torchmetrics vs scikit-learn", body, data)
    print(f"wrote {args.out_dir / 'metrics_speed.md'} and .json")
    print(key_line)


if __name__ == "__main__":
    main()
