"""What a review starts from: the output of ``mlrkit recover`` or ``mlrkit predict``, read into one
:class:`Proposal` (known labels, the machine's labels and its probabilities, per image and class).

* ``mlrkit recover --out DIR`` writes ``DIR/recovered_long.csv``, one row per (image, class):
  ``image,class,observed,recovered,probability``; ``image`` is the image's name in the label file,
  ``observed`` is empty where unknown, ``recovered`` is the completed 1 / 0 label.
* ``mlrkit predict`` prints, per image file, its top-k classes with their probabilities, as JSON
  (``[{"image", "labels": [{"label", "score"}, ...]}, ...]``) or CSV (``image,rank,label,score``).
  It knows neither the known labels nor the image's name in a label file, so it is read together
  with that label file: each predicted image is the label file's row of the same file.
* ``mlrkit audit --out DIR`` writes ``DIR/label_issues.csv``, one row per known (image, class),
  most suspect first: ``image,class,given,probability,quality,flagged``, and
  ``DIR/class_summary.csv`` (every class). Its proposal holds the images with a flagged label, most
  suspect first, each flagged label turned over (what the model says), the flags as ``suspects``.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlrkit.data.csv_edit import LabelFile
from mlrkit.label_quality import ISSUES_FILE, ISSUES_HEADER, SUMMARY_FILE

#: Where a probability decides a class without a run's thresholds (``predict`` output).
PREDICT_THRESHOLD = 0.5
LONG_HEADER = ["image", "class", "observed", "recovered", "probability"]
PREDICT_HEADER = ["image", "rank", "label", "score"]
LONG_TABLE = "recovered_long.csv"


@dataclass(frozen=True)
class Proposal:
    """Machine labels of ``N`` images over ``C`` classes, for review.

    Attributes:
        ids: ``N`` image names as the label file names them (the key the review maps back by).
        class_names: ``C`` classes.
        observed: ``(N, C)`` int8, the known labels (``-1`` unknown).
        proposed: ``(N, C)`` int8, the machine's full label set: ``observed`` where known, its
            decision (1 / 0) where unknown, ``-1`` where unknown and unscored.
        scores: ``(N, C)`` float64 probabilities, NaN where the source gave none.
        suspects: ``(N, C)`` bool, known labels the machine questions (``mlrkit audit``), or
            ``None``; the images are then in review order already (most suspect first).
    """

    ids: list[str]
    class_names: list[str]
    observed: np.ndarray
    proposed: np.ndarray
    scores: np.ndarray
    suspects: np.ndarray | None = None


def read_proposal(path: str | Path, labels: LabelFile | None = None) -> Proposal:
    """Read ``recover`` output (its folder or ``recovered_long.csv``), or ``predict`` output
    (``.json`` or ``.csv``) with the label file ``labels`` it is matched against."""
    path = Path(path)
    if path.is_dir():
        path = path / (ISSUES_FILE if (path / ISSUES_FILE).is_file() else LONG_TABLE)
    if path.suffix.lower() == ".json":
        return _need_labels(path, labels, _read_predict_json)
    header = _csv_header(path)
    if header == LONG_HEADER:
        if labels is not None:
            raise ValueError(f"--labels {labels.path}: not needed with {path}, which holds the "
                             f"observed labels; remove --labels")
        return read_long_table(path)
    if header == PREDICT_HEADER:
        return _need_labels(path, labels, _read_predict_csv)
    if header == ISSUES_HEADER:
        if labels is not None:
            raise ValueError(f"--labels {labels.path}: not needed with {path}, which holds the "
                             f"known labels; remove --labels")
        return read_audit_table(path)
    raise ValueError(
        f"{path}: header {header} is neither recover's ({','.join(LONG_HEADER)}), audit's "
        f"({','.join(ISSUES_HEADER)}) nor predict's CSV ({','.join(PREDICT_HEADER)}); give "
        f"recover's or audit's --out folder, or 'mlrkit predict' output (.json or --format csv)"
    )


def _csv_header(path: Path) -> list[str]:
    """The stripped first row of the CSV ``path`` (empty for an empty file)."""
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [cell.strip() for cell in next(csv.reader(f), [])]


def _need_labels(path: Path, labels: LabelFile | None, read) -> Proposal:
    """``predict`` output ``path`` read by ``read(path)`` into ``{image: {class: score}}`` and
    matched against ``labels``."""
    if labels is None:
        raise ValueError(f"{path}: 'mlrkit predict' output holds neither the known labels nor "
                         f"every class; give --labels LABELS.csv, the label file the reviewed "
                         f"labels will go back into")
    return match_predictions(path, read(path), labels)


def read_long_table(path: Path) -> Proposal:
    """``recovered_long.csv``: every (image, class) once; images and classes in file order."""
    cells: dict[tuple[str, str], tuple[int, int, float]] = {}
    images: dict[str, None] = {}
    classes: dict[str, None] = {}
    for where, row in _data_rows(path, LONG_HEADER, "; give the file recover wrote"):
        image, name = row[0].strip(), row[1].strip()
        if (image, name) in cells:
            raise ValueError(f"{where}: image {image!r} class {name!r} listed twice; give "
                             f"the file recover wrote")
        cells[image, name] = _long_cells(where, row[2:])
        images[image], classes[name] = None, None
    return _proposal_of(path, list(images), list(classes), cells)


def read_audit_table(path: Path) -> Proposal:
    """``label_issues.csv`` of ``mlrkit audit`` (with ``class_summary.csv`` beside it, for the
    class list): the images with a flagged label, in the file's order (most suspect first)."""
    summary = path.parent / SUMMARY_FILE
    if not summary.is_file():
        raise ValueError(f"{path}: {summary.name} is not beside it (the class list); give the "
                         f"folder 'mlrkit audit --out' wrote")
    classes = [row[0].strip() for _, row in _data_rows(summary, _csv_header(summary))]
    column = {name: c for c, name in enumerate(classes)}
    cells: dict[str, list[tuple[int, int, float, bool]]] = {}
    for where, row in _data_rows(path, ISSUES_HEADER, "; give the file audit wrote"):
        image, name, given = row[0].strip(), row[1].strip(), row[2].strip()
        if name not in column or given not in ("0", "1") or row[5].strip() not in ("0", "1"):
            raise ValueError(f"{where}: class {name!r}, given {given!r}, flagged {row[5]!r}; "
                             f"the class must be in {summary.name}, given and flagged 1 or 0")
        cells.setdefault(image, []).append((column[name], int(given),
                                            _probability(where, row[3]), row[5].strip() == "1"))
    ids = [image for image, entries in cells.items() if any(e[3] for e in entries)]
    if not ids:
        raise ValueError(f"{path}: no flagged label; nothing to review")
    observed = np.full((len(ids), len(classes)), -1, dtype=np.int8)
    scores = np.full(observed.shape, np.nan)
    suspects = np.zeros(observed.shape, dtype=bool)
    for i, image in enumerate(ids):
        for c, given, probability, flagged in cells[image]:
            observed[i, c], scores[i, c], suspects[i, c] = given, probability, flagged
    proposed = np.where(suspects, 1 - observed, observed).astype(np.int8)
    return Proposal(ids, classes, observed, proposed, scores, suspects)


