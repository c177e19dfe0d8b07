"""SigRL with the ConSE student: designs tried against the training-free scorers on one split.

Each design is the recipe ``configs/sigrl-conse_<dataset>_zero-shot.yaml`` with a few overrides
(6 epochs, as ``zero_shot.py``'s SigRL rows), trained at ``--seeds`` and scored on the test split:
ZSL from a forward over the unseen classes only, GZSL over all classes. The training-free rows
(ConSE, dense ConSE) are the bar's reference: a design has to beat dense ConSE's ZSL to be worth
its training.

    python benchmarks/sigrl_conse_designs.py [--dataset voc2007] [--seeds 0] [--designs NAME ...]

Writes ``benchmarks/results/sigrl_conse_designs_<dataset>.md`` / ``.json``. Finished runs of the
same recipe and source are reused (``recipe_grid``).
"""

from __future__ import annotations

import argparse
import os

from recipe_grid import ROOT, markdown_table, mean_std, run_recipe, write_result

EPOCHS = ["train.epochs=6"]
DESIGNS = {
    "recipe (lr 1e-3, wd 1e-4, student at 0.1 x lr, top-4)": [],
    "release optimiser (lr 1e-4, wd 0.05)": ["train.lr=0.0001", "train.weight_decay=0.05"],
    "student at 0.01 x lr": ["method.conse_lr_mult=0.01"],
    "top-16 positions": ["method.top_k=16"],
    "distillation x 10": ["method.distill_weight=10"],
    "global score only": ["method.branches=global"],
    "local score only": ["method.branches=local"],
}
TRAINING_FREE = {"ConSE": "conse_{dataset}_zero-shot",
                 "dense ConSE": "dense-conse_{dataset}_zero-shot"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="voc2007", choices=["voc2007", "coco2014-6k"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--designs", nargs="+", default=None, choices=list(DESIGNS))
    args = parser.parse_args()
    os.chdir(ROOT)
    folder = ROOT / "runs" / "bench" / "sigrl_conse_designs" / args.dataset
    rows, data = [], {}
    for name, config in TRAINING_FREE.items():
        result = run_recipe(config.format(dataset=args.dataset), [], folder / config.split("_")[0])
        rows.append([name, "-", f"{100 * result['test_zsl_mAP']:.1f}",
                     f"{100 * result['test_gzsl_mAP']:.1f}", "-"])
        data[name] = {"zsl": [result["test_zsl_mAP"]], "gzsl": [result["test_gzsl_mAP"]]}
    for name in args.designs or list(DESIGNS):
        runs = [run_recipe(f"sigrl-conse_{args.dataset}_zero-shot",
                           [*EPOCHS, *DESIGNS[name], f"train.seed={seed}"],
                           folder / "sigrl-conse") for seed in args.seeds]
        zsl = [r["test_zsl_mAP"] for r in runs]
        gzsl = [r["test_gzsl_mAP"] for r in runs]
        rows.append([name, " ".join(DESIGNS[name]) or "-", mean_std(zsl)[1], mean_std(gzsl)[1],
                     " ".join(str(r["best_epoch"]) for r in runs)])
        data[name] = {"overrides": DESIGNS[name], "zsl": zsl, "gzsl": gzsl,
                      "run_dirs": [r["run_dir"] for r in runs]}
        print(rows[-1], flush=True)
    body = [
        (f"{args.dataset}, the recipe's class split, seeds {args.seeds}, 6 epochs, the epoch "
         "chosen on the hold-out's seen classes. ZSL: a forward over the unseen classes only; "
         "GZSL: all classes. mAP in percent (mean ± std over seeds)."),
        "",
        *markdown_table(["design", "overrides", "ZSL mAP", "GZSL mAP", "epochs chosen"], rows),
    ]
    print(write_result(ROOT / "benchmarks" / "results", f"sigrl_conse_designs_{args.dataset}",
                       f"SigRL with the ConSE student: designs ({args.dataset})", body, data))


if __name__ == "__main__":
    main()
