"""How well trained runs fill in the missing training labels of VOC 2007 (partial labels).

For each method and known proportion, the runs of ``partial_labels.py`` (the same recipes, tuned
the same way; finished runs are reused, missing ones trained) recover the unknown entries of their
own training split (``mlrkit recover`` without ``--dataset``: thresholds per class maximising F1
on the validation hold-out), and the recovered entries are scored against the hidden truth:

- ``AP unknown``: mAP over the unknown entries only (each class's AP over the training images
  whose entry was hidden and is known in the ground truth);
- ``P / R / F1``: overall precision, recall and F1 of the entries recovered as positive.

With ``--precision 0.9 0.95`` the runs recover at those validation precision targets instead
(``mlrkit recover --precision P``: an entry is decided only where the decision reaches P on
validation, as a positive or as a negative; the rest stays unknown), and the table gives the
precision of the positives and of the negatives filled, the share of filled entries that are
right, the positives' recall and the share of hidden entries left unknown.

    python benchmarks/label_recovery.py [--known 0.1 0.3 0.5] [--methods clsl sarb mlp linear]
    python benchmarks/label_recovery.py --dataset coco2014-6k --known 0.1 --methods linear \
        --precision 0.9 0.95

Writes ``benchmarks/results/label_recovery_<dataset>.md`` and ``.json`` (with ``--precision``:
``label_recovery_<dataset>_precision``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from partial_labels import METHODS, run_method
from recipe_grid import ROOT, markdown_table, mean_std, write_result

from mlrkit.engine.recover import recover_run
from mlrkit.metrics import mean_average_precision


def score_recovery(observed: np.ndarray, truth: np.ndarray, recovered: np.ndarray,
                   probs: np.ndarray) -> dict[str, float]:
    """Metrics of the hidden entries (``observed`` -1, ``truth`` known), all ``(N, C)``."""
    hidden = (observed < 0) & (truth >= 0)
    target = np.where(hidden, truth, -1).astype(np.int8)
    ap = mean_average_precision(torch.from_numpy(probs), target)
    positive, true = (recovered == 1) & hidden, (truth == 1) & hidden
    negative = (recovered == 0) & hidden
    tp, tn = int((positive & true).sum()), int((negative & (truth == 0)).sum())
    precision = tp / max(int(positive.sum()), 1)
    recall = tp / max(int(true.sum()), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    filled = int(positive.sum() + negative.sum())
    return {"ap_unknown": ap.value, "precision": precision, "recall": recall, "f1": f1,
            "negative_precision": tn / max(int(negative.sum()), 1),
            "filled_correct": (tp + tn) / max(filled, 1),
            "left_unknown": 1 - filled / max(int(hidden.sum()), 1),
            "hidden": int(hidden.sum()), "hidden_positive": int(true.sum())}


def recover_scores(run_dir: str, precision: float | None = None) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        rec = recover_run(run_dir, out, precision=precision)
    return score_recovery(rec.observed, rec.data.labels, rec.recovered, rec.probabilities)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="voc2007")
    parser.add_argument("--methods", nargs="+", default=["clsl", "sarb", "mlp", "linear"],
                        choices=[m for m, (_, _, parent) in METHODS.items() if parent is None])
    parser.add_argument("--known", nargs="+", type=float, default=[0.1, 0.3, 0.5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--precision", nargs="+", type=float, default=None,
                        help="recover at these validation precision targets (default: F1)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    os.chdir(ROOT)  # recipes name data and caches relative to the project root
    if args.precision is not None:
        precision_table(args)
        return

    results: dict = {}
    rows = []
    for known in args.known:
        for method in args.methods:
            entry = run_method(args.dataset, method, known, args.seeds, True, {})
            scores = [recover_scores(r["run_dir"]) for r in entry["runs"]]
            results.setdefault(method, {})[str(known)] = scores
            cells = [mean_std([s[k] for s in scores])[1]
                     for k in ("ap_unknown", "precision", "recall", "f1")]
            rows.append([f"{known:.0%}", method, *cells, f"{scores[0]['hidden']:,}"])
            print(f"{args.dataset} p={known:.0%} {method:<8} AP unknown {cells[0]}  F1 {cells[3]}",
                  flush=True)
    note = ("Each method's tuned runs of `partial_labels.py` (training seeds "
            f"{args.seeds}, mean ± std) recover the hidden entries of their own training split; "
            "thresholds per class maximise F1 on the validation hold-out. `AP unknown`: mAP over "
            "the hidden entries only; P / R / F1: overall, of the entries recovered as positive.")
    header = ["known", "method", "AP unknown", "precision", "recall", "F1", "hidden entries"]
    body = [note, "", *markdown_table(header, rows)]
    text = write_result(args.out_dir, f"label_recovery_{args.dataset}",
                        f"Recovered training labels on {args.dataset}", body, results)
    print(text)


def precision_table(args: argparse.Namespace) -> None:
    """The ``--precision`` table: each target, each method's runs, mean ± std over seeds."""
    results: dict = {}
    rows = []
    keys = ("precision", "negative_precision", "filled_correct", "recall", "left_unknown")
    for known in args.known:
        for method in args.methods:
            entry = run_method(args.dataset, method, known, args.seeds, True, {})
            for target in args.precision:
                scores = [recover_scores(r["run_dir"], target) for r in entry["runs"]]
                results.setdefault(method, {})[f"{known} P>={target}"] = scores
                cells = [mean_std([s[k] for s in scores])[1] for k in keys]
                rows.append([f"{known:.0%}", method, f"{target:g}", *cells,
                             f"{scores[0]['hidden']:,}"])
                print(f"{args.dataset} p={known:.0%} {method} P>={target:g}: positives "
                      f"{cells[0]}, negatives {cells[1]}, left unknown {cells[4]}", flush=True)
    note = ("Each method's tuned runs of `partial_labels.py` (training seeds "
            f"{args.seeds}, mean ± std) recover the hidden entries of their own training split "
            "with `mlrkit recover --precision P`: per class, the lowest threshold whose "
            "validation precision reaches P makes positives, the highest under which the "
            "validation negatives reach P makes negatives, the entries between stay unknown (a "
            "class with fewer than 3 validation positives: all). Percent of the hidden entries: "
            "precision of the positives and of the negatives filled, filled entries that are "
            "right, recall of the hidden positives, hidden entries left unknown.")
    header = ["known", "method", "P", "precision +", "precision -", "filled right",
              "recall +", "left unknown", "hidden entries"]
    body = [note, "", *markdown_table(header, rows)]
    print(write_result(args.out_dir, f"label_recovery_{args.dataset}_precision",
                       f"Recovered training labels at a precision target on {args.dataset}",
                       body, results))


if __name__ == "__main__":
    main()
