"""Partial-label accuracy on cached EfficientNet-Lite0 features: every method on the same mask.

For each known proportion p, every method recipe (``configs/<recipe>_<dataset>_partial.yaml``)
trains on the training split with the same saved protocol mask (protocol seed 0). Every method gets
the same tuning budget: the lr x weight-decay grid of ``recipe_grid`` at training seed 0, the epoch
chosen inside each run, both on the validation split (VOC 2007: the 250-image hold-out of
``train``); the other training seeds rerun at the chosen values, and the table gives test mAP
mean ± std over the seeds. The ablations of SARB and CLSL run at their full model's chosen values.
``full`` rows train on every label (the upper bound). Finished runs of the same resolved recipe
are reused, so an interrupted benchmark continues where it stopped.

    python benchmarks/partial_labels.py                                   # VOC 2007, everything
    python benchmarks/partial_labels.py --known 0.1 --methods linear sarb --seeds 0

Writes ``benchmarks/results/partial_labels_<dataset><suffix>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from plots import plot_partial_labels
from recipe_grid import (
    LRS,
    ROOT,
    WEIGHT_DECAYS,
    markdown_table,
    mean_std,
    run_recipe,
    tuned_runs,
    write_result,
)

# name: (recipe prefix, extra overrides, method whose chosen lr / weight decay it reuses or None)
METHODS = {
    "linear": ("linear", [], None),
    "linear-an": ("linear-an", [], None),
    "mlp": ("mlp", [], None),
    "ssgrl": ("ssgrl", [], None),
    "sarb": ("sarb", [], None),
    "sarb-no-ilrb": ("sarb", ["method.use_ilrb=false"], "sarb"),
    "sarb-no-plrb": ("sarb", ["method.use_plrb=false"], "sarb"),
    "clsl": ("clsl", [], None),
    "clsl-no-srfl": ("clsl", ["method.use_srfl=false"], "clsl"),
    "clsl-no-jls": ("clsl", ["method.use_jls=false"], "clsl"),
}
ABLATIONS = [m for m, (_, _, parent) in METHODS.items() if parent]
METRICS = ("test_mAP", "test_mAP_5pos", "test_CF1", "test_OF1")


def run_method(dataset: str, method: str, known: float, seeds: list[int], tune: bool,
               chosen: dict) -> dict:
    """Runs of ``method`` at ``known``: tuned, or at the chosen values of its parent method."""
    prefix, extra, parent = METHODS[method]
    overrides = [f"protocol.known={known}", *extra]
    folder = ROOT / "runs" / "bench" / "partial" / dataset / method / f"p{known}"
    config = f"{prefix}_{dataset}_partial"
    if parent is not None:
        at = chosen[(parent, known)]
        values = [f"train.lr={at['lr']}", f"train.weight_decay={at['weight_decay']}"]
        runs = [run_recipe(config, [*overrides, *values, f"train.seed={s}"], folder)
                for s in seeds]
        return {"chosen": at, "runs": runs, "grid": []}
    tuned = tuned_runs(config, overrides, seeds, folder, tune=tune)
    chosen[(method, known)] = tuned.chosen
    return {"chosen": tuned.chosen, "runs": tuned.runs, "grid": tuned.grid}


def full_label_runs(dataset: str, methods: list[str], seeds: list[int], tune: bool) -> dict:
    """Upper bound: the pooled heads trained on every training label."""
    out = {}
    for method in [m for m in methods if m in ("linear", "mlp")]:
        folder = ROOT / "runs" / "bench" / "partial" / dataset / method / "full"
        tuned = tuned_runs(f"{method}_{dataset}_partial", ["protocol.name=full"], seeds, folder,
                           tune=tune)
        out[method] = {"chosen": tuned.chosen, "runs": tuned.runs, "grid": tuned.grid}
    return out


def metric_table(results: dict, knowns: list[float], metric: str, full: dict) -> list[str]:
    rows = []
    for method, by_known in results.items():
        cells = [mean_std([r[metric] for r in by_known[str(k)]["runs"]]) for k in knowns]
        average = sum(c[0] for c in cells) / len(cells)
        bound = mean_std([r[metric] for r in full[method]["runs"]])[1] if method in full else ""
        rows.append([method, *(c[1] for c in cells), f"{average:.1f}", bound])
    return markdown_table(["method", *(f"{k:.0%}" for k in knowns), "mean", "full labels"], rows)


def chosen_table(results: dict, knowns: list[float]) -> list[str]:
    rows = []
    for method, by_known in results.items():
        cells = []
        for k in knowns:
            c = by_known[str(k)]["chosen"]
            cells.append(f"{c['lr']:g} / {c['weight_decay']:g} / {c['best_epoch']}")
        rows.append([method, *cells])
    return markdown_table(["method", *(f"{k:.0%}" for k in knowns)], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="voc2007")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--known", nargs="+", type=float, default=[0.1, 0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--ablation-known", nargs="+", type=float, default=[0.1],
                        help="proportions at which SARB's ablations run")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--no-tune", dest="tune", action="store_false",
                        help="use each recipe's own lr and weight decay (no grid)")
    parser.add_argument("--no-full", dest="full", action="store_false",
                        help="skip the full-label upper bound")
    parser.add_argument("--suffix", default="", help="appended to the result file names")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    os.chdir(ROOT)  # recipes name data and caches relative to the project root

    dataset, results, chosen = args.dataset, {m: {} for m in args.methods}, {}
    for known in args.known:
        for method in args.methods:
            if method in ABLATIONS and known not in args.ablation_known:
                continue
            if method in ABLATIONS and (METHODS[method][2], known) not in chosen:
                raise SystemExit(f"{method} reuses the values chosen for "
                                 f"{METHODS[method][2]}: list that method too")
            entry = run_method(dataset, method, known, args.seeds, args.tune, chosen)
            results[method][str(known)] = entry
            runs = entry["runs"]
            print(f"{dataset} p={known:.0%} {method:<14} test mAP "
                  f"{mean_std([r['test_mAP'] for r in runs])[1]} (val "
                  f"{100 * statistics.fmean(r['val_mAP'] for r in runs):.1f})", flush=True)
    full = full_label_runs(dataset, args.methods, args.seeds, args.tune) if args.full else {}
    main_methods = {m: v for m, v in results.items() if m not in ABLATIONS}
    first = next(iter(results.values()))[str(args.known[0])]["runs"][0]
    grid = (f"lr in {list(LRS)} x weight decay in {list(WEIGHT_DECAYS)} (AdamW)" if args.tune
            else "each recipe's own lr and weight decay")
    note = (
        f"Test split: the recipe's `test_split`; mAP averages the {first['test_classes_averaged']} "
        f"classes with a test positive, mAP_5pos the {first['test_classes_averaged_5pos']} with "
        f"at least 5. One mask per proportion (protocol seed 0) for every "
        f"method; training seeds {args.seeds} (mean ± std). Tuning, the same for every method: "
        f"{grid} at seed {args.seeds[0]}, chosen by validation mAP; the epoch is chosen on "
        f"validation in every run. Ablations reuse their full model's chosen values."
    )
    body = [note, ""]
    for metric in METRICS:
        body += [f"## {metric.removeprefix('test_')}", ""]
        body += metric_table(main_methods, args.known, metric, full) + [""]
    for parent in sorted({METHODS[m][2] for m in results if m in ABLATIONS}):
        group = [m for m in results if m == parent or METHODS[m][2] == parent]
        body += [f"## {parent} ablation (test mAP)", ""]
        body += metric_table({m: {str(k): results[m][str(k)] for k in args.ablation_known}
                              for m in group}, args.ablation_known, "test_mAP", {})
        body += [""]
    body += ["## Chosen lr / weight decay / best epoch (seed 0)", ""]
    body += chosen_table(main_methods, args.known)
    text = write_result(args.out_dir, f"partial_labels_{dataset}{args.suffix}",
                        f"Partial labels on {dataset} (cached EfficientNet-Lite0 features, 224 px)",
                        body, {"results": results, "full_labels": full})
    print(text)
    print(plot_partial_labels(args.out_dir / f"partial_labels_{dataset}{args.suffix}.json"))


if __name__ == "__main__":
    main()
