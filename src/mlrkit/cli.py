"""The ``mlrkit`` command.

    mlrkit data summary --dataset csv --root ../shared/data/voc12-animals \\
        --protocol partial --known 0.1 --seed 0
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mlrkit.data import DataFormatError, create_dataset, list_datasets
from mlrkit.data.protocols import (
    PARTIAL_MODES,
    SINGLE_POSITIVE_MODES,
    partial_labels,
    single_positive,
)
from mlrkit.data.summary import format_summary, summarize


def _parse_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, value


def _add_dataset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help=f"one of: {', '.join(list_datasets())}")
    parser.add_argument("--root", required=True, help="dataset folder")
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
        if args.protocol == "partial":
            mask = partial_labels(labels, args.known, seed=args.seed, mode=args.mode or "bernoulli")
        else:
            seed = 1200 if args.seed is None else args.seed
            mask = single_positive(labels, seed=seed, mode=args.mode or "uniform")
        if args.save_mask:
            mask.save(args.save_mask)
    print(format_summary(summarize(data, mask, mask_split)))
    if args.save_mask:
        print(f"\nmask written to {args.save_mask} (checksum {mask.checksum[:16]})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlrkit", description="Multi-label image recognition with incomplete labels."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="inspect datasets and label protocols")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    summary = data_commands.add_parser("summary", help="images, classes, labels and mask stats")
    _add_dataset_args(summary)
    summary.add_argument("--protocol", choices=["partial", "single_positive"])
    summary.add_argument("--known", type=float, default=0.1, help="kept share (partial)")
    summary.add_argument("--seed", type=int, default=None, help="0 partial, 1200 single positive")
    summary.add_argument(
        "--mode", choices=sorted(set(PARTIAL_MODES + SINGLE_POSITIVE_MODES)), default=None
    )
    summary.add_argument("--mask-split", default=None, help="split to mask (default: train)")
    summary.add_argument("--save-mask", default=None, help="write the mask to this .npz file")
    summary.set_defaults(run=_cmd_data_summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "protocol", None) == "partial" and args.seed is None:
        args.seed = 0
    try:
        return args.run(args)
    except (DataFormatError, ValueError, KeyError) as err:
        print(f"mlrkit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
