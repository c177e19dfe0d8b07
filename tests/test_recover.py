"""Recovered labels: threshold rules on hand-built scores, and `mlrkit recover` on a CSV with
empty cells writing the completed CSV and the long table."""

import csv

import numpy as np
import pytest
import yaml
from test_recipe_run import CLASSES, make_dataset

from mlrkit.cli import main
from mlrkit.engine.recover import recover
from mlrkit.engine.thresholds import MIN_VAL_POSITIVES, choose_thresholds


def test_f1_threshold_is_the_best_cut_and_ties_are_not_split():
    probs = np.array([[0.9], [0.8], [0.7], [0.6], [0.2]])
    labels = np.array([[1], [0], [1], [0], [1]], dtype=np.int8)
    # cut-offs: 0.9 -> P 1 R 1/3 F1 .5; 0.8 -> .5/.33 F1 .4; 0.7 -> .67/.67 F1 .67; 0.6 -> .5/.67;
    # 0.2 -> .6/1 F1 .75: the best is to keep everything
    out = choose_thresholds(probs, labels)
    assert out.values[0] == 0.2 and out.chosen[0]
    assert out.val_precision[0] == pytest.approx(0.6) and out.val_recall[0] == 1.0
    assert out.negatives[0] == out.values[0]  # F1: every entry below the cut is a negative
    tied = choose_thresholds(np.array([[0.5], [0.5], [0.1]]), np.array([[1], [0], [0]], np.int8),
                             min_positives=1)
    assert tied.values[0] == 0.5 and tied.val_precision[0] == 0.5  # both 0.5s together


def test_precision_target_takes_the_lowest_threshold_reaching_it_and_unknowns_are_ignored():
    probs = np.array([[0.9, 0.9], [0.8, 0.8], [0.7, 0.1], [0.6, 0.3]])
    labels = np.array([[1, 0], [1, -1], [0, -1], [1, -1]], dtype=np.int8)
    out = choose_thresholds(probs, labels, precision=0.75)
    # class 0: 0.9 P 1, 0.8 P 1, 0.7 P .67, 0.6 P .75 -> lowest reaching .75 is 0.6
    assert out.values[0] == 0.6 and out.chosen[0]
    # class 1 has no known positive: no threshold at all, its unknown entries stay unknown
    assert out.values[1] == np.inf and out.negatives[1] == -np.inf and not out.chosen[1]
    never = choose_thresholds(np.array([[0.9], [0.1]]), np.array([[0], [1]], np.int8), 0.9,
                              min_positives=1)
    assert never.values[0] == np.inf and not never.chosen[0]


def test_recover_keeps_known_entries_and_thresholds_the_unknown_ones():
    observed = np.array([[1, -1, 0], [-1, -1, 0]], dtype=np.int8)
    probs = np.array([[0.1, 0.7, 0.9], [0.6, 0.2, 0.9]])
    thresholds = choose_thresholds(np.array([[0.6, 0.6, 0.6]]), np.array([[1, 1, 1]], np.int8),
                                   min_positives=1)
    assert np.array_equal(recover(observed, probs, thresholds), [[1, 1, 0], [1, 0, 0]])


def test_a_precision_target_decides_both_ways_and_leaves_the_band_between_unknown():
    # one class, 10 validation entries high to low: 1 1 1 0 1 0 0 0 0 0
    probs = np.linspace(0.95, 0.05, 10)[:, None]
    labels = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0], dtype=np.int8)[:, None]
    out = choose_thresholds(probs, labels, precision=0.8)
    # positive: the lowest cut with precision >= .8 is the 5th entry (4 of 5); negative: the
    # highest cut below it under which >= 80% are negatives is that same cut (5 of 5 below)
    assert out.values[0] == pytest.approx(0.55) and out.val_precision[0] == pytest.approx(0.8)
    assert out.negatives[0] == pytest.approx(0.55) and out.val_npv[0] == 1.0
    strict = choose_thresholds(probs, labels, precision=1.0)
    # positives: only the top 3 (precision 1); negatives: below 0.45 (entries 6-10, all 0)
    assert strict.values[0] == pytest.approx(0.75) and strict.negatives[0] == pytest.approx(0.55)
    cells = np.array([[0.8], [0.6], [0.5], [0.2]])
    observed = np.full((4, 1), -1, np.int8)
    assert recover(observed, cells, strict).ravel().tolist() == [1, -1, 0, 0]
    filled = choose_thresholds(probs, labels, precision=1.0, fill_negatives=True)
    assert recover(observed, cells, filled).ravel().tolist() == [1, 0, 0, 0]
    assert filled.rule == "precision>=1+fill-negatives"


