"""Label protocols: which entries of a fully annotated label matrix a method may see.

A protocol turns ground-truth labels ``(N, C)`` (``int8``, 1 / 0 / -1) into a boolean *known* mask;
the observed labels are the ground truth where known and ``-1`` elsewhere. Masks are deterministic
from a seed, and are saved with their seed, parameters and checksums so that two methods are compared
on exactly the same missing labels (see ``docs/protocols.md`` for the rules and their sources).

Example:
    >>> import numpy as np
    >>> labels = np.array([[1, 0, 0], [0, 1, 1]], dtype=np.int8)
    >>> mask = single_positive(labels, seed=1200, mode="cole")
    >>> mask.observed(labels).tolist()
    [[1, -1, -1], [-1, 1, -1]]
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlrkit.atomic import atomic_write
from mlrkit.data.dataset import POSITIVE, UNKNOWN, DataFormatError, MultiLabelData

MASK_FORMAT_VERSION = 1


def labels_checksum(labels: np.ndarray) -> str:
    """sha256 of an ``(N, C)`` label matrix (shape and int8 values)."""
    labels = np.ascontiguousarray(labels, dtype=np.int8)
    h = hashlib.sha256(f"{labels.shape}".encode())
    h.update(labels.tobytes())
    return h.hexdigest()


def _mask_checksum(known: np.ndarray) -> str:
    h = hashlib.sha256(f"{known.shape}".encode())
    h.update(np.packbits(known, axis=None).tobytes())
    return h.hexdigest()


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D (N, C), got shape {labels.shape}")
    if labels.shape[0] == 0:
        raise ValueError("labels have no rows: the split is empty, nothing to mask")
    if not np.isin(labels, (-1, 0, 1)).all():
        raise ValueError("labels must contain only 1 (positive), 0 (negative) and -1 (unknown)")
    return labels.astype(np.int8, copy=False)


@dataclass(frozen=True, eq=False)
class ProtocolMask:
    """The known entries chosen by a protocol, with everything needed to reproduce and verify them.

    Attributes:
        known: ``(N, C)`` bool, True where the method may see the ground-truth label.
        protocol: ``"partial"`` or ``"single_positive"``.
        params: protocol parameters, e.g. ``{"known": 0.1, "mode": "hcp"}``.
        seed: the seed the mask was drawn with.
        labels_checksum: checksum of the ground truth the mask was drawn from; ``observed``
            refuses other labels.
        no_positive: indices of images that had no positive to choose from (single positive):
            their rows are all unknown. Reported, never dropped.
    """

    known: np.ndarray
    protocol: str
    params: dict[str, Any]
    seed: int
    labels_checksum: str
    no_positive: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __repr__(self) -> str:
        return (f"ProtocolMask(protocol={self.protocol!r}, shape={self.shape}, "
                f"known={float(self.known.mean()) if self.known.size else 0.0:.1%}, "
                f"seed={self.seed}, params={self.params})")

    @property
    def shape(self) -> tuple[int, int]:
        return self.known.shape

    @property
    def checksum(self) -> str:
        """sha256 of the mask itself."""
        return _mask_checksum(self.known)

    def observed(self, labels: np.ndarray) -> np.ndarray:
        """Observed labels ``(N, C)`` int8: ``labels`` where known, ``-1`` (unknown) elsewhere."""
        labels = _check_labels(labels)
        if labels.shape != self.known.shape:
            raise ValueError(
                f"mask has shape {self.known.shape} but labels have shape {labels.shape}: "
                f"the mask was drawn for another dataset or split"
            )
        if labels_checksum(labels) != self.labels_checksum:
            raise ValueError(
                "these labels differ from the ones the mask was drawn from (checksum mismatch); "
                "draw a new mask for this data or load the matching dataset"
            )
        return np.where(self.known, labels, np.int8(UNKNOWN)).astype(np.int8)

    def stats(self, labels: np.ndarray) -> dict[str, float | int]:
        """Counts of the observed labels: known share, known positives/negatives, per image."""
        obs = self.observed(labels)
        n, c = obs.shape
        known_per_image = (obs != UNKNOWN).sum(axis=1)
        return {
            "known_fraction": float((obs != UNKNOWN).mean()),
            "known_positives": int((obs == POSITIVE).sum()),
            "known_negatives": int((obs == 0).sum()),
            "unknown": int((obs == UNKNOWN).sum()),
            "known_per_image_mean": float(known_per_image.mean()),
            "images_without_known_label": int((known_per_image == 0).sum()),
            "images_without_positive": len(self.no_positive),
            "images": n,
            "classes": c,
        }

    def save(self, path: str | Path) -> Path:
        """Write the mask to ``path`` (``.npz``) atomically; returns the path."""
        path = Path(path)
        meta = {
            "format_version": MASK_FORMAT_VERSION,
            "protocol": self.protocol,
            "params": self.params,
            "seed": self.seed,
            "shape": list(self.known.shape),
            "mask_checksum": self.checksum,
            "labels_checksum": self.labels_checksum,
        }
        with atomic_write(path) as f:
            np.savez_compressed(
                f,
                known=np.packbits(self.known, axis=None),
                no_positive=self.no_positive.astype(np.int64),
                meta=np.array(json.dumps(meta, sort_keys=True)),
            )
        return path

    @classmethod
    def load(cls, path: str | Path) -> ProtocolMask:
        """Read a mask written by :meth:`save`, verifying its checksum (no pickle involved)."""
        path = Path(path)
        if not path.is_file():
            raise DataFormatError(f"mask file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(str(f["meta"]))
                packed, no_positive = f["known"], f["no_positive"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise DataFormatError(
                f"{path}: not an mlrkit mask file, truncated or damaged ({err}); write it again "
                f"(mlrkit data summary --save-mask, or train the run again)"
            ) from err
        if meta.get("format_version") != MASK_FORMAT_VERSION:
            raise DataFormatError(
                f"{path}: mask format version {meta.get('format_version')}, this mlrkit reads "
                f"version {MASK_FORMAT_VERSION}"
            )
        n, c = meta["shape"]
        known = np.unpackbits(packed, count=n * c).astype(bool).reshape(n, c)
        if _mask_checksum(known) != meta["mask_checksum"]:
            raise DataFormatError(f"{path}: mask checksum mismatch, the file is corrupt")
        return cls(
            known=known,
            protocol=meta["protocol"],
            params=meta["params"],
            seed=meta["seed"],
            labels_checksum=meta["labels_checksum"],
            no_positive=no_positive,
        )


PARTIAL_MODES = ("bernoulli", "hcp")


def partial_labels(
    labels: np.ndarray, known: float, seed: int = 0, mode: str = "bernoulli"
) -> ProtocolMask:
    """Keep each (image, class) entry independently with probability ``known``.

    Positives and negatives are dropped alike; entries already unknown stay unknown.

    Args:
        labels: ``(N, C)`` int8 ground truth of the split to mask (usually the training split).
        known: proportion of entries kept, in ``(0, 1]``.
        seed: random seed.
        mode: ``"bernoulli"`` draws ``numpy.random.default_rng(seed).random((N, C)) < known``;
            ``"hcp"`` reproduces HCP-MLR-PL's ``changeLabelProportion`` exactly:
            ``np.random.seed(seed)`` (the reference always uses 0) then
            ``np.random.random((N, C)) < known``, on the rows in the reference's image order.
    """
    labels = _check_labels(labels)
    if not 0.0 < known <= 1.0:
        raise ValueError(f"known must be in (0, 1], got {known}; give the share of entries kept, "
                         f"e.g. 0.1")
    if mode == "hcp":
        draws = np.random.RandomState(seed).random_sample(labels.shape)
    elif mode == "bernoulli":
        draws = np.random.default_rng(seed).random(labels.shape)
    else:
        raise ValueError(f"unknown partial-label mode {mode!r}; choose one of {PARTIAL_MODES}")
    return ProtocolMask(
        known=draws < known,
        protocol="partial",
        params={"known": float(known), "mode": mode},
        seed=int(seed),
        labels_checksum=labels_checksum(labels),
    )


SINGLE_POSITIVE_MODES = ("uniform", "cole")


def partial_labels_sparse(labels, known: float, seed: int = 0, chunk_rows: int = 4096):
    """:func:`partial_labels` (``"bernoulli"``) of a
    :class:`~mlrkit.data.sparse_labels.SparseLabels` store, never holding the ``(N, C)`` draws:
    they are drawn ``chunk_rows`` rows at a time from the same generator, so the kept entries are
    exactly the dense protocol's (a test). Returns the store of the kept entries."""
    from mlrkit.data.sparse_labels import SparseLabels, entry_positions

    if not 0.0 < known <= 1.0:
        raise ValueError(f"known must be in (0, 1], got {known}; give the share of entries kept, "
                         f"e.g. 0.1")
    rng = np.random.default_rng(seed)
    num_images, num_classes = labels.shape
    kept = np.zeros(labels.nnz, dtype=bool)
    for start in range(0, num_images, chunk_rows):
        rows = np.arange(start, min(start + chunk_rows, num_images))
        draws = rng.random((len(rows), num_classes))
        lengths = labels.indptr[rows + 1] - labels.indptr[rows]
        positions = entry_positions(labels.indptr[rows], lengths)
        local = np.repeat(rows - start, lengths)
        kept[positions] = draws[local, labels.classes[positions]] < known
    owner = np.repeat(np.arange(num_images), np.diff(labels.indptr))
    counts = np.bincount(owner[kept], minlength=num_images)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return SparseLabels(indptr, np.asarray(labels.classes)[kept],
                        np.asarray(labels.values)[kept], num_classes)


