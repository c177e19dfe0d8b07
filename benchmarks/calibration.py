"""Are mlrkit's probabilities calibrated? Expected calibration error before and after calibration.

- ``tag`` (ConSE, MiniLM, T = 10; training-free): its calibration ships with the package
  (``src/mlrkit/calibrations/conse_minilm.json``), fitted on VOC 2007's training photos (2,500 x 20
  classes); measured on COCO-6k's test photos (1,220 x 80 other label names). Before: the cosine
  read as a probability (clipped to [0, 1]); after: the shipped calibration.
- Trained runs (a linear head at 10% known labels, the recipes of ``partial_labels.py``) on VOC 2007
  and COCO-6k: calibrated on their validation hold-out at the end of training; measured on the test
  split. Before: the sigmoid of the logits; after: the run's calibration.

ECE: :func:`mlrkit.metrics.expected_calibration_error` (15 equal-width bins, every known entry a
binary prediction). ConSE reads the cached pooled ``tf_efficientnet_lite0`` features (the same
numbers ``mlrkit tag`` computes from the photos).

    python benchmarks/calibration.py [--write-shipped]

``--write-shipped`` writes the ConSE calibration fitted here into the package (it is otherwise only
compared with the shipped one). Writes ``benchmarks/results/calibration.md`` and ``.json``; the
table ends with one ``ece_after_<name>=<value>`` line per row.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from recipe_grid import ROOT, markdown_table, run_recipe, write_result

from mlrkit.calibration import Calibration, fit_platt, uncalibrated
from mlrkit.data import create_dataset
from mlrkit.data.feature_cache import extract_features, load_features
from mlrkit.encoders import create_image_encoder
from mlrkit.encoders.imagenet import CLASSIFIER, pooled_probabilities
from mlrkit.engine.inference import load_run, prepare_from_run
from mlrkit.engine.trainer import evaluate_logits
from mlrkit.metrics import expected_calibration_error
from mlrkit.zero_shot import SHIPPED_CALIBRATIONS, conse_scores

DATA = ROOT.parent / "shared" / "data"
SHIPPED = SHIPPED_CALIBRATIONS["minilm"]


def conse_on_cached_features(dataset: str, root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """ConSE cosines ``(N, C)`` of a split's photos for the dataset's class names, from the cached
    pooled ImageNet ``tf_efficientnet_lite0`` features (extracted where missing), and the labels."""
    data = create_dataset(dataset, root)
    encoder = create_image_encoder(CLASSIFIER, weights="imagenet")
    cache_dir = ROOT / "runs" / "cache" / f"{data.name}_lite0_224"
    extract_features(data, encoder, cache_dir, spatial=True)  # the recipes' cache: both kinds
    cache = load_features(cache_dir, data=data, encoder=encoder)
    rows = data.split_index(split)
    probs = pooled_probabilities(cache.pooled[rows])
    return conse_scores(probs, list(data.class_names)), data.labels[rows]


def run_row(config: str) -> tuple[np.ndarray, np.ndarray, Calibration]:
    """Test logits and labels of the recipe's 10%-known run (trained or reused), and its
    calibration."""
    result = run_recipe(config, ["protocol.known=0.1"], ROOT / "runs" / "bench" / "calibration")
    run = load_run(result["run_dir"])
    if run.calibration is None:
        raise SystemExit(f"{result['run_dir']}: no calibration.json (trained by older code?)")
    prepared = prepare_from_run(run)
    logits = evaluate_logits(run.method.to(run.device), prepared.sources["test"], 256, run.device)
    return logits.double().numpy(), prepared.labels["test"], run.calibration.calibration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-shipped", action="store_true",
                        help="write the ConSE calibration fitted here into the package")
    args = parser.parse_args()
    rows, data = [], {}

    def add(name: str, where: str, before: np.ndarray, after: np.ndarray, labels: np.ndarray,
            calibration: Calibration) -> None:
        ece = [expected_calibration_error(p, labels) for p in (before, after)]
        rows.append([name, where, f"{int((labels >= 0).sum()):,}", f"{ece[0]:.4f}",
                     f"{ece[1]:.4f}", f"{calibration.a:.4g}", f"{calibration.b:.4g}",
                     calibration.fitted_on])
        data[name] = {"set": where, "ece_before": ece[0], "ece_after": ece[1],
                      "a": calibration.a, "b": calibration.b, "fitted_on": calibration.fitted_on}

    train_scores, train_labels = conse_on_cached_features("voc2007", DATA / "voc2007", "train")
    fitted = fit_platt(train_scores, train_labels, score="cosine",
                       fitted_on="voc2007 train (2,500 photos x 20 classes), ConSE T=10, MiniLM")
    if args.write_shipped:
        fitted.save(SHIPPED)
    shipped = Calibration.load(SHIPPED)
    scores, labels = conse_on_cached_features("csv", DATA / "coco2014-6k", "test")
    add("tag_conse", "coco2014-6k test, 80 names", uncalibrated(scores, "cosine"),
        shipped(scores), labels, shipped)
    for name, config in (("run_voc2007", "linear_voc2007_partial"),
                         ("run_coco2014-6k", "linear_coco2014-6k_partial")):
        logits, labels, calibration = run_row(config)
        add(name, f"{config} 10% known, test", uncalibrated(logits, "logit"),
            calibration(logits), labels, calibration)
    same = abs(fitted.a - shipped.a) < 1e-6 and abs(fitted.b - shipped.b) < 1e-6
    body = [
        ("Expected calibration error (15 bins, every known entry a binary prediction) before and "
        "after calibration. tag_conse: ConSE's cosine read as a probability vs the calibration "
        "shipped in the package (fitted on VOC 2007 train, other label names than the COCO ones "
        "measured); run_*: a linear head trained at 10% known labels, sigmoid of its logits vs "
        "its calibration fitted on the validation hold-out; measured on the test split."),
        "",
        *markdown_table(["name", "measured on", "entries", "ECE before", "ECE after", "a", "b",
                         "fitted on"], rows),
        "",
        (f"The shipped ConSE calibration {'equals' if same else 'DIFFERS FROM'} the one fitted "
        f"here (a {fitted.a:.6g}, b {fitted.b:.6g}; its own ECE on VOC 2007 train "
        f"{fitted.ece_before:.4f} -> {fitted.ece_after:.4f})."),
        "",
        *(f"ece_after_{name}={row['ece_after']:.4f}" for name, row in data.items()),
    ]
    data["conse_fitted_here"] = {"a": fitted.a, "b": fitted.b, "same_as_shipped": same}
    print(write_result(ROOT / "benchmarks" / "results", "calibration",
                       "Calibration: expected calibration error before and after", body, data))


if __name__ == "__main__":
    main()
