"""Label Studio's side of a review: tasks with pre-annotations from a :class:`Proposal`, their
labelling config, and the reviewed labels of a Label Studio JSON export merged into known labels.

Plain JSON and XML: nothing here needs Label Studio or its SDK installed.

Review order. An image's *margin* is the smallest ``|p - 0.5|`` over its unknown entries that have
a probability ``p`` (0.5 when it has none: nothing machine-made to doubt), to 6 decimals; images
are exported by increasing margin, ties in label-file order, so the least certain image is the first task. A
prediction's ``score`` is ``2 x margin`` (0: some entry at p = 0.5; 1: every unknown entry at 0
or 1), which Label Studio can sort by.

Reviewed labels. An annotation states all classes of its image: the chosen classes are 1, every
other class 0. Of an image's annotations the latest submitted one counts (``updated_at``, else
``created_at``, ties by annotation id); cancelled (skipped) annotations and drafts do not count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from mlrkit.data.dataset import DataFormatError
from mlrkit.review.sources import Proposal

FROM_NAME, TO_NAME = "labels", "image"
#: Label Studio result types that carry a reviewer's note or score, not class labels: ignored.
#: Any other type than ``choices`` (a typo such as ``Choices``, a region control) is an error.
NOTE_RESULT_TYPES = ("textarea", "rating", "number", "datetime")
ID_FIELD = "image_id"
SUSPECT_FIELD = "suspect_labels"
MODEL_VERSION = "mlrkit"
LOCAL_FILES = "/data/local-files/?d="
NO_TIME = datetime.min.replace(tzinfo=UTC)


def labelling_config(class_names: Sequence[str], suspects: bool = False) -> str:
    """The labelling config of the exported tasks: the image and one multiple-choice question
    over ``class_names``; with ``suspects``, the task's questioned labels shown above it."""
    choices = "".join(f"    <Choice value={quoteattr(name)}/>\n" for name in class_names)
    shown = (f'  <Header value="Questioned labels (given -> proposed)"/>\n'
             f'  <Text name="{SUSPECT_FIELD}" value="${SUSPECT_FIELD}"/>\n') if suspects else ""
    return (f'<View>\n  <Image name="{TO_NAME}" value="${TO_NAME}"/>\n{shown}'
            f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="multiple">\n'
            f"{choices}  </Choices>\n</View>\n")


def margins(proposal: Proposal) -> np.ndarray:
    """``(N,)`` per image: the smallest ``|p - 0.5|`` over its unknown, scored entries; 0.5 when
    it has none. Rounded to 6 decimals, the precision recover and predict write probabilities
    with, so that ``p = 0.55`` and ``p = 0.45`` tie as their printed margins do."""
    doubtful = (proposal.observed < 0) & ~np.isnan(proposal.scores)
    distance = np.where(doubtful, np.abs(np.nan_to_num(proposal.scores) - 0.5), 0.5)
    return distance.min(axis=1).round(6)


def review_order(proposal: Proposal) -> np.ndarray:
    """Image indices by increasing :func:`margins` (least certain first), ties in file order;
    an audit's proposal (with ``suspects``) is in review order already."""
    if proposal.suspects is not None:
        return np.arange(len(proposal.ids))
    return np.argsort(margins(proposal), kind="stable")


