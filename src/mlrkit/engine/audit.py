"""Question the known labels of a recipe's training split: out-of-fold probabilities by K-fold
cross-fitting, then the label quality of every known entry (:mod:`mlrkit.label_quality`).

The training split's images are cut into ``K`` seeded folds (:func:`~mlrkit.data.splits.
fold_split`); fold ``k``'s run trains the recipe on the other folds (validating and calibrating
on the recipe's validation split as usual) and scores fold ``k``, so every image is scored by a
model that never saw its labels. Any method and loss work: a fold is an ordinary run. The audit
folder::

    out_dir/
        fold-0/ ... fold-{K-1}/   one run folder per fold (resumable: a finished fold is reused,
                                  a killed one resumes from its last epoch)
        oof_probabilities.npz     images (N,), labels (N, C) as given, probabilities (N, C)
        label_issues.csv          image,class,given,probability,quality,flagged: every known
                                  entry, most suspect first
        class_summary.csv         per class: known entries, flagged ones each way, thresholds
        audit.lock                while a process audits into the folder

The labels are audited as given: a recipe with a simulated protocol (which would hide labels)
is refused, as is the zero-shot protocol.
"""

from __future__ import annotations

import copy
import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlrkit.atomic import atomic_write
from mlrkit.data import MultiLabelData
from mlrkit.engine.recipe_schema import Recipe
from mlrkit.engine.recover import image_names
from mlrkit.engine.run_files import CONFIG_FILE, RESULTS_FILE
from mlrkit.engine.run_lock import file_lock
from mlrkit.engine.sources import HELDOUT
from mlrkit.label_quality import (
    ISSUES_FILE,
    ISSUES_HEADER,
    SUMMARY_FILE,
    LabelIssues,
    find_label_issues,
)

OOF_FILE = "oof_probabilities.npz"
LOCK_FILE = "audit.lock"


@dataclass
class Audit:
    """The audited images (``N``, as the label file names them), their labels as given
    ``(N, C)``, out-of-fold probabilities ``(N, C)`` and :class:`LabelIssues`."""

    out_dir: Path
    images: list[str]
    class_names: list[str]
    labels: np.ndarray
    probabilities: np.ndarray
    issues: LabelIssues

    def summary(self) -> str:
        """Two lines: what was audited and flagged, and where the files are."""
        known = int((self.labels >= 0).sum())
        flagged = self.issues.flagged
        return (f"{len(self.images):,} images, {known:,} known labels audited: "
                f"{int(flagged.sum()):,} flagged ({int((flagged & (self.labels == 1)).sum()):,} "
                f"given positives, {int((flagged & (self.labels == 0)).sum()):,} given "
                f"negatives)\nwritten: {self.out_dir / ISSUES_FILE} (most suspect first), "
                f"{self.out_dir / SUMMARY_FILE}, {self.out_dir / OOF_FILE}")


def fold_recipe(recipe: dict, folds: int, index: int, seed: int) -> dict:
    """``recipe`` training on all folds of its training split but fold ``index`` (held out as
    split ``heldout``); no test split: a fold run only scores its held-out fold."""
    out = copy.deepcopy(recipe)
    data = out["data"]
    data["fold"] = {"folds": folds, "index": index, "seed": seed, "from": data["train_split"],
                    "name": HELDOUT}
    data["test_split"] = None
    return out


def audit(recipe: dict, out_dir: str | Path, folds: int = 5, seed: int = 0,
          score: str = "self_confidence") -> Audit:
    """Cross-fit ``recipe`` (a resolved recipe, :func:`~mlrkit.engine.recipe.load_recipe`) over
    ``folds`` folds of its training split into ``out_dir`` and write the label issues of the
    split's known entries (see the module docstring); ``score`` is passed to
    :func:`~mlrkit.label_quality.find_label_issues`."""
    checked = Recipe.from_dict(recipe)
    _check_auditable(checked, folds)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a folder for the audit")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with file_lock(out_dir / LOCK_FILE, what="audit folder",
                       advice="wait for that audit to end or stop it, or give another --out"):
            audited, probs = _cross_fit(recipe, out_dir, folds, seed)
    except BaseException:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # failed before any fold began: leave nothing behind
        raise
    issues = find_label_issues(audited.labels, probs, score)
    result = Audit(out_dir, image_names(audited), list(audited.class_names), audited.labels,
                   probs, issues)
    _write(result)
    return result


