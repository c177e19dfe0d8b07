"""Users' own multi-label data from one CSV file, in one of two formats told apart by the header.

(a) One column per class; the first column holds image paths whatever its name (``image``, MIML's
``Filenames``); cells are ``1`` positive, ``0`` negative, ``-1`` or empty unknown::

    image,dog,cat,person
    a.jpg,1,0,1
    b.jpg,0,,1

(b) The header is exactly ``image,labels``; ``labels`` lists the positive class names separated by
``;`` (empty: no positive)::

    image,labels
    a.jpg,dog;person
    b.jpg,

Image names are looked up relative to the CSV's folder first, then to ``root/images/`` when that
folder exists (so both ``x.jpg`` with the photos in ``images/`` and ``images/x.jpg`` work). A name
that leads outside the dataset (``../x.jpg`` past the root, an absolute path, a symlink to a file
elsewhere) is refused unless ``allow_outside_root=True``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from mlrkit.data.dataset import NEGATIVE, POSITIVE, UNKNOWN, MultiLabelData, register_dataset
from mlrkit.data.files import DataFormatError, check_inside_root, require_files
from mlrkit.text_files import decode

CELL_VALUES = {"1": POSITIVE, "0": NEGATIVE, "-1": UNKNOWN, "": UNKNOWN}
UNLISTED_LABEL = {"negative": NEGATIVE, "unknown": UNKNOWN}
LIST_HEADER = ["image", "labels"]
CLASSES_FILE = "classes.txt"  # the class list of a tag-list CSV, next to it


@register_dataset("csv")
def read_csv_labels(
    root: Path,
    labels_file: str | Path = "labels.csv",
    classes: Sequence[str] | None = None,
    unlisted: Literal["negative", "unknown"] = "negative",
    check_images: bool = True,
    allow_outside_root: bool = False,
) -> MultiLabelData:
    """Read a label CSV (format (a) or (b), see the module docstring).

    Args:
        root: dataset folder; also the folder of ``split.csv`` when ``create_dataset`` reads it.
        labels_file: the CSV, relative to ``root`` (or absolute).
        classes: format (b): the class list, in column order; unknown names in the file are then
            errors. Without it, a ``classes.txt`` next to the CSV (one name a line) is used, else
            the sorted union of the names in the file. Format (a): the header defines the
            classes; when given, ``classes`` must equal them (a check of the expected order).
        unlisted: format (b): label of a class not listed for an image, ``"negative"`` (0) or
            ``"unknown"`` (-1).
        check_images: raise when an image file is missing.
        allow_outside_root: accept images that resolve (symlinks followed) outside ``root`` and
            the CSV's folder; by default they are an error naming the line.

    Returns:
        ``labels`` ``(N, C)`` int8; ``name`` is the name of the ``root`` folder; no ``splits``
        (``create_dataset`` adds them from ``root/split.csv``).
    """
    if unlisted not in UNLISTED_LABEL:
        raise ValueError(f"unlisted must be one of {list(UNLISTED_LABEL)}, got {unlisted!r}")
    root = Path(root)
    path = root / labels_file
    header, rows = _read_rows(path)
    if header == LIST_HEADER:
        class_names, labels = _parse_lists(path, rows, classes, UNLISTED_LABEL[unlisted])
        from_labels = classes is None and not (path.parent / CLASSES_FILE).is_file()
    else:
        class_names, labels = _parse_columns(path, header, rows, classes)
        from_labels = False

    first_line: dict[str, int] = {}
    for line_no, row in rows:
        image = row[0].strip()
        if not image:
            raise DataFormatError(f"{path}:{line_no}: empty image name; every row needs an image")
        if image in first_line:
            raise DataFormatError(
                f"{path}:{line_no}: image {image!r} is already listed on line {first_line[image]}; "
                f"list each image once"
            )
        first_line[image] = line_no
    folders = _image_folders(root, path)
    image_paths = [_locate_image(image, folders) for image in first_line]
    lines = list(first_line.values())
    check_inside_root(image_paths, root, folders, lambda i: f"{path}:{lines[i]}",
                      allow_outside_root)
    if check_images:
        require_files(
            image_paths,
            f"{path} (images relative to {' or '.join(str(f) for f in folders)})",
            "fix the image column or the files, or pass check_images=False",
        )
    names = list(first_line)
    return MultiLabelData(
        name=root.resolve().name,
        root=root,
        class_names=class_names,
        image_paths=image_paths,
        labels=labels,
        extras={  # how the file wrote them, so that completed labels are written back alike
            "image_name": np.asarray(names, dtype=object),
            "list_format": np.full(len(names), header == LIST_HEADER),
        },
        classes_from_labels=from_labels,
    )


def _image_folders(root: Path, labels_path: Path) -> list[Path]:
    """Where image names are looked up, in order: the CSV's own folder, then ``root/images``."""
    folders = [labels_path.parent]
    if (root / "images").is_dir():
        folders.append(root / "images")
    return list(dict.fromkeys(folders))


