"""Labels that keep only the known entries: the store for collections too large for a dense
``(N, C)`` int8 matrix (OpenImages: ~9M photos x 9,600 classes, a few known labels per photo).

:class:`SparseLabels` is compressed sparse rows: image ``i``'s known entries are
``classes[indptr[i]:indptr[i + 1]]`` (class indices, ascending) with ``values`` (1 positive, 0
negative); every other entry is unknown (``-1`` in the dense convention). It converts to and from
the dense matrix exactly, hands out dense rows a batch at a time (:meth:`SparseLabels.rows`,
what losses need), and saves to / loads from a folder of ``.npy`` files that are memory-mapped on
load, so a process reads only the rows it touches::

    labels = SparseLabels.from_entries(image, klass, value, num_images=N, num_classes=C)
    labels.save("store/")                      # indptr.npy, classes.npy, values.npy, meta.json
    labels = SparseLabels.load("store/")       # memory-mapped
    batch = labels.rows(np.arange(256))        # (256, C) int8, -1 where unknown

Memory: ``12 + 5 x known entries`` bytes plus 8 per image, against ``N x C`` dense.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlrkit.atomic import atomic_write

FORMAT = 1
FILES = ("indptr", "classes", "values")


@dataclass(frozen=True)
class SparseLabels:
    """Known entries of an ``(N, C)`` label matrix in compressed sparse rows (module docstring).

    Attributes:
        indptr: ``(N + 1,)`` int64, row ``i``'s entries are ``[indptr[i], indptr[i + 1])``.
        classes: ``(nnz,)`` int32 class indices, ascending within a row.
        values: ``(nnz,)`` int8, 1 positive or 0 negative.
        num_classes: ``C``.
    """

    indptr: np.ndarray
    classes: np.ndarray
    values: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        if self.indptr.ndim != 1 or len(self.indptr) < 1 or self.indptr[0] != 0:
            raise ValueError("indptr must be (N + 1,) starting at 0")
        if self.indptr[-1] != len(self.classes) or len(self.classes) != len(self.values):
            raise ValueError(f"indptr ends at {self.indptr[-1]} but there are {len(self.classes)} "
                             f"classes and {len(self.values)} values")

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.indptr) - 1, self.num_classes

    @property
    def nnz(self) -> int:
        """Number of known entries."""
        return len(self.classes)

    def __repr__(self) -> str:
        n, c = self.shape
        return f"SparseLabels({n} images x {c} classes, {self.nnz} known)"

    @classmethod
    def from_dense(cls, labels: np.ndarray) -> SparseLabels:
        """The known entries (``>= 0``) of an ``(N, C)`` int8 matrix."""
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"labels must be (N, C), got shape {labels.shape}")
        rows, columns = np.nonzero(labels >= 0)
        counts = np.bincount(rows, minlength=labels.shape[0])
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(indptr, columns.astype(np.int32), labels[rows, columns].astype(np.int8),
                   labels.shape[1])

    @classmethod
    def from_entries(cls, images: np.ndarray, classes: np.ndarray, values: np.ndarray, *,
                     num_images: int, num_classes: int) -> SparseLabels:
        """From known entries in any order (``(nnz,)`` image index, class index, 1/0 value).

        Raises:
            ValueError: an index out of range, a value other than 0 / 1, or one entry given
                twice (the first repeated one named; a repeat with the same value too: nothing
                is merged silently).
        """
        images, classes = np.asarray(images, dtype=np.int64), np.asarray(classes, dtype=np.int64)
        values = np.asarray(values)
        if not len(images) == len(classes) == len(values):
            raise ValueError(f"{len(images)} image indices, {len(classes)} class indices and "
                             f"{len(values)} values: give one of each per entry")
        for name, index, bound in (("image", images, num_images), ("class", classes, num_classes)):
            bad = np.flatnonzero((index < 0) | (index >= bound))
            if len(bad):
                raise ValueError(f"entry {bad[0]}: {name} index {index[bad[0]]} outside 0 .. "
                                 f"{bound - 1}")
        bad = np.flatnonzero((values != 0) & (values != 1))
        if len(bad):
            raise ValueError(f"entry {bad[0]}: value {values[bad[0]]}; known entries are 1 "
                             f"(positive) or 0 (negative)")
        key = images * num_classes + classes
        order = np.argsort(key, kind="stable")
        key = key[order]
        repeated = np.flatnonzero(key[1:] == key[:-1])
        if len(repeated):
            first = order[repeated[0] + 1]
            raise ValueError(f"entry {first}: image {images[first]}, class {classes[first]} "
                             f"is given twice; give each known entry once")
        counts = np.bincount(images, minlength=num_images)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(indptr, (key % num_classes).astype(np.int32),
                   values[order].astype(np.int8), num_classes)

    def rows(self, index: np.ndarray) -> np.ndarray:
        """Dense ``(B, C)`` int8 rows ``index`` (-1 where unknown)."""
        index = np.asarray(index, dtype=np.int64)
        out = np.full((len(index), self.num_classes), -1, dtype=np.int8)
        starts, stops = self.indptr[index], self.indptr[index + 1]
        lengths = stops - starts
        positions = entry_positions(starts, lengths)
        out[np.repeat(np.arange(len(index)), lengths), self.classes[positions]] = \
            self.values[positions]
        return out

    def to_dense(self) -> np.ndarray:
        """The ``(N, C)`` int8 matrix (small data only)."""
        return self.rows(np.arange(self.shape[0]))

    def save(self, folder: str | Path) -> Path:
        """Write the store into ``folder`` (each file atomically, ``meta.json`` last)."""
        folder = Path(folder)
        for name in FILES:
            with atomic_write(folder / f"{name}.npy", "wb") as f:
                np.save(f, getattr(self, name))
        with atomic_write(folder / "meta.json", "w") as f:
            json.dump({"format": FORMAT, "num_images": self.shape[0],
                       "num_classes": self.num_classes, "known": self.nnz}, f)
        return folder

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True) -> SparseLabels:
        """A store written by :meth:`save`, memory-mapped unless ``mmap=False``."""
        folder = Path(folder)
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder} holds no sparse label store (no meta.json); write "
                                    f"one with SparseLabels.save")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {meta.get('format')}, this mlrkit reads "
                             f"{FORMAT}")
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r" if mmap else None,
                                allow_pickle=False) for name in FILES}
        labels = cls(**arrays, num_classes=int(meta["num_classes"]))
        if labels.shape[0] != meta["num_images"]:
            raise ValueError(f"{folder}: indptr has {labels.shape[0]} images, meta.json says "
                             f"{meta['num_images']}; the store is damaged: write it again")
        return labels


def entry_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenated ranges ``[start, start + length)`` as one int64 array."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return offsets + np.arange(total, dtype=np.int64)
