"""How well ``mlrkit audit`` finds wrong known labels, against cleanlab on the same probabilities.

For each dataset and known share (1.0 and 0.5): the training split's labels (the official
``train`` split of VOC 2007, ``train`` of COCO-6k) are made partial where asked (each entry kept
with probability ``known``, seeded), then a seeded ``--flip-rate`` share of the known entries is
flipped (1 -> 0, 0 -> 1, drawn uniformly over the known entries). The flipped labels are written
as a label CSV (``image`` + one 1 / 0 / empty column per class, the dataset's images and split)
and ``mlrkit audit`` (5 folds, the linear head of ``configs/linear_<dataset>_partial.yaml`` with
its hold-out, labels as given) scores every known entry of the audited images out of fold.

Measured over the audited known entries, against the flips among them (``F`` of them):

- ``P@F``: the share of flips among the ``F`` most suspect entries; ``AUROC`` of the ranking;
- ``flagged P / R``: precision and recall of the entries flagged (confident learning's rule);
- ours: :func:`mlrkit.label_quality.find_label_issues` (``normalized``, the default, and
  ``self_confidence``), unknown entries never questioned;
- cleanlab (``cleanlab.multilabel_classification``, ``get_label_quality_scores_per_class`` and
  ``find_multilabel_issues_per_class``) on the same out-of-fold probabilities, which needs every
  label known: the unknown entries are given to it as negatives (what a user would have to do),
  so its ranking and flags cover them too (none of them is a flip).

    pip install -e '.[bench]'    # cleanlab
    python benchmarks/label_issues.py [--datasets voc2007 coco2014-6k] [--flip-rate 0.05]

Writes ``benchmarks/results/label_issues.md`` and ``.json``; the last lines are
``p_at_flips_<ours|cleanlab>_<full|half>=`` for VOC 2007.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from recipe_grid import ROOT, markdown_table, write_result
from sklearn.metrics import roc_auc_score

from mlrkit.atomic import atomic_write
from mlrkit.data import create_dataset
from mlrkit.engine.audit import audit
from mlrkit.engine.recipe import load_recipe
from mlrkit.label_quality import LabelIssues, find_label_issues, precision_at
from mlrkit.provenance import source_hash

DATA = ROOT.parent / "shared" / "data"
DATASETS = {"voc2007": ("voc2007", DATA / "voc2007"), "coco2014-6k": ("csv", DATA / "coco2014-6k")}
KNOWN = {"full": 1.0, "half": 0.5}


def noisy_labels(labels: np.ndarray, known: float, flip_rate: float,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` ``(N, C)`` kept with probability ``known`` per entry, then a ``flip_rate``
    share of the known entries flipped; the new labels and the ``(N, C)`` flip mask."""
    rng = np.random.default_rng(seed)
    out = labels.copy()
    if known < 1:
        out[rng.random(labels.shape) >= known] = -1
    entries = np.flatnonzero(out.ravel() >= 0)
    chosen = rng.choice(entries, size=round(flip_rate * len(entries)), replace=False)
    flips = np.zeros(labels.size, dtype=bool)
    flips[chosen] = True
    flips = flips.reshape(labels.shape)
    out[flips] = 1 - out[flips]
    return out, flips


def write_dataset(root: Path, images: list[Path], classes: list[str], labels: np.ndarray,
                  splits: np.ndarray, name: str) -> str:
    """A CSV dataset at ``root``: ``<name>.csv`` (absolute image paths, 1 / 0 / empty) and
    ``split.csv``; returns the label file's name."""
    root.mkdir(parents=True, exist_ok=True)
    text = {1: "1", 0: "0", -1: ""}
    with atomic_write(root / f"{name}.csv", "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image", *classes])
        for path, row in zip(images, labels, strict=True):
            writer.writerow([str(path), *(text[int(v)] for v in row)])
    with atomic_write(root / "split.csv", "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image", "split"])
        writer.writerows([str(p), s] for p, s in zip(images, splits, strict=True))
    return f"{name}.csv"


