"""`mlrkit audit`: label quality of known entries on hand-built probabilities, K-fold splits that
partition the training split, and the command on a CSV with two wrong labels."""

import csv

import numpy as np
import pytest
import yaml
from test_recipe_run import CLASSES, make_dataset

from mlrkit.cli import main
from mlrkit.data import create_dataset
from mlrkit.data.splits import fold_split
from mlrkit.label_quality import class_thresholds, find_label_issues, precision_at

LABELS = np.array([[1, 0], [1, -1], [0, 1], [1, 0], [0, 0]], dtype=np.int8)
PROBS = np.array([[0.9, 0.1], [0.8, 0.95], [0.1, 0.9], [0.02, 0.2], [0.2, 0.97]])


def test_a_confidently_contradicted_known_label_is_flagged_an_unknown_never():
    issues = find_label_issues(LABELS, PROBS, score="normalized")
    # class 0: positives p .9 .8 .02 -> t_pos .5733; negatives 1-p .9 .8 -> t_neg .85
    # class 1: positive p .9 -> t_pos .9; negatives 1-p .9 .8 .03 -> t_neg .5767
    assert issues.thresholds == pytest.approx(np.array([[0.85, 1.72 / 3], [1.73 / 3, 0.9]]))
    # class 0's given positives: rows 0, 1 confidently positive (p >= .5733), row 3 confidently
    # negative (1 - p = .98 >= .85): 1 of 3 wrong, the lowest, (3, 0), and p < .5 there.
    # class 1's given negatives: rows 0, 3 confidently negative, row 4 confidently positive
    # (p .97 >= .9): 1 of 3 wrong, the lowest self-confidence, (4, 1), and p >= .5 there.
    assert np.argwhere(issues.flagged).tolist() == [[3, 0], [4, 1]]
    assert np.isnan(issues.quality[1, 1]) and not issues.flagged[1, 1]  # unknown at p .95
    assert issues.quality[3, 0] == pytest.approx(0.02 / (1.72 / 3))
    assert issues.quality[4, 1] == pytest.approx(0.03 / (1.73 / 3))
    rows, cols = issues.ranked()
    assert list(zip(rows[:2].tolist(), cols[:2].tolist(), strict=True)) == [(3, 0), (4, 1)]
    assert len(rows) == int((LABELS >= 0).sum())  # every known entry ranked, no unknown one
    truth = np.zeros(LABELS.shape, dtype=bool)
    truth[3, 0] = truth[4, 1] = True
    assert precision_at(issues.ranked(), truth, 2) == 1.0


def test_only_as_many_labels_as_the_confident_joint_counts_are_flagged():
    labels = np.array([[1], [1], [1], [1], [0], [0]], dtype=np.int8)
    probs = np.array([[0.4], [0.45], [0.9], [0.95], [0.01], [0.02]])
    # t_pos .675, t_neg .985: no given positive is confidently negative, so none is wrong,
    # although two are below 0.5 (hard positives, not label errors)
    assert not find_label_issues(labels, probs).flagged.any()
    probs[1] = 0.001  # now 1 - p >= t_neg: one of four positives wrong -> the lowest one only
    flagged = find_label_issues(labels, probs).flagged
    assert np.argwhere(flagged).tolist() == [[1, 0]]


def test_unknown_entries_take_no_part_in_the_thresholds():
    changed = PROBS.copy()
    changed[1, 1] = 0.0  # the unknown entry's probability
    assert np.array_equal(class_thresholds(LABELS, changed), class_thresholds(LABELS, PROBS))
    plain = find_label_issues(LABELS, PROBS)  # the default: the given label's probability
    assert plain.quality[4, 1] == pytest.approx(0.03) and plain.quality[0, 0] == 0.9
    assert np.isnan(plain.quality[1, 1])
    assert np.array_equal(plain.flagged, find_label_issues(LABELS, PROBS, "normalized").flagged)
    with pytest.raises(ValueError, match="score must be one of"):
        find_label_issues(LABELS, PROBS, score="margin")


def test_folds_partition_the_source_split_with_a_seed(tmp_path):
    make_dataset(tmp_path, n=48)
    data = create_dataset("csv", tmp_path)
    train = set(data.split_index("train").tolist())
    held = [set(fold_split(data, 5, k, seed=3).split_index("heldout").tolist()) for k in range(5)]
    assert set().union(*held) == train and sum(map(len, held)) == len(train)
    assert sorted(map(len, held)) == [4, 5, 5, 5, 5]  # 24 images in 5 near-equal folds
    again = fold_split(data, 5, 2, seed=3).split_index("heldout")
    assert set(again.tolist()) == held[2]
    assert set(fold_split(data, 5, 2, seed=4).split_index("heldout").tolist()) != held[2]
    with pytest.raises(ValueError, match="fold 5 is not one of the 5 folds"):
        fold_split(data, 5, 5)


