"""Change single cells of a one-column-per-class label CSV (format (a) of
:mod:`mlrkit.data.csv_labels`), leaving every other byte of the file as it was.

The file is read with :func:`~mlrkit.data.csv_labels.read_csv_labels`, so what counts as known or
unknown is exactly what every mlrkit command reads. A rewrite changes only the records (lines) that
hold a changed cell; the changed cells are written ``1`` / ``0``, the record's other cells keep
their text (quoting made minimal). The new file replaces the old one atomically, after the old one
was copied to a backup next to it that is never overwritten.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlrkit.atomic import atomic_write, naming_errors
from mlrkit.data.csv_labels import read_csv_labels
from mlrkit.data.dataset import DataFormatError


@dataclass(frozen=True)
class LabelFile:
    """A label CSV as mlrkit reads it.

    Attributes:
        path: the CSV.
        image_names: ``N`` images as the file names them (its first column).
        image_paths: ``N`` image files, located as the CSV reader locates them.
        class_names: ``C`` classes, in column order.
        labels: ``(N, C)`` int8, ``1`` / ``0`` / ``-1`` unknown.
    """

    path: Path
    image_names: list[str]
    image_paths: list[Path]
    class_names: list[str]
    labels: np.ndarray


def read_label_file(path: str | Path) -> LabelFile:
    """Read a one-column-per-class label CSV; the images need not exist.

    Raises:
        DataFormatError: the file is malformed, or in the ``image,labels`` format (which lists
            positives only and so cannot hold the unknown entries a review fills in).
    """
    path = Path(path)
    data = read_csv_labels(path.parent, path.name, check_images=False, allow_outside_root=True)
    if bool(data.extras["list_format"].all()):
        raise DataFormatError(
            f"{path}: in the 'image,labels' format, which lists positives only (no unknown "
            f"entries to fill in); write it as 'image,<class 1>,<class 2>,...' with 1 / 0 / "
            f"empty cells first"
        )
    return LabelFile(path, [str(n) for n in data.extras["image_name"]], list(data.image_paths),
                     list(data.class_names), data.labels)


def rewrite_cells(path: str | Path, changes: Mapping[tuple[int, int], int]) -> str:
    """The text of the label CSV ``path`` with ``changes`` applied: ``{(row, class): value}``,
    ``row`` counting the image rows as :func:`read_label_file` does (blank lines skipped),
    ``class`` the column after the image column. Records without a change keep their text."""
    with open(path, encoding="utf-8", newline="") as f:  # line endings as they are
        lines = list(f)
    records = _image_records(lines)
    by_row: dict[int, dict[int, int]] = {}
    for (row, c), value in changes.items():
        by_row.setdefault(row, {})[c] = int(value)
    for row, values in by_row.items():
        first, end, cells = records[row]
        for c, value in values.items():
            cells[c + 1] = str(value)
        ending = lines[end - 1][len(lines[end - 1].rstrip("\r\n")):]
        out = io.StringIO()
        csv.writer(out, lineterminator=ending).writerow(cells)
        lines[first:end] = [out.getvalue()] + [""] * (end - first - 1)  # indices stay valid
    return "".join(lines)


def _image_records(lines: list[str]) -> list[tuple[int, int, list[str]]]:
    """``(first line, end line, cells)`` of each non-blank record after the header, line indices
    into ``lines`` (end exclusive)."""
    reader = csv.reader(lines)
    records, start = [], 0
    for index, cells in enumerate(reader):
        if index > 0 and cells:
            records.append((start, reader.line_num, cells))
        start = reader.line_num
    return records


#: Where the backups of a folder's label files go, all in one place (not beside the data).
BACKUP_FOLDER = ".mlrkit-backups"


def replace_keeping_backup(path: str | Path, text: str) -> Path:
    """Copy ``path`` to a new backup in the one backup folder of its directory
    (:data:`BACKUP_FOLDER`), then atomically replace ``path`` with ``text`` (UTF-8, with the
    file's permissions). Returns the backup's path: ``<BACKUP_FOLDER>/<name>.bak-<YYYYmmddTHHMMSS>``,
    with ``-2``, ``-3``, ... added when that name is taken (an existing file is never
    overwritten)."""
    path = Path(path)
    backup = _new_backup(path, path.read_bytes())
    mode = stat.S_IMODE(path.stat().st_mode)
    with atomic_write(path, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(text.encode("utf-8"))
    return backup


def _new_backup(path: Path, content: bytes) -> Path:
    """Write ``content`` to the first free backup name of ``path`` (exclusive creation)."""
    stem = f"{path.name}.bak-{time.strftime('%Y%m%dT%H%M%S')}"
    folder = path.parent / BACKUP_FOLDER
    folder.mkdir(exist_ok=True)
    for n in itertools.count(1):
        backup = folder / (stem if n == 1 else f"{stem}-{n}")
        try:
            with naming_errors(backup), open(backup, "xb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
        except FileExistsError:
            continue
        return backup
