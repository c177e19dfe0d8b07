"""Partial-label accuracy on cached EfficientNet-Lite0 features: every method on the same masks.

For each dataset and known proportion p, every method recipe (``configs/<method>_<dataset>_partial
.yaml``) is trained on the training split with the same protocol mask (seed 0), its epoch (and, for
the cheap heads, its learning rate from a small grid) is selected on ``val``, and ``test`` mAP, CF1
and OF1 are reported. Finished runs are reused (each run folder keeps its ``results.json``), so an
interrupted benchmark continues where it stopped.

    python benchmarks/partial_labels.py                        # all methods, both datasets
    python benchmarks/partial_labels.py --datasets voc12-animals --known 0.1 --seeds 0 1 2

Writes ``benchmarks/results/partial_labels_<dataset><suffix>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from recipe_grid import ROOT, markdown_table, mean_std, tuned_run

# name: (recipe prefix, extra overrides, learning-rate grid or None for the recipe's own lr)
METHODS = {
    "linear": ("linear", [], [1e-3, 3e-3, 1e-2]),
    "linear-an": ("linear-an", [], [1e-3, 3e-3, 1e-2]),
    "mlp": ("mlp", [], [3e-4, 1e-3, 3e-3]),
    "ssgrl": ("ssgrl", [], None),
    "sarb": ("sarb", [], None),
    "sarb-no-ilrb": ("sarb", ["method.use_ilrb=false"], None),
    "sarb-no-plrb": ("sarb", ["method.use_plrb=false"], None),
}
METRICS = ("test_mAP", "test_CF1", "test_OF1")


def run(dataset: str, method: str, known: float, seed: int, epochs: int | None) -> dict:
    prefix, extra, lrs = METHODS[method]
    overrides = [f"protocol.known={known}", f"train.seed={seed}", *extra]
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    run_dir = ROOT / "runs" / "bench" / "partial" / dataset / method / f"p{known}" / f"seed{seed}"
    return tuned_run(f"{prefix}_{dataset}_partial", overrides, lrs, run_dir)


def table(results: dict, methods: list[str], knowns: list[float], metric: str) -> list[str]:
    rows = []
    for method in methods:
        cells = [mean_std([r[metric] for r in results[method][str(k)]]) for k in knowns]
        average = sum(c[0] for c in cells) / len(cells)
        rows.append([method, *(c[1] for c in cells), f"{average:.1f}"])
    return markdown_table(["method", *(f"{k:.0%}" for k in knowns), "mean"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["voc12-animals", "miml"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--known", nargs="+", type=float, default=[0.1, 0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs")
    parser.add_argument("--suffix", default="", help="appended to the result file names")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for dataset in args.datasets:
        results: dict = {m: {} for m in args.methods}
        for known in args.known:
            for method in args.methods:
                runs = [run(dataset, method, known, s, args.epochs) for s in args.seeds]
                results[method][str(known)] = runs
                mean = statistics.fmean(r["test_mAP"] for r in runs)
                print(f"{dataset} p={known:.0%} {method:<14} test mAP {100 * mean:.2f} "
                      f"(val {100 * statistics.fmean(r['val_mAP'] for r in runs):.2f})",
                      flush=True)
        classes = results[args.methods[0]][str(args.known[0])][0]["test_classes_averaged"]
        note = (f"Test split of split.csv; mAP averages the {classes} classes with a test "
                f"positive. Mask: protocol seed 0 (bernoulli) for every method; seeds "
                f"{args.seeds} vary the training run (mean ± std). Epoch selected on val; "
                f"linear/MLP also tune lr on val.")
        lines = [f"# Partial labels on {dataset} (cached EfficientNet-Lite0 features, 224 px)",
                 "", note, ""]
        for metric in METRICS:
            lines += [f"## {metric.removeprefix('test_')}", ""]
            lines += table(results, args.methods, args.known, metric) + [""]
        text = "\n".join(lines)
        print(text)
        stem = f"partial_labels_{dataset}{args.suffix}"
        (out_dir / f"{stem}.md").write_text(text + "\n")
        (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
