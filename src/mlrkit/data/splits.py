"""Seeded splits for data that has none, and validation hold-outs carved out of a training split.

Both are pure functions of ``(data, sizes, seed)``: the same call gives the same split on every
machine (NumPy's PCG64 ``default_rng(seed)``), so a recipe that states them is reproducible, and
``write_split_file`` saves one as the ``split.csv`` that ``create_dataset`` reads back.

    data = create_dataset("voc2007", root)                      # official train / val
    data = holdout_split(data, size=250, seed=0)                # train 2,500 -> train 2,250 + holdout 250
    data = random_split(create_dataset("csv", root), {"train": 0.8, "val": 0.1, "test": 0.1})
"""

from __future__ import annotations

import csv
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from mlrkit.atomic import atomic_write
from mlrkit.data.dataset import DataFormatError, MultiLabelData


def _count(size: float, total: int, what: str) -> int:
    """``size`` as a number of images out of ``total``: a fraction in (0, 1) or a whole count."""
    if isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0:
        raise ValueError(f"{what}: size must be a fraction in (0, 1) or a count >= 1, got {size!r}")
    if size < 1:
        count = round(size * total)
    elif float(size).is_integer():
        count = int(size)
    else:
        raise ValueError(f"{what}: size {size} is neither a fraction below 1 nor a whole count")
    if not 0 < count < total:
        raise ValueError(f"{what}: size {size!r} leaves {total - count} of {total} images; "
                         f"choose a size between 1 and {total - 1}")
    return count


def holdout_split(
    data: MultiLabelData,
    size: float,
    seed: int = 0,
    source: str = "train",
    name: str = "holdout",
) -> MultiLabelData:
    """Move a seeded random share of split ``source`` into a new split ``name``.

    Args:
        data: a dataset with splits.
        size: the held-out part, a fraction of ``source`` in (0, 1) or a number of images.
        seed: the draw: ``default_rng(seed).permutation`` of the ``source`` rows, first ``size``.
        source: the split to carve from (e.g. ``"train"``).
        name: the new split's name; it must not exist yet.

    Returns:
        ``data`` with ``splits`` changed on the held-out rows only (rows stay in their order).
    """
    index = data.split_index(source)
    _check_new_split(data, name, "the hold-out", "data.holdout.name")
    count = _count(size, len(index), f"hold-out from split {source!r}")
    return _moved(data, index[np.random.default_rng(seed).permutation(len(index))[:count]], name)


def fold_split(
    data: MultiLabelData,
    folds: int,
    index: int,
    seed: int = 0,
    source: str = "train",
    name: str = "heldout",
) -> MultiLabelData:
    """Move fold ``index`` of ``folds`` seeded folds of split ``source`` into a new split ``name``
    (K-fold cross-fitting: each image of ``source`` is in exactly one fold).

    The folds are the ``default_rng(seed).permutation`` of the ``source`` rows cut into ``folds``
    near-equal parts (``np.array_split``); rows keep their order.
    """
    if not 0 <= index < folds:
        raise ValueError(f"fold {index} is not one of the {folds} folds (0 ... {folds - 1})")
    rows = data.split_index(source)
    _check_new_split(data, name, "the fold", "data.fold.name")
    if len(rows) < folds:
        raise ValueError(f"split {source!r} has {len(rows)} images, fewer than {folds} folds; "
                         f"use at most {len(rows)} folds")
    chosen = np.array_split(rows[np.random.default_rng(seed).permutation(len(rows))], folds)[index]
    return _moved(data, chosen, name)


def _check_new_split(data: MultiLabelData, name: str, what: str, key: str) -> None:
    """Refuse a new split ``name`` that ``data`` has already (``what`` and the recipe ``key``
    that names it go into the error)."""
    if name in data.split_names():
        raise DataFormatError(f"dataset {data.name!r}: a split named {name!r} exists already; "
                              f"give {what} another name ({key})")


def _moved(data: MultiLabelData, rows: np.ndarray, name: str) -> MultiLabelData:
    """``data`` with the images at ``rows`` in split ``name`` (rows keep their order)."""
    splits = data.splits.astype(object)
    splits[rows] = name
    return replace(data, splits=splits.astype(str))


def random_split(data: MultiLabelData, sizes: dict[str, float], seed: int = 0) -> MultiLabelData:
    """A seeded random split of every image into the named parts of ``sizes``.

    Args:
        data: a dataset (any existing split is replaced).
        sizes: split name -> share, e.g. ``{"train": 0.8, "val": 0.1, "test": 0.1}``; the shares
            must sum to 1. Counts are rounded down and the remainder goes to the first splits.
        seed: ``default_rng(seed).permutation`` of the rows decides the assignment.
    """
    if not sizes:
        raise ValueError("random split: give at least one split share, e.g. {train: 0.8, ...}")
    shares = {}
    for split, share in sizes.items():
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise ValueError(f"random split: share of {split!r} must be in (0, 1], got {share!r}")
        shares[str(split)] = float(share)
    if not math.isclose(sum(shares.values()), 1.0, abs_tol=1e-6):
        raise ValueError(f"random split: shares {shares} sum to {sum(shares.values()):.4f}, not 1; "
                         f"give shares that sum to 1")
    total = data.num_images
    counts = {s: math.floor(share * total) for s, share in shares.items()}
    for s in list(counts)[: total - sum(counts.values())]:
        counts[s] += 1
    order = np.random.default_rng(seed).permutation(total)
    splits = np.empty(total, dtype=object)
    start = 0
    for split, count in counts.items():
        splits[order[start:start + count]] = split
        start += count
    return replace(data, splits=splits.astype(str))


def write_split_file(data: MultiLabelData, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``data``'s split as ``image,split`` rows (image ids relative to the root), atomically.

    An existing file is kept unless ``overwrite``.
    """
    path = Path(path)
    if data.splits is None:
        raise DataFormatError(f"dataset {data.name!r} has no split to write")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    with atomic_write(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image", "split"])
        writer.writerows(zip(data.image_ids(), data.splits.tolist(), strict=True))
    return path


def apply_recipe_splits(data: MultiLabelData, section: dict) -> MultiLabelData:
    """The ``data.split``, ``data.holdout`` and ``data.fold`` entries of a recipe, in that order.

    ``split``: ``{train: 0.8, val: 0.1, test: 0.1, seed: 0}`` (a random split of data that has
    none; refused when the data already has one). ``holdout``: ``{size: 250, seed: 0, from: train,
    name: holdout}`` (see :func:`holdout_split`).
    """
    if section.get("split"):
        options = dict(section["split"])
        seed = options.pop("seed", 0)
        if data.splits is not None:
            raise DataFormatError(
                f"dataset {data.name!r} at {data.root} has its own split "
                f"({', '.join(data.split_names())}); remove data.split from the recipe or the "
                f"dataset's split.csv"
            )
        data = random_split(data, options, seed=seed)
    if section.get("holdout"):
        options = dict(section["holdout"])
        unknown = set(options) - {"size", "seed", "from", "name"}
        if unknown or "size" not in options:
            raise ValueError(f"data.holdout takes size (required), seed, from, name; got "
                             f"{sorted(options)}")
        data = holdout_split(data, options["size"], seed=options.get("seed", 0),
                             source=options.get("from", "train"),
                             name=options.get("name", "holdout"))
    if section.get("fold"):
        options = dict(section["fold"])
        data = fold_split(data, options["folds"], options["index"], seed=options.get("seed", 0),
                          source=options.get("from", "train"), name=options.get("name", "heldout"))
    return data