def _long_cells(where: str, cells: list[str]) -> tuple[int, int, float]:
    """``(observed, recovered, probability)`` of one long-table row."""
    observed, recovered, probability = (cell.strip() for cell in cells)
    if observed not in ("", "0", "1") or recovered not in ("0", "1"):
        raise ValueError(f"{where}: observed {observed!r}, recovered {recovered!r}; observed is "
                         f"1, 0 or empty (unknown), recovered 1 or 0")
    return -1 if observed == "" else int(observed), int(recovered), _probability(where, probability)


def _probability(where: str, text: object) -> float:
    """``text`` as a probability in [0, 1]."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{where}: score {text!r} is not a probability in [0, 1]; give "
                         f"'mlrkit recover' or 'mlrkit predict' output ('mlrkit tag' scores are "
                         f"cosines)")
    return value


def _proposal_of(path: Path, images: list[str], classes: list[str],
                 cells: dict[tuple[str, str], tuple[int, int, float]]) -> Proposal:
    """The long table's cells as a :class:`Proposal`; every (image, class) must be present."""
    if not cells:
        raise ValueError(f"{path}: no rows after the header; give the file recover wrote")
    missing = len(images) * len(classes) - len(cells)
    if missing:
        first = next((i, c) for i in images for c in classes if (i, c) not in cells)
        raise ValueError(f"{path}: {missing} (image, class) rows missing, e.g. image {first[0]!r} "
                         f"class {first[1]!r}; give the complete file recover wrote")
    table = np.array([[cells[i, c] for c in classes] for i in images], dtype=np.float64)
    return Proposal(images, classes, table[..., 0].astype(np.int8), table[..., 1].astype(np.int8),
                    table[..., 2])


