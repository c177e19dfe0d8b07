"""Designs of the semantic-graph head (``ssgrl``) against the linear head at one known proportion.

Issue 25's diagnosis: the ``ssgrl`` head contains the linear head (uniform attention, then a
per-class classifier) yet lands far below it on frozen features at 10% known. Each design is the
recipe ``configs/<method>_<dataset>_partial.yaml`` with a few overrides, trained at ``--seeds`` on
the same protocol mask (protocol seed 0), the epoch chosen on the recipe's hold-out as in
``partial_labels.py``; test mAP in percent.

    python benchmarks/partial_designs.py [--dataset voc2007] [--known 0.1] [--seeds 0 1 2]
        [--designs NAME ...]

Writes ``benchmarks/results/partial_designs_<dataset>_p<known>.md`` / ``.json``. Finished runs of
the same recipe and source are reused (``recipe_grid``).
"""

from __future__ import annotations

import argparse
import os
import statistics

from recipe_grid import ROOT, markdown_table, mean_std, run_recipe, write_result

#: name -> (recipe method, overrides)
DESIGNS = {
    "linear": ("linear", []),
    "ssgrl (reference form)": ("ssgrl", []),
    "ssgrl residual": ("ssgrl", ["method.residual=true"]),
    "ssgrl residual, graph at 0.1 x lr, 20 epochs": (
        "ssgrl", ["method.residual=true", "method.graph_lr_mult=0.1", "train.epochs=20"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="voc2007", choices=["voc2007", "coco2014-6k"])
    parser.add_argument("--known", type=float, default=0.1)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--designs", nargs="+", default=None, choices=list(DESIGNS))
    args = parser.parse_args()
    os.chdir(ROOT)
    folder = ROOT / "runs" / "bench" / "partial_designs" / args.dataset / f"p{args.known}"
    rows, data = [], {}
    for name in args.designs or list(DESIGNS):
        method, overrides = DESIGNS[name]
        runs = [run_recipe(f"{method}_{args.dataset}_partial",
                           [f"protocol.known={args.known}", *overrides, f"train.seed={seed}"],
                           folder / method) for seed in args.seeds]
        maps = [r["test_mAP"] for r in runs]
        rows.append([name, " ".join(overrides) or "-", mean_std(maps)[1],
                     " ".join(f"{100 * m:.1f}" for m in maps),
                     " ".join(str(r["best_epoch"]) for r in runs),
                     f"{statistics.fmean(r['seconds'] for r in runs):.0f}"])
        data[name] = {"method": method, "overrides": overrides, "test_mAP": maps,
                      "best_epochs": [r["best_epoch"] for r in runs],
                      "run_dirs": [r["run_dir"] for r in runs]}
        print(rows[-1], flush=True)
    body = [
        (f"{args.dataset}, {args.known:.0%} of the training entries known (protocol seed 0), "
         f"seeds {args.seeds}, the recipe's lr / weight decay / epochs unless overridden, the "
         "epoch chosen on the hold-out. Test mAP in percent (mean ± std over seeds)."),
        "",
        *markdown_table(["design", "overrides", "test mAP", "per seed", "epochs chosen",
                         "seconds per run"], rows),
    ]
    print(write_result(ROOT / "benchmarks" / "results",
                       f"partial_designs_{args.dataset}_p{args.known}",
                       f"Semantic-graph head designs at {args.known:.0%} known ({args.dataset})",
                       body, data))


if __name__ == "__main__":
    main()