def export_tasks(proposal: Proposal, image_url: Callable[[str], str],
                 limit: int | None = None) -> list[dict]:
    """Label Studio tasks, least certain image first (the first ``limit`` only, when given).

    Each task's ``data`` holds ``image`` (``image_url(id)``), ``image_id`` (the image's name in
    the label file), ``known_positive`` and ``known_negative`` (class names); its ``meta`` the
    ``margin`` and the per-class ``scores``; its one prediction the proposed positives (known
    positives and machine-decided ones) as a ``choices`` result with ``score`` ``2 x margin``.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"--limit is {limit}; give at least 1, the number of tasks to export")
    margin = margins(proposal)
    return [_task(proposal, int(i), float(margin[i]), image_url)
            for i in review_order(proposal)[:limit]]


def _task(proposal: Proposal, i: int, margin: float, image_url: Callable[[str], str]) -> dict:
    """The task of image ``i``."""
    names, image_id = proposal.class_names, proposal.ids[i]

    def named(values: np.ndarray, value: int) -> list[str]:
        return [name for name, v in zip(names, values, strict=True) if v == value]

    chosen = named(proposal.proposed[i], 1)
    result = [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
               "value": {"choices": chosen}}] if chosen else []
    scores = {name: round(float(p), 6) for name, p in zip(names, proposal.scores[i], strict=True)
              if not math.isnan(p)}
    data = {TO_NAME: image_url(image_id), ID_FIELD: image_id,
            "known_positive": named(proposal.observed[i], 1),
            "known_negative": named(proposal.observed[i], 0)}
    if proposal.suspects is not None:
        data[SUSPECT_FIELD] = "; ".join(
            f"{names[c]}: {proposal.observed[i, c]} -> {proposal.proposed[i, c]} "
            f"(p = {proposal.scores[i, c]:.3f})" for c in np.flatnonzero(proposal.suspects[i]))
    return {
        "data": data,
        "meta": {"margin": margin, "scores": scores},
        "predictions": [{"model_version": MODEL_VERSION, "score": round(2 * margin, 6),
                         "result": result}],
    }


def local_files_url(image_root: str) -> Callable[[str], str]:
    """Image names to Label Studio local-files URLs, ``/data/local-files/?d=<root>/<name>``;
    ``image_root`` is the images' folder relative to Label Studio's
    ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``."""
    root = PurePosixPath(image_root)
    if root.is_absolute() or ".." in root.parts:
        raise ValueError(f"--image-root {image_root}: give the image folder relative to Label "
                         f"Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (no leading / or ..)")
    return lambda name: LOCAL_FILES + quote(str(root / name))


def prefixed_url(prefix: str) -> Callable[[str], str]:
    """Image names to URLs: ``prefix`` + the URL-quoted name."""
    if not prefix.endswith(("/", "=")):
        raise ValueError(f"--url-prefix {prefix}: end it with '/' (or '=' for a query "
                         f"parameter); the image names are appended to it")
    return lambda name: prefix + quote(name)


def reviewed_labels(export: object, class_names: Sequence[str], ids: Sequence[str],
                    source: str = "export", target: str = "the label file",
                    skipped: list[str] | None = None) -> dict[int, np.ndarray]:
    """``{row: (C,) int8}`` of each image with a submitted annotation in a Label Studio JSON
    export (the chosen classes 1, the others 0); ``row`` indexes ``ids``, the images' names in
    the label file of ``class_names``. ``source`` and ``target`` name the export and the label
    file in errors.

    With ``skipped`` (a list), a task that cannot be read (an unknown image or class, an
    annotation without result, ...) is described there and left out: its image keeps its labels.

    Raises:
        DataFormatError: the export is not a JSON task list, or (without ``skipped``) a task
            cannot be read (naming the task and the value), or two tasks review one image
            differently.
    """
    if not isinstance(export, list):
        raise DataFormatError(f"{source}: not a Label Studio JSON export (a list of tasks); "
                              f"export the project as JSON (exportType=JSON), not JSON_MIN or CSV")
    row_of = {name: r for r, name in enumerate(ids)}
    column = {name: c for c, name in enumerate(class_names)}
    latest: dict[int, tuple[tuple[datetime, int], np.ndarray]] = {}
    task_of: dict[int, tuple[str, np.ndarray]] = {}  # row -> (task, its latest labels)
    for task in export:
        try:
            where, row, chosen = _task_review(task, row_of, column, source, target)
        except DataFormatError as err:
            if skipped is None:
                raise
            skipped.append(str(err))
            continue
        if chosen is None:
            continue
        if row in task_of and not np.array_equal(task_of[row][1], chosen[1]):
            raise DataFormatError(f"{where} and {task_of[row][0]} review the same image "
                                  f"{ids[row]!r} differently; keep one of the two tasks (delete "
                                  f"the other in Label Studio) and export again")
        task_of[row] = (where, chosen[1])
        if row not in latest or chosen[0] >= latest[row][0]:
            latest[row] = chosen
    return {row: labels for row, (_, labels) in latest.items()}


def _task_review(task: object, row_of: dict[str, int], column: dict[str, int], source: str,
                 target: str) -> tuple[str, int, tuple[tuple[datetime, int], np.ndarray] | None]:
    """A task's name, label-file row and latest submitted review (``None``: none submitted)."""
    where, row = _task_row(task, row_of, source, target)
    chosen = None
    for annotation in _submitted(task, where):
        when = _annotation_time(annotation, where)
        labels = _annotation_labels(annotation, column, where, target)
        if chosen is None or when >= chosen[0]:
            chosen = (when, labels)
    return where, row, chosen


def _task_row(task: object, row_of: dict[str, int], source: str,
              target: str) -> tuple[str, int]:
    """``"<source>: task <id>"`` and the label-file row of a task's ``data.image_id``."""
    where = f"{source}: task {task.get('id', '?')}" if isinstance(task, dict) else source
    data = task.get("data") if isinstance(task, dict) else None
    image_id = data.get(ID_FIELD) if isinstance(data, dict) else None
    if image_id is None:
        raise DataFormatError(f"{where}: no data.{ID_FIELD}; review tasks made by 'mlrkit "
                              f"export --format label-studio'")
    if image_id not in row_of:
        raise DataFormatError(f"{where}: {ID_FIELD} {image_id!r} is not an image of {target}; "
                              f"import into the label file the tasks were exported from")
    return where, row_of[image_id]


