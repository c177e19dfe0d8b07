"""How well ``mlrkit audit`` finds wrong known labels, against cleanlab.

For each dataset and known share (1.0 and 0.5): the training split's labels (the official
``train`` split of VOC 2007, ``train`` of COCO-6k) are made partial where asked (each entry kept
with probability ``known``, seeded), then flipped, seeded (:func:`noisy_labels`): ``uniform``,
a ``--flip-rate`` share of the known entries drawn uniformly (1 -> 0, 0 -> 1; most are negatives
made positive, as most entries are negatives), or ``balanced``, that share of the known
positives made negative (missed tags) and as many negatives made positive (wrong tags). The
flipped labels are written
as a label CSV (``image`` + one 1 / 0 / empty column per class, the dataset's images and split)
and ``mlrkit audit`` (5 folds, the linear head of ``configs/linear_<dataset>_partial.yaml`` with
its hold-out, labels as given) scores every known entry of the audited images out of fold.

Measured over the audited known entries, against the flips among them (``F`` of them):

- ``P@F``: the share of flips among the ``F`` most suspect entries; ``AUROC`` of the ranking;
- ``flagged P / R``: precision and recall of the entries flagged (ours: the rule of
  :mod:`mlrkit.label_quality`; cleanlab: ``prune_by_noise_rate``);
- ours: :func:`mlrkit.label_quality.find_label_issues` (``self_confidence``, the default, and
  ``normalized``), unknown entries never questioned;
- ``cleanlab_same_probs``: cleanlab (``cleanlab.multilabel_classification``,
  ``get_label_quality_scores_per_class`` and ``find_multilabel_issues_per_class``) on our
  out-of-fold probabilities; it needs every label known, so the unknown entries are given to it
  as negatives and its ranking and flags cover them too (none of them is a flip);
- ``cleanlab``: what a user without an unknown state has to do end to end: the unknown entries
  written as negatives, the same audit cross-fitted on those labels, cleanlab on its
  probabilities (at 100% known this differs only by VOC's few "difficult" entries).

The closing lines (VOC 2007, the first ``--flip-modes``, ``uniform`` by default: the issue's
"5% of the known labels") give ours against ``cleanlab_same_probs`` at 100% known and against
``cleanlab`` at 50% known.

    pip install -e '.[bench]'    # cleanlab
    python benchmarks/label_issues.py [--datasets voc2007 coco2014-6k] [--flip-rate 0.05] \
        [--flip-modes uniform balanced]

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
FLIP_MODES = ("uniform", "balanced")
SCORERS = ("ours_self_confidence", "ours_normalized", "cleanlab_same_probs", "cleanlab")


def noisy_labels(labels: np.ndarray, known: float, flip_rate: float, seed: int,
                 mode: str = "uniform") -> tuple[np.ndarray, np.ndarray]:
    """``labels`` ``(N, C)`` kept with probability ``known`` per entry, then flipped; the new
    labels and the ``(N, C)`` flip mask. ``uniform``: a ``flip_rate`` share of the known entries,
    drawn uniformly (so mostly negatives made positive, as negatives are most entries);
    ``balanced``: a ``flip_rate`` share of the known positives made negative (missed tags) and as
    many known negatives made positive (wrong tags)."""
    rng = np.random.default_rng(seed)
    out = labels.copy()
    if known < 1:
        out[rng.random(labels.shape) >= known] = -1
    if mode == "uniform":
        entries = np.flatnonzero(out.ravel() >= 0)
        chosen = rng.choice(entries, size=round(flip_rate * len(entries)), replace=False)
    else:
        positives, negatives = np.flatnonzero(out.ravel() == 1), np.flatnonzero(out.ravel() == 0)
        count = round(flip_rate * len(positives))
        chosen = np.concatenate([rng.choice(positives, size=count, replace=False),
                                 rng.choice(negatives, size=count, replace=False)])
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
    flags = np.asarray(find_multilabel_issues_per_class(lists, probs, n_jobs=1))
    assert scores.shape == flags.shape == labels.shape
    return scores, flags


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


def audit_labels(dataset: str, data, labels: np.ndarray, name: str, folds: int, seed: int):
    """``mlrkit audit`` of ``data`` with ``labels`` (written as ``<name>.csv``), the recipe's
    linear head on the dataset's features; a finished audit is reused only by the code that
    made it."""
    recipe_path = ROOT / "configs" / f"linear_{dataset}_partial.yaml"
    where = ROOT / "runs" / "bench" / "label_issues" / dataset
    labels_file = write_dataset(where / "data", data.image_paths, list(data.class_names), labels,
                                data.splits, name)
    recipe = load_recipe(recipe_path, [
        "protocol.name=observed", "data.dataset=csv", f"data.root={where / 'data'}",
        f"data.options={{labels_file: {labels_file}, allow_outside_root: true}}",
        f"features.cache={where / 'cache'}", "features.spatial=false", "train.progress=false"])
    return audit(recipe, where / f"audit_{name}-{source_hash()}", folds=folds, seed=seed)


def evaluate(dataset: str, setting: str, mode: str, flip_rate: float, seed: int,
             folds: int) -> dict:
    """Flip, audit and score one (dataset, known share, flip mode)."""
    reader, root = DATASETS[dataset]
    base = load_recipe(ROOT / "configs" / f"linear_{dataset}_partial.yaml")
    data = create_dataset(reader, root, **base["data"]["options"])
    train = data.split_index(base["data"]["train_split"])
    labels = data.labels.copy()
    labels[train], flips = noisy_labels(data.labels[train], KNOWN[setting], flip_rate, seed,
                                        mode)
    name = f"labels_{setting}_{mode}-flip{flip_rate:g}_seed{seed}"
    result = audit_labels(dataset, data, labels, name, folds, seed)
    by_path = {str(p): i for i, p in enumerate(np.asarray(data.image_paths)[train])}
    rows = [by_path[image] for image in result.images]  # the label file names them so
    truth = flips[rows]
    given, probs = result.labels, result.probabilities
    out = {"known_share": float((given >= 0).mean()), "images": len(rows)}
    for score in ("self_confidence", "normalized"):
        ours = find_label_issues(given, probs, score)
        out[f"ours_{score}"] = score_ranking(ours.quality, ours.flagged, truth)
    out["cleanlab_same_probs"] = score_ranking(*cleanlab_scores(given, probs), truth)
    # what a user without an unknown state does: the unknown entries written as negatives,
    # the model cross-fitted on them, cleanlab on its probabilities
    negatives = np.where(labels < 0, 0, labels).astype(np.int8)
    plain = audit_labels(dataset, data, negatives, f"{name}_unknown-as-negative", folds, seed)
    assert plain.images == result.images
    out["cleanlab"] = score_ranking(*cleanlab_scores(plain.labels, plain.probabilities), truth)
    return out


def bar_lines(setting: str, result: dict) -> list[str]:
    """The closing lines of one VOC 2007 setting: ours (``self_confidence``) against cleanlab on
    the same probabilities at 100% known, and as a user without an unknown state runs it at
    50% known."""
    ours = result["ours_self_confidence"]
    theirs = result["cleanlab_same_probs" if setting == "full" else "cleanlab"]
    return [f"p_at_flips_ours_{setting}={ours['p_at_flips']:.4f}",
            f"p_at_flips_cleanlab_{setting}={theirs['p_at_flips']:.4f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["voc2007"], choices=list(DATASETS))
    parser.add_argument("--flip-rate", type=float, default=0.05)
    parser.add_argument("--flip-modes", nargs="+", default=list(FLIP_MODES), choices=FLIP_MODES,
                        help="uniform: flip-rate of the known entries; balanced: flip-rate of "
                             "the known positives made negative and as many negatives made "
                             "positive (the closing lines are of the first mode)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    rows, data, lines = [], {}, []
    for dataset in args.datasets:
        for mode in args.flip_modes:
            for setting, known in KNOWN.items():
                result = evaluate(dataset, setting, mode, args.flip_rate, args.seed, args.folds)
                data[f"{dataset}/{mode}/{setting}"] = result
                for who in SCORERS:
                    r = result[who]
                    rows.append([dataset, mode, f"{known:.0%}", who, f"{r['flips']:,}",
                                 f"{r['p_at_flips']:.3f}", f"{r['auroc']:.3f}",
                                 f"{r['flagged']:,}", f"{r['flag_precision']:.3f}",
                                 f"{r['flag_recall']:.3f}"])
                print(rows[-len(SCORERS):], flush=True)
                if dataset == "voc2007" and mode == args.flip_modes[0]:
                    lines += bar_lines(setting, result)
    body = [
        (f"`mlrkit audit` ({args.folds}-fold out-of-fold probabilities of the linear head) "
         f"against cleanlab. Flips (seed {args.seed}): `uniform`, {args.flip_rate:.0%} of the "
         f"known training labels drawn uniformly (most are negatives made positive); "
         f"`balanced`, {args.flip_rate:.0%} of the known positives made negative and as many "
         f"negatives made positive. At 50% known, half the entries were made unknown first. "
         f"cleanlab needs "
         f"every label: `cleanlab_same_probs` gets our probabilities with the unknown entries as "
         f"negatives; `cleanlab` is what a user has to do, unknown entries written as negatives, "
         f"the audit's cross-fitting on those labels, cleanlab on its probabilities. P@F: share "
         f"of flips among the F most suspect entries (F = the number of flips); flagged: the "
         f"entries each flags as issues. Closing lines: VOC 2007, {args.flip_modes[0]} flips, "
         f"ours (`self_confidence`) against `cleanlab_same_probs` at 100% known and `cleanlab` "
         f"at 50% known."),
        "",
        *markdown_table(["dataset", "flips", "known", "scorer", "flips F", "P@F", "AUROC", "flagged",
                         "flag precision", "flag recall"], rows),
        "",
        *lines,
    ]
    print(write_result(ROOT / "benchmarks" / "results", "label_issues",
                       "Finding flipped labels: mlrkit audit against cleanlab", body, data))


if __name__ == "__main__":
    main()
