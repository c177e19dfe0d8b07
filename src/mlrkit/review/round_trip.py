"""The two file-level steps of a review: ``mlrkit export --format label-studio`` (tasks and
labelling config from recover / predict output) and ``mlrkit import-labels`` (a Label Studio JSON
export merged into the label CSV, which is replaced atomically after a backup)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlrkit.atomic import atomic_write
from mlrkit.data.csv_edit import read_label_file, replace_keeping_backup, rewrite_cells
from mlrkit.engine.run_lock import file_lock
from mlrkit.review.label_studio import (
    Merge,
    export_tasks,
    labelling_config,
    local_files_url,
    merge_reviewed,
    prefixed_url,
    reviewed_labels,
)
from mlrkit.review.sources import read_proposal
from mlrkit.text_files import read_text


def export_label_studio(source: str | Path, out: str | Path, *, image_root: str | None = None,
                        url_prefix: str | None = None, labels: str | Path | None = None,
                        limit: int | None = None, overwrite: bool = False) -> str:
    """Write Label Studio tasks for the images of ``source`` (recover or predict output, see
    :func:`~mlrkit.review.sources.read_proposal`) to ``out`` (``.json``), least certain first, and
    their labelling config next to it (``.xml``); return a one-line summary.

    Images are referenced as Label Studio local files under ``image_root`` or as URLs starting
    with ``url_prefix`` (exactly one of the two). ``labels`` is the label CSV that ``predict``
    output is matched against. Existing files are replaced only with ``overwrite``.
    """
    out = Path(out)
    if (image_root is None) == (url_prefix is None):
        raise ValueError("give --image-root (Label Studio local files) or --url-prefix, exactly "
                         "one of the two")
    if out.suffix.lower() != ".json":
        raise ValueError(f"--out {out}: name a .json file; the labelling config goes next to it "
                         f"as {out.with_suffix('.xml').name}")
    config = out.with_suffix(".xml")
    taken = [str(p) for p in (out, config) if p.exists()]
    if taken and not overwrite:
        raise ValueError(f"--out {out}: {' and '.join(taken)} already exist; pass --overwrite to "
                         f"replace them")
    image_url = local_files_url(image_root) if image_root is not None else prefixed_url(url_prefix)
    proposal = read_proposal(source, None if labels is None else read_label_file(labels))
    tasks = export_tasks(proposal, image_url, limit)
    with atomic_write(out, "w") as f:
        json.dump(tasks, f, indent=1, ensure_ascii=False)
    with atomic_write(config, "w") as f:
        f.write(labelling_config(proposal.class_names, proposal.suspects is not None))
    if proposal.suspects is not None:
        return (f"{out}: {len(tasks):,} tasks of {len(proposal.ids):,} images with questioned "
                f"labels, most suspect first; labelling config: {config}; bring the corrections "
                f"back with 'mlrkit import-labels EXPORT --into LABELS --overwrite-conflicts'")
    first, last = tasks[0]["meta"]["margin"], tasks[-1]["meta"]["margin"]
    return (f"{out}: {len(tasks):,} tasks of {len(proposal.ids):,} images, least certain first "
            f"(margin {first:.3f} to {last:.3f}); labelling config: {config}")


@dataclass(frozen=True)
class ImportReport:
    """What :func:`import_labels` did to a label file.

    Attributes:
        path: the label CSV.
        image_names, class_names: its rows and columns.
        before: ``(N, C)`` int8 labels before the import.
        merge: the :class:`~mlrkit.review.label_studio.Merge` (``labels`` are those written).
        reviewed: number of images with a submitted annotation.
        backup: the copy of the previous file, ``None`` when nothing changed (nothing written).
        skipped: why each task left out with ``skip_unreadable`` could not be read.
    """

    path: Path
    image_names: list[str]
    class_names: list[str]
    before: np.ndarray
    merge: Merge
    reviewed: int
    backup: Path | None
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Entries changed per class, and one line per conflict."""
        changed = len(self.merge.changes)
        kept = "" if self.backup is None else f"; previous file kept as {self.backup}"
        head = (f"{self.path}: {_counted(self.reviewed, 'reviewed image', 'reviewed images')}, "
                + (f"{_counted(changed, 'entry', 'entries')} changed{kept}" if changed else
                   "no entry changed; the file is as it was"))
        skipped = [f"skipped (unreadable, its image untouched): {why}" for why in self.skipped]
        return "\n".join([head, *self._class_table(), *self._conflict_lines(), *skipped])

    def _class_table(self) -> list[str]:
        """Per class: changed entries, by kind, and conflicts kept."""
        before, after = self.before, self.merge.labels
        counts = np.stack([(before == -1) & (after == 1), (before == -1) & (after == 0),
                           (before >= 0) & (after != before)], axis=-1).sum(axis=0)
        kept = np.bincount([c for _, c, _, _ in self.merge.conflicts if not self.merge.overwritten],
                           minlength=len(self.class_names))
        width = max(5, *(len(name) for name in self.class_names))
        lines = ["class".ljust(width) + "  changed  unknown->1  unknown->0  overwritten  "
                 "conflicts kept"]
        for name, (ones, zeros, over), k in zip(self.class_names, counts, kept, strict=True):
            lines.append(f"{name:<{width}}  {ones + zeros + over:7d}  {ones:10d}  {zeros:10d}  "
                         f"{over:11d}  {k:14d}")
        return lines

    def _conflict_lines(self) -> list[str]:
        """``conflict: <image>, <class>: known K, reviewed R (...)`` per conflict."""
        fate = ("overwritten" if self.merge.overwritten else
                "kept the known value; --overwrite-conflicts takes the reviewed one")
        return [f"conflict: {self.image_names[r]}, {self.class_names[c]}: known {k}, "
                f"reviewed {v} ({fate})" for r, c, k, v in self.merge.conflicts]


