"""The one object every dataset reader returns, and the reader registry.

A :class:`MultiLabelData` holds class names, image paths and an ``int8`` label matrix of shape
``(N, C)`` with the mlrkit convention ``1`` positive, ``0`` negative, ``-1`` unknown. Readers convert
other conventions at the edge (HCP-MLR-PL's 1/-1/0, COCO instance lists, VOC XML) so that nothing
downstream ever sees them.
"""

from __future__ import annotations

import csv
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mlrkit.data.files import DataFormatError
from mlrkit.registry import Registry

POSITIVE, NEGATIVE, UNKNOWN = 1, 0, -1
LABEL_VALUES = (UNKNOWN, NEGATIVE, POSITIVE)

#: Split names a ``split.csv`` may use without ``extra_splits=``: those of the recipes
#: (``data.train_split`` / ``val_split`` / ``test_split``), of the official dataset splits and of
#: :func:`~mlrkit.data.splits.holdout_split`. Anything else is refused, so that a typo such as
#: ``Val`` does not silently become a split that no recipe uses.
STANDARD_SPLITS = ("train", "val", "test", "trainval", "holdout")
@dataclass(frozen=True)
class MultiLabelData:
    """Images with a multi-label annotation.

    Attributes:
        name: dataset name, e.g. ``"voc2007"``.
        root: folder the dataset was read from.
        class_names: ``C`` class names, in label-column order.
        image_paths: ``N`` image paths (absolute, or relative to the working directory).
        labels: ``(N, C)`` ``int8`` matrix, ``1`` positive, ``0`` negative, ``-1`` unknown.
        splits: ``(N,)`` array of split names (``"train"``, ``"val"``, ``"test"``, ...) or ``None``.
        extras: reader-specific ``(N, ...)`` arrays, e.g. ``"difficult"``: ``(N, C)`` bool for VOC.
        class_groups: named lists of class indices, e.g. NUS-WIDE's ``"concepts81"``.
        classes_from_labels: the class list was collected from the label file itself (no class
            list was given), so a misspelt name in it became a class of its own.
    """

    name: str
    root: Path
    class_names: list[str]
    image_paths: list[Path]
    labels: np.ndarray
    splits: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    class_groups: dict[str, np.ndarray] = field(default_factory=dict)
    classes_from_labels: bool = False

    def __repr__(self) -> str:
        splits = "" if self.splits is None else ", splits={" + ", ".join(
            f"{name}: {int((self.splits == name).sum())}" for name in self.split_names()) + "}"
        known = float((self.labels >= 0).mean()) if self.labels.size else 1.0
        return (f"MultiLabelData(name={self.name!r}, images={self.num_images}, "
                f"classes={self.num_classes}{splits}, known={known:.1%})")

    def __post_init__(self) -> None:
        labels = self.labels
        where = f"dataset {self.name!r} at {self.root}"
        if not isinstance(labels, np.ndarray) or labels.dtype != np.int8 or labels.ndim != 2:
            raise DataFormatError(
                f"{where}: labels must be an int8 array of shape (N, C), got "
                f"{getattr(labels, 'dtype', type(labels))} {getattr(labels, 'shape', '')}"
            )
        n, c = labels.shape
        if c != len(self.class_names):
            raise DataFormatError(
                f"{where}: label matrix has {c} columns but {len(self.class_names)} class names"
            )
        if len(set(self.class_names)) != c:
            dup = sorted({x for x in self.class_names if self.class_names.count(x) > 1})
            raise DataFormatError(f"{where}: duplicate class names {dup}")
        if len(self.image_paths) != n:
            raise DataFormatError(
                f"{where}: {len(self.image_paths)} image paths but {n} label rows"
            )
        if not ((labels >= UNKNOWN) & (labels <= POSITIVE)).all():  # cheap on (270k, 1006)
            bad = (labels < UNKNOWN) | (labels > POSITIVE)
            i, j = np.argwhere(bad)[0]
            raise DataFormatError(
                f"{where}: label value {labels[i, j]} at image {self.image_paths[i]}, class "
                f"{self.class_names[j]!r}; allowed values are 1 (positive), 0 (negative), -1 (unknown)"
            )
        if self.splits is not None and len(self.splits) != n:
            raise DataFormatError(f"{where}: {len(self.splits)} split entries but {n} images")
        for key, value in self.extras.items():
            if len(value) != n:
                raise DataFormatError(f"{where}: extra {key!r} has {len(value)} rows, expected {n}")

    @property
    def num_images(self) -> int:
        return self.labels.shape[0]

    @property
    def num_classes(self) -> int:
        return self.labels.shape[1]

    def __len__(self) -> int:
        return self.num_images

    def split_names(self) -> list[str]:
        """Split names in order of first appearance (empty when the data has no split)."""
        if self.splits is None:
            return []
        return list(dict.fromkeys(self.splits.tolist()))

    def subset(self, split: str | Sequence[str]) -> MultiLabelData:
        """The images of one split (or several), in their original order."""
        return self.select(self.split_index(split))

    def split_index(self, split: str | Sequence[str]) -> np.ndarray:
        """Row indices of one split (or several), ascending; an unknown split name is an error."""
        wanted = [split] if isinstance(split, str) else list(split)
        if self.splits is None:
            raise DataFormatError(
                f"dataset {self.name!r} at {self.root} has no split; write one with "
                f"'mlrkit data split --dataset NAME --root {self.root}' (a seeded "
                f"split.csv), or give the recipe data.split: {{train: 0.8, val: 0.1, test: 0.1}}"
            )
        unknown = [s for s in wanted if s not in self.split_names()]
        if unknown:
            raise DataFormatError(
                f"dataset {self.name!r} at {self.root}: split(s) {unknown} not found; "
                f"available: {self.split_names()}"
            )
        return np.flatnonzero(np.isin(self.splits, wanted))

    def select(self, index: np.ndarray) -> MultiLabelData:
        """The images at ``index`` (an integer array), extras included."""
        index = np.asarray(index, dtype=np.int64)
        return replace(
            self,
            image_paths=[self.image_paths[i] for i in index],
            labels=self.labels[index],
            splits=None if self.splits is None else self.splits[index],
            extras={k: v[index] for k, v in self.extras.items()},
        )

    def class_index(self, name: str) -> int:
        """Column of class ``name``; unknown names raise with the list of known ones."""
        try:
            return self.class_names.index(name)
        except ValueError:
            raise DataFormatError(
                f"unknown class name {name!r} in dataset {self.name!r}; known classes: "
                f"{', '.join(self.class_names)}"
            ) from None

    def image_ids(self) -> list[str]:
        """Image paths relative to ``root`` (as POSIX strings): the key used by split and mask files."""
        ids = []
        for p in self.image_paths:
            try:
                ids.append(Path(p).relative_to(self.root).as_posix())
            except ValueError:
                ids.append(Path(p).as_posix())
        return ids