def _locate_image(image: str, folders: list[Path]) -> Path:
    """The first of ``folder / image`` that exists (the first folder's when none does)."""
    for folder in folders:
        if (folder / image).is_file():
            return folder / image
    return folders[0] / image


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The stripped header and the non-blank rows with their line numbers."""
    if not path.is_file():
        raise DataFormatError(
            f"label file {path} not found; put labels.csv in the dataset folder or pass labels_file="
        )
    text = decode(path.read_bytes(), path)  # UTF-8 (BOM or not), else one line naming the file
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataFormatError(
                f"{path}: empty file; expected a header 'image,<class 1>,<class 2>,...' or "
                f"'image,labels' and one row per image"
            )
        rows = [(reader.line_num, row) for row in reader if row]
    if not rows:
        raise DataFormatError(f"{path}: no image rows after the header; add one row per image")
    return [h.strip() for h in header], rows


def _separator_hint(header: list[str]) -> str:
    """A hint when a one-cell header looks separated by another character than a comma."""
    if len(header) == 1:
        for mark, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "bars")):
            if mark in header[0]:
                return (f"; the file seems separated by {name}: mlrkit reads comma-separated "
                        f"files (save it as CSV with commas)")
    return ""


def _parse_columns(
    path: Path, header: list[str], rows: list[tuple[int, list[str]]], classes: Sequence[str] | None
) -> tuple[list[str], np.ndarray]:
    """Format (a): class names from the header and the ``(N, C)`` int8 cells."""
    class_names = header[1:]
    if not class_names or not all(class_names):
        raise DataFormatError(
            f"{path}:1: the header needs an image column then one non-empty name per class, got "
            f"{header}{_separator_hint(header)}"
        )
    repeated = sorted({c for c in class_names if class_names.count(c) > 1})
    if repeated:
        raise DataFormatError(f"{path}:1: class name(s) {repeated} appear twice in the header")
    if classes is not None and list(classes) != class_names:
        raise DataFormatError(
            f"{path}:1: the header's classes {class_names} differ from classes={list(classes)}"
        )
    labels = np.empty((len(rows), len(class_names)), dtype=np.int8)
    for r, (line_no, row) in enumerate(rows):
        if len(row) != len(header):
            raise DataFormatError(
                f"{path}:{line_no}: {len(row)} cells, expected {len(header)} (the image and "
                f"{len(class_names)} classes, as in the header)"
            )
        for j, cell in enumerate(row[1:]):
            value = CELL_VALUES.get(cell.strip())
            if value is None:
                raise DataFormatError(
                    f"{path}:{line_no}: column {class_names[j]!r} holds {cell!r}; allowed are "
                    f"1 (positive), 0 (negative), -1 or an empty cell (unknown)"
                )
            labels[r, j] = value
    return class_names, labels


def _parse_lists(
    path: Path, rows: list[tuple[int, list[str]]], classes: Sequence[str] | None, unlisted: int
) -> tuple[list[str], np.ndarray]:
    """Format (b): the class list and the ``(N, C)`` int8 labels (``unlisted`` off the lists)."""
    positives = []
    for line_no, row in rows:
        if len(row) != 2:
            raise DataFormatError(
                f"{path}:{line_no}: {len(row)} cells, expected 2 ('image,labels' with the class "
                f"names separated by ';')"
            )
        positives.append([name.strip() for name in row[1].split(";") if name.strip()])
    classes_file = path.parent / CLASSES_FILE
    if classes is not None:
        class_names, source = list(classes), "classes="
    elif classes_file.is_file():
        class_names, source = _read_classes_file(classes_file), str(classes_file)
    else:
        class_names, source = sorted({name for names in positives for name in names}), str(path)
    if not class_names:
        raise DataFormatError(
            f"{path}: no class names in {source}; list the classes in classes.txt next to the "
            f"label file or pass classes="
        )
    column = {name: j for j, name in enumerate(class_names)}
    labels = np.full((len(rows), len(class_names)), unlisted, dtype=np.int8)
    for r, ((line_no, _), names) in enumerate(zip(rows, positives)):
        unknown = [name for name in names if name not in column]
        if unknown:
            raise DataFormatError(
                f"{path}:{line_no}: unknown class name(s) {unknown}; known classes (from "
                f"{source}): {', '.join(class_names)}"
            )
        labels[r, [column[name] for name in names]] = POSITIVE
    return class_names, labels


def _read_classes_file(path: Path) -> list[str]:
    """Class names, one per non-blank line; a name given twice is an error."""
    names: dict[str, int] = {}
    with io.StringIO(decode(path.read_bytes(), path)) as f:
        for line_no, line in enumerate(f, start=1):
            name = line.strip()
            if name in names:
                raise DataFormatError(
                    f"{path}:{line_no}: class {name!r} already given on line {names[name]}"
                )
            if name:
                names[name] = line_no
    return list(names)