def _counted(n: int, one: str, many: str) -> str:
    """``"1 entry"``, ``"3 entries"``."""
    return f"{n:,} {one if n == 1 else many}"


#: How long an import waits for another import into the same label file to finish.
IMPORT_LOCK_WAIT_S = 120.0


def import_labels(export: str | Path, into: str | Path, overwrite_conflicts: bool = False,
                  skip_unreadable: bool = False) -> ImportReport:
    """Merge the reviewed labels of the Label Studio JSON export ``export`` into the label CSV
    ``into`` (see :func:`~mlrkit.review.label_studio.merge_reviewed`); when an entry changes, the
    previous file is kept as a backup and ``into`` is replaced atomically, only the records of
    changed images rewritten."""
    export = Path(export)
    try:
        tasks = json.loads(read_text(export))
    except json.JSONDecodeError as err:
        raise ValueError(f"{export}: not JSON ({err}); give the project's JSON export") from None
    into = Path(into)
    # one import at a time per label file: read, merge and replace it under its lock, so that two
    # imports at once both land (the second waits for the first and reads its result)
    with file_lock(into.with_name(f".{into.name}.lock"), wait_s=IMPORT_LOCK_WAIT_S,
                   what=f"label file {into.name}",
                   advice="another import is still writing it; try again when it ends"):
        labels = read_label_file(into)
        skipped: list[str] | None = [] if skip_unreadable else None
        reviewed = reviewed_labels(tasks, labels.class_names, labels.image_names, str(export),
                                   str(labels.path), skipped)
        merge = merge_reviewed(labels.labels, reviewed, overwrite_conflicts)
        backup = None
        if merge.changes:
            backup = replace_keeping_backup(labels.path, rewrite_cells(labels.path, merge.changes))
    return ImportReport(labels.path, labels.image_names, labels.class_names, labels.labels, merge,
                        len(reviewed), backup, skipped or [])