def single_positive(labels: np.ndarray, seed: int = 1200, mode: str = "uniform") -> ProtocolMask:
    """Keep one positive per image, chosen uniformly among its positives; everything else unknown.

    Images without a positive get an all-unknown row and are listed in ``mask.no_positive``.

    Args:
        labels: ``(N, C)`` int8 ground truth of one split.
        seed: random seed; 1200 is the published one.
        mode: ``"uniform"`` draws one key per entry from ``numpy.random.default_rng(seed)`` and
            takes the positive with the largest key (vectorised). ``"cole"`` reproduces the
            generator of Cole et al. (``preproc/generate_observed_labels.py``, reused unchanged by
            VLPL, AckTheUnknown, LargeLossMatters and SigRL): ``np.random.RandomState(seed)``, then
            for each image in order, shuffle its positive indices and keep the first, then shuffle
            its negative indices (that draw is part of the reference's random stream even though
            no negative is kept). Entries that are not positive, unknown ones included, count as
            negatives there, as in the reference where labels are binary.
    """
    labels = _check_labels(labels)
    is_pos = labels == POSITIVE
    known = np.zeros(labels.shape, dtype=bool)
    if mode == "cole":
        rng = np.random.RandomState(seed)
        for i, row in enumerate(is_pos):
            pos = np.flatnonzero(row)
            rng.shuffle(pos)
            known[i, pos[:1]] = True
            rng.shuffle(np.flatnonzero(~row))
    elif mode == "uniform":
        keys = np.random.default_rng(seed).random(labels.shape)
        keys[~is_pos] = -1.0
        rows = np.flatnonzero(is_pos.any(axis=1))
        known[rows, keys[rows].argmax(axis=1)] = True
    else:
        raise ValueError(
            f"unknown single-positive mode {mode!r}; choose one of {SINGLE_POSITIVE_MODES}"
        )
    return ProtocolMask(
        known=known,
        protocol="single_positive",
        params={"mode": mode},
        seed=int(seed),
        labels_checksum=labels_checksum(labels),
        no_positive=np.flatnonzero(~is_pos.any(axis=1)),
    )


