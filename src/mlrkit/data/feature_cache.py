"""Encoder features computed once per image and stored as memory-mapped ``.npy`` arrays.

Methods that train heads on frozen features read them from a cache folder instead of decoding
and encoding every image each epoch::

    out_dir/
        meta.json     what was computed and how far: encoder, preprocessing, images, progress
        pooled.npy    (N, D) float32 pooled features, row i = image i of meta["images"]["ids"]
        spatial.npy   (N, D, h, w) float16 (or float32) feature maps, only with ``spatial=True``
        labels.npy    (N, C) int8 labels of the dataset (1 / 0 / -1), class order of meta

Guarantees:

- **Stale caches are refused.** A cache records the encoder name, its ``weights_id``, the input
  size and preprocessing (``data_config``), the spatial setting and the image list (with a
  sha256 of it). :func:`extract_features` and :func:`load_features` raise
  :class:`StaleCacheError` naming the first field that differs. Labels, class names and splits are
  not features: a re-run of :func:`extract_features` refreshes them without recomputing anything,
  and :func:`load_features` refuses a cache whose labels differ from the dataset passed in.
- **Replaced images are recomputed, alone.** The cache records each image file's size and
  modification time (``meta["images"]["files"]``, ``[size, mtime_ns]`` per row, as when the cache
  was started or the row was last scheduled). :func:`load_features` refuses a cache whose files
  changed since, naming them; :func:`extract_features` recomputes only the changed rows (logged as
  a warning) and keeps the others. A cache written before these records existed gets them on its
  next :func:`extract_features` check, without recomputing anything (a warning says so: images
  replaced before that cannot be detected; rebuild with ``--overwrite`` if that may have happened).
- **Identical re-runs do no work.** A complete cache that matches is reused without touching the
  encoder or the images (``ExtractionSummary.computed == 0``).
- **Interrupted runs resume.** Rows are computed in image order; after each batch the arrays are
  flushed to disk and only then is ``meta["progress"]`` replaced atomically (write a temporary file,
  fsync, ``os.replace``). Progress never claims a row that is not on disk, whatever moment the
  process is killed at; the next run computes only the rows after it.
- **Bad images are never skipped silently.** Before computing, every file still to do is checked
  for existence and a readable header; any problem raises :class:`UnreadableImagesError` listing
  all bad files, and nothing is computed. Files that fail later while decoding (e.g. a truncated
  JPEG) are recorded in ``meta["progress"]["failed"]``; the run finishes the other rows and then
  raises listing every failure. Their rows count as not done: after fixing the files, a re-run
  computes only them. :func:`load_features` refuses a cache that is not complete.
- **Many ranks share the work.** Under ``torchrun`` (a ``torch.distributed`` process group) every
  rank calls :func:`extract_features` with the same arguments: rank 0 checks or creates the cache,
  the rows to compute are cut into batches, rank ``r`` of ``K`` computes batches ``r, r + K, ...``
  and writes them into the shared memory-mapped arrays at their rows, and after each round of
  ``K`` batches, once every rank has flushed its batch, rank 0 commits the round in ``meta.json``.
  The batches are those of a single process, so the cache is the same bit for bit, and a killed
  run resumes (on any number of ranks) as above.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from mlrkit._version import __version__
from mlrkit.atomic import atomic_write, naming_errors
from mlrkit.data.dataset import DataFormatError, MultiLabelData
from mlrkit.data.images import ImageFiles, UnreadableImagesError, check_image_files
from mlrkit.distributed import DistInfo, barrier, current_info, gather_objects, main_first

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
META_FILE = "meta.json"
CHANGED_FILE = "file changed on disk since its features were computed (size or modification time)"
POOLED_FILE = "pooled.npy"
SPATIAL_FILE = "spatial.npy"
LABELS_FILE = "labels.npy"
CACHE_FILES = (META_FILE, POOLED_FILE, SPATIAL_FILE, LABELS_FILE)
SPATIAL_DTYPES = ("float16", "float32")

# Meta fields that decide whether stored features are still valid, in the order they are checked.
IMAGE_FIELDS = ("format", "images.count", "images.sha256")
ENCODER_FIELDS = (
    "encoder.name",
    "encoder.weights_id",
    "encoder.input_size",
    "encoder.data_config",
)
SETTING_FIELDS = ("features.spatial", "features.spatial_dtype")


class StaleCacheError(ValueError):
    """A feature cache was built from other images, another encoder or other settings."""


@dataclass(frozen=True)
class ExtractionSummary:
    """What one :func:`extract_features` call did.

    Attributes:
        out_dir: the cache folder.
        num_images: images in the cache.
        computed: rows computed by this call; ``0`` when a complete cache was reused.
        seconds: wall time of this call.
    """

    out_dir: Path
    num_images: int
    computed: int
    seconds: float

    @property
    def reused(self) -> bool:
        return self.computed == 0

    @property
    def images_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        if self.reused:
            return f"reused the complete feature cache {self.out_dir} ({self.num_images} images)"
        return (
            f"computed {self.computed} of {self.num_images} images in {self.seconds:.1f} s "
            f"({self.images_per_second:.1f} img/s) into {self.out_dir}"
        )


@dataclass(frozen=True)
class FeatureCache:
    """A complete feature cache opened read-only; the arrays are ``np.memmap`` views of the files.

    Attributes:
        path: the cache folder.
        meta: the parsed ``meta.json``.
        pooled: ``(N, D)`` float32 pooled features.
        spatial: ``(N, D, h, w)`` feature maps, or ``None`` when extracted without ``spatial``.
        labels: ``(N, C)`` int8 labels, ``1`` positive, ``0`` negative, ``-1`` unknown.
    """

    path: Path
    meta: dict[str, Any]
    pooled: np.memmap
    spatial: np.memmap | None
    labels: np.memmap

    @property
    def image_ids(self) -> list[str]:
        return self.meta["images"]["ids"]

    @property
    def class_names(self) -> list[str]:
        return self.meta["dataset"]["class_names"]

    @property
    def splits(self) -> np.ndarray | None:
        splits = self.meta["dataset"]["splits"]
        return None if splits is None else np.asarray(splits)

    def split_index(self, split: str) -> np.ndarray:
        """Row indices of ``split``, e.g. ``cache.pooled[cache.split_index("train")]``."""
        if self.splits is None or split not in set(self.splits.tolist()):
            raise DataFormatError(f"feature cache {self.path} has no split {split!r}")
        return np.flatnonzero(self.splits == split)


def extract_features(
    data: MultiLabelData,
    encoder: nn.Module,
    out_dir: str | Path,
    *,
    batch_size: int = 32,
    num_workers: int = 2,
    spatial: bool = False,
    spatial_dtype: str = "float16",
    device: str | torch.device | None = None,
    overwrite: bool = False,
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
) -> ExtractionSummary:
    """Compute the features of every image of ``data`` once and store them in ``out_dir``.

    Images are decoded and preprocessed with ``encoder.transform(train=False)`` in ``num_workers``
    ``DataLoader`` processes while the encoder runs under ``torch.inference_mode`` with
    ``channels_last`` inputs. The encoder is moved to ``device`` and ``channels_last`` (in place,
    like ``Module.to``) and put in eval mode for the run; its training flag is restored afterwards.
    In a ``torch.distributed`` process group every rank must call it with the same arguments (and
    its own ``device``); they share the batches (see the module docstring) and return the same
    summary.

    Args:
        data: the images; row ``i`` of the cache is ``data.image_paths[i]``.
        encoder: an image encoder from :func:`mlrkit.encoders.image.create_image_encoder`
            (``forward(images (B, 3, H, W))`` -> ``.pooled (B, D)``, ``.spatial (B, D, h, w)``).
        out_dir: cache folder; created if needed.
        batch_size: images per forward pass and per commit to disk.
        num_workers: decoding processes; ``0`` decodes in this process.
        spatial: also store the ``(D, h, w)`` feature maps.
        spatial_dtype: ``"float16"`` (half the disk) or ``"float32"``.
        device: where the encoder runs; ``None`` keeps the device of its parameters.
        overwrite: delete an existing cache in ``out_dir`` (its files only) and start over.
        progress: show a progress bar.
        on_batch: called after each batch is on disk and committed, with ``(rows committed by this
            call, rows this call has to compute)``; an exception raised there stops the run like
            an interruption would. With several ranks: on every rank after each round, with the
            counts of all ranks.

    Returns:
        An :class:`ExtractionSummary`; open the result with :func:`load_features`.

    Raises:
        StaleCacheError: ``out_dir`` holds a cache of other images, encoder or settings.
        UnreadableImagesError: images are missing or cannot be decoded (all of them are listed).
    """
    start = time.perf_counter()
    out = Path(out_dir)
    if spatial_dtype not in SPATIAL_DTYPES:
        raise ValueError(f"spatial_dtype must be one of {SPATIAL_DTYPES}, got {spatial_dtype!r}")
    if data.num_images == 0:
        raise DataFormatError(f"dataset {data.name!r} at {data.root} has no images to extract")
    if batch_size < 1 or num_workers < 0:
        raise ValueError(
            f"need batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}"
        )

    info = current_info()
    wanted = _describe_run(data, encoder, spatial, spatial_dtype)
    meta = main_first(info, lambda: _existing_meta(out, data, wanted, overwrite))
    if meta is not None and meta["progress"]["complete"]:
        return ExtractionSummary(out, data.num_images, 0, time.perf_counter() - start)

    was_training = encoder.training
    device = _resolve_device(encoder, device)
    encoder.eval().to(device=device, memory_format=torch.channels_last)
    try:
        if meta is None:
            meta = main_first(info, lambda: _create_cache(out, data, encoder, wanted, device))
        computed = _run(
            data, encoder, out, meta, batch_size, num_workers, device,
            progress and info.is_main, on_batch, info,
        )  # fmt: skip
    finally:
        encoder.train(was_training)
    failed = meta["progress"]["failed"]
    if failed:
        raise UnreadableImagesError(
            {str(data.image_paths[f["index"]]): f["error"] for f in failed},
            f"the other {data.num_images - len(failed)} rows are stored in {out}; fix or replace "
            f"these files and run again to compute only them",
        )
    seconds = time.perf_counter() - start
    logger.info("%s: computed %d rows in %.1f s", out, computed, seconds)
    return ExtractionSummary(out, data.num_images, computed, seconds)


def load_features(
    out_dir: str | Path,
    *,
    data: MultiLabelData | None = None,
    encoder: nn.Module | None = None,
) -> FeatureCache:
    """Open a complete feature cache read-only and memory-mapped.

    Args:
        out_dir: the cache folder written by :func:`extract_features`.
        data: when given, the cache must hold exactly its images (same ids, same order) and its
            labels, class names and splits.
        encoder: when given, the cache must come from this encoder, weights and preprocessing.

    Raises:
        StaleCacheError: the cache does not match ``data`` or ``encoder``, or is incomplete.
    """
    out = Path(out_dir)
    meta = _read_meta(out)
    if meta is None:
        raise FileNotFoundError(
            f"no feature cache in {out} ({META_FILE} missing); run mlrkit extract"
        )
    fix = "extract again into another folder (--out) or rebuild this one (--overwrite)"
    if meta.get("format") != CACHE_FORMAT:
        raise StaleCacheError(
            f"feature cache {out} has format {meta.get('format')}, this mlrkit reads format "
            f"{CACHE_FORMAT}; {fix}"
        )
    if not meta["progress"]["complete"]:
        done, total = meta["progress"]["done"], meta["images"]["count"]
        failed = len(meta["progress"]["failed"])
        raise StaleCacheError(
            f"feature cache {out} is incomplete ({done} of {total} images processed, {failed} "
            f"failed to read or changed on disk); run the same mlrkit extract command again to "
            f"finish it"
        )
    if data is not None:
        wanted = {"format": CACHE_FORMAT, "images": _image_meta(data)}
        _check_matches(out, meta, wanted, IMAGE_FIELDS, fix)
        _check_files_unchanged(out, meta, _file_stats(data))
    if encoder is not None:
        _check_matches(out, meta, {"encoder": _encoder_meta(encoder)}, ENCODER_FIELDS, fix)

    features = meta["features"]
    pooled = _open_array(out / POOLED_FILE, features["pooled_shape"], "float32", "r")
    spatial = None
    if features["spatial"]:
        spatial = _open_array(
            out / SPATIAL_FILE, features["spatial_shape"], features["spatial_dtype"], "r"
        )
    labels = np.load(out / LABELS_FILE, mmap_mode="r")
    if data is not None:
        stored = meta["dataset"]
        differing = [
            name
            for name, same in (
                ("class names", stored["class_names"] == list(data.class_names)),
                ("splits", stored["splits"] == _splits_list(data)),
                ("labels", np.array_equal(labels, data.labels)),
            )
            if not same
        ]
        if differing:
            raise StaleCacheError(
                f"feature cache {out} stores other {' and '.join(differing)} than dataset "
                f"{data.name!r}; run the same mlrkit extract command again: it rewrites them and "
                f"keeps the features"
            )
    return FeatureCache(out, meta, pooled, spatial, labels)


# --- what a cache is made of -------------------------------------------------------------------


def _describe_run(
    data: MultiLabelData, encoder: nn.Module, spatial: bool, spatial_dtype: str
) -> dict[str, Any]:
    """The meta fields a run is checked against (everything but shapes and progress)."""
    return {
        "format": CACHE_FORMAT,
        "images": {**_image_meta(data), "files": _file_stats(data)},
        "encoder": _encoder_meta(encoder),
        "features": {"spatial": spatial, "spatial_dtype": spatial_dtype if spatial else None},
    }


def _image_meta(data: MultiLabelData) -> dict[str, Any]:
    ids = data.image_ids()
    digest = hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()
    return {"count": len(ids), "sha256": digest, "ids": ids}


def _file_stats(data: MultiLabelData) -> list[list[int] | None]:
    """``[size, mtime_ns]`` of each image file (``None`` for a missing one), in row order."""
    stats: list[list[int] | None] = []
    for path in data.image_paths:
        try:
            st = os.stat(path)
        except OSError:
            stats.append(None)
        else:
            stats.append([st.st_size, st.st_mtime_ns])
    return stats


def _changed_rows(meta: dict[str, Any], files: list[list[int] | None]) -> list[int]:
    """Rows whose recorded ``[size, mtime_ns]`` differs from ``files`` (the stats now)."""
    recorded = meta["images"]["files"]
    return [i for i, (old, new) in enumerate(zip(recorded, files, strict=True)) if old != new]


def _check_files_unchanged(out: Path, meta: dict[str, Any], files: list[list[int] | None]) -> None:
    """Raise :class:`StaleCacheError` naming the images that changed since they were computed
    (a cache without file records, from before they existed, is not checked)."""
    if "files" not in meta["images"]:
        logger.info("%s: no recorded image sizes and times; mlrkit extract records them", out)
        return
    changed = _changed_rows(meta, files)
    if changed:
        ids = meta["images"]["ids"]
        raise StaleCacheError(
            f"feature cache {out}: {len(changed)} image file(s) changed on disk since their "
            f"features were computed (size or modification time), e.g. "
            f"{[ids[i] for i in changed[:5]]}; run the same mlrkit extract command again: it "
            f"recomputes only these rows (or rebuild the cache with --overwrite)"
        )


def _encoder_meta(encoder: nn.Module) -> dict[str, Any]:
    # JSON round trip so that tuples compare equal to the lists read back from meta.json.
    return json.loads(
        json.dumps(
            {
                "name": encoder.name,
                "weights_id": encoder.weights_id,
                "input_size": list(encoder.input_size),
                "data_config": dict(encoder.data_config),
                "feature_dim": encoder.feature_dim,
            },
            default=str,
        )
    )


def _annotation_meta(data: MultiLabelData) -> dict[str, Any]:
    return {
        "name": data.name,
        "root": str(data.root),
        "class_names": list(data.class_names),
        "splits": _splits_list(data),
    }


def _splits_list(data: MultiLabelData) -> list[str] | None:
    return None if data.splits is None else [str(s) for s in data.splits]


def _lookup(meta: dict[str, Any], field: str) -> Any:
    value: Any = meta
    for key in field.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _first_difference(field: str, old: Any, new: Any) -> tuple[str, Any, Any]:
    """Narrow differing dicts down to the first differing key, e.g. ``encoder.data_config.mean``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _first_difference(f"{field}.{key}", old.get(key), new.get(key))
    return field, old, new