def _cross_fit(recipe: dict, out_dir: Path, folds: int,
               seed: int) -> tuple[MultiLabelData, np.ndarray]:
    """Train (or reuse, or resume) the fold runs in ``out_dir``; the audited images (the
    training split, in dataset order) and their out-of-fold probabilities ``(N, C)``."""
    recipes = [fold_recipe(recipe, folds, k, seed) for k in range(folds)]
    _check_earlier_folds(out_dir, recipes)
    parts = [_fold_probabilities(r, out_dir / f"fold-{k}") for k, r in enumerate(recipes)]
    rows = np.concatenate([part[1] for part in parts])
    order = np.argsort(rows)
    probs = np.concatenate([part[2] for part in parts])[order]
    return parts[0][0].select(rows[order]), probs


def _check_auditable(recipe: Recipe, folds: int) -> None:
    """Refuse what cannot be audited: labels hidden by a simulated protocol or a mask file,
    zero-shot, no training split, fewer than 2 folds."""
    name = recipe.protocol.name
    if name != "observed":
        raise ValueError(f"protocol {name!r}: audit questions the labels as given; remove the "
                         f"recipe's protocol section (or set protocol.name: observed)")
    if recipe.data.train_split is None:
        raise ValueError("data.train_split is not set: audit cross-fits the training split")
    if folds < 2:
        raise ValueError(f"--folds {folds}: cross-fitting needs at least 2 folds")
    if recipe.protocol.mask_file is not None:
        raise ValueError("protocol.mask_file: audit questions the labels as given; remove it")


def _check_earlier_folds(out_dir: Path, recipes: list[dict]) -> None:
    """Refuse an audit folder whose fold runs (finished or not) are of another recipe, fold
    count or seed (``data.fold``), naming the first difference."""
    from mlrkit.engine.run_folder import recipe_differences

    for k, recipe in enumerate(recipes):
        saved = out_dir / f"fold-{k}" / CONFIG_FILE
        differences = saved.is_file() and recipe_differences(saved, recipe)
        if differences:
            raise ValueError(f"--out {out_dir} holds the audit of another recipe ({saved}: "
                             f"{differences}); give another --out, or delete the folder to "
                             f"audit again from the start")


def _fold_probabilities(recipe: dict, run_dir: Path) -> tuple[MultiLabelData, np.ndarray,
                                                              np.ndarray]:
    """Train (or reuse, or resume) the fold's run; the data, the held-out rows and their
    calibrated probabilities ``(n, C)``."""
    from mlrkit.engine.inference import load_run, prepare_from_run
    from mlrkit.engine.run import train_run
    from mlrkit.engine.trainer import evaluate_logits

    if not (run_dir / RESULTS_FILE).is_file():  # a finished fold (of this recipe) is reused
        train_run(recipe, run_dir, resume=(run_dir / CONFIG_FILE).is_file())
    run = load_run(run_dir)
    prepared = prepare_from_run(run)
    device, batch = run.device, run.info["inference"]["batch_size"]
    logits = evaluate_logits(run.method.to(device), prepared.sources[HELDOUT], batch, device)
    return prepared.data, prepared.rows[HELDOUT], run.probabilities(logits)


def _write(result: Audit) -> None:
    """The audit's three files, each atomically."""
    out, issues, names = result.out_dir, result.issues, result.class_names
    with atomic_write(out / OOF_FILE) as f:
        np.savez(f, images=np.asarray(result.images, dtype=str), labels=result.labels,
                 probabilities=result.probabilities, class_names=np.asarray(names, dtype=str))
    rows, cols = issues.ranked()
    with atomic_write(out / ISSUES_FILE, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(ISSUES_HEADER)
        for i, c in zip(rows.tolist(), cols.tolist(), strict=True):
            writer.writerow([result.images[i], names[c], int(result.labels[i, c]),
                             f"{result.probabilities[i, c]:.6f}", f"{issues.quality[i, c]:.6f}",
                             int(issues.flagged[i, c])])
    labels, flagged = result.labels, issues.flagged
    with atomic_write(out / SUMMARY_FILE, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["class", "known_positives", "known_negatives", "flagged_positives",
                         "flagged_negatives", "threshold_positive", "threshold_negative"])
        for c, name in enumerate(names):
            writer.writerow([name, int((labels[:, c] == 1).sum()), int((labels[:, c] == 0).sum()),
                             int((flagged[:, c] & (labels[:, c] == 1)).sum()),
                             int((flagged[:, c] & (labels[:, c] == 0)).sum()),
                             f"{issues.thresholds[c, 1]:.6f}", f"{issues.thresholds[c, 0]:.6f}"])
