"""The ``mlrkit`` command.

    mlrkit data summary --dataset csv --root data/coco2014-6k --protocol partial
    mlrkit data split --dataset csv --root my_photos --train 0.8 --val 0.1 --test 0.1 --seed 0
    mlrkit train --config configs/linear_coco2014-6k_partial.yaml --set protocol.known=0.3
    mlrkit eval --checkpoint runs/linear_coco2014-6k_partial
    mlrkit eval --checkpoint runs/linear_coco2014-6k_partial --dataset csv --root other_photos
    mlrkit predict --checkpoint runs/linear_coco2014-6k_partial photo1.jpg photo2.jpg
    mlrkit tag photos/ --recursive --labels "cat, dog, sofa" --zero-shot conse --top-k 2
    mlrkit recover --checkpoint runs/my_run --dataset csv --root my_photos --out recovered/
    mlrkit export --format label-studio recovered/ --out review/tasks.json --image-root my_photos
    mlrkit audit --config my_recipe.yaml --out audit/
    mlrkit import-labels project-1-export.json --into my_photos/labels.csv
    mlrkit report runs/run_a runs/run_b --out report.html

A failure that the input causes (a file, a recipe entry, an option, a full disk) ends with one line
``mlrkit: error: <file or field>: <what is wrong>; <what to do>`` on stderr and exit code 2;
``mlrkit --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import traceback
from collections.abc import Sequence
from math import inf
from pathlib import Path

import yaml

from mlrkit.data import create_dataset, list_datasets
from mlrkit.data.protocols import PARTIAL_MODES, PROTOCOL_DEFAULTS, SINGLE_POSITIVE_MODES, draw_mask
from mlrkit.data.summary import format_summary, summarize
from mlrkit.engine.recipe import load_recipe, parse_override
from mlrkit.label_quality import QUALITY_SCORES
from mlrkit.tagging import (
    DEFAULT_ON,
    TAG_FORMATS,
    image_files,
    parse_labels,
    ranked_tags,
    readable_images,
    save_tags,
)

PACKAGE_DIR = Path(__file__).resolve().parent


def _parse_option(text: str) -> tuple[str, object]:
    """``"year=2007"`` → ``("year", 2007)``; values are read as YAML, like recipe overrides."""
    try:
        keys, value = parse_override(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"{text}: {_yaml_problem(err)}") from None
    return ".".join(keys), value


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: give at least 1")
    return value


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line on what is wrong with a YAML value."""
    problem = getattr(err, "problem", None) or " ".join(str(err).split())
    return f"the value is not valid YAML ({problem}); fix it or quote it as a YAML string"


def _checked_overrides(texts: list[str]) -> list[str]:
    """The ``--set`` texts, unchanged, once each parses; a value that is not YAML is an error
    naming the ``--set``."""
    for text in texts:
        try:
            parse_override(text)
        except yaml.YAMLError as err:
            raise ValueError(f"--set {text}: {_yaml_problem(err)}") from None
    return texts


def _add_unfinished_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-unfinished", action="store_true",
                        help="use a run that has not finished (its best checkpoint so far)")


def _add_output_args(parser: argparse.ArgumentParser) -> None:
    """``--out``, ``--overwrite`` and ``--strict`` of the commands that tag image files."""
    parser.add_argument("--out", default=None,
                        help="write the JSON or CSV to this file (default: print it)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--strict", action="store_true",
                        help="stop at an unreadable image (default: list it and go on)")


def _add_dataset_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--dataset", required=required,
                        help=f"one of: {', '.join(list_datasets())}")
    parser.add_argument("--root", required=required, help="dataset folder")
    parser.add_argument(
        "--option",
        "-o",
        action="append",
        type=_parse_option,
        default=[],
        metavar="KEY=VALUE",
        help="reader option, e.g. -o year=2007 -o difficult=negative (repeatable)",
    )


def _cmd_data_summary(args: argparse.Namespace) -> int:
    data = create_dataset(args.dataset, args.root, **dict(args.option))
    mask, mask_split = None, None
    if args.protocol:
        mask_split = args.mask_split
        if mask_split is None and data.splits is not None and "train" in data.split_names():
            mask_split = "train"
        labels = (data if mask_split is None else data.subset(mask_split)).labels
        given = {"known": args.known if args.protocol == "partial" else None, "seed": args.seed,
                 "mode": args.mode}
        protocol = {"name": args.protocol, **{k: v for k, v in given.items() if v is not None}}
        mask = draw_mask(protocol, labels)
        if args.save_mask:
            mask.save(args.save_mask)
    print(format_summary(summarize(data, mask, mask_split)))
    if args.save_mask:
        print(f"\nmask written to {args.save_mask} (checksum {mask.checksum[:16]})")
    return 0


