"""Batch sources for the engine: cached feature arrays or image files, and a deterministic sampler.

A batch source is indexed with an integer array and returns a whole batch
``(inputs, targets, index)``: ``inputs`` ``(B, ...)`` float32, ``targets`` ``(B, C)`` int8,
``index`` ``(B,)`` int64 rows of the source. Fetching whole batches keeps memory-mapped feature
caches fast (one fancy-indexed read per batch instead of one per image).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mlrkit.data.dataset import DataFormatError
from mlrkit.data.images import IMAGE_ERRORS, describe_error


class FeatureBatches(torch.utils.data.Dataset):
    """Rows of a feature array (``(N, D)`` or ``(N, D, h, w)``, possibly memory-mapped, any float
    dtype) with their ``(N, C)`` int8 targets."""

    def __init__(self, features: np.ndarray, targets: np.ndarray) -> None:
        if len(features) != len(targets):
            raise ValueError(f"{len(features)} feature rows but {len(targets)} label rows")
        self.features, self.targets = features, np.asarray(targets, dtype=np.int8)

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.features.shape[1:])

    def __getitem__(self, index: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        index = np.asarray(index, dtype=np.int64)
        order = np.argsort(index, kind="stable")
        rows = np.empty((len(index), *self.features.shape[1:]), dtype=np.float32)
        rows[order] = self.features[index[order]]  # sorted reads are faster on memmaps
        return torch.from_numpy(rows), torch.from_numpy(self.target_rows(index)), \
            torch.from_numpy(index)

    def target_rows(self, index: np.ndarray) -> np.ndarray:
        """``(B, C)`` int8 targets of rows ``index``."""
        return self.targets[index]


class SparseFeatureBatches(FeatureBatches):
    """:class:`FeatureBatches` whose targets are a
    :class:`~mlrkit.data.sparse_labels.SparseLabels` store: each batch's target rows are made
    dense when it is drawn (``(B, C)``, what every loss takes), never the ``(N, C)`` matrix.
    Batches equal those of ``FeatureBatches(features, labels.to_dense())`` (a test)."""

    def __init__(self, features: np.ndarray, labels) -> None:
        if len(features) != labels.shape[0]:
            raise ValueError(f"{len(features)} feature rows but {labels.shape[0]} label rows")
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return self.labels.shape[0]

    def target_rows(self, index: np.ndarray) -> np.ndarray:
        return self.labels.rows(index)


class ImageBatches(torch.utils.data.Dataset):
    """Image files decoded and transformed on the fly, for end-to-end training.

    A file that is missing or cannot be decoded raises :class:`DataFormatError` naming it.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        targets: np.ndarray,
        transform: Callable[[Image.Image], Tensor],
    ) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} images but {len(targets)} label rows")
        self.paths, self.targets = list(paths), np.asarray(targets, dtype=np.int8)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def _load(self, path: Path) -> Tensor:
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")  # decodes here: truncated data raises here
        except IMAGE_ERRORS as err:
            raise DataFormatError(f"image {path}: {describe_error(err)}; fix or replace it") from err
        return self.transform(rgb)

    def __getitem__(self, index: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        index = np.asarray(index, dtype=np.int64)
        images = torch.stack([self._load(self.paths[i]) for i in index])
        return images, torch.from_numpy(self.targets[index]), torch.from_numpy(index)


class EpochBatchSampler(torch.utils.data.Sampler):
    """Index batches for one rank, identical across runs for the same ``(seed, epoch)``.

    The global order is ``torch.randperm(n)`` drawn from a generator seeded with ``seed + epoch``
    (or ``arange(n)`` without shuffling). Global batch ``k`` is ``order[k*B:(k+1)*B]``; with
    ``world_size`` ranks each global batch is split into equal consecutive slices, one per rank, so
    ``K`` ranks at global batch ``B`` see exactly the samples one process sees at batch ``B``. In
    training the order is padded by wrapping around so every rank gets the same number of rows.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
    ) -> None:
        if n == 0:
            raise ValueError("cannot sample batches from an empty split")
        if batch_size % world_size:
            raise ValueError(
                f"batch_size {batch_size} (global) must be divisible by the {world_size} ranks"
            )
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=g).numpy()

    def __iter__(self) -> Iterator[np.ndarray]:
        order = self._order()
        for start in range(0, self.n, self.batch_size):
            batch = order[start : start + self.batch_size]
            if self.pad and len(batch) % self.world_size:
                extra = self.world_size - len(batch) % self.world_size
                batch = np.concatenate([batch, order[:extra]])
            yield np.array_split(batch, self.world_size)[self.rank]

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)


def batch_loader(
    source: torch.utils.data.Dataset,
    sampler: EpochBatchSampler,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader yielding whole batches from ``source`` in ``sampler``'s order."""
    return torch.utils.data.DataLoader(
        source,
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