#: Each protocol's settings and their defaults, as a recipe's ``protocol`` section and
#: ``mlrkit data summary --protocol`` give them.
PROTOCOL_DEFAULTS: dict[str, dict[str, Any]] = {
    "observed": {},
    "partial": {"known": 0.1, "seed": 0, "mode": "bernoulli"},
    "single_positive": {"seed": 1200, "mode": "uniform"},
    "full": {},
    "zero_shot": {"unseen": None, "fraction": None, "seed": 0, "split_file": None},
}


def draw_mask(protocol: dict[str, Any], train_labels: np.ndarray) -> ProtocolMask | None:
    """The known-label mask of ``protocol`` (``name`` and settings; a setting left out takes its
    :data:`PROTOCOL_DEFAULTS` value) on ``train_labels`` ``(N, C)``, or the mask of its
    ``mask_file``; ``None`` for a protocol that hides no label (full, zero-shot)."""
    if protocol.get("mask_file"):
        return ProtocolMask.load(protocol["mask_file"])
    name = protocol["name"]
    settings = {**PROTOCOL_DEFAULTS[name], **protocol}
    if name == "partial":
        return partial_labels(train_labels, settings["known"], seed=settings["seed"],
                              mode=settings["mode"])
    if name == "single_positive":
        return single_positive(train_labels, seed=settings["seed"], mode=settings["mode"])
    return None