def _cmd_data_split(args: argparse.Namespace) -> int:
    from mlrkit.data.splits import random_split, write_split_file

    data = create_dataset(args.dataset, args.root, **dict(args.option))
    shares = {"train": args.train, "val": args.val, "test": args.test}
    negative = [f"--{name} {share}" for name, share in shares.items() if share < 0]
    if negative:
        raise ValueError(f"{', '.join(negative)}: a share is 0 (no such split) to 1; give "
                         f"shares that sum to 1")
    sizes = {name: share for name, share in shares.items() if share > 0}
    split = random_split(data, sizes, seed=args.seed)
    out = write_split_file(split, args.out or data.root / "split.csv", overwrite=args.overwrite)
    counts = ", ".join(f"{name} {int((split.splits == name).sum()):,}" for name in sizes)
    print(f"{out}: {counts} (seed {args.seed})")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from mlrkit.engine.run import train_run

    recipe = load_recipe(args.config, _checked_overrides(args.set))
    run_dir = args.run_dir or recipe["run_dir"] or f"runs/{recipe['name']}"
    results = train_run(recipe, run_dir, resume=args.resume, overwrite=args.overwrite)
    print(_format_metrics(results))
    print(f"run folder: {run_dir}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from mlrkit.engine.inference import calibrate_run

    fitted = calibrate_run(args.checkpoint, args.allow_unfinished)
    c, chosen = fitted.calibration, fitted.thresholds.chosen
    print(f"calibration p = sigmoid({c.a:.4g} * logit + {c.b:.4g}) on {c.entries:,} validation "
          f"entries: expected calibration error {c.ece_before:.4f} -> {c.ece_after:.4f}; "
          f"thresholds for {int(chosen.sum())} of {len(chosen)} classes (the others: 0.5)")
    return 0


def _cmd_upgrade_run(args: argparse.Namespace) -> int:
    from mlrkit.engine.run import upgrade_run_folder

    print(f"wrote {upgrade_run_folder(args.run_dir)}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from mlrkit.engine.inference import evaluate_run

    results = evaluate_run(args.checkpoint, split=args.split, dataset=args.dataset,
                           allow_unfinished=args.allow_unfinished,
                           root=args.root, options=dict(args.option), cache_dir=args.cache)
    print(_format_metrics(results))
    return 0


def _cmd_recover(args: argparse.Namespace) -> int:
    from mlrkit.engine.recover import recover_run

    if args.dataset is None and (args.root is not None or args.option or args.split):
        raise ValueError("--root, -o and --split describe a dataset: give --dataset too")
    recovery = recover_run(args.checkpoint, args.out, dataset=args.dataset, root=args.root,
                           allow_unfinished=args.allow_unfinished, overwrite=args.overwrite,
                           options=dict(args.option), split=args.split,
                           precision=args.precision, fill_negatives=args.fill_negatives,
                           cache_dir=args.cache)
    print(recovery.summary())
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from mlrkit.engine.inference import predict_images

    top_k = 5 if args.top_k is None else args.top_k
    images = readable_images(image_files(args.images, args.recursive), args.strict)
    predictions = predict_images(args.checkpoint, images, top_k=top_k, batch_size=args.batch_size,
                                 allow_unfinished=args.allow_unfinished)
    shown = len(predictions[0]["labels"])
    if args.top_k is not None and shown < args.top_k:
        print(f"mlrkit: note: --top-k {args.top_k} is more than the run's {shown} classes; "
              f"listing all of them", file=sys.stderr)
    save_tags(predictions, args.format, args.out, args.overwrite)
    return 0


DEFAULT_CLIP_MODEL = "ViT-B-32"


def _cmd_tag(args: argparse.Namespace) -> int:
    if args.checkpoint is not None:
        if args.zero_shot is not None:
            raise ValueError("--checkpoint and --zero-shot: give one scorer, not both")
        _require_open_vocabulary_run(Path(args.checkpoint))
    if args.top_k < 1:
        raise ValueError(f"--top-k is {args.top_k}; give at least 1, the most labels per image")
    scorer = _clip_tags if args.zero_shot == "clip" else _conse_tags
    if args.checkpoint is not None:
        scorer = _checkpoint_tags
    images, labels, scores, calibrated = scorer(args)
    low, high = (0.0, 1.0) if calibrated else (-1.0, 1.0)
    if args.threshold is not None and not low <= args.threshold <= high:
        unit = "a probability" if calibrated else "a cosine (these scores are not calibrated)"
        raise ValueError(f"--threshold {args.threshold}: give {unit}, {low:g} .. {high:g}")
    if not calibrated:
        print("mlrkit: no calibration ships for these settings: scores are cosines (a ranking), "
              "'on' marks none", file=sys.stderr)
    on = args.threshold if args.threshold is not None else (DEFAULT_ON if calibrated else inf)
    save_tags(ranked_tags(images, labels, scores, args.top_k, args.threshold, on), args.format,
              args.out, args.overwrite)
    return 0


def _conse_tags(args: argparse.Namespace) -> tuple[list[Path], list[str], object, bool]:
    """The images, labels and ``(N, L)`` ConSE scores of ``mlrkit tag --zero-shot conse`` or
    ``dense-conse`` (probabilities through the shipped calibration, where one ships), and whether
    calibrated."""
    from mlrkit.zero_shot import (
        conse_calibration,
        conse_scores,
        dense_conse_scores,
        embed_labels,
    )

    for option, value in (("--weights", args.weights), ("--clip-model", args.clip_model)):
        if value is not None:
            raise ValueError(f"{option} applies to --zero-shot clip, not conse; remove it or "
                             f"add --zero-shot clip")
    embeddings = args.embeddings or "minilm"
    if args.template is not None and embeddings != "minilm":
        raise ValueError(f"--template applies to --embeddings minilm, not {embeddings}; "
                         f"remove it")
    labels = parse_labels(args.labels, args.labels_file)
    templates = None if args.template is None else [args.template]
    try:  # before any image is read: a label GloVe does not know fails at once
        vectors = embed_labels(labels, embeddings, templates)
    except ValueError as err:
        raise ValueError(f"--labels with --embeddings {embeddings}: {err}") from None
    images = readable_images(image_files(args.images, args.recursive), args.strict)
    scorer = dense_conse_scores if args.zero_shot == "dense-conse" else conse_scores
    scores = scorer(
        images, labels, top_t=args.top_t, source=embeddings, templates=templates,
        label_vectors=vectors, batch_size=args.batch_size, device=args.device,
        progress=not args.no_progress,
    )  # fmt: skip
    if scorer is dense_conse_scores:  # no calibration ships for dense ConSE's cosines
        return images, labels, scores, False
    calibration = conse_calibration(embeddings, templates, args.top_t)
    if calibration is None:
        return images, labels, scores, False
    return images, labels, calibration(scores), True


def _clip_tags(args: argparse.Namespace) -> tuple[list[Path], list[str], object, bool]:
    """The images, labels and ``(N, L)`` CLIP cosines of ``mlrkit tag --zero-shot clip`` (no
    calibration ships: no CLIP weights do), and ``False``."""
    import open_clip

    from mlrkit.encoders.clip import create_clip
    from mlrkit.zero_shot import clip_scores

    if args.embeddings is not None:
        raise ValueError("--embeddings applies to --zero-shot conse; CLIP embeds the labels with "
                         "its own text tower: remove it")
    if args.weights is None:
        raise ValueError("--zero-shot clip needs --weights FILE: no CLIP weights ship with "
                         "mlrkit; download an open_clip checkpoint and pass the local file, "
                         "e.g. --weights ViT-B-32.safetensors --clip-model ViT-B-32-quickgelu")
    weights, name = Path(args.weights), args.clip_model or DEFAULT_CLIP_MODEL
    if not weights.is_file():
        raise ValueError(f"--weights {weights}: not a file; give a local open_clip checkpoint "
                         f"(.safetensors, or a state dict .bin/.pt)")
    if name not in open_clip.list_models():
        raise ValueError(f"--clip-model {name}: not an open_clip architecture; give one of "
                         f"open_clip.list_models(), e.g. ViT-B-32 or ViT-B-16-quickgelu")
    labels = parse_labels(args.labels, args.labels_file)
    images = readable_images(image_files(args.images, args.recursive), args.strict)
    try:
        clip = create_clip(name, weights=weights)
    except RuntimeError as err:  # load_state_dict: missing, unexpected or misshapen tensors
        raise ValueError(f"--weights {weights}: its tensors do not fit --clip-model {name} "
                         f"(missing, unexpected or misshapen); name the file's architecture "
                         f"with --clip-model") from err
    scores = clip_scores(
        images, labels, clip, templates=None if args.template is None else [args.template],
        batch_size=args.batch_size, device=args.device, progress=not args.no_progress,
    )  # fmt: skip
    return images, labels, scores, False


def _checkpoint_tags(args: argparse.Namespace) -> tuple[list[Path], list[str], object, bool]:
    """The images, labels and ``(N, L)`` scores of ``mlrkit tag --checkpoint RUN`` (an
    open-vocabulary run; its logits)."""
    from mlrkit.engine.calibrate import RunCalibration
    from mlrkit.engine.inference import score_label_names

    for option, value in (("--weights", args.weights), ("--clip-model", args.clip_model),
                          ("--embeddings", args.embeddings), ("--template", args.template)):
        if value is not None:
            raise ValueError(f"{option} does not apply to --checkpoint: the run embeds labels "
                             f"with its own label-embedding source; remove it")
    labels = parse_labels(args.labels, args.labels_file)
    images = readable_images(image_files(args.images, args.recursive), args.strict)
    logits = score_label_names(args.checkpoint, images, labels, args.batch_size,
                               args.allow_unfinished)
    calibration = RunCalibration.load(Path(args.checkpoint))
    if calibration is None:
        return images, labels, logits, False
    return images, labels, calibration.probabilities(logits), True


def _require_open_vocabulary_run(run_dir: Path) -> None:
    """Raise unless ``run_dir`` is a run of an open-vocabulary method; name a closed-set run's
    method and its classes."""
    from mlrkit.engine.run_folder import read_run_info
    from mlrkit.methods import method_class

    info = read_run_info(run_dir)
    name, classes = info["method"]["name"], info["class_names"]
    if method_class(name).open_vocabulary:
        return
    raise ValueError(
        f"--checkpoint {run_dir}: method {name!r} is closed-set: it scores only the "
        f"{len(classes)} classes it was trained on ({', '.join(classes)}); use 'mlrkit predict "
        f"--checkpoint {run_dir}' for those, or 'mlrkit tag --zero-shot conse' for any labels"
    )


def _cmd_extract(args: argparse.Namespace) -> int:
    from mlrkit.data.feature_cache import extract_features
    from mlrkit.distributed import init_distributed, resolve_device
    from mlrkit.encoders.image import create_image_encoder

    # under torchrun every rank computes its share of the images
    device = resolve_device(args.device or "cpu", int(os.environ.get("LOCAL_RANK", "0")))
    info = init_distributed(device)

    data = create_dataset(args.dataset, args.root, **dict(args.option))
    if args.split:
        data = data.subset(args.split)
    encoder = create_image_encoder(
        args.encoder, args.weights, image_size=args.image_size, seed=args.seed
    )
    try:
        summary = extract_features(
            data,
            encoder,
            args.out,
            batch_size=args.batch_size,
            num_workers=args.workers,
            spatial=args.spatial,
            spatial_dtype=args.spatial_dtype,
            device=device,
            overwrite=args.overwrite,
        )
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    if info.is_main:
        print(summary)
    return 0


def _format_metrics(results: dict) -> str:
    """One ``key value`` line per result; rates in percent, per-class APs one per line."""
    lines = []
    for key, value in results.items():
        if isinstance(value, dict):  # {class: AP}
            lines += [f"{key}[{name}]".ljust(22) + f" {100 * ap:.2f}" for name, ap in value.items()]
            continue
        shown = f"{100 * value:.2f}" if isinstance(value, float) and _is_rate(key) else value
        lines.append(f"{key:<22} {shown}")
    return "\n".join(lines)


def _is_rate(key: str) -> bool:
    last = key.split("_")[-1]
    return last in {"mAP", "voc", "CP", "CR", "CF1", "OP", "OR", "OF1", "top3"} or (
        last.split("@")[0] in {"P", "R", "F1"} and "@" in last)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlrkit", description="Multi-label image recognition with incomplete labels."
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of its one-line message")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="inspect datasets and label protocols")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    summary = data_commands.add_parser("summary", help="images, classes, labels and mask stats")
    _add_dataset_args(summary)
    summary.add_argument("--protocol", choices=["partial", "single_positive"])
    partial, single = PROTOCOL_DEFAULTS["partial"], PROTOCOL_DEFAULTS["single_positive"]
    summary.add_argument("--known", type=float, default=None,
                         help=f"kept share (partial; default {partial['known']})")
    summary.add_argument("--seed", type=int, default=None,
                         help=f"default {partial['seed']} partial, {single['seed']} single positive")
    summary.add_argument(
        "--mode", choices=sorted(set(PARTIAL_MODES + SINGLE_POSITIVE_MODES)), default=None
    )
    summary.add_argument("--mask-split", default=None, help="split to mask (default: train)")
    summary.add_argument("--save-mask", default=None, help="write the mask to this .npz file")
    summary.set_defaults(run=_cmd_data_summary)
    split = data_commands.add_parser("split", help="write a seeded random split.csv")
    _add_dataset_args(split)
    split.add_argument("--train", type=float, default=0.8, help="share of the images")
    split.add_argument("--val", type=float, default=0.1, help="share of the images")
    split.add_argument("--test", type=float, default=0.1, help="share of the images")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--out", default=None, help="default: ROOT/split.csv")
    split.add_argument("--overwrite", action="store_true", help="replace an existing file")
    split.set_defaults(run=_cmd_data_split)

    train = commands.add_parser("train", help="train a recipe (configs/*.yaml)")
    train.add_argument("--config", required=True, help="recipe YAML file")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe entry, e.g. --set train.lr=0.01 (repeatable)")
    train.add_argument("--run-dir", default=None, help="run folder (default: runs/<name>)")
    train.add_argument("--resume", action="store_true",
                       help="continue a killed run from its last finished epoch (same recipe; "
                            "only train.progress, train.num_workers, train.device, "
                            "features.num_workers may change)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run already in the run folder (its files are deleted)")
    train.set_defaults(run=_cmd_train)

    upgrade = commands.add_parser(
        "upgrade-run", help="write run.json of a run trained before run folders had one")
    upgrade.add_argument("run_dir", metavar="RUN",
                         help="run folder (from the working directory it was trained in)")
    upgrade.set_defaults(run=_cmd_upgrade_run)

    evaluate = commands.add_parser("eval", help="metrics of a run's best checkpoint")
    evaluate.add_argument("--checkpoint", required=True, help="run folder")
    _add_unfinished_arg(evaluate)
    evaluate.add_argument(
        "--split", default=None,
        help="train, val or test of the recipe (default test); with --dataset, a split of that "
             "dataset (default: all its images)",
    )  # fmt: skip
    _add_dataset_args(evaluate, required=False)  # another dataset with the run's classes
    evaluate.add_argument("--cache", default=None,
                          help="its feature cache (default: under the run folder)")
    evaluate.set_defaults(run=_cmd_eval)

    recover = commands.add_parser(
        "recover", help="fill in the unknown labels of a dataset with a trained run")
    recover.add_argument("--checkpoint", required=True, help="run folder")
    _add_unfinished_arg(recover)
    recover.add_argument("--out", required=True,
                         help="folder for completed.csv, recovered_long.csv and thresholds.csv")
    _add_dataset_args(recover, required=False)  # default: the run's own training split
    recover.add_argument("--split", default=None, help="with --dataset: only this split")
    recover.add_argument("--precision", type=float, default=None,
                         help="decide an unknown entry only where the validation precision of "
                              "the decision reaches P, as a positive or as a negative; the "
                              "entries in between stay unknown (default: maximal F1, every "
                              "entry decided)")
    recover.add_argument("--fill-negatives", action="store_true",
                         help="with --precision: every entry below the positive threshold is a "
                              "negative (none left unknown)")
    recover.add_argument("--overwrite", action="store_true",
                         help="replace the files of an earlier recovery in --out")
    recover.add_argument("--cache", default=None,
                         help="feature cache of --dataset (default: under the run folder)")
    recover.set_defaults(run=_cmd_recover)

    calibrate = commands.add_parser(
        "calibrate", help="fit a run's calibration and thresholds on its validation split again",
        description="Training does this at its end; use it for a run trained before, or after "
                    "changing the run's validation data. Writes calibration.json.")
    calibrate.add_argument("--checkpoint", required=True, help="run folder")
    _add_unfinished_arg(calibrate)
    calibrate.set_defaults(run=_cmd_calibrate)

    predict = commands.add_parser("predict", help="top labels of image files")
    predict.add_argument("--checkpoint", required=True, help="run folder")
    _add_unfinished_arg(predict)
    predict.add_argument("images", nargs="+", help="image files or folders of them")
    predict.add_argument("--top-k", type=int, default=None,
                         help="labels per image, at least 1 (default 5; at most all classes)")
    predict.add_argument("--format", choices=list(TAG_FORMATS), default=None,
                         help="json or csv (default: from the --out file's suffix, else json)")
    predict.add_argument("--recursive", action="store_true", help="also the images in subfolders")
    predict.add_argument("--batch-size", type=_positive_int, default=16)
    _add_output_args(predict)
    predict.set_defaults(run=_cmd_predict)
    _add_tag_parser(commands)
    _add_report_parser(commands)
    _add_audit_parser(commands)
    _add_export_parser(commands)
    _add_import_labels_parser(commands)
    extract = commands.add_parser("extract", help="compute and cache encoder features of images")
    _add_dataset_args(extract)
    extract.add_argument("--encoder", required=True, help="timm model name")
    extract.add_argument("--weights", default=None,
                         help="imagenet, pypi, timm or a local file (default: random init)")
    extract.add_argument("--seed", type=int, default=0, help="seed of a random initialisation")
    extract.add_argument("--image-size", type=int, default=None, help="default: the weights'")
    extract.add_argument("--out", required=True, help="cache folder")
    extract.add_argument("--split", nargs="+", default=None, help="only these splits")
    extract.add_argument("--spatial", action="store_true", help="also store feature maps")
    extract.add_argument("--spatial-dtype", choices=["float16", "float32"], default="float16")
    extract.add_argument("--batch-size", type=_positive_int, default=32)
    extract.add_argument("--workers", type=int, default=2, help="decoding processes")
    extract.add_argument("--device", default=None, help="e.g. cuda (default: cpu)")
    extract.add_argument("--overwrite", action="store_true", help="rebuild an existing cache")
    extract.set_defaults(run=_cmd_extract)
    return parser


def _add_tag_parser(commands: argparse._SubParsersAction) -> None:
    tag = commands.add_parser(
        "tag", help="rank any label names for images (zero-shot, or an open-vocabulary run)",
        description="Rank candidate labels for each image with a zero-shot scorer. ConSE: an "
                    "ImageNet classifier's top-T classes, their names embedded and averaged by "
                    "probability, compared by cosine with each label's embedding; dense ConSE "
                    "adds ConSE at every position of the classifier's feature map, the best "
                    "positions per label averaged with the global score. CLIP: the "
                    "cosine of the image's CLIP embedding and the label's, averaged over CLIP's "
                    "prompt ensemble; needs a local open_clip weights file (--weights). "
                    "--checkpoint RUN: an open-vocabulary run's scores, the labels embedded as "
                    "the run embedded its classes.",
    )  # fmt: skip
    tag.add_argument("images", nargs="+", help="image files or folders of them")
    tag.add_argument("--labels", default=None, help='candidate labels, e.g. "cat, dog, sofa"')
    tag.add_argument("--labels-file", default=None, help="candidate labels, one per line")
    tag.add_argument("--zero-shot", choices=["conse", "dense-conse", "clip"], default=None,
                     help="the zero-shot scorer (default conse; dense-conse: ConSE at every "
                          "position of the feature map as well, the 4 best positions per label "
                          "averaged with the global score)")
    tag.add_argument("--weights", default=None,
                     help="clip: a local open_clip weights file (.safetensors or a state dict); "
                          "none ship with mlrkit")
    tag.add_argument("--clip-model", default=None,
                     help=f"clip: the open_clip architecture of --weights (default "
                          f"{DEFAULT_CLIP_MODEL}); for OpenAI's weights the -quickgelu one, "
                          f"e.g. ViT-B-32-quickgelu")
    _add_unfinished_arg(tag)
    tag.add_argument("--checkpoint", default=None,
                     help="score with an open-vocabulary run folder (e.g. devise trained on "
                          "seen classes) instead of a zero-shot scorer")
    tag.add_argument("--top-k", type=int, default=5,
                     help="most labels listed per image (default 5)")
    tag.add_argument("--threshold", type=float, default=None,
                     help="list only labels scoring at least this, and mark them on: a "
                          "probability (0 .. 1; default: on from 0.5) where the scores are "
                          "calibrated (ConSE with MiniLM and T 10, a run with a calibration), "
                          "else a cosine (-1 .. 1)")
    tag.add_argument("--format", choices=list(TAG_FORMATS), default=None,
                     help="json or csv (default: from the --out file's suffix, else json)")
    _add_output_args(tag)
    tag.add_argument("--recursive", action="store_true", help="also the images in subfolders")
    tag.add_argument("--embeddings", choices=["minilm", "glove"], default=None,
                     help="conse: label and class-name embeddings (default minilm)")
    tag.add_argument("--template", default=None,
                     help='prompt with one {}: minilm\'s (default "a photo of a {}"), or for '
                          'clip one replacing its 7-prompt ensemble')
    tag.add_argument("--top-t", type=int, default=10,
                     help="ImageNet classes combined per image (ConSE's T, default 10)")
    tag.add_argument("--batch-size", type=_positive_int, default=16)
    tag.add_argument("--device", default="cpu", help="e.g. cuda (default: cpu)")
    tag.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    tag.set_defaults(run=_cmd_tag)


def _add_report_parser(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report", help="one self-contained HTML page of finished runs (figures and tables)",
        description="Per run: recipe and mask statistics, training curves, per-class test AP, "
                    "precision-recall curves, label co-occurrence and, where the mask hid "
                    "training labels, the recovered labels' precision and recall; with several "
                    "runs a comparison (mean ± std over runs that differ only by seed).",
    )  # fmt: skip
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders")
    report.add_argument("--out", required=True, help="the HTML file to write")
    report.add_argument("--overwrite", action="store_true",
                        help="replace an existing report (never a file that is not HTML)")
    report.set_defaults(run=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from mlrkit.report import build_report

    print(f"report written to {build_report(args.run_dirs, args.out, args.overwrite)}")
    return 0


def _add_audit_parser(commands: argparse._SubParsersAction) -> None:
    audit = commands.add_parser(
        "audit", help="find wrong labels among the known ones (K-fold cross-fitting)",
        description="Train the recipe K times, each time without one fold of its training "
                    "split, score each fold with the run that did not see it, and rank every "
                    "known label by how much the out-of-fold probabilities contradict it "
                    "(confident learning, per class, unknown entries never questioned). Writes "
                    "OUT/label_issues.csv (most suspect first), OUT/class_summary.csv and one "
                    "run folder per fold (an interrupted audit resumes). See docs/audit.md.",
    )  # fmt: skip
    audit.add_argument("--config", required=True, help="recipe YAML file (labels as given: no "
                                                       "simulated protocol)")
    audit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe entry, e.g. --set train.lr=0.01 (repeatable)")
    audit.add_argument("--out", required=True, help="the audit folder")
    audit.add_argument("--folds", type=_positive_int, default=5, help="K (default 5)")
    audit.add_argument("--seed", type=int, default=0, help="the folds' draw (default 0)")
    audit.add_argument("--score", choices=list(QUALITY_SCORES), default=QUALITY_SCORES[0],
                       help="label quality: the probability of the given label "
                            "(self_confidence, default) or that over its class's typical one "
                            "(normalized)")
    audit.set_defaults(run=_run_audit)


def _run_audit(args: argparse.Namespace) -> int:
    from mlrkit.engine.audit import audit

    recipe = load_recipe(args.config, _checked_overrides(args.set))
    print(audit(recipe, args.out, folds=args.folds, seed=args.seed, score=args.score).summary())
    return 0


def _add_export_parser(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export", help="tasks for review in an annotation server, least certain image first",
        description="Write Label Studio tasks (JSON) with the observed labels and the machine's "
                    "labels as pre-annotations, least certain image first (smallest |p - 0.5| "
                    "over its unknown entries), and the matching labelling config (.xml) next "
                    "to them. See docs/review.md.",
    )  # fmt: skip
    export.add_argument("source",
                        help="'mlrkit recover' output (its --out folder or recovered_long.csv) or "
                             "'mlrkit predict' output (.json or --format csv; needs --labels)")
    export.add_argument("--format", choices=["label-studio"], required=True)
    export.add_argument("--out", required=True,
                        help="task file (.json); the labelling config goes next to it (.xml)")
    where = export.add_mutually_exclusive_group(required=True)
    where.add_argument("--image-root", default=None,
                       help="Label Studio local files: the images' folder relative to "
                            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")
    where.add_argument("--url-prefix", default=None,
                       help="image URLs: this prefix + the image name, e.g. "
                            "https://host/photos/")
    export.add_argument("--labels", default=None,
                        help="with predict output: the label CSV of the images (known labels, "
                             "classes, image names)")
    export.add_argument("--limit", type=int, default=None,
                        help="only the N least certain images")
    export.add_argument("--overwrite", action="store_true", help="replace existing files")
    export.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from mlrkit.review import export_label_studio

    print(export_label_studio(args.source, args.out, image_root=args.image_root,
                              url_prefix=args.url_prefix, labels=args.labels, limit=args.limit,
                              overwrite=args.overwrite))
    return 0


def _add_import_labels_parser(commands: argparse._SubParsersAction) -> None:
    imp = commands.add_parser(
        "import-labels", help="reviewed labels of a Label Studio JSON export into a label CSV",
        description="Reviewed images get all their classes known: the chosen ones 1, the others "
                    "0 (the latest submitted annotation counts). A review that contradicts a "
                    "known label is reported and not applied unless --overwrite-conflicts. The "
                    "previous file is kept as .mlrkit-backups/LABELS.bak-<time> in the label file's "
                    "folder. See docs/review.md.",
    )  # fmt: skip
    imp.add_argument("export", help="the project's Label Studio JSON export")
    imp.add_argument("--into", required=True,
                     help="the label CSV (image + one column per class) to update")
    imp.add_argument("--overwrite-conflicts", action="store_true",
                     help="reviewed values replace contradicting known labels")
    imp.add_argument("--skip-unreadable", action="store_true",
                     help="list the tasks that cannot be read and import the others (their "
                          "images untouched) instead of stopping")
    imp.set_defaults(run=_run_import_labels)


def _run_import_labels(args: argparse.Namespace) -> int:
    from mlrkit.review import import_labels

    print(import_labels(args.export, args.into, args.overwrite_conflicts,
                        args.skip_unreadable).summary())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
        distributed = sys.modules.get("mlrkit.distributed")  # loaded by the commands that use it
        if distributed is not None:
            distributed.end_distributed_process(code)  # returns only outside torchrun
        return code
    except Exception as err:
        if args.debug or not isinstance(err, _input_errors()):
            raise
        print(f"mlrkit: error: {_error_line(err)}", file=sys.stderr)
        return 2


def _input_errors() -> tuple[type[Exception], ...]:
    """The exception types that input causes: damaged or foreign files, recipe entries and
    options, the disk (``DataFormatError`` is a ``ValueError``). Imported only after a failure,
    to keep the command's start-up light."""
    import pickle
    import zipfile

    from safetensors import SafetensorError

    weights = sys.modules.get("mlrkit.encoders.weights")  # loaded if its error was raised
    unavailable = () if weights is None else (weights.WeightsUnavailableError,)
    return (ValueError, KeyError, TypeError, OSError, FloatingPointError, yaml.YAMLError,
            zipfile.BadZipFile, pickle.UnpicklingError, SafetensorError, *unavailable)


def _error_line(err: Exception) -> str:
    """``<file or field>: <what is wrong>; <what to do>`` of an input error, on one line.

    mlrkit's own messages have that form; a system error gets its file and advice by ``errno``;
    an error raised outside mlrkit, a bare key or value, or a ``TypeError`` (Python's message on
    a call with a wrong argument) gets the hint to rerun with ``--debug``.
    """
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}; {_os_advice(err.errno)}"
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        text = err.args[0]  # str(KeyError) would quote the message
    else:
        text = str(err) or type(err).__name__
    text = " ".join(text.split())
    if isinstance(err, TypeError) or not _raised_by_mlrkit(err) or " " not in text:
        text = f"{type(err).__name__}: {text}; run again as 'mlrkit --debug ...' to see where"
    return text


def _raised_by_mlrkit(err: Exception) -> bool:
    """Whether ``err`` was raised in mlrkit's own code (whose messages say what to do)."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(PACKAGE_DIR)


def _os_advice(code: int | None) -> str:
    """What to do about a failed file operation."""
    if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return "free disk space (or raise the file size limit) and run again"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "check the permissions of the file and its folder"
    if code == errno.ENOENT:
        return "check the path"
    return "check the file and its disk"


if __name__ == "__main__":
    sys.exit(main())
