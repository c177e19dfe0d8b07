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
from mlrkit.data.protocols import ProtocolMask, labels_checksum
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
          score: str = "self_confidence", rounds: int = 1) -> Audit:
    """Cross-fit ``recipe`` (a resolved recipe, :func:`~mlrkit.engine.recipe.load_recipe`) over
    ``folds`` folds of its training split into ``out_dir`` and write the label issues of the
    split's known entries (see the module docstring); ``score`` is passed to
    :func:`~mlrkit.label_quality.find_label_issues`. With ``rounds`` > 1, each further round
    cross-fits again with the previous round's flagged labels hidden from training (unknown, as
    a partial-label method can take them; the user's file is never changed) in
    ``out_dir/round-<r>/``, and scores every known label with those cleaner models."""
    checked = Recipe.from_dict(recipe)
    _check_auditable(checked, folds, rounds)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a folder for the audit")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with file_lock(out_dir / LOCK_FILE, what="audit folder",
                       advice="wait for that audit to end or stop it, or give another --out"):
            fitted = _cross_fit(recipe, out_dir, folds, seed)
            for r in range(2, rounds + 1):
                issues = find_label_issues(fitted.labels, fitted.probs, score)
                fitted = _cross_fit(recipe, out_dir / f"round-{r}", folds, seed,
                                    hide=(fitted, issues.flagged))
    except BaseException:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # failed before any fold began: leave nothing behind
        raise
    audited = fitted.data.select(fitted.rows)
    issues = find_label_issues(fitted.labels, fitted.probs, score)
    result = Audit(out_dir, image_names(audited), list(fitted.data.class_names), fitted.labels,
                   fitted.probs, issues)
    _write(result)
    return result


@dataclass
class _CrossFit:
    """One round: the data, the audited rows (ascending), each fold's held-out rows, the labels
    as given ``(N, C)`` and the out-of-fold probabilities ``(N, C)`` of the audited rows."""

    data: MultiLabelData
    rows: np.ndarray
    heldout: list[np.ndarray]
    probs: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        return self.data.labels[self.rows]


def _cross_fit(recipe: dict, round_dir: Path, folds: int, seed: int,
               hide: tuple[_CrossFit, np.ndarray] | None = None) -> _CrossFit:
    """The fold runs of one round in ``round_dir`` and their out-of-fold probabilities; ``hide``
    is the previous round and the ``(N, C)`` flags of its audited rows, hidden from training
    here through a known-label mask per fold (``protocol.mask_file``)."""
    recipes = [fold_recipe(recipe, folds, k, seed) for k in range(folds)]
    if hide is not None:
        round_dir.mkdir(exist_ok=True)
        for k, fold in enumerate(recipes):
            fold["protocol"]["mask_file"] = str(_hiding_mask(*hide, k, round_dir))
    _check_earlier_folds(round_dir, recipes)
    parts = [_fold_probabilities(r, round_dir / f"fold-{k}") for k, r in enumerate(recipes)]
    rows = np.concatenate([part[1] for part in parts])
    order = np.argsort(rows)
    probs = np.concatenate([part[2] for part in parts])[order]
    return _CrossFit(parts[0][0], rows[order], [part[1] for part in parts], probs)


def _hiding_mask(previous: _CrossFit, flagged: np.ndarray, fold: int, round_dir: Path) -> Path:
    """Write the known-label mask of fold ``fold``'s training rows (the audited rows outside the
    fold, ascending, as :func:`~mlrkit.engine.sources.prepare_data` orders them): every given
    label known except those ``flagged`` by the previous round."""
    train = np.setdiff1d(previous.rows, previous.heldout[fold])
    position = np.searchsorted(previous.rows, train)
    labels = previous.data.labels[train]
    mask = ProtocolMask(known=(labels >= 0) & ~flagged[position], protocol="observed",
                        params={"hidden": "labels flagged by the previous audit round"},
                        seed=0, labels_checksum=labels_checksum(labels))
    return mask.save(round_dir / f"fold-{fold}-mask.npz")


def _check_auditable(recipe: Recipe, folds: int, rounds: int) -> None:
    """Refuse what cannot be audited: labels hidden by a simulated protocol, zero-shot, no
    training split, fewer than 2 folds or 1 round."""
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
    if rounds < 1:
        raise ValueError(f"--rounds {rounds}: give at least 1")


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
