"""Single-positive accuracy on cached EfficientNet-Lite0 features: every loss on the same masks.

Each loss recipe (``configs/spml-<loss>_<dataset>_single-positive.yaml``, linear head) trains on the
training split with Cole et al.'s single-positive mask (``cole``, seed 1200), picks its learning
rate and epoch on the fully labelled ``val`` split and reports ``test`` mAP; the full-label run is
the upper bound. Finished runs are reused, so an interrupted benchmark continues.

    python benchmarks/single_positive.py [--datasets voc12-animals miml] [--seeds 0 1 2]

Writes ``benchmarks/results/single_positive_<dataset>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json

from recipe_grid import ROOT, markdown_table, mean_std, tuned_run

LOSSES = ["an", "an-ls", "wan", "epr", "role", "em", "ll-r", "ll-ct", "ll-cp", "partial-bce",
          "full"]
LRS = [1e-4, 1e-3, 1e-2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["voc12-animals", "miml"])
    parser.add_argument("--losses", nargs="+", default=LOSSES, choices=LOSSES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs")
    args = parser.parse_args()

    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    for dataset in args.datasets:
        results, rows = {}, []
        for loss in args.losses:
            runs = []
            for seed in args.seeds:
                overrides = [f"train.seed={seed}"]
                if args.epochs is not None:
                    overrides.append(f"train.epochs={args.epochs}")
                run_dir = ROOT / "runs" / "bench" / "single_positive" / dataset / loss / f"seed{seed}"
                runs.append(tuned_run(f"spml-{loss}_{dataset}_single-positive", overrides, LRS,
                                      run_dir))
            results[loss] = runs
            test, val = mean_std([r["test_mAP"] for r in runs]), mean_std([r["val_mAP"] for r in runs])
            rows.append([loss, test[1], val[1], mean_std([r["test_OF1"] for r in runs])[1]])
            print(f"{dataset} {loss:<12} test mAP {test[1]}  (val {val[1]})", flush=True)
        classes = results[args.losses[0]][0]["test_classes_averaged"]
        note = (f"Linear head on cached EfficientNet-Lite0 features (224 px). Training labels: one "
                f"positive per image (Cole et al.'s generator, seed 1200); `full` trains on every "
                f"label (upper bound). lr in {LRS} and the epoch chosen on val (full labels); test "
                f"mAP over the {classes} classes with a test positive; seeds {args.seeds} "
                f"(mean ± std).")
        lines = [f"# Single positive labels on {dataset}", "", note, ""]
        lines += markdown_table(["loss", "test mAP", "val mAP", "test OF1"], rows)
        text = "\n".join(lines) + "\n"
        print(text)
        (out_dir / f"single_positive_{dataset}.md").write_text(text)
        (out_dir / f"single_positive_{dataset}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