def read_split_file(
    path: Path, image_ids: Sequence[str], extra_splits: Sequence[str] = ()
) -> np.ndarray:
    """Split names for ``image_ids`` from a ``split.csv`` with columns ``image,split``.

    Each listed image must exist in the dataset and every dataset image must be listed: a split file
    that silently drops or invents images would change a benchmark without anyone noticing. An image
    id matches a row when they are equal or when the row names the file name of the id. Split names
    are :data:`STANDARD_SPLITS` or one of ``extra_splits``; any other name is an error (one that
    differs from a standard name only by case is called out as such).
    """
    path = Path(path)
    allowed = (*STANDARD_SPLITS, *extra_splits)
    by_id = {k: i for i, k in enumerate(image_ids)}
    by_file = {Path(k).name: i for i, k in enumerate(image_ids)}
    splits = np.full(len(image_ids), "", dtype=object)
    with open(path, newline="", encoding="utf-8-sig") as f:  # a BOM (Excel) is accepted
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["image", "split"]:
            raise DataFormatError(f"{path}:1: expected header 'image,split', got {header}")
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise DataFormatError(f"{path}:{line_no}: expected 'image,split', got {row}")
            image, split = row[0].strip(), row[1].strip()
            if split not in allowed:
                raise DataFormatError(f"{path}:{line_no}: {_unknown_split(split, allowed)}")
            i = by_id.get(image, by_file.get(image))
            if i is None:
                raise DataFormatError(
                    f"{path}:{line_no}: image {image!r} is not in the dataset's label file"
                )
            if splits[i]:
                raise DataFormatError(f"{path}:{line_no}: image {image!r} is listed twice")
            splits[i] = split
    missing = [image_ids[i] for i in np.flatnonzero(splits == "")]
    if missing:
        raise DataFormatError(
            f"{path}: {len(missing)} image(s) have no split, e.g. {missing[:3]}; list every image"
        )
    return splits.astype(str)