@dataclass(frozen=True, eq=False)
class ClassSplit:
    """Seen (training) and unseen (zero-shot) classes of a label set.

    Attributes:
        class_names: all ``C`` class names, in label-column order.
        seen: sorted column indices of the seen classes.
        unseen: sorted column indices of the unseen classes.
        params: how the split was made (``{"source": ...}`` or ``{"fraction": ..., "seed": ...}``).
    """

    class_names: list[str]
    seen: np.ndarray
    unseen: np.ndarray
    params: dict[str, Any]

    def __post_init__(self) -> None:
        both = np.intersect1d(self.seen, self.unseen)
        if both.size:
            raise ValueError(f"classes {[self.class_names[i] for i in both]} are seen and unseen")
        if len(self.seen) + len(self.unseen) != len(self.class_names):
            raise ValueError("every class must be either seen or unseen")

    def training_images(self, labels: np.ndarray) -> np.ndarray:
        """Indices of images with at least one seen positive (the zero-shot training rule).

        The others cannot teach a seen class; callers report ``N - len(result)`` as dropped.
        """
        labels = _check_labels(labels)
        return np.flatnonzero((labels[:, self.seen] == POSITIVE).any(axis=1))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        payload = {
            "class_names": self.class_names,
            "seen": [self.class_names[i] for i in self.seen],
            "unseen": [self.class_names[i] for i in self.unseen],
            "params": self.params,
        }
        with atomic_write(path, "w") as f:
            json.dump(payload, f, indent=1)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ClassSplit:
        path = Path(path)
        try:
            payload = json.loads(Path(path).read_text())
            names = payload["class_names"]
        except (OSError, ValueError, KeyError) as err:
            raise DataFormatError(f"{path}: not an mlrkit class-split file ({err})") from err
        return seen_unseen_split(names, unseen=payload["unseen"], params=payload["params"])


def seen_unseen_split(
    class_names: list[str],
    *,
    unseen: list[str] | None = None,
    fraction: float | None = None,
    seed: int = 0,
    params: dict[str, Any] | None = None,
) -> ClassSplit:
    """Split classes into seen and unseen, either by name or at random.

    Args:
        class_names: all class names.
        unseen: the unseen class names (an unknown name is an error naming it).
        fraction: otherwise, the share of classes made unseen, drawn with
            ``numpy.random.default_rng(seed).permutation`` (at least one class on each side).
        seed: seed of the random split.
    """
    if (unseen is None) == (fraction is None):
        raise ValueError("give exactly one of unseen= (class names) or fraction=")
    index = {name: i for i, name in enumerate(class_names)}
    if unseen is not None:
        missing = [name for name in unseen if name not in index]
        if missing:
            raise ValueError(f"unknown class name(s) {missing} in the unseen list")
        unseen_idx = np.array(sorted(index[name] for name in unseen), dtype=np.int64)
        params = params or {"source": "names"}
    else:
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        c = len(class_names)
        k = min(max(1, round(fraction * c)), c - 1)
        unseen_idx = np.sort(np.random.default_rng(seed).permutation(c)[:k])
        params = {"fraction": float(fraction), "seed": int(seed)}
    seen_idx = np.setdiff1d(np.arange(len(class_names)), unseen_idx)
    return ClassSplit(list(class_names), seen_idx, unseen_idx, params)


def split_from_groups(class_names: list[str], class_groups: dict[str, np.ndarray]) -> ClassSplit:
    """The seen/unseen split a reader defines, e.g. NUS-WIDE's 925 tags / 81 concepts."""
    if "seen" not in class_groups or "unseen" not in class_groups:
        raise DataFormatError(
            f"this label set defines no seen/unseen classes (groups: {sorted(class_groups)}); "
            f"read NUS-WIDE with label_set='tags1006' or use seen_unseen_split()"
        )
    return ClassSplit(
        list(class_names),
        np.sort(np.asarray(class_groups["seen"], dtype=np.int64)),
        np.sort(np.asarray(class_groups["unseen"], dtype=np.int64)),
        {"source": "dataset"},
    )


def class_split(protocol: dict[str, Any], data: MultiLabelData) -> ClassSplit:
    """The seen / unseen split of ``data``'s classes that a ``zero_shot`` protocol section (with
    its defaults, :data:`PROTOCOL_DEFAULTS`) describes (``docs/protocols.md``, "Zero-shot")."""
    if protocol.get("split_file"):
        split = ClassSplit.load(protocol["split_file"])
        if split.class_names != list(data.class_names):
            raise ValueError(f"protocol.split_file {protocol['split_file']}: its classes are not "
                             f"the dataset's {data.num_classes} classes in the dataset's order")
        return split
    if protocol.get("unseen") == "dataset":
        return split_from_groups(list(data.class_names), data.class_groups)
    if protocol.get("unseen") is not None:
        try:
            return seen_unseen_split(list(data.class_names), unseen=list(protocol["unseen"]))
        except ValueError as err:
            raise ValueError(f"protocol.unseen: {err}; the classes are "
                             f"{', '.join(data.class_names)}") from None
    return seen_unseen_split(list(data.class_names), fraction=protocol["fraction"],
                             seed=protocol["seed"])