def _read_predict_json(path: Path) -> dict[str, dict[str, float]]:
    """``{image: {class: score}}`` of ``mlrkit predict`` JSON output."""
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
        pairs = [(item["image"], [(e["label"], e["score"]) for e in item["labels"]])
                 for item in items]
    except (json.JSONDecodeError, TypeError, KeyError) as err:
        raise ValueError(f"{path}: not 'mlrkit predict' JSON output ({type(err).__name__}: "
                         f"{err}); give the file 'mlrkit predict --format json' printed") from None
    scores: dict[str, dict[str, float]] = {}
    for k, (image, entries) in enumerate(pairs):
        where = f"{path}: entry {k + 1} ({image})"
        if image in scores:
            raise ValueError(f"{where}: image listed twice; predict each image once")
        scores[image] = {label: _probability(where, s) for label, s in entries}
    return scores


def _data_rows(path: Path, header: list[str], advice: str = "") -> Iterator[tuple[str, list[str]]]:
    """``(where, cells)`` of each non-empty row after the header of a CSV written by mlrkit,
    ``where`` being ``file:line``; a row with another number of cells than ``header`` is an
    error (``advice`` ends its message)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            if not row:
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) != len(header):
                raise ValueError(f"{where}: {len(row)} cells, expected {len(header)} "
                                 f"({','.join(header)}){advice}")
            yield where, row


def _read_predict_csv(path: Path) -> dict[str, dict[str, float]]:
    """``{image: {class: score}}`` of ``mlrkit predict --format csv`` output."""
    scores: dict[str, dict[str, float]] = {}
    for where, row in _data_rows(path, PREDICT_HEADER):
        image, label = row[0], row[2].strip()
        if label in scores.setdefault(image, {}):
            raise ValueError(f"{where}: image {image!r} class {label!r} listed twice; "
                             f"predict each image once")
        scores[image][label] = _probability(where, row[3])
    return scores


def match_predictions(path: Path, predicted: dict[str, dict[str, float]],
                      labels: LabelFile) -> Proposal:
    """Predicted ``{image: {class: score}}`` as a :class:`Proposal` over the rows of ``labels``:
    an image is the row whose file is the same file (symlinks resolved), else the row the label
    file names exactly so. Unknown entries with a score become ``score >= 0.5``."""
    if not predicted:
        raise ValueError(f"{path}: no predicted images; give 'mlrkit predict' output")
    by_file = {os.path.realpath(p): r for r, p in enumerate(labels.image_paths)}
    by_name = {name: r for r, name in enumerate(labels.image_names)}
    column = {name: c for c, name in enumerate(labels.class_names)}
    index, scores = [], np.full((len(predicted), len(column)), np.nan)
    for k, (image, entries) in enumerate(predicted.items()):
        row = by_file.get(os.path.realpath(image), by_name.get(image))
        if row is None:
            raise ValueError(f"{path}: image {image!r} is not in {labels.path}; predict images "
                             f"of the label file (run export from the folder predict ran in)")
        for label, score in entries.items():
            if label not in column:
                raise ValueError(f"{path}: image {image!r}: class {label!r} is not a column of "
                                 f"{labels.path}; predict with a run of the label file's classes")
            scores[k, column[label]] = score
        index.append(row)
    if len(set(index)) != len(index):
        raise ValueError(f"{path}: two predicted images are the same row of {labels.path}; "
                         f"predict each image once")
    observed = labels.labels[index]
    decided = np.where(np.isnan(scores), -1, scores >= PREDICT_THRESHOLD).astype(np.int8)
    proposed = np.where(observed >= 0, observed, decided).astype(np.int8)
    return Proposal([labels.image_names[i] for i in index], list(labels.class_names), observed,
                    proposed, scores)

