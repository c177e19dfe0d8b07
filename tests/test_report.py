"""``mlrkit report``: the counts its figures draw, the run grouping, its errors, and the page of
two real tiny runs opened in headless Chromium (Debian's ``/usr/bin/chromium``)."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_recipe_run import CLASSES, make_dataset

from mlrkit import metrics
from mlrkit.cli import main
from mlrkit.engine.inference import load_run, prepare_from_run
from mlrkit.engine.trainer import evaluate_logits
from mlrkit.report import build_report, figures
from mlrkit.report.html import render
from mlrkit.report.runs import RunData, differing_settings, seed_groups

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import plots  # benchmarks/plots.py

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CHROMIUM = Path("/usr/bin/chromium")


# --------------------------------------------------------------------------------------------------
# What the figures count, on hand-built inputs
# --------------------------------------------------------------------------------------------------


def test_cooccurrence_counts_images_positive_for_both_classes():
    labels = np.array([[1, 1, 0],
                       [1, -1, 1],
                       [1, 1, 1],
                       [0, 1, -1],
                       [-1, 0, 1]], dtype=np.int8)
    assert figures.cooccurrence(labels).tolist() == [[3, 2, 2],
                                                     [2, 3, 1],
                                                     [2, 1, 3]]
    predicted = figures.predicted_labels(np.array([[0.5, 0.49], [0.9, 0.1]]))
    assert predicted.dtype == np.int8 and predicted.tolist() == [[1, 0], [1, 0]]


def test_recovery_curve_equals_a_count_at_each_threshold():
    rng = np.random.default_rng(3)
    truth = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(40, 4), p=[0.1, 0.6, 0.3])
    observed = np.where(rng.random((40, 4)) < 0.4, truth, -1).astype(np.int8)
    probs = np.round(rng.random((40, 4)), 1)  # ties at every threshold below
    thresholds = np.array([0.0, 0.3, 0.5, 0.7, 1.0, 1.1])
    precision, recall = figures.recovery_curve(probs, observed, truth, thresholds)
    hidden = (observed == -1) & (truth != -1)
    for t, p, r in zip(thresholds, precision, recall, strict=True):
        chosen = [(i, c) for i in range(40) for c in range(4) if hidden[i, c] and probs[i, c] >= t]
        tp = sum(truth[i, c] == 1 for i, c in chosen)
        positives = sum(truth[i, c] == 1 for i in range(40) for c in range(4) if hidden[i, c])
        assert r == pytest.approx(tp / positives, abs=1e-12)
        if chosen:
            assert p == pytest.approx(tp / len(chosen), abs=1e-12)
        else:
            assert np.isnan(p)
    assert np.isnan(precision[-1]) and recall[-1] == 0.0 and recall[0] == 1.0


def test_recovered_precision_recall_counts_only_hidden_entries():
    observed = np.array([[1, -1, -1], [-1, 0, -1]], dtype=np.int8)
    truth = np.array([[1, 1, 0], [1, 0, -1]], dtype=np.int8)
    recovered = np.array([[1, 1, 1], [0, 0, 1]], dtype=np.int8)
    # hidden and known: (0,1) positive, (0,2) negative, (1,0) positive; recovered 1: (0,1), (0,2)
    assert figures.recovered_precision_recall(observed, truth, recovered) == (0.5, 0.5)


def test_pr_curve_area_is_the_average_precision():
    rng = np.random.default_rng(0)
    probs = np.round(rng.random((60, 3)), 2)
    labels = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(60, 3))
    ap = metrics.average_precision(probs, labels).numpy()
    for c in range(3):
        recall, precision = figures.pr_curve(probs, labels, c)
        assert recall[0] == 0.0 and recall[-1] == pytest.approx(1.0) and recall[-2] < 1.0
        assert figures.step_area(recall, precision) == pytest.approx(ap[c], abs=1e-12)


def test_best_and_worst_classes_skip_classes_without_positive():
    ap = np.array([0.5, np.nan, 0.9, 0.1, 0.7])
    assert figures.best_and_worst(ap, 2) == ([2, 4], [0, 3])
    assert figures.best_and_worst(ap, 3) == ([2, 4], [0, 3])  # no class in both lists
    assert figures.best_and_worst(np.array([np.nan, 0.4]), 3) == ([1], [])


def test_training_curves_draw_each_loss_part_and_mark_the_selected_epoch():
    history = [{"epoch": e, "train_loss": 1.0 / (e + 1), "train_aux": 0.5 / (e + 1),
                "val_mAP": m} for e, m in enumerate([0.5, 0.7, 0.6])]
    losses, val = figures.training_curves(history, best_epoch=1).axes[:2]
    assert [line.get_label() for line in losses.get_lines()[:2]] == ["loss", "aux"]
    assert losses.get_lines()[1].get_ydata().tolist() == [0.5, 0.25, 0.5 / 3]
    star = next(line for line in val.get_lines() if line.get_marker() == "*")
    assert star.get_xdata().tolist() == [1] and star.get_ydata().tolist() == [70.0]
    assert figures.png(figures.training_curves(history, 1)).startswith(b"\x89PNG")


def _runs(*maps: float) -> dict:
    return {"runs": [{"test_mAP": m} for m in maps]}


def test_partial_label_plot_draws_means_std_bands_and_the_full_label_bound(tmp_path):
    data = {"results": {"linear": {"0.1": _runs(0.5, 0.7), "0.5": _runs(0.8, 0.8, 0.8)},
                        "linear-ablation": {"0.1": _runs(0.4)}},
            "full_labels": {"linear": _runs(0.9, 0.7)}}
    ax = plots.partial_labels_figure(data).axes[0]
    line = ax.get_lines()[0]
    assert line.get_label() == "linear"
    assert line.get_xdata().tolist() == [10.0, 50.0]
    assert line.get_ydata() == pytest.approx([60.0, 80.0])
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    std = 100 * np.std([0.5, 0.7], ddof=1)
    assert band.min() == pytest.approx(60 - std) and band.max() == pytest.approx(80.0)
    points = {tuple(np.round(line.get_xydata()[0], 6)) for line in ax.get_lines()[1:]}
    assert (100.0, 80.0) in points and (11.2, 40.0) in points  # the bound; the ablation

    path = tmp_path / "partial_labels_x.json"
    path.write_text(json.dumps({"command": "", "machine": "", "results": data}))
    assert plots.plot_partial_labels(path) == tmp_path / "partial_labels_x.png"
    assert (tmp_path / "partial_labels_x.png").read_bytes().startswith(b"\x89PNG")


def test_single_positive_and_zero_shot_plots_draw_each_mean():
    bars = plots.single_positive_figure({"an": _runs(0.8, 0.6), "em": _runs(0.5),
                                         "full": _runs(0.9)}).axes[0]
    assert [p.get_height() for p in bars.patches] == pytest.approx([70.0, 50.0])
    assert bars.get_lines()[-1].get_ydata()[0] == pytest.approx(90.0)  # the full-label line
    summary = {"zsl_mAP": {"values": [0.2, 0.4]}, "gzsl_mAP": {"values": [0.6]}}
    split = {"unseen": ["cat"], "methods": {"conse": {"summary": summary}}}
    ax = plots.zero_shot_figure({"splits": {"spnet": split}}).axes[0]
    assert [p.get_height() for p in ax.patches] == pytest.approx([30.0, 60.0])


# --------------------------------------------------------------------------------------------------
# Grouping runs that differ only by seed; escaping
# --------------------------------------------------------------------------------------------------


def _recipe(lr: float, train_seed: int, protocol_seed: int) -> dict:
    return {"name": "tiny", "run_dir": f"runs/{train_seed}",
            "protocol": {"name": "partial", "known": 0.5, "seed": protocol_seed},
            "train": {"lr": lr, "seed": train_seed, "num_workers": train_seed}}


def test_runs_that_differ_only_by_seed_fields_form_one_group():
    recipes = [_recipe(0.1, 0, 0), _recipe(0.2, 0, 0), _recipe(0.1, 1, 5), _recipe(0.1, 2, 0)]
    groups = seed_groups(recipes)
    assert groups == [[0, 2, 3], [1]]
    assert differing_settings([recipes[g[0]] for g in groups]) == [{"train.lr": 0.1},
                                                                   {"train.lr": 0.2}]


def test_strings_from_user_files_are_escaped():
    labels = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.int8)
    run = RunData(
        run_dir=Path("/tmp/<b>run</b>"), recipe_text="name: <script>alert(1)</script>\n",
        recipe={"name": "<script>"}, results={"best_epoch": 0, "method": "<i>m</i>"},
        history=[{"epoch": 0, "train_loss": 1.0, "val_mAP": 0.5}],
        class_names=["cat & dog", '"<img src=x>"'], probabilities=np.array(
            [[0.9, 0.2], [0.3, 0.8], [0.6, 0.7]]), labels=labels, mask_stats=None, recovered=None)
    page = render([run])
    assert "<script>" not in page and "<b>" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "cat &amp; dog" in page
    assert '<img src=x>' not in page and page.count("<img ") == 4  # curves, AP, PR, co-occurrence


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_bad_input_is_one_error_line_naming_the_path(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.html")]) == 2
    assert capsys.readouterr().err == (f"mlrkit: error: {tmp_path / 'nowhere'}: not a folder; give "
                                       f"a run folder that 'mlrkit train' wrote\n")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("name: x\n")
    assert main(["report", str(tmp_path / "half"), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mlrkit: error: {tmp_path / 'half' / 'results.json'}: missing; the run "
                          f"is not finished") and err.count("\n") == 1
    with pytest.raises(ValueError, match="not a run folder"):
        build_report([tmp_path], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


# --------------------------------------------------------------------------------------------------
# The page of two real runs in a real browser
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory) -> list[Path]:
    """Two tiny runs of one recipe (random ResNet-18 features of coloured squares, partial labels
    at 50%), training seeds 0 and 1."""
    root = tmp_path_factory.mktemp("report")
    make_dataset(root / "data")
    recipe = {
        "name": "tiny",
        "data": {"dataset": "csv", "root": str(root / "data")},
        "features": {"encoder": "resnet18", "weights": None, "image_size": 32, "seed": 0,
                     "cache": str(root / "cache"), "num_workers": 0, "spatial": False},
        "protocol": {"name": "partial", "known": 0.5, "seed": 0},
        "method": {"name": "linear"},
        "train": {"epochs": 3, "batch_size": 8, "lr": 0.01, "progress": False, "device": "cpu"},
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    runs = [root / "seed0", root / "seed1"]
    for seed, run_dir in enumerate(runs):
        assert main(["train", "--config", str(root / "tiny.yaml"), "--run-dir", str(run_dir),
                     "--set", f"train.seed={seed}"]) == 0
    return runs


def _test_positives(data: Path) -> list[int]:
    """Positives per class among the test images of ``make_dataset``, read from its CSV files."""
    split = dict(csv.reader((data / "split.csv").open()))
    rows = [row for row in csv.DictReader((data / "labels.csv").open())
            if split[row["image"]] == "test"]
    return [sum(int(row[c]) for row in rows) for c in CLASSES]


def _engine_test_ap(run_dir: Path) -> np.ndarray:
    """``(C,)`` test AP of the run's best checkpoint: its test logits as ``mlrkit eval`` computes
    them, scored by :func:`mlrkit.metrics.average_precision`."""
    run = load_run(run_dir)
    prepared = prepare_from_run(run)
    logits = evaluate_logits(run.method, prepared.sources["test"], 64, torch.device("cpu"))
    return metrics.average_precision(torch.sigmoid(logits.double()),
                                     prepared.labels["test"]).numpy()


def test_report_opens_in_chromium_with_every_figure_and_the_run_numbers(two_seeds, capsys):
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    out = two_seeds[0].parent / "report.html"
    capsys.readouterr()
    assert main(["report", *map(str, two_seeds), "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"report written to {out}\n"
    text = out.read_text(encoding="utf-8")
    assert "<script" not in text and re.search(r'src="(?!data:image/png;base64,)', text) is None

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        problems = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda err: problems.append(str(err)))
        page.goto(out.as_uri(), wait_until="load")
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && "
                                                  "i.naturalWidth)")
        sections = page.eval_on_selector_all("section[id]", "s => s.map(e => e.id)")
        ap_tables = [page.eval_on_selector_all(
            f"#run-{i}-ap table.ap-table tr", "rows => rows.slice(1).map(r => "
            "Array.from(r.cells).map(c => c.textContent))") for i in (1, 2)]
        comparison = page.eval_on_selector_all("#comparison table tr", "rows => rows.map(r => "
                                               "Array.from(r.cells).map(c => c.textContent))")
        shot = two_seeds[0].parent / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()

    assert problems == []
    # per run: curves, per-class AP, PR curves, co-occurrence, recovery; one comparison chart
    assert len(widths) == 2 * 5 + 1 and all(w > 0 for w in widths)
    for i in (1, 2):
        assert {f"run-{i}", *(f"run-{i}-{s}" for s in ("recipe", "curves", "ap", "pr",
                                                          "cooccurrence", "recovery"))} <= set(sections)
    assert "comparison" in sections
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000

    positives = _test_positives(two_seeds[0].parent / "data")
    maps = []
    for run_dir, table in zip(two_seeds, ap_tables, strict=True):
        assert [row[0] for row in table] == CLASSES
        assert [int(row[2]) for row in table] == positives
        shown = np.array([float(row[1]) / 100 for row in table])
        np.testing.assert_allclose(shown, _engine_test_ap(run_dir), atol=1e-6, rtol=0)
        results = json.loads((run_dir / "results.json").read_text())
        assert shown.mean() == pytest.approx(results["test_mAP"], abs=1e-6)  # train-time figure
        maps.append(results["test_mAP"])
    # the two seeds form one group: test mAP mean ± sample std over the two runs
    assert len(comparison) == 2 and comparison[1][1] == "seed0, seed1"
    assert comparison[1][4] == f"{100 * np.mean(maps):.2f} ± {100 * np.std(maps, ddof=1):.2f}"
