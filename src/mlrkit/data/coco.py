"""MS-COCO 2014 / 2017 image-level labels from the official instance annotation files.

Layout::

    root/annotations/instances_train2017.json   images, annotations (instances), categories
    root/annotations/instances_val2017.json
    root/train2017/000000000009.jpg              ``file_name`` of each image
    root/val2017/000000000139.jpg

Reads the json files with the standard library only (no pycocotools).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np

from mlrkit.data.dataset import POSITIVE, MultiLabelData, fixed_options, register_dataset
from mlrkit.data.files import DataFormatError, check_inside_root, require_files

T = TypeVar("T")
_INSTANCES = re.compile(r"instances_(?:train|val)(\d{4})\.json")


class _SplitLabels(NamedTuple):
    """What one instances file gives, for its ``n`` images in json order."""

    paths: list[Path]
    labels: np.ndarray  # (n, C) int8, 1 / 0
    image_ids: np.ndarray  # (n,) int64
    num_objects: np.ndarray  # (n,) int64, instances per image, crowd included


@register_dataset("coco")
def read_coco(
    root: Path,
    year: int | str | None = None,
    splits: str | Sequence[str] = ("train", "val"),
    check_images: bool = True,
    allow_outside_root: bool = False,
) -> MultiLabelData:
    """Read COCO labels: an image is positive for every category it has an instance of.

    Classes are the categories in ascending ``id`` order (80 for standard COCO, ``person`` first);
    category ids map to contiguous columns. ``iscrowd`` instances count as positive like any other
    instance: a crowd of people is people. Images without any instance are kept, with all-negative
    labels, because they are real COCO images; ``extras["num_objects"]`` makes them visible.

    Args:
        root: folder holding ``annotations/`` and the image folders.
        year: ``2014`` or ``2017``; ``None`` takes the only year found in ``annotations/``.
        splits: which ``instances_{split}{year}.json`` files to read (a name or a sequence of
            names); each gives its images that split name.
        check_images: raise when an image file listed in the json is missing.
        allow_outside_root: accept a ``file_name`` that resolves (symlinks followed) outside
            ``root`` and its split's image folder; by default it is an error naming the record.

    Returns:
        ``labels`` ``(N, C)`` int8 of 1 / 0 (no unknowns); ``splits`` ``(N,)``; ``extras``:
        ``"image_id"`` ``(N,)`` int64 COCO image ids and ``"num_objects"`` ``(N,)`` int64 instance
        counts (crowd included; 0 for an image without annotations). Images are in json order,
        split after split.
    """
    root = Path(root)
    splits = [splits] if isinstance(splits, str) else list(splits)
    if not splits:
        raise ValueError("splits must name at least one split, e.g. ('train', 'val')")
    year = _find_year(root) if year is None else str(year)
    files = [root / "annotations" / f"instances_{split}{year}.json" for split in splits]
    loaded = [_load(path) for path in files]
    categories = loaded[0][0]
    for path, (other, _, _) in zip(files[1:], loaded[1:]):
        if other != categories:
            raise DataFormatError(
                f"{path}: categories differ from those of {files[0]}; use annotation files of one "
                f"COCO release"
            )
    parts = [
        _labels(path, categories, images, annotations, root / f"{split}{year}")
        for split, path, (_, images, annotations) in zip(splits, files, loaded)
    ]

    image_paths = [p for part in parts for p in part.paths]
    origin = [(path, k) for path, part in zip(files, parts) for k in range(len(part.paths))]
    check_inside_root(
        image_paths, root, [root / f"{split}{year}" for split in splits],
        lambda i: f"{origin[i][0]}: images[{origin[i][1]}].file_name", allow_outside_root,
    )
    if check_images:
        require_files(
            image_paths,
            f"COCO images under {root}",
            f"put the images in {root}/<split>{year}/ as in the annotation files, or pass "
            f"check_images=False",
        )
    return MultiLabelData(
        name=f"coco{year}",
        root=root,
        class_names=[name for _, name in categories],
        image_paths=image_paths,
        labels=np.concatenate([part.labels for part in parts]),
        splits=np.asarray([s for s, part in zip(splits, parts) for _ in part.paths], dtype=str),
        extras={
            "image_id": np.concatenate([part.image_ids for part in parts]),
            "num_objects": np.concatenate([part.num_objects for part in parts]),
        },
    )


read_coco2014 = register_dataset("coco2014")(fixed_options(read_coco, year=2014))
read_coco2017 = register_dataset("coco2017")(fixed_options(read_coco, year=2017))


def _find_year(root: Path) -> str:
    """The one year of the ``instances_{train,val}{year}.json`` files in ``root/annotations``."""
    found = sorted(
        {
            m[1]
            for p in (root / "annotations").glob("instances_*.json")
            if (m := _INSTANCES.fullmatch(p.name))
        }
    )
    if len(found) != 1:
        what = f"years {found}" if found else "no instances_{train,val}20xx.json"
        raise DataFormatError(
            f"{root / 'annotations'}: found {what}; extract annotations_trainval20xx.zip into "
            f"{root} or pass year="
        )
    return found[0]


def _load(path: Path) -> tuple[list[tuple[int, str]], list, list]:
    """``(categories as (id, name) sorted by id, images, annotations)`` of one instances file."""
    if not path.is_file():
        raise DataFormatError(
            f"annotation file {path} not found; extract annotations_trainval20xx.zip so that "
            f"{path.parent} holds it, or pass splits= / year= for the files you have"
        )
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise DataFormatError(
            f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno}); download the "
            f"annotation file again"
        ) from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DataFormatError(
                f"{path}: field {key!r} (a list) is missing; expected a COCO instances file"
            )
    categories = []
    for k, cat in enumerate(data["categories"]):
        categories.append(
            (
                _field(cat, "id", int, path, f"categories[{k}]"),
                _field(cat, "name", str, path, f"categories[{k}]"),
            )
        )
    categories.sort()
    for key, values in (("id", [c[0] for c in categories]), ("name", [c[1] for c in categories])):
        if len(set(values)) != len(values):
            raise DataFormatError(f"{path}: 'categories' repeat a {key}; fix the annotation file")
    return categories, data["images"], data["annotations"]


def _labels(
    path: Path, categories: list[tuple[int, str]], images: list, annotations: list, image_dir: Path
) -> _SplitLabels:
    """The labels of one instances file."""
    row_of: dict[int, int] = {}
    paths = []
    for k, image in enumerate(images):
        image_id = _field(image, "id", int, path, f"images[{k}]")
        if image_id in row_of:
            raise DataFormatError(f"{path}: images[{k}] repeats image id {image_id}")
        row_of[image_id] = k
        paths.append(image_dir / _field(image, "file_name", str, path, f"images[{k}]"))
    column_of = {cat_id: j for j, (cat_id, _) in enumerate(categories)}
    rows, columns = [], []
    for k, ann in enumerate(annotations):
        image_id = _field(ann, "image_id", int, path, f"annotations[{k}]")
        category_id = _field(ann, "category_id", int, path, f"annotations[{k}]")
        if image_id not in row_of:
            raise DataFormatError(
                f"{path}: annotations[{k}] refers to image_id {image_id}, which is not in 'images'"
            )
        if category_id not in column_of:
            raise DataFormatError(
                f"{path}: annotations[{k}] has category_id {category_id}, which is not in "
                f"'categories' (ids {sorted(column_of)})"
            )
        rows.append(row_of[image_id])
        columns.append(column_of[category_id])
    labels = np.zeros((len(images), len(categories)), dtype=np.int8)
    labels[rows, columns] = POSITIVE
    image_ids = np.fromiter(row_of, dtype=np.int64, count=len(row_of))
    counts = np.bincount(np.asarray(rows, dtype=np.int64), minlength=len(images))
    return _SplitLabels(paths, labels, image_ids, counts)


def _field(record: object, key: str, kind: type[T], path: Path, where: str) -> T:
    """``record[key]``, checked to be of type ``kind``; errors name the file and the record."""
    value = record.get(key) if isinstance(record, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataFormatError(
            f"{path}: {where} needs a field {key!r} of type {kind.__name__}, got {value!r}"
        )
    return value