def _unknown_split(split: str, allowed: Sequence[str]) -> str:
    """The message for a split name that is not in ``allowed``."""
    same = [name for name in allowed if name.lower() == split.lower()]
    if same:
        return (f"split {split!r} differs from the split name {same[0]!r} only by case; write "
                f"{same[0]!r} (split names are case-sensitive)")
    return (f"split {split!r} is not a known split name ({', '.join(allowed)}); fix the name, or "
            f"accept it with extra_splits=[{split}] (recipe: data.options.extra_splits; command "
            f"line: -o extra_splits=[{split}])")


DatasetReader = Callable[..., MultiLabelData]
READERS: Registry[DatasetReader] = Registry("dataset")


def register_dataset(*names: str) -> Callable[[DatasetReader], DatasetReader]:
    """Decorator that registers a reader function under one or more dataset names."""
    return READERS.register(*names)


def list_datasets() -> list[str]:
    return READERS.names()


def fixed_options(reader: DatasetReader, **fixed) -> DatasetReader:
    """``reader`` with some options fixed (e.g. ``year=2007`` for ``voc2007``); the signature of
    the result lists the other options, so that :func:`reader_options` can check a recipe's."""

    @functools.wraps(reader)
    def read(root: Path, **options) -> MultiLabelData:
        taken = sorted(set(options) & set(fixed))
        if taken:
            raise ValueError(f"reader option(s) {taken} are fixed to {fixed} by this dataset name; "
                             f"use the general reader to choose them")
        return reader(root, **fixed, **options)

    signature = inspect.signature(reader)
    read.__signature__ = signature.replace(
        parameters=[p for p in signature.parameters.values() if p.name not in fixed]
    )
    read.__doc__ = f":func:`{reader.__name__}` with {fixed}."
    read.fixed_options = dict(fixed)  # refused by ``read`` itself, with its own message
    return read


def reader_options(name: str) -> list[str] | None:
    """The options ``create_dataset(name, root, **options)`` accepts: those of the reader (without
    ``root``) and ``create_dataset``'s own ``extra_splits``; ``None`` when the reader takes any
    ``**options``, so that they cannot be listed."""
    params = list(inspect.signature(READERS.get(name)).parameters.values())[1:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return sorted({p.name for p in params} | {"extra_splits"})


def create_dataset(
    name: str, root: str | Path, extra_splits: str | Sequence[str] = (), **kwargs
) -> MultiLabelData:
    """Read dataset ``name`` from ``root``; ``kwargs`` go to the reader.

    A ``split.csv`` in ``root`` (columns ``image,split``) overrides the reader's own split; its
    split names are :data:`STANDARD_SPLITS` and ``extra_splits`` (see :func:`read_split_file`).

    Example:
        >>> data = create_dataset("csv", "data/coco2014-6k")  # doctest: +SKIP
        >>> data.labels.shape
        (6168, 80)
    """
    reader = READERS.get(name)
    accepted = reader_options(name)
    fixed = getattr(reader, "fixed_options", {})  # refused by the reader, naming the fixed value
    unknown = sorted(set(kwargs) - set(accepted or kwargs) - set(fixed))
    if unknown:
        raise ValueError(f"dataset {name!r} has no reader option {', '.join(unknown)}; its "
                         f"options: {', '.join(accepted)} (recipe: data.options; command line: "
                         f"-o KEY=VALUE)")
    root = Path(root)
    if not root.is_dir():
        where = "" if root.is_absolute() else f" (resolved against the working folder {Path.cwd()})"
        raise DataFormatError(f"dataset root {root} does not exist or is not a folder{where}; "
                              f"check the path (recipe: data.root; command line: --root)")
    data = reader(root, **kwargs)
    split_file = root / "split.csv"
    if split_file.is_file():
        extra = [extra_splits] if isinstance(extra_splits, str) else list(extra_splits)
        splits = read_split_file(split_file, data.image_ids(), extra)
        data = replace(data, splits=splits)
    return data