def _check_matches(
    out: Path, stored: dict[str, Any], wanted: dict[str, Any], fields: tuple[str, ...], fix: str
) -> None:
    """Raise :class:`StaleCacheError` at the first of ``fields`` (dotted paths) that differs."""
    for field in fields:
        old, new = _lookup(stored, field), _lookup(wanted, field)
        if old == new:
            continue
        if field == "images.count":
            raise StaleCacheError(
                f"feature cache {out} is stale: image list differs ({old} images in the cache, "
                f"{new} now); {fix}"
            )
        if field == "images.sha256":
            pairs = zip(stored["images"]["ids"], wanted["images"]["ids"], strict=True)
            i, (a, b) = next((i, p) for i, p in enumerate(pairs) if p[0] != p[1])
            raise StaleCacheError(
                f"feature cache {out} is stale: image list differs (image {i} is {a!r} in the "
                f"cache, {b!r} now); {fix}"
            )
        field, old, new = _first_difference(field, old, new)
        raise StaleCacheError(
            f"feature cache {out} is stale: {field} is {old!r} in the cache but {new!r} now; {fix}"
        )


# --- files -------------------------------------------------------------------------------------


def _read_meta(out: Path) -> dict[str, Any] | None:
    try:
        with open(out / META_FILE, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StaleCacheError(
            f"{out / META_FILE}: not valid JSON, truncated or damaged ({err}); rebuild the cache "
            f"(mlrkit extract --overwrite) or delete the folder"
        ) from err


def _write_meta(out: Path, meta: dict[str, Any]) -> None:
    """Replace ``meta.json`` atomically: a reader sees the old or the new file, never a mix."""
    with atomic_write(out / META_FILE, "w") as f:
        json.dump(meta, f, indent=1)


def _write_labels(out: Path, labels: np.ndarray) -> None:
    with atomic_write(out / LABELS_FILE) as f:
        np.save(f, np.ascontiguousarray(labels, dtype=np.int8))


def _existing_meta(
    out: Path, data: MultiLabelData, wanted: dict[str, Any], overwrite: bool
) -> dict[str, Any] | None:
    """The meta of the cache in ``out`` after checking it against ``wanted`` and refreshing its
    annotation, or ``None`` when there is no cache yet (``overwrite`` deletes one first)."""
    fix = "use another output folder (--out) or rebuild it (--overwrite / overwrite=True)"
    if overwrite:
        for name in CACHE_FILES:
            (out / name).unlink(missing_ok=True)
    meta = _read_meta(out)
    if meta is None:
        leftovers = [name for name in CACHE_FILES if (out / name).exists()]
        if leftovers:
            raise StaleCacheError(
                f"{out} holds {leftovers} but no {META_FILE}, so they cannot be checked; {fix}"
            )
        return None
    _check_matches(out, meta, wanted, IMAGE_FIELDS + ENCODER_FIELDS + SETTING_FIELDS, fix)
    _sync_file_stats(out, meta, wanted["images"]["files"])
    if _refresh_annotation(out, meta, data):
        logger.info("%s: labels, class names or splits changed; rewrote them", out)
    if meta["progress"]["complete"]:
        logger.info("%s: complete feature cache matches; reusing it, nothing to compute", out)
    return meta


def _sync_file_stats(out: Path, meta: dict[str, Any], files: list[list[int] | None]) -> None:
    """Record the image stats ``files`` in meta; computed rows whose file changed are scheduled
    for recomputation (as entries of ``progress.failed``, which :func:`_run` computes first)."""
    images, progress = meta["images"], meta["progress"]
    if "files" not in images:
        images["files"] = files
        _write_meta(out, meta)
        logger.warning(
            "%s: the cache predates per-image size and modification-time records; recorded them "
            "now without recomputing (images replaced before now cannot be detected: rebuild with "
            "--overwrite if that may have happened)", out,
        )
        return
    changed = _changed_rows(meta, files)
    if not changed:
        return
    scheduled = {f["index"] for f in progress["failed"]}
    redo = [i for i in changed if i < progress["done"] and i not in scheduled]
    entries = [{"index": i, "image": images["ids"][i], "error": CHANGED_FILE} for i in redo]
    progress["failed"] = sorted(progress["failed"] + entries, key=lambda f: f["index"])
    progress["complete"] = progress["complete"] and not redo
    images["files"] = files
    _write_meta(out, meta)
    logger.warning("%s: %d image file(s) changed on disk since their features were computed, e.g. "
                   "%s; recomputing only their rows", out, len(changed),
                   [images["ids"][i] for i in changed[:5]])


def _refresh_annotation(out: Path, meta: dict[str, Any], data: MultiLabelData) -> bool:
    """Rewrite labels, class names and splits if ``data`` has others; ``True`` if it did."""
    annotation = _annotation_meta(data)
    stored = meta["dataset"]
    path = out / LABELS_FILE
    same_labels = path.exists() and np.array_equal(np.load(path, mmap_mode="r"), data.labels)
    if same_labels and all(stored.get(k) == annotation[k] for k in ("class_names", "splits")):
        return False
    _write_labels(out, data.labels)
    meta["dataset"] = annotation
    _write_meta(out, meta)
    return True


def _open_array(path: Path, shape: list[int], dtype: str, mode: str) -> np.memmap:
    """Open a stored array, checking it has the shape and dtype that meta.json promises."""
    try:
        array = np.lib.format.open_memmap(path, mode=mode)
    except (FileNotFoundError, ValueError) as err:
        raise StaleCacheError(
            f"{path} is missing or unreadable ({err}); rebuild the cache (--overwrite)"
        ) from None
    if list(array.shape) != list(shape) or array.dtype != np.dtype(dtype):
        raise StaleCacheError(
            f"{path} holds {array.dtype} {list(array.shape)} but {META_FILE} says {dtype} "
            f"{list(shape)}; rebuild the cache (--overwrite)"
        )
    return array


def _create_cache(
    out: Path,
    data: MultiLabelData,
    encoder: nn.Module,
    wanted: dict[str, Any],
    device: torch.device,
) -> dict[str, Any]:
    """Write ``meta.json`` (nothing done yet) and labels; :func:`_run` creates the arrays."""
    out.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        probe = torch.zeros((1, *wanted["encoder"]["input_size"]), device=device)
        result = encoder(probe.contiguous(memory_format=torch.channels_last))
    n = data.num_images
    features = dict(wanted["features"], pooled_shape=[n, result.pooled.shape[1]])
    features["spatial_shape"] = (
        [n, *result.spatial.shape[1:]] if wanted["features"]["spatial"] else None
    )
    meta = {
        "format": CACHE_FORMAT,
        "mlrkit_version": __version__,
        "encoder": wanted["encoder"],
        "features": features,
        "dataset": _annotation_meta(data),
        "images": wanted["images"],
        "progress": {"done": 0, "failed": [], "complete": False},
    }
    _write_meta(out, meta)
    _write_labels(out, data.labels)
    return meta


# --- the extraction loop -----------------------------------------------------------------------


def _resolve_device(encoder: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    param = next(encoder.parameters(), None)
    return torch.device("cpu") if param is None else param.device


def _run(
    data: MultiLabelData,
    encoder: nn.Module,
    out: Path,
    meta: dict[str, Any],
    batch_size: int,
    num_workers: int,
    device: torch.device,
    progress: bool,
    on_batch: Callable[[int, int], None] | None,
    info: DistInfo,
) -> int:
    """Compute the rows not done yet: earlier decode failures first, then the rows after
    ``progress.done`` in order, in batches of ``batch_size``. Rank ``r`` of ``K`` computes batches
    ``r, r + K, ...``; each round of ``K`` batches is committed once all of them are on disk.
    Returns the number of rows computed and committed (by all ranks), on every rank once rank 0
    has written the last round's ``meta.json``."""
    state = meta["progress"]
    failed = {f["index"]: f for f in state["failed"]}
    todo = sorted(failed) + list(range(state["done"], data.num_images))
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    mine = batches[info.rank :: info.world_size]
    _check_files(data, todo, [i for batch in mine for i in batch], info)
    pooled, spatial = _open_outputs(out, meta["features"], state["done"] == 0 and not failed, info)

    input_size = meta["encoder"]["input_size"]
    images = ImageFiles(data.image_paths, encoder.transform(train=False), input_size)
    loader = iter(DataLoader(
        images, batch_sampler=mine, num_workers=num_workers, pin_memory=device.type == "cuda"
    ))  # fmt: skip
    ids = meta["images"]["ids"]
    committed = 0
    n = data.num_images
    bar = tqdm(total=n, initial=n - len(todo), unit="img", desc=out.name, disable=not progress)
    with bar, torch.inference_mode():
        for first in range(0, len(batches), info.world_size):
            report: tuple[list[int], list[str]] = ([], [])
            if first + info.rank < len(batches):
                index, batch, errors = next(loader)
                batch = batch.to(device, non_blocking=True, memory_format=torch.channels_last)
                report = _store_batch(encoder(batch), index.numpy(), list(errors), pooled, spatial,
                                      ids)
            # Only now, with every rank's rows on disk, may the progress say they are done.
            for rows, errors in gather_objects(info, report):
                _mark_done(state, failed, rows, errors, ids)
                committed += len(rows)
                bar.update(len(rows))
            state["complete"] = state["done"] == n and not failed
            if info.is_main:
                _write_meta(out, meta)
            if on_batch is not None:
                on_batch(committed, len(todo))
    barrier(info)
    return committed


def _check_files(data: MultiLabelData, todo: list[int], mine: list[int], info: DistInfo) -> None:
    """Check the files of rows ``mine`` (this rank's share of ``todo``); raise
    :class:`UnreadableImagesError` on every rank listing the bad files of all ranks."""
    problems = check_image_files([data.image_paths[i] for i in mine])
    found: dict[int, str] = {}
    for part in gather_objects(info, {mine[k]: reason for k, reason in problems.items()}):
        found.update(part)
    if found:
        raise UnreadableImagesError(
            {str(data.image_paths[i]): found[i] for i in todo if i in found},
            "nothing was computed; fix the dataset root or these files and run again",
        )


def _open_outputs(
    out: Path, features: dict[str, Any], fresh: bool, info: DistInfo
) -> tuple[np.memmap, np.memmap | None]:
    """The pooled and (or ``None``) spatial arrays opened for writing; when ``fresh``, rank 0
    first creates the files, zero-filled, at their full size."""
    specs = [(POOLED_FILE, features["pooled_shape"], "float32")]
    if features["spatial"]:
        specs.append((SPATIAL_FILE, features["spatial_shape"], features["spatial_dtype"]))

    def create() -> None:
        for name, shape, dtype in specs:
            with naming_errors(out / name):  # a full disk or a file-size limit names the file
                np.lib.format.open_memmap(out / name, mode="w+", dtype=np.dtype(dtype),
                                          shape=tuple(shape)).flush()

    if fresh:
        main_first(info, create)
    arrays = [_open_array(out / name, shape, dtype, "r+") for name, shape, dtype in specs]
    return arrays[0], arrays[1] if len(arrays) > 1 else None


def _store_batch(
    result: Any,
    rows: np.ndarray,
    errors: list[str],
    pooled: np.memmap,
    spatial: np.memmap | None,
    ids: list[str],
) -> tuple[list[int], list[str]]:
    """Write the encoder ``result`` of the readable ``rows`` to the arrays (flushed); unreadable
    files gave zero images and are not written. Returns ``(rows, errors)`` as lists."""
    readable = np.array([not e for e in errors])
    keep = torch.from_numpy(readable).to(result.pooled.device)
    _store_rows(pooled, rows[readable], result.pooled[keep], ids)
    if spatial is not None:
        _store_rows(spatial, rows[readable], result.spatial[keep], ids)
    return rows.tolist(), errors


def _mark_done(
    state: dict[str, Any],
    failed: dict[int, dict[str, Any]],
    rows: list[int],
    errors: list[str],
    ids: list[str],
) -> None:
    """Record committed ``rows`` in ``state`` (meta's progress): done up to their end, and each
    one's failure replaced by its new ``error`` (``""``: read fine)."""
    for i, error in zip(rows, errors, strict=True):
        failed.pop(i, None)
        if error:
            failed[i] = {"index": i, "image": ids[i], "error": error}
    if rows:
        state["done"] = max(state["done"], max(rows) + 1)
    state["failed"] = [failed[i] for i in sorted(failed)]


def _store_rows(array: np.memmap, rows: np.ndarray, values: torch.Tensor, ids: list[str]) -> None:
    """Write ``values`` ``(len(rows), ...)`` to ``array[rows]`` in its dtype and flush to disk."""
    values = values.to(getattr(torch, array.dtype.name))
    finite = torch.isfinite(values.flatten(1)).all(dim=1)
    if not finite.all():
        bad = [ids[i] for i in rows[~finite.cpu().numpy()]]
        raise ValueError(
            f"features of {bad} are not finite in {array.dtype.name} (overflow or NaN in the "
            f"encoder); for spatial maps, extract with spatial_dtype='float32'"
        )
    with naming_errors(Path(array.filename)):
        array[rows] = values.cpu().numpy()
        array.flush()