def cleanlab_scores(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's per-class label quality ``(N, C)`` and issue flags ``(N, C)``, unknown entries
    given as negatives (cleanlab's labels are lists of positives)."""
    from cleanlab.multilabel_classification.filter import find_multilabel_issues_per_class
    from cleanlab.multilabel_classification.rank import get_label_quality_scores_per_class

    lists = [np.flatnonzero(row == 1).tolist() for row in labels]
    scores = get_label_quality_scores_per_class(lists, probs)  # (N, C)
    flags = np.asarray(find_multilabel_issues_per_class(lists, probs, n_jobs=1))  # (C, N)
    return scores, flags.reshape(labels.shape[1], -1).T


def score_ranking(quality: np.ndarray, flagged: np.ndarray, flips: np.ndarray) -> dict:
    """P@F, AUROC and the flags' precision and recall of a quality ``(N, C)`` (NaN: not
    ranked), against ``flips`` ``(N, C)``."""
    issues = LabelIssues(quality, flagged, np.empty((0, 2)))
    ranked = np.isfinite(quality)
    count = int(flips.sum())
    return {"p_at_flips": precision_at(issues.ranked(), flips, count),
            "auroc": float(roc_auc_score(flips[ranked], -quality[ranked])),
            "flagged": int(flagged.sum()),
            "flag_precision": float((flagged & flips).sum() / max(int(flagged.sum()), 1)),
            "flag_recall": float((flagged & flips).sum() / max(count, 1)), "flips": count}


def evaluate(dataset: str, setting: str, flip_rate: float, seed: int, folds: int) -> dict:
    """Flip, audit and score one (dataset, known share)."""
    reader, root = DATASETS[dataset]
    recipe_path = ROOT / "configs" / f"linear_{dataset}_partial.yaml"
    base = load_recipe(recipe_path)
    data = create_dataset(reader, root, **base["data"]["options"])
    train = data.split_index(base["data"]["train_split"])
    labels = data.labels.copy()
    labels[train], flips = noisy_labels(data.labels[train], KNOWN[setting], flip_rate, seed)
    where = ROOT / "runs" / "bench" / "label_issues" / dataset
    name = write_dataset(where / "data", data.image_paths, list(data.class_names), labels,
                         data.splits, f"labels_{setting}_flip{flip_rate:g}_seed{seed}")
    recipe = load_recipe(recipe_path, [
        "protocol.name=observed", "data.dataset=csv", f"data.root={where / 'data'}",
        f"data.options={{labels_file: {name}, allow_outside_root: true}}",
        f"features.cache={where / 'cache'}", "features.spatial=false", "train.progress=false"])
    # a finished audit is reused only by the code that made it
    result = audit(recipe, where / f"audit_{Path(name).stem}-{source_hash()}", folds=folds,
                   seed=seed)
    by_path = {str(p): i for i, p in enumerate(np.asarray(data.image_paths)[train])}
    rows = [by_path[image] for image in result.images]  # the label file names them so
    truth = flips[rows]
    given, probs = result.labels, result.probabilities
    out = {"known_share": float((given >= 0).mean()), "images": len(rows)}
    for score in ("normalized", "self_confidence"):
        ours = find_label_issues(given, probs, score)
        out[f"ours_{score}"] = score_ranking(ours.quality, ours.flagged, truth)
    quality, flagged = cleanlab_scores(given, probs)
    out["cleanlab"] = score_ranking(quality, flagged, truth)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["voc2007"], choices=list(DATASETS))
    parser.add_argument("--flip-rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    rows, data, lines = [], {}, []
    for dataset in args.datasets:
        for setting, known in KNOWN.items():
            result = evaluate(dataset, setting, args.flip_rate, args.seed, args.folds)
            data[f"{dataset}/{setting}"] = result
            for who in ("ours_normalized", "ours_self_confidence", "cleanlab"):
                r = result[who]
                rows.append([dataset, f"{known:.0%}", who, f"{r['flips']:,}",
                             f"{r['p_at_flips']:.3f}", f"{r['auroc']:.3f}", f"{r['flagged']:,}",
                             f"{r['flag_precision']:.3f}", f"{r['flag_recall']:.3f}"])
            print(rows[-3:], flush=True)
            if dataset == "voc2007":
                ours, theirs = result["ours_normalized"], result["cleanlab"]
                lines += [f"p_at_flips_ours_{setting}={ours['p_at_flips']:.4f}",
                          f"p_at_flips_cleanlab_{setting}={theirs['p_at_flips']:.4f}"]
    body = [
        (f"`mlrkit audit` (5-fold out-of-fold probabilities of the linear head) against cleanlab "
         f"on the same probabilities. {args.flip_rate:.0%} of the known training labels flipped "
         f"(seed {args.seed}); at 50% known, half the entries were made unknown first, and "
         f"cleanlab, which needs every label, gets them as negatives. P@F: share of flips among "
         f"the F most suspect entries (F = the number of flips); flagged: the entries each "
         f"flags as issues."),
        "",
        *markdown_table(["dataset", "known", "scorer", "flips F", "P@F", "AUROC", "flagged",
                         "flag precision", "flag recall"], rows),
        "",
        *lines,
    ]
    print(write_result(ROOT / "benchmarks" / "results", "label_issues",
                       "Finding flipped labels: mlrkit audit against cleanlab", body, data))


if __name__ == "__main__":
    main()
