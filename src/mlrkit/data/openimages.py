"""OpenImages image-level labels, read into a sparse label store (:mod:`mlrkit.data.sparse_labels`).

The public files (OpenImages V6/V7, ``storage.googleapis.com/openimages``)::

    oidv6-train-annotations-human-imagelabels.csv   ImageID,Source,LabelName,Confidence
    oidv6-class-descriptions.csv                     LabelName,DisplayName   (MID -> name)

Each row is one verified label: ``Confidence`` 1 says the class is in the photo, 0 that it is
not; a class without a row for a photo is unknown. These are partial labels as they come: about
9M photos, 9,600 trainable classes, a few known labels per photo. The class descriptions file may
have the header ``LabelName,DisplayName`` (V6+) or none (V4/V5, two columns).

Rows are streamed (no pandas, one row in memory at a time). A repeated (photo, class) row with the
same confidence (a label verified by two sources) counts once and is reported in
:attr:`OpenImagesLabels.repeated_rows`; with a different confidence it is an error naming both
lines. A label name missing from the descriptions, or a confidence other than 0 / 1, is an error
naming the file and line.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlrkit.data.files import DataFormatError
from mlrkit.data.sparse_labels import SparseLabels

LABEL_HEADER = ["ImageID", "Source", "LabelName", "Confidence"]


@dataclass(frozen=True)
class OpenImagesLabels:
    """Image-level labels of OpenImages: ``labels`` ``(N, C)`` known entries, the photos' IDs in
    row order (first appearance), the classes' MIDs and display names in column order (the
    descriptions file's order), and how many repeated rows were counted once."""

    labels: SparseLabels
    image_ids: list[str]
    class_ids: list[str]
    class_names: list[str]
    repeated_rows: int


def read_class_descriptions(path: str | Path) -> tuple[list[str], list[str]]:
    """MIDs and display names, in file order, from ``LabelName,DisplayName`` rows (header
    optional)."""
    path = Path(path)
    mids, names = [], []
    with open(path, newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if line_no == 1 and row == ["LabelName", "DisplayName"]:
                continue
            if len(row) != 2 or not row[0]:
                raise DataFormatError(f"{path}:{line_no}: expected 'LabelName,DisplayName' (a MID "
                                      f"and a name), got {row}")
            mids.append(row[0])
            names.append(row[1])
    if len(set(mids)) != len(mids):
        raise DataFormatError(f"{path}: a label name is listed twice; each MID once")
    return mids, names


def read_openimages(labels_csv: str | Path, descriptions_csv: str | Path) -> OpenImagesLabels:
    """The image-level labels of ``labels_csv`` over the classes of ``descriptions_csv``."""
    labels_csv = Path(labels_csv)
    class_ids, class_names = read_class_descriptions(descriptions_csv)
    column = {mid: i for i, mid in enumerate(class_ids)}
    image_index: dict[str, int] = {}
    images, classes, values, lines = [], [], [], []
    with open(labels_csv, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != LABEL_HEADER:
            raise DataFormatError(f"{labels_csv}:1: header {header}; OpenImages image-level "
                                  f"labels start with {','.join(LABEL_HEADER)}")
        for line_no, row in enumerate(reader, start=2):
            if len(row) != 4:
                raise DataFormatError(f"{labels_csv}:{line_no}: {len(row)} fields, expected 4 "
                                      f"({','.join(LABEL_HEADER)})")
            image_id, _, mid, confidence = row
            if mid not in column:
                raise DataFormatError(f"{labels_csv}:{line_no}: label {mid!r} is not in "
                                      f"{descriptions_csv}; give the class descriptions of the "
                                      f"same OpenImages version")
            if confidence not in ("0", "1"):
                raise DataFormatError(f"{labels_csv}:{line_no}: confidence {confidence!r}; "
                                      f"verified labels are 1 (present) or 0 (absent)")
            images.append(image_index.setdefault(image_id, len(image_index)))
            classes.append(column[mid])
            values.append(int(confidence))
            lines.append(line_no)
    images_a, classes_a = np.asarray(images, dtype=np.int64), np.asarray(classes, dtype=np.int64)
    values_a, kept = np.asarray(values, dtype=np.int8), _first_of_repeats(
        images_a, classes_a, np.asarray(values, dtype=np.int8), np.asarray(lines), labels_csv,
        len(class_ids))
    store = SparseLabels.from_entries(images_a[kept], classes_a[kept], values_a[kept],
                                      num_images=len(image_index), num_classes=len(class_ids))
    return OpenImagesLabels(store, list(image_index), class_ids, class_names,
                            len(images_a) - int(kept.sum()))


def _first_of_repeats(images: np.ndarray, classes: np.ndarray, values: np.ndarray,
                      lines: np.ndarray, path: Path, num_classes: int) -> np.ndarray:
    """``(rows,)`` bool: the first row of each (photo, class); a repeat that disagrees is an
    error naming both lines."""
    key = images * num_classes + classes
    order = np.argsort(key, kind="stable")
    same = np.flatnonzero(key[order][1:] == key[order][:-1])
    conflict = same[values[order][same] != values[order][same + 1]]
    if len(conflict):
        first, second = lines[order][conflict[0]], lines[order][conflict[0] + 1]
        raise DataFormatError(f"{path}:{second}: the same photo and label as line {first} with "
                              f"the other confidence; keep one of the two rows")
    kept = np.ones(len(key), dtype=bool)
    kept[order[same + 1]] = False
    return kept
