"""Visual Genome VG-200 image-level labels in the HCP-MLR-PL format.

Layout: the files HCP-MLR-PL reads (``utils/dataloader.py``, ``datasets/vg.py``; the lists and the
500-class label index come from SSGRL ``data/VG/``, the 200-class index keeps the indices below
200) and the Visual Genome image folders::

    root/
      train_list_500.txt                  training image names, one a line, e.g. 2328403.jpg
      test_list_500.txt                   test image names, same form
      vg_category_200_labels_index.json   {"2328403.jpg": [0, 17, 52], ...}: positive class indices
      VG_100K/2328403.jpg                 the Visual Genome images (VG_100K_2/ holds the rest of
      VG_100K_2/...                       release 1.2; HCP-MLR-PL looks in VG_100K only)

HCP-MLR-PL builds a ``(N, 200)`` matrix of ``-1`` and sets the listed indices to ``1``; here the
``-1`` (absent) becomes ``0``. The public code names no file of class names (it knows the classes
by index only, plus word vectors ``vg_200_vector.npy``), so names are optional: pass
``category_file``, either a JSON list of names or a text file with one name a line, in index
order; without it the class names are ``"0"`` .. ``"199"``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlrkit.data.dataset import POSITIVE, MultiLabelData, register_dataset
from mlrkit.data.files import DataFormatError, check_inside_root, require_files


@register_dataset("vg200")
def read_vg200(
    root: Path,
    train_list: str = "train_list_500.txt",
    test_list: str = "test_list_500.txt",
    labels_file: str = "vg_category_200_labels_index.json",
    category_file: str | None = None,
    num_classes: int = 200,
    image_dirs: Sequence[str] = ("VG_100K", "VG_100K_2"),
    check_images: bool = True,
    allow_outside_root: bool = False,
) -> MultiLabelData:
    """Read VG-200 labels with HCP-MLR-PL's train/test split.

    File arguments are paths relative to ``root`` (or absolute).

    Args:
        root: dataset folder.
        train_list: training image names, one a line.
        test_list: test image names, one a line. An image in both lists is an error.
        labels_file: JSON object mapping each image name to its list of positive class indices.
            Every listed image needs an entry; entries of unlisted images are ignored.
        category_file: class names in index order: a ``.json`` file holding a list of strings, or
            a text file with one name a line. ``None``: the names are the indices as strings.
        num_classes: number of classes; a ``category_file`` must hold exactly this many names.
            (SSGRL's VG-500 reads with ``labels_file="vg_category_500_labels_index.json"`` and
            ``num_classes=500``.)
        image_dirs: folders under ``root`` searched in order for each image name (a file name).
        check_images: raise when image files are missing (count and first few in the message);
            with ``False`` an image found nowhere gets a path in the first folder.
        allow_outside_root: accept image names that resolve (symlinks followed) outside ``root``
            and ``image_dirs`` (e.g. ``../x.jpg``); by default they are an error naming the list
            file and line.

    Returns:
        ``labels`` ``(N, num_classes)`` int8 of 1 / 0, train images first; ``splits`` ``(N,)``
        ``"train"`` / ``"test"``.
    """
    root = Path(root)
    if not image_dirs:
        raise ValueError("image_dirs must name at least one folder")
    if category_file is None:
        class_names = [str(k) for k in range(num_classes)]
    else:
        class_names = _read_category_names(root / category_file, num_classes)
    labels_path = root / labels_file
    positives = _read_label_index(labels_path)

    names: list[str] = []
    splits: list[str] = []
    listed_at: dict[str, str] = {}
    for split, list_name in (("train", train_list), ("test", test_list)):
        list_path = root / list_name
        for line_no, name in _read_entries(list_path):
            where = f"{list_path}:{line_no}"
            if name in listed_at:
                raise DataFormatError(
                    f"{where}: image {name!r} is already listed at {listed_at[name]}"
                )
            if name not in positives:
                raise DataFormatError(f"{where}: image {name!r} has no entry in {labels_path}")
            listed_at[name] = where
            names.append(name)
            splits.append(split)

    labels = np.zeros((len(names), num_classes), dtype=np.int8)
    for row, name in enumerate(names):
        labels[row, _class_indices(positives[name], name, labels_path, num_classes)] = POSITIVE

    image_paths = _locate_images(root, names, image_dirs)
    check_inside_root(image_paths, root, [root / d for d in image_dirs],
                      lambda i: listed_at[names[i]], allow_outside_root)
    if check_images:
        require_files(
            image_paths,
            f"{root} ({', '.join(image_dirs)})",
            "unpack the Visual Genome images into these folders, or pass check_images=False",
        )
    return MultiLabelData(
        name="vg200",
        root=root,
        class_names=class_names,
        image_paths=image_paths,
        labels=labels,
        splits=np.asarray(splits, dtype=str),
    )


_HCP_FILES = (
    "HCP-MLR-PL's data/vg/ (from SSGRL's data/VG/) holds train_list_500.txt, test_list_500.txt "
    "and vg_category_200_labels_index.json"
)


def _read_json(path: Path) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataFormatError(f"{path} not found; {_HCP_FILES}") from None
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None


def _read_label_index(path: Path) -> dict[str, object]:
    """``{image name: positive class indices}`` as stored in the JSON label index (unchecked)."""
    index = _read_json(path)
    if not isinstance(index, dict):
        raise DataFormatError(
            f"{path}: expected a JSON object mapping image names to lists of class indices, got "
            f"a {type(index).__name__}"
        )
    return index


def _class_indices(value: object, name: str, path: Path, num_classes: int) -> list[int]:
    """The class indices of image ``name``, checked to be integers in ``[0, num_classes)``."""
    if not isinstance(value, list) or not all(
        isinstance(k, int) and not isinstance(k, bool) for k in value
    ):
        raise DataFormatError(
            f"{path}: key {name!r}: expected a list of class indices, got {value!r}"
        )
    bad = [k for k in value if not 0 <= k < num_classes]
    if bad:
        raise DataFormatError(
            f"{path}: key {name!r}: class index {bad[0]} is outside 0..{num_classes - 1}; pass "
            f"num_classes= to match the label index (VG-200: 200, VG-500: 500)"
        )
    return value


def _read_lines(path: Path) -> list[str]:
    """Stripped lines of a text file; blank lines at its end are dropped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f.read().splitlines()]
    except FileNotFoundError:
        raise DataFormatError(f"{path} not found; {_HCP_FILES}") from None
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _read_entries(path: Path) -> list[tuple[int, str]]:
    """``(line number, image name)`` of each non-blank line of an image list."""
    return [(line_no, line) for line_no, line in enumerate(_read_lines(path), 1) if line]


