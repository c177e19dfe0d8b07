"""Features stored as shards: one ``.npy`` file per block of images and an index, memory-mapped,
so that no process needs one file (or one array) of the whole collection, and a rank can take
only its own shards (:meth:`ShardedFeatures.rows_of_rank`, e.g. to evaluate or extract)::

    folder/
      index.json            {"format", "shape": [N, ...], "dtype", "shards": [{"file", "start", "stop"}]}
      shard-00000.npy       rows [0, 10000)
      shard-00001.npy       rows [10000, 20000) ...

:class:`ShardedFeatures` indexes like an ``(N, ...)`` array (``features[rows]`` for an integer
array ``rows``, in any order), which is all
:class:`~mlrkit.engine.batches.FeatureBatches` asks of its features.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from mlrkit.atomic import atomic_write

FORMAT = 1
INDEX_FILE = "index.json"


class ShardedFeatures:
    """The rows of a sharded feature folder (module docstring), memory-mapped shard by shard."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        path = self.folder / INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{self.folder} holds no sharded features (no {INDEX_FILE}); "
                                    f"write them with write_sharded_features")
        index = json.loads(path.read_text())
        if index.get("format") != FORMAT:
            raise ValueError(f"{path}: format {index.get('format')}, this mlrkit reads {FORMAT}")
        self.shape = tuple(index["shape"])
        self.dtype = np.dtype(index["dtype"])
        self.shards = [(s["file"], s["start"], s["stop"]) for s in index["shards"]]
        self.starts = np.array([start for _, start, _ in self.shards], dtype=np.int64)
        self._arrays: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ShardedFeatures({self.folder}, shape={self.shape}, {len(self.shards)} shards)"

    def shard(self, number: int) -> np.ndarray:
        """Shard ``number``'s rows, memory-mapped (opened once)."""
        if number not in self._arrays:
            name, start, stop = self.shards[number]
            array = np.load(self.folder / name, mmap_mode="r", allow_pickle=False)
            if array.shape != (stop - start, *self.shape[1:]):
                raise ValueError(f"{self.folder / name}: shape {array.shape}, the index says "
                                 f"{(stop - start, *self.shape[1:])}; write the features again")
            self._arrays[number] = array
        return self._arrays[number]

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1:
            raise TypeError("index sharded features with a 1-d array of row numbers")
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside 0 .. {len(self) - 1}")
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        owner = np.searchsorted(self.starts, rows, side="right") - 1
        for number in np.unique(owner):
            taken = owner == number
            out[taken] = self.shard(int(number))[rows[taken] - self.starts[number]]
        return out

    def rows_of_rank(self, rank: int, world_size: int) -> np.ndarray:
        """The rows of the shards rank ``rank`` of ``world_size`` takes: contiguous blocks of
        whole shards, as even as the shard count allows (every row in exactly one rank)."""
        cut = np.linspace(0, len(self.shards), world_size + 1).round().astype(int)
        mine = self.shards[cut[rank] : cut[rank + 1]]
        if not mine:
            return np.zeros(0, dtype=np.int64)
        return np.arange(mine[0][1], mine[-1][2], dtype=np.int64)


def write_sharded_features(folder: str | Path, blocks: Iterable[np.ndarray],
                           shard_rows: int = 10_000) -> ShardedFeatures:
    """Write ``blocks`` (arrays of rows, ``(n_i, ...)``, of one dtype and row shape; e.g. an
    extractor's batches) as shards of ``shard_rows`` rows, each atomically, the index last."""
    folder = Path(folder)
    shards, pending, total, row_shape, dtype = [], [], 0, None, None

    def flush(rows: np.ndarray) -> None:
        name = f"shard-{len(shards):05d}.npy"
        with atomic_write(folder / name, "wb") as f:
            np.save(f, rows)
        start = shards[-1]["stop"] if shards else 0
        shards.append({"file": name, "start": start, "stop": start + len(rows)})

    for block in blocks:
        block = np.asarray(block)
        if row_shape is None:
            row_shape, dtype = block.shape[1:], block.dtype
        elif block.shape[1:] != row_shape or block.dtype != dtype:
            raise ValueError(f"a block of shape {block.shape[1:]} / {block.dtype} after blocks of "
                             f"{row_shape} / {dtype}: give one row shape and dtype")
        pending.append(block)
        total += len(block)
        while sum(len(b) for b in pending) >= shard_rows:
            rows = np.concatenate(pending)
            flush(rows[:shard_rows])
            pending = [rows[shard_rows:]]
    if pending and sum(len(b) for b in pending):
        flush(np.concatenate(pending))
    if row_shape is None:
        raise ValueError("no feature rows to write")
    with atomic_write(folder / INDEX_FILE, "w") as f:
        json.dump({"format": FORMAT, "shape": [total, *row_shape], "dtype": str(dtype),
                   "shards": shards}, f, indent=1)
    return ShardedFeatures(folder)
