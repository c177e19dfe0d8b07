"""Single-positive accuracy on cached EfficientNet-Lite0 features: every loss on the same mask.

One recipe per dataset (``configs/linear_<dataset>_single-positive.yaml``, a linear head); each
loss is that recipe with ``method.loss`` and its options overridden. Training labels: Cole et al.'s
single-positive mask (``cole``, seed 1200). Every loss gets the same tuning budget as in the
partial-label benchmark (the lr x weight-decay grid of ``recipe_grid`` at the first training seed,
the epoch chosen in every run, both on the fully labelled validation split); the other seeds rerun
at the chosen values. ``full`` trains on every label (the upper bound). Finished runs of the same
resolved recipe are reused, so an interrupted benchmark continues.

    python benchmarks/single_positive.py [--dataset voc2007] [--seeds 0 1 2]

Writes ``benchmarks/results/single_positive_<dataset>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from plots import plot_single_positive
from recipe_grid import LRS, ROOT, WEIGHT_DECAYS, markdown_table, mean_std, tuned_runs, write_result

#: Expected positives per image ``k`` of EPR and ROLE, per dataset (Cole et al.'s VOC and COCO values).
EXPECTED_POSITIVES = {"voc2007": "voc", "coco2014-6k": "coco", "miml": 1.24}


#: VLPL's teacher here: ConSE's zero-shot scores (no CLIP image weights exist on this machine),
#: VLPL's tau 0.01 and theta 0.3.
TEACHER = ["pseudo_labels.teacher=conse", "pseudo_labels.tau=0.01", "pseudo_labels.theta=0.3"]
#: Rows trained with another recipe than the linear head's, untuned (lr and weight decay of the
#: recipe): SigRL's single-positive student (``configs/sigrl_voc2007_single-positive.yaml``).
OTHER_RECIPES = {"sigrl-spml": ("sigrl_{dataset}_single-positive", []),
                 "sigrl-spml-vlpl": ("sigrl_{dataset}_single-positive",
                                     ["method.loss=em_pl", *TEACHER])}


def teacher_quality(run: dict, overrides: list[str]) -> str:
    """``precision / recall`` of the positive pseudo-labels of a run's teacher (``run.json``),
    against the hidden training labels; ``-`` for a run without a teacher."""
    if not any(o.startswith("pseudo_labels.") for o in overrides):
        return "-"
    info = json.loads((Path(run["run_dir"]) / "run.json").read_text())["pseudo_labels"]
    return (f"{100 * info['precision']:.1f} / {100 * info['recall']:.1f} "
            f"({info['positives_per_image']:.2f} per image)")


def loss_overrides(expected_positives: str | float) -> dict[str, list[str]]:
    """Loss name in the table -> recipe overrides."""
    k = f"method.loss_options.expected_positives={expected_positives}"
    return {
        "an": ["method.loss=an"],
        "an-ls": ["method.loss=an_ls"],
        "wan": ["method.loss=wan"],
        "epr": ["method.loss=epr", k],
        "role": ["method.loss=role", k],
        "em": ["method.loss=em", "method.loss_options.alpha=0.2"],
        "ll-r": ["method.loss=ll_r", "method.loss_options.delta_rel=0.2"],
        "ll-ct": ["method.loss=ll_ct", "method.loss_options.delta_rel=0.2"],
        "ll-cp": ["method.loss=ll_cp", "method.loss_options.delta_rel=0.1"],
        "vlpl": ["method.loss=em_pl", "method.loss_options.alpha=0.2",
                 "method.loss_options.beta_pos=0.7", *TEACHER],
        "vlpl-asl": ["method.loss=em_pl_asl", *TEACHER],
        "em-apl": ["method.loss=em_apl", "method.loss_options.alpha=0.2",
                   "method.loss_options.beta=0.02", "method.loss_options.warmup_epochs=5"],
        "partial-bce": ["method.loss=partial_bce"],
        "full": ["protocol.name=full", "method.loss=partial_bce"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="voc2007", choices=sorted(EXPECTED_POSITIVES))
    losses = [*loss_overrides(1.0), *OTHER_RECIPES]
    default = [loss for loss in losses if loss != "sigrl-spml-vlpl"]  # 15 min more on 2 cores
    parser.add_argument("--losses", nargs="+", default=default, choices=losses)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    os.chdir(ROOT)  # recipes name data and caches relative to the project root

    dataset, results, rows = args.dataset, {}, []
    overrides = loss_overrides(EXPECTED_POSITIVES[dataset])
    for loss in args.losses:
        folder = ROOT / "runs" / "bench" / "single_positive" / dataset / loss
        if loss in OTHER_RECIPES:
            config, extra = OTHER_RECIPES[loss]
            tuned = tuned_runs(config.format(dataset=dataset), extra, args.seeds, folder,
                               tune=False)
        else:
            tuned = tuned_runs(f"linear_{dataset}_single-positive", overrides[loss], args.seeds,
                               folder)
        results[loss] = {"chosen": tuned.chosen, "runs": tuned.runs, "grid": tuned.grid}
        runs, chosen = tuned.runs, tuned.chosen
        test = mean_std([r["test_mAP"] for r in runs])[1]
        rows.append([loss, test, mean_std([r["test_mAP_5pos"] for r in runs])[1],
                     mean_std([r["val_mAP"] for r in runs])[1],
                     mean_std([r["test_OF1"] for r in runs])[1],
                     f"{chosen['lr']:g} / {chosen['weight_decay']:g} / {chosen['best_epoch']}",
                     teacher_quality(runs[0], OTHER_RECIPES[loss][1] if loss in OTHER_RECIPES
                                     else overrides[loss])])
        print(f"{dataset} {loss:<12} test mAP {test}", flush=True)
    first = next(iter(results.values()))["runs"][0]
    classes, frequent = first["test_classes_averaged"], first["test_classes_averaged_5pos"]
    note = (f"Linear head on cached EfficientNet-Lite0 features (224 px). Training labels: one "
            f"positive per image (Cole et al.'s generator, seed 1200); `full` trains on every "
            f"label (upper bound). Tuning, the same for every loss: lr in {list(LRS)} x weight "
            f"decay in {list(WEIGHT_DECAYS)} (AdamW) at seed {args.seeds[0]}, chosen by "
            f"validation mAP (full labels); the epoch is chosen on validation in every run. Test "
            f"mAP over the {classes} classes with a test positive (5+: the {frequent} with at "
            f"least 5 test positives); training seeds {args.seeds} "
            f"(mean ± std). `vlpl` / `vlpl-asl`: losses em_pl / em_pl_asl on the pseudo-labels "
            f"of ConSE's zero-shot scores (tau 0.01, theta 0.3; no CLIP image weights exist "
            f"here); their last column is the precision / recall of those positive "
            f"pseudo-labels against the hidden training labels. `em-apl`: EM + APL with its "
            f"labelling step (alpha 0.2, beta 0.02, warm-up 5 of 20 epochs). `sigrl-spml`: the "
            f"sigrl student on spatial features (configs/sigrl_{dataset}_single-positive.yaml, "
            f"loss em, 6 epochs, untuned).")
    body = [note, ""] + markdown_table(
        ["loss", "test mAP", "test mAP 5+", "val mAP", "test OF1", "chosen lr / wd / epoch (seed 0)",
         "teacher PL precision / recall"], rows)
    text = write_result(args.out_dir, f"single_positive_{dataset}",
                        f"Single positive labels on {dataset}", body, results)
    print(text)
    print(plot_single_positive(args.out_dir / f"single_positive_{dataset}.json"))


if __name__ == "__main__":
    main()