def _read_category_names(path: Path, num_classes: int) -> list[str]:
    """Class names from a JSON list of strings or a text file with one name a line."""
    if path.suffix == ".json":
        names = _read_json(path)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataFormatError(f"{path}: expected a JSON list of class names (strings)")
        where = [f"{path}: item {k}" for k in range(len(names))]
    else:
        names = _read_lines(path)
        where = [f"{path}:{line_no}" for line_no in range(1, len(names) + 1)]
    first: dict[str, str] = {}
    for name, at in zip(names, where, strict=True):
        if not name.strip():
            raise DataFormatError(f"{at}: empty class name")
        if name in first:
            raise DataFormatError(
                f"{at}: class name {name!r} is listed twice (first at {first[name]})"
            )
        first[name] = at
    if len(names) != num_classes:
        raise DataFormatError(
            f"{path}: {len(names)} class names, expected num_classes={num_classes}"
        )
    return names


def _locate_images(root: Path, names: list[str], image_dirs: Sequence[str]) -> list[Path]:
    """Path of each image: in the first of ``image_dirs`` that has it, else in the first folder."""
    folders = [root / d for d in image_dirs]
    contents = [set(os.listdir(folder)) if folder.is_dir() else set() for folder in folders]
    paths = []
    for name in names:
        found = next((f for f, c in zip(folders, contents, strict=True) if name in c), folders[0])
        paths.append(found / name)
    return paths
