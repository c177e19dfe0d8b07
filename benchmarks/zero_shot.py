"""Zero-shot multi-label recognition: seen / unseen classes, ZSL and GZSL, on VOC 2007 or COCO-6k.

Class splits (cached EfficientNet-Lite0 features, MiniLM label embeddings of "a photo of a {}"):

- VOC 2007 (``--dataset voc2007``): ``spnet``, the fixed 15 seen / 5 unseen split of SPNet
  (unseen: potted plant, sheep, sofa, train, tv monitor; ``configs/base/zero-shot-voc2007.yaml``),
  and ``seeded``, 5 unseen classes drawn with ``protocol.fraction=0.25, protocol.seed=1``;
- COCO-6k (``--dataset coco2014-6k``): ``65/15``, the standard split of Rahman, Khan & Barnes
  (``configs/base/zero-shot-coco2014-6k.yaml``), test = the 1,220 val2014 photos.

Rows, each on the dataset's test split (``docs/protocols.md``, "Zero-shot"):

- ``conse``: ConSE(10), training-free (``configs/conse_<dataset>_zero-shot.yaml``);
- ``dense-conse``: dense ConSE, training-free (``configs/dense-conse_<dataset>_zero-shot.yaml``);
- ``devise``: the learned baseline, a linear projection into the label space trained on the seen
  classes with the ranking loss (``configs/devise_<dataset>_zero-shot.yaml``);
- ``devise+distill``: the same with the L1 distillation of the projection to ConSE's embedding
  (``method.distill_weight``, :data:`DISTILL_WEIGHT`);
- ``devise-conse``: DeViSE whose projection is a trainable ConSE (the ConSE student,
  ``configs/devise-conse_<dataset>_zero-shot.yaml``);
- ``sigrl``: SigRL with the projection student (``configs/sigrl_<dataset>_zero-shot.yaml``, GMC +
  SVFR + local / global matching, rank loss + L1 distillation to ConSE's embedding at the
  released weight 1) and ``sigrl-conse`` with the ConSE student
  (``configs/sigrl-conse_<dataset>_zero-shot.yaml``: cosine matching and SVFR gated from zero,
  so the untrained student scores exactly as dense ConSE);
  with ``--ablations``, ``sigrl+distill1000`` (the distillation weight of ``devise+distill``) and
  the ablations of ``sigrl-conse`` (without GMC, without SVFR, without distillation, global or
  local score only) at the first seed, on the first split of ``--sigrl-splits`` (see
  :data:`SIGRL`);
- ``supervised``: the bound, a linear head trained on every class with its true labels
  (``configs/linear_<dataset>_partial.yaml`` with ``protocol.name=full``), its AP on the unseen
  columns (ZSL) and all columns (GZSL).

mAP is the mean over the classes with a test positive; ``5+`` columns average only the classes
with at least 5 test positives (COCO-6k's test split has 1 hair drier, 2 toasters and 3 parking
meters, all unseen). The learned rows get the tuning budget of the other benchmarks
(``recipe_grid``: lr x weight decay at the first seed, the epoch chosen in every run) on the
hold-out's *seen* classes only; the other seeds rerun at the chosen values. Then the
training-free baselines on the classes of other datasets (no training, so every class is
"unseen"): ConSE on coco-mini's 159 photos (80 classes) and on the other benchmark's test split;
CLIP zero-shot too when ``--clip-weights`` gives a local open_clip weights file (none ship here).

    python benchmarks/zero_shot.py [--dataset voc2007] [--seeds 0 1 2] [--clip-weights FILE]

Writes ``benchmarks/results/zero_shot_<dataset>.md`` and ``.json``. Finished runs of the same
resolved recipe and source are reused (``recipe_grid``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import numpy as np
import torch
from plots import plot_zero_shot
from recipe_grid import ROOT, markdown_table, mean_std, run_recipe, tuned_runs, write_result

from mlrkit import metrics
from mlrkit.data import create_dataset
from mlrkit.data.protocols import ClassSplit
from mlrkit.engine.inference import load_run, prepare_from_run
from mlrkit.engine.trainer import evaluate_logits
from mlrkit.metrics import zero_shot_metrics

#: Per dataset: the class splits (name -> overrides of the recipes), the test split in words, and
#: the training-free sets, name -> (reader, root, options, split).
DATASETS = {
    "voc2007": {
        "splits": {"spnet": [], "seeded": ["protocol.unseen=null", "protocol.fraction=0.25",
                                           "protocol.seed=1"]},
        "test": "VOC 2007, test = official val (2,508 photos)",
        "training_free": {
            "coco-mini (80 classes)": ("coco", "../shared/data/coco-mini", {}, None),
            "coco2014-6k test (80 classes)": ("csv", "../shared/data/coco2014-6k", {}, "test"),
        },
    },
    "coco2014-6k": {
        "splits": {"65/15": []},
        "test": "COCO-6k, test = its 1,220 val2014 photos",
        "training_free": {
            "coco-mini (80 classes)": ("coco", "../shared/data/coco-mini", {}, None),
            "VOC 2007 val (20 classes)": ("voc2007", "../shared/data/voc2007", {}, "val"),
        },
    },
}
DISTILL_WEIGHT = 1000.0
TRAINING_FREE = {"conse": "conse_{dataset}_zero-shot",
                 "dense-conse": "dense-conse_{dataset}_zero-shot"}
LEARNED = {
    "devise": ("devise_{dataset}_zero-shot", []),
    "devise+distill": ("devise_{dataset}_zero-shot",
                       [f"method.distill_weight={DISTILL_WEIGHT}",
                        'method.distill_templates=["a photo of a {}"]']),
    "devise-conse": ("devise-conse_{dataset}_zero-shot", []),
}
#: SigRL and its ablations: one recipe, 6 epochs (the seen-class hold-out peaks by epoch 3 in a
#: 20-epoch run; a run costs ~40 s per epoch here), at the recipe's lr / weight decay (not tuned:
#: the grid would cost 4 runs more per row), ``SIGRL_SEEDS`` seeds for the main rows and the
#: first seed for the ablations.
SIGRL = {
    "sigrl": ("sigrl_{dataset}_zero-shot", []),
    "sigrl-conse": ("sigrl-conse_{dataset}_zero-shot", []),
}
SIGRL_ABLATIONS = {
    "sigrl+distill1000": ("sigrl_{dataset}_zero-shot", [f"method.distill_weight={DISTILL_WEIGHT}"]),
    **{name: ("sigrl-conse_{dataset}_zero-shot", extra) for name, extra in {
        "sigrl-conse-no-gmc": ["method.use_gmc=false"],
        "sigrl-conse-no-svfr": ["method.use_svfr=false"],
        "sigrl-conse-no-distill": ["method.distill_weight=0"],
        "sigrl-conse-global-only": ["method.branches=global"],
        "sigrl-conse-local-only": ["method.branches=local"],
    }.items()},
}
#: The rows whose ``zsl <split> <method> ...`` lines close the table (the methods' names there).
SUMMARY_ROWS = ("conse", "dense-conse", "devise", "devise-conse", "sigrl", "sigrl-conse")
SIGRL_EPOCHS = ["train.epochs=6"]
COLUMNS = ["zsl_mAP", "zsl_mAP_5pos", "zsl_F1@3", "zsl_F1@5", "gzsl_mAP", "gzsl_mAP_5pos",
           "gzsl_F1@3", "gzsl_F1@5", "seen_mAP"]


def summarise(runs: list[dict]) -> dict:
    """Per column: the mean ± std text and the values (``test_`` keys of each run)."""
    return {c: {"values": [r[f"test_{c}"] for r in runs],
                "text": mean_std([r[f"test_{c}"] for r in runs])[1]} for c in COLUMNS}


def per_class(runs: list[dict]) -> dict[str, float]:
    """Mean AP of each unseen class over ``runs`` (fractions)."""
    names = list(runs[0]["test_zsl_AP"])
    return {n: statistics.fmean(r["test_zsl_AP"][n] for r in runs) for n in names}


def supervised_bound(run: dict, unseen: list[str]) -> dict:
    """ZSL / GZSL figures of a fully supervised run: its test AP on ``unseen`` and all classes."""
    loaded = load_run(run["run_dir"])
    prepared = prepare_from_run(loaded)
    logits = evaluate_logits(loaded.method, prepared.sources["test"], 256, torch.device("cpu"))
    names = list(loaded.class_names)
    columns = np.array(sorted(names.index(n) for n in unseen))
    split = ClassSplit(names, np.setdiff1d(np.arange(len(names)), columns), columns,
                       {"source": "unseen of the zero-shot rows"})
    return zero_shot_metrics(logits, prepared.labels["test"], split, prefix="test_")


def split_rows(dataset: str, split: str, seeds: list[int], with_sigrl: bool,
               ablations: bool) -> tuple[list[list[str]], dict]:
    """The table rows and the data of one class split."""
    folder = ROOT / "runs" / "bench" / "zero_shot" / dataset / split.replace("/", "-")
    overrides = DATASETS[dataset]["splits"][split]
    entries = {name: {"runs": [run_recipe(config.format(dataset=dataset), overrides,
                                          folder / name)], "chosen": None}
               for name, config in TRAINING_FREE.items()}
    conse = entries["conse"]["runs"][0]
    unseen = list(conse["test_zsl_AP"])
    for name, (config, extra) in LEARNED.items():
        tuned = tuned_runs(config.format(dataset=dataset), [*overrides, *extra], seeds,
                           folder / name)
        entries[name] = {"runs": tuned.runs, "chosen": tuned.chosen}
    if with_sigrl:
        rows_seeds = [(SIGRL, seeds), (SIGRL_ABLATIONS if ablations else {}, seeds[:1])]
        for table, row_seeds in rows_seeds:
            for name, (config, extra) in table.items():
                tuned = tuned_runs(config.format(dataset=dataset),
                                   [*overrides, *SIGRL_EPOCHS, *extra], row_seeds, folder / name,
                                   tune=False)
                entries[name] = {"runs": tuned.runs, "chosen": tuned.chosen}
    tuned = tuned_runs(f"linear_{dataset}_partial", ["protocol.name=full"], seeds,
                       folder / "supervised")
    entries["supervised"] = {"runs": [{**r, **supervised_bound(r, unseen)} for r in tuned.runs],
                             "chosen": tuned.chosen}
    run_info = json.loads((Path(conse["run_dir"]) / "run.json").read_text())
    averaged = {f"{setting}{suffix}": conse[f"test_{setting}_classes_averaged{suffix}"]
                for setting in ("zsl", "gzsl") for suffix in ("", "_5pos")}
    rows, data = [], {"unseen": unseen, "methods": {}, "classes_averaged": {
        **averaged, "all": len(run_info["zero_shot"]["class_names"]),
        "test_positives": conse["test_zsl_positives"]}}
    for name, entry in entries.items():
        summary = summarise(entry["runs"])
        chosen = entry["chosen"]
        choice = "-" if chosen is None else (
            f"{chosen['lr']:g} / {chosen['weight_decay']:g} / {chosen['best_epoch']}")
        rows.append([split, name, *[summary[c]["text"] for c in COLUMNS], choice])
        data["methods"][name] = {"summary": summary, "per_class_AP": per_class(entry["runs"]),
                                 "chosen": chosen, "seeds": len(entry["runs"]),
                                 "run_dirs": [r["run_dir"] for r in entry["runs"]]}
    return rows, data


def training_free_rows(sets: dict, clip_weights: Path | None,
                       clip_model: str) -> tuple[list[list[str]], dict]:
    """ConSE (and CLIP with weights) on every class of the other datasets ``sets``."""
    from mlrkit.zero_shot import clip_scores, conse_scores

    rows, data = [], {}
    clip = None
    if clip_weights is not None:
        from mlrkit.encoders.clip import create_clip

        clip = create_clip(clip_model, weights=clip_weights)
    for name, (reader, root, options, split) in sets.items():
        dataset = create_dataset(reader, root, **options)
        dataset = dataset if split is None else dataset.subset(split)
        images = [Path(p) for p in dataset.image_paths]
        scorers = {"conse": lambda names, imgs=images: conse_scores(imgs, names)}
        if clip is not None:
            scorers["clip"] = lambda names, imgs=images: clip_scores(imgs, names, clip)
        for method, scorer in scorers.items():
            scores = scorer(list(dataset.class_names))
            result = metrics.mean_average_precision(scores, dataset.labels)
            ap = metrics.average_precision(scores, dataset.labels)
            finite = {n: a for n, a in zip(dataset.class_names, ap.tolist(), strict=True)
                      if not np.isnan(a)}
            worst, best = min(finite, key=finite.get), max(finite, key=finite.get)
            rows.append([name, method, str(len(images)), f"{100 * result.value:.1f}",
                         f"{result.num_classes_averaged} of {dataset.num_classes}",
                         f"{worst} {100 * finite[worst]:.1f} / {best} {100 * finite[best]:.1f}"])
            data[f"{name} {method}"] = {"mAP": result.value, "per_class_AP": finite,
                                        "images": len(images)}
    return rows, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="voc2007", choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--splits", nargs="+", default=None,
                        help="class splits to run (default: all of the dataset's)")
    parser.add_argument("--sigrl-splits", nargs="*", default=None,
                        help="the splits SigRL runs on (default: the first; its ablations: the "
                             "first of these)")
    parser.add_argument("--ablations", action="store_true",
                        help="also SigRL's ablations (one seed each)")
    parser.add_argument("--clip-weights", type=Path, default=None,
                        help="a local open_clip weights file for the CLIP zero-shot rows")
    parser.add_argument("--clip-model", default="ViT-B-32-quickgelu")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    os.chdir(ROOT)  # recipes name data and caches relative to the project root
    setting = DATASETS[args.dataset]
    splits = args.splits or list(setting["splits"])
    sigrl_splits = splits[:1] if args.sigrl_splits is None else args.sigrl_splits
    unknown = sorted(set(splits + sigrl_splits) - set(setting["splits"]))
    if unknown:
        parser.error(f"{args.dataset} has the class splits {list(setting['splits'])}, not "
                     f"{unknown}")

    rows, data = [], {"splits": {}}
    for split in splits:
        with_sigrl = split in sigrl_splits
        rows_of_split, data["splits"][split] = split_rows(
            args.dataset, split, args.seeds, with_sigrl,
            args.ablations and with_sigrl and split == sigrl_splits[0])
        rows += rows_of_split
        print(split, "done", flush=True)
    free_rows, data["training_free"] = training_free_rows(
        setting["training_free"], args.clip_weights, args.clip_model)
    header = ["split", "method", "ZSL mAP", "ZSL mAP 5+", "ZSL F1@3", "ZSL F1@5", "GZSL mAP",
              "GZSL mAP 5+", "GZSL F1@3", "GZSL F1@5", "seen mAP", "lr / wd / epoch"]
    averaged = "; ".join(f"{split}: {averaged_classes(d)}" for split, d in data["splits"].items())
    body = [
        (f"{setting['test']}, {len(args.seeds)} training seeds for the learned rows (mean ± std); "
         "ConSE and dense ConSE are deterministic. ZSL: a forward over the unseen classes only "
         "(as MKT and SigRL score it; top-k among them); GZSL: one forward over all classes. mAP averages the classes with a test positive, mAP 5+ those with at least 5 "
         f"({averaged}). F1@k over all test images, as MKT / SigRL compute it: a photo without "
         "an unseen class still counts, so ZSL F1@k is low for every method. seen mAP: the seen "
         "classes of the test split. Percent."),
        "",
        *markdown_table(header, rows),
        "",
        "## AP of each unseen class (ZSL, mean over seeds)",
        "",
    ]
    for split, split_data in data["splits"].items():
        names = split_data["unseen"]
        body += [f"{split}:", "", *markdown_table(
            ["method", *names],
            [["test positives", *[str(split_data["classes_averaged"]["test_positives"][n])
                                  for n in names]]]
            + [[m, *[f"{100 * d['per_class_AP'][n]:.1f}" for n in names]]
               for m, d in split_data["methods"].items()]), ""]
    body += ["## Training-free baselines on other class sets (every class unseen)", "",
             *markdown_table(["data", "method", "images", "mAP", "classes averaged",
                              "worst / best class AP"], free_rows)]
    if args.clip_weights is None:
        body += ["", "CLIP zero-shot: not run (no CLIP weights here; pass --clip-weights FILE)."]
    body += ["", *summary_lines(data)]
    stem = f"zero_shot_{args.dataset}"
    text = write_result(args.out_dir, stem,
                        f"Zero-shot multi-label recognition: {args.dataset} seen / unseen splits",
                        body, data)
    print(text)
    print(plot_zero_shot(args.out_dir / f"{stem}.json"))


def summary_lines(data: dict) -> list[str]:
    """``zsl <split> <method> zsl_map= zsl_std= gzsl_map= gzsl_std=`` (percent) per split and
    :data:`SUMMARY_ROWS` method."""
    lines = []
    for split, split_data in data["splits"].items():
        for name in SUMMARY_ROWS:
            if name not in split_data["methods"]:
                continue
            summary = split_data["methods"][name]["summary"]
            figures = []
            for setting in ("zsl", "gzsl"):
                values = [100 * v for v in summary[f"{setting}_mAP"]["values"]]
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                figures += [f"{setting}_map={statistics.fmean(values):.2f}",
                            f"{setting}_std={spread:.2f}"]
            lines.append(f"zsl {split} {name} {' '.join(figures)}")
    return lines


def averaged_classes(split_data: dict) -> str:
    """How many classes the ZSL / GZSL means and their 5+ versions averaged."""
    n = split_data["classes_averaged"]
    return (f"ZSL {n['zsl']} / {n['zsl_5pos']}, GZSL {n['gzsl']} / {n['gzsl_5pos']} classes "
            f"of {n['all']}")


if __name__ == "__main__":
    main()