def test_a_class_with_too_few_validation_positives_is_left_unknown():
    probs = np.array([[0.9, 0.9], [0.8, 0.1], [0.7, 0.2], [0.1, 0.3]])
    labels = np.array([[1, 1], [1, 0], [1, 0], [0, 0]], dtype=np.int8)
    out = choose_thresholds(probs, labels)
    assert out.val_positives.tolist() == [3, 1] and MIN_VAL_POSITIVES == 3
    assert out.chosen.tolist() == [True, False]
    observed = np.full((2, 2), -1, np.int8)
    recovered = recover(observed, np.array([[0.95, 0.95], [0.05, 0.05]]), out)
    assert recovered.tolist() == [[1, -1], [0, -1]]


def test_cli_recover_fills_the_empty_cells_of_a_csv(tmp_path, capsys):
    make_dataset(tmp_path / "data", n=48)
    recipe = {
        "name": "tiny", "data": {"dataset": "csv", "root": str(tmp_path / "data")},
        "features": {"encoder": "resnet18", "weights": None, "image_size": 32,
                     "cache": str(tmp_path / "cache"), "num_workers": 0},
        "method": {"name": "linear"}, "protocol": {"name": "full"},
        "train": {"epochs": 3, "batch_size": 8, "lr": 0.01, "device": "cpu", "progress": False},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", "--config", str(tmp_path / "r.yaml"), "--run-dir",
                 str(tmp_path / "run")]) == 0
    sparse = tmp_path / "sparse"            # the same photos, every other cell left empty
    sparse.mkdir()
    rows = list(csv.reader((tmp_path / "data" / "labels.csv").open()))
    for i, row in enumerate(rows[1:]):
        for j in range(1, 4):
            if (i + j) % 2:
                row[j] = ""
        row[0] = f"../data/images/{row[0]}"
    with (sparse / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    capsys.readouterr()
    out = tmp_path / "out"
    assert main(["recover", "--checkpoint", str(tmp_path / "run"), "--dataset", "csv",
                 "--root", str(sparse), "-o", "allow_outside_root=true", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "72 unknown entries in 48 images" in said and "completed.csv" in said
    completed = list(csv.reader((out / "completed.csv").open()))
    assert completed[0] == ["image", *CLASSES]
    assert [r[0] for r in completed[1:]] == [r[0] for r in rows[1:]]   # names as the input
    long_rows = list(csv.DictReader((out / "recovered_long.csv").open()))
    assert len(long_rows) == 48 * 3
    for i, row in enumerate(rows[1:]):
        for j, name in enumerate(CLASSES, start=1):
            entry = long_rows[3 * i + j - 1]
            assert entry["class"] == name and entry["observed"] == row[j]
            assert completed[i + 1][j] == entry["recovered"]
            if row[j]:                                                # known cells kept
                assert entry["recovered"] == row[j]
    # unknown cells follow one threshold per class: every recovered 1 scores above every 0
    split_classes = 0
    for name in CLASSES:
        unknown = [e for e in long_rows if e["class"] == name and e["observed"] == ""]
        ones = [float(e["probability"]) for e in unknown if e["recovered"] == "1"]
        zeros = [float(e["probability"]) for e in unknown if e["recovered"] == "0"]
        assert not ones or not zeros or min(ones) > max(zeros), name
        split_classes += bool(ones and zeros)
    assert split_classes >= 2
    assert len({e["probability"] for e in long_rows}) > 10
    table = list(csv.DictReader((out / "thresholds.csv").open()))
    assert [r["class"] for r in table] == CLASSES and {r["rule"] for r in table} == {"f1"}
    for r in table:
        chosen = r["chosen"] == "True"
        assert chosen == (int(r["val_positives"]) >= 3)
        if chosen:  # every recovered 1 is at or above the written threshold
            ones = [float(e["probability"]) for e in long_rows
                    if e["class"] == r["class"] and e["observed"] == "" and e["recovered"] == "1"]
            assert all(p >= float(r["positive_threshold"]) - 1e-6 for p in ones)
    banded = tmp_path / "banded"
    assert main(["recover", "--checkpoint", str(tmp_path / "run"), "--dataset", "csv",
                 "--root", str(sparse), "-o", "allow_outside_root=true", "--out", str(banded),
                 "--precision", "0.99"]) == 0
    said = capsys.readouterr().out
    left = sum(e["recovered"] == "" for e in csv.DictReader((banded / "recovered_long.csv").open()))
    assert left > 0 and f"{left:,} left unknown (thresholds: precision>=0.99" in said


def test_recover_needs_a_dataset_for_root(tmp_path, capsys):
    assert main(["recover", "--checkpoint", str(tmp_path), "--root", "x", "--out", "o"]) == 2
    assert "give --dataset too" in capsys.readouterr().err