def _recipe(tmp_path, protocol=None) -> str:
    recipe = {
        "name": "audit", "data": {"dataset": "csv", "root": str(tmp_path / "data")},
        "features": {"encoder": "resnet18", "weights": None, "image_size": 32, "seed": 0,
                     "cache": str(tmp_path / "cache"), "num_workers": 0, "spatial": False},
        "method": {"name": "linear"},
        "train": {"epochs": 8, "batch_size": 8, "lr": 0.05, "progress": False, "device": "cpu"},
    }
    if protocol:
        recipe["protocol"] = protocol
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    return str(tmp_path / "r.yaml")


def test_audit_ranks_every_known_training_label_out_of_fold_and_resumes(tmp_path, capsys):
    make_dataset(tmp_path / "data", n=48)
    labels = tmp_path / "data" / "labels.csv"
    rows = list(csv.reader(labels.open()))
    rows[1][2] = ""                             # 0.jpg green: unknown, never questioned
    rows[5][1] = str(1 - int(rows[5][1]))       # 4.jpg red: a wrong label
    with labels.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    out = tmp_path / "audit"
    assert main(["audit", "--config", _recipe(tmp_path), "--out", str(out), "--folds", "3"]) == 0
    said = capsys.readouterr().out
    assert said.startswith("24 images, 71 known labels audited: ")
    table = list(csv.DictReader((out / "label_issues.csv").open()))
    train = [r[0] for r in rows[1:] if int(r[0].split(".")[0]) % 4 in (0, 1)]
    assert sorted({r["image"] for r in table}) == sorted(train)
    assert len(table) == 71 and ("0.jpg", "green") not in {(r["image"], r["class"]) for r in table}
    quality = [float(r["quality"]) for r in table]
    assert quality == sorted(quality)           # most suspect first
    assert {r["class"] for r in table} == set(CLASSES)
    saved = np.load(out / "oof_probabilities.npz")
    assert saved["probabilities"].shape == saved["labels"].shape == (24, 3)
    assert saved["labels"][list(saved["images"]).index("0.jpg"), 1] == -1
    summary = list(csv.DictReader((out / "class_summary.csv").open()))
    assert [r["class"] for r in summary] == CLASSES
    assert sum(int(r["known_positives"]) + int(r["known_negatives"]) for r in summary) == 71

    finished = {k: (out / f"fold-{k}" / "results.json").stat().st_mtime_ns for k in range(3)}
    before = (out / "label_issues.csv").read_bytes()
    assert main(["audit", "--config", _recipe(tmp_path), "--out", str(out), "--folds", "3"]) == 0
    assert {k: (out / f"fold-{k}" / "results.json").stat().st_mtime_ns
            for k in range(3)} == finished      # finished folds are reused, not retrained
    assert (out / "label_issues.csv").read_bytes() == before
    capsys.readouterr()
    assert main(["audit", "--config", _recipe(tmp_path), "--out", str(out), "--folds", "3",
                 "--set", "train.lr=0.1"]) == 2  # never mixes folds of two recipes
    assert capsys.readouterr().err.strip() == (
        f"mlrkit: error: --out {out} holds the audit of another recipe ({out / 'fold-0'}"
        f"/config.yaml: train.lr is 0.05 in the run, 0.1 now); give another --out, or delete "
        f"the folder to audit again from the start")


def test_audit_refuses_what_it_cannot_do_in_one_line_before_any_fold(tmp_path, capsys):
    recipe = _recipe(tmp_path, protocol={"name": "partial", "known": 0.5})
    assert main(["audit", "--config", recipe, "--out", str(tmp_path / "audit")]) == 2
    said = capsys.readouterr().err.strip()
    assert said == ("mlrkit: error: protocol 'partial': audit questions the labels as given; "
                    "remove the recipe's protocol section (or set protocol.name: observed)")
    assert not (tmp_path / "audit").exists()

    make_dataset(tmp_path / "data", n=48)
    assert main(["audit", "--config", _recipe(tmp_path), "--out", str(tmp_path / "audit"),
                 "--folds", "30"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "split 'train' has 24 images, fewer than 30 folds; use at most 24 folds")
    assert not (tmp_path / "audit").exists()  # failed before any fold: nothing left behind
    (tmp_path / "file").write_text("")
    assert main(["audit", "--config", _recipe(tmp_path), "--out", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err.strip().endswith("is a file; give a folder for the audit")


def test_a_second_audit_into_the_same_folder_is_refused_naming_the_first(tmp_path, capsys):
    import os

    from mlrkit.engine.run_lock import file_lock

    (tmp_path / "audit").mkdir()
    with file_lock(tmp_path / "audit" / "audit.lock"):  # as a running audit holds it
        assert main(["audit", "--config", _recipe(tmp_path), "--out",
                     str(tmp_path / "audit")]) == 2
    said = capsys.readouterr().err.strip()
    assert f"audit folder is in use by PID {os.getpid()}" in said
    assert said.endswith("wait for that audit to end or stop it, or give another --out")