def _submitted(task: dict, where: str) -> list[dict]:
    """The task's annotations that were not cancelled."""
    annotations = task.get("annotations", [])
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        raise DataFormatError(f"{where}: annotations is not a list of annotations; give a "
                              f"Label Studio JSON export")
    for annotation in annotations:
        if not isinstance(annotation.get("was_cancelled", False), bool):
            raise DataFormatError(f"{where}: annotation {annotation.get('id')}: was_cancelled is "
                                  f"{annotation['was_cancelled']!r}, not true or false; give the "
                                  f"export as Label Studio wrote it")
    return [a for a in annotations if not a.get("was_cancelled", False)]


def _annotation_time(annotation: dict, where: str) -> tuple[datetime, int]:
    """When an annotation was last saved (``updated_at``, else ``created_at``), and its id."""
    text = annotation.get("updated_at") or annotation.get("created_at")
    try:
        when = NO_TIME if text is None else datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise DataFormatError(f"{where}: annotation {annotation.get('id')}: time {text!r} is "
                              f"not ISO 8601; give a Label Studio JSON export") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)), int(annotation.get("id") or 0)


def _annotation_labels(annotation: dict, column: dict[str, int], where: str,
                       target: str) -> np.ndarray:
    """``(C,)`` int8: 1 for the classes the annotation's ``choices`` results chose, 0 else."""
    labels = np.zeros(len(column), dtype=np.int8)
    if "result" not in annotation:
        raise DataFormatError(f"{where}: annotation {annotation.get('id')} has no result; give "
                              f"the export as Label Studio wrote it (an empty result: no class)")
    results = annotation["result"]
    for result in results if isinstance(results, list) else [results]:
        kind = result.get("type") if isinstance(result, dict) else None
        if kind in NOTE_RESULT_TYPES:
            continue  # a reviewer's note or score: no class labels
        if kind != "choices":
            raise DataFormatError(f"{where}: annotation {annotation.get('id')}: a result of type "
                                  f"{kind!r}, which carries no choices mlrkit can read; label "
                                  f"with the config mlrkit exported (one Choices control named "
                                  f"{FROM_NAME!r}; notes such as textarea are ignored)")
        if result.get("from_name") != FROM_NAME:
            raise DataFormatError(f"{where}: a choices result of control "
                                  f"{result.get('from_name')!r}, not {FROM_NAME!r}; label with "
                                  f"the config mlrkit exported")
        value = result.get("value")
        choices = value.get("choices") if isinstance(value, dict) else None
        if not isinstance(choices, list):
            raise DataFormatError(f"{where}: a choices result without value.choices; give a "
                                  f"Label Studio JSON export")
        for name in choices:
            if name not in column:
                raise DataFormatError(f"{where}: class {name!r} is not a column of {target} "
                                      f"({', '.join(column)}); label with the config mlrkit "
                                      f"exported")
            labels[column[name]] = 1
    return labels


@dataclass(frozen=True)
class Merge:
    """Reviewed labels merged into known ones.

    Attributes:
        labels: ``(N, C)`` int8 after the merge.
        changes: ``{(row, class): new value}`` of the entries that changed.
        conflicts: ``(row, class, known, reviewed)`` where a review contradicts a known label;
            kept unless ``overwritten``.
        overwritten: whether conflicts took the reviewed value.
    """

    labels: np.ndarray
    changes: dict[tuple[int, int], int]
    conflicts: list[tuple[int, int, int, int]]
    overwritten: bool


def merge_reviewed(labels: np.ndarray, reviewed: dict[int, np.ndarray],
                   overwrite_conflicts: bool = False) -> Merge:
    """Merge ``{row: (C,) reviewed labels}`` into ``(N, C)`` ``labels``: unknown entries take the
    reviewed value; a known entry the review contradicts is a conflict and keeps its value unless
    ``overwrite_conflicts``; rows without a review stay as they are."""
    merged = labels.copy()
    conflicts = []
    for row in sorted(reviewed):
        known, review = labels[row], reviewed[row]
        clash = (known >= 0) & (known != review)
        conflicts += [(row, int(c), int(known[c]), int(review[c])) for c in np.flatnonzero(clash)]
        take = (known < 0) | (clash & overwrite_conflicts)
        merged[row, take] = review[take]
    rows, cols = np.nonzero(merged != labels)
    changes = {(int(r), int(c)): int(merged[r, c]) for r, c in zip(rows, cols, strict=True)}
    return Merge(merged, changes, conflicts, overwrite_conflicts)
