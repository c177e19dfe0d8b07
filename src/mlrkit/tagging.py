"""Tagging images with label names: the candidate labels, the image files of paths and folders,
each image's labels ranked by score, and the JSON or CSV that ``mlrkit tag`` and ``mlrkit
predict`` write."""

from __future__ import annotations

import csv
import errno
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from mlrkit.text_files import read_text

#: The probability from which a calibrated label is on, where no threshold of its own is known.
DEFAULT_ON = 0.5
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def parse_labels(text: str | None, labels_file: str | None) -> list[str]:
    """The candidate labels: ``--labels "cat, dog"`` (comma-separated) or ``--labels-file`` (one
    per line; blank lines and ``#`` comments skipped)."""
    if (text is None) == (labels_file is None):
        raise ValueError('give the candidate labels with --labels "cat, dog, sofa" or '
                         '--labels-file FILE (one per line), exactly one of the two')
    if text is not None:
        where, labels = "--labels", [part.strip() for part in text.split(",")]
    else:
        lines = read_text(labels_file).splitlines()
        where, labels = labels_file, [line.strip() for line in lines
                                      if not line.strip().startswith("#")]
    labels = [label for label in labels if label]
    if not labels:
        raise ValueError(f"{where}: no labels in it; give at least one, e.g. --labels \"cat, dog\"")
    folded = [" ".join(label.casefold().split()) for label in labels]
    twice = sorted({label for label, key in zip(labels, folded, strict=True)
                    if folded.count(key) > 1})
    if twice:
        raise ValueError(f"{where}: labels given more than once: {twice}; list each once")
    return labels


def image_files(paths: Sequence[str], recursive: bool) -> list[Path]:
    """Image files named directly, and those in the folders given (their subfolders too with
    ``recursive``), in the order given, each folder's files sorted; each file once."""
    found: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(_folder_images(path, recursive))
        else:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    return list(dict.fromkeys(found))


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    """The image files of ``folder`` (by suffix, hidden files left out), sorted by path."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    images = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                    and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not images:
        subfolders = not recursive and any(p.is_dir() for p in folder.iterdir())
        raise ValueError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it"
                         + ("; it has subfolders: add --recursive" if subfolders else
                            "; give image files or a folder of them"))
    return images


def readable_images(images: Sequence[Path], strict: bool = False) -> list[Path]:
    """The images that decode, in order. Each file is decoded once here (a truncated JPEG only
    shows then), which costs about one more decode per image. Unreadable ones are listed on
    stderr and skipped; with ``strict``, or when none is readable, they are an
    :class:`~mlrkit.data.images.UnreadableImagesError` naming all of them."""
    from PIL import Image

    from mlrkit.data.images import IMAGE_ERRORS, UnreadableImagesError, describe_error

    problems = {}
    for path in images:
        try:
            with Image.open(path) as image:
                image.load()
        except IMAGE_ERRORS as err:
            problems[str(path)] = describe_error(err)
    if problems and (strict or len(problems) == len(images)):
        advice = "fix or remove them" if strict else "none of the images could be read"
        raise UnreadableImagesError(problems, advice + ("" if strict else "; check the paths"))
    if problems:
        listing = "; ".join(f"{image} ({why})" for image, why in problems.items())
        print(f"mlrkit: skipped {len(problems)} unreadable image(s) (--strict: stop instead): "
              f"{listing}", file=sys.stderr)
    return [path for path in images if str(path) not in problems]


def ranked_tags(images: Sequence[str | Path], labels: Sequence[str], scores, top_k: int,
                threshold: float | None = None, on=None) -> list[dict]:
    """``{"image", "labels": [{"label", "score"}, ...]}`` per image of ``scores`` ``(N, L)``:
    best first (equal scores in label order), at most ``top_k``, only scores of at least
    ``threshold``; scores rounded to 6 decimals. With ``on`` (a number, or ``(L,)`` per label)
    each entry also says whether its score reaches it (``"on"``)."""
    bars = None if on is None else np.broadcast_to(np.asarray(on, dtype=float), (len(labels),))
    results = []
    for path, row in zip(images, scores, strict=True):
        order = sorted(range(len(labels)), key=lambda c: -row[c])[:top_k]
        kept = [c for c in order if threshold is None or row[c] >= threshold]
        entries = [{"label": labels[c], "score": round(float(row[c]), 6)} for c in kept]
        if bars is not None:
            for entry, c in zip(entries, kept, strict=True):
                entry["on"] = bool(row[c] >= bars[c])
        results.append({"image": str(path), "labels": entries})
    return results


#: What ``predict`` and ``tag`` write.
TAG_FORMATS = ("json", "csv")


def tag_format(fmt: str | None, out: str | None) -> str:
    """The output format: ``fmt``, else the ``out`` file's suffix (``.json`` / ``.csv``), else
    JSON; a suffix that contradicts ``fmt``, or that names neither format without ``fmt``, is an
    error (a ``.csv`` file never holds JSON)."""
    suffix = None if out is None else Path(out).suffix.lower().lstrip(".")
    if suffix in TAG_FORMATS:
        if fmt is not None and fmt != suffix:
            raise ValueError(f"--out {out} and --format {fmt} disagree; name the file "
                             f".{fmt} or give --format {suffix}")
        return suffix
    if out is not None and fmt is None:
        raise ValueError(f"--out {out}: cannot tell the format from its name; name it .json or "
                         f".csv, or give --format")
    return fmt or "json"


def save_tags(results: list[dict], fmt: str | None, out: str | None,
              overwrite: bool = False) -> None:
    """Write ``results`` as :func:`write_tags` does (in :func:`tag_format`'s format), to stdout,
    or to the file ``out`` (atomically; an existing file only with ``overwrite``)."""
    if out is not None and Path(out).is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name (.json or .csv)")
    fmt = tag_format(fmt, out)
    if out is None:
        write_tags(results, fmt)
        return
    from mlrkit.atomic import atomic_write

    path = Path(out)
    if path.exists() and not overwrite:
        raise FileExistsError(errno.EEXIST, "exists; give another --out or add --overwrite",
                              str(path))
    with atomic_write(path, "w") as f:
        write_tags(results, fmt, f)
    print(f"mlrkit: {len(results)} image(s) written to {path}", file=sys.stderr)


def write_tags(results: list[dict], fmt: str, stream: TextIO | None = None) -> None:
    """Write ``results`` (:func:`ranked_tags`) to ``stream`` (default stdout) as JSON, or as CSV
    with one ``image,rank,label,score`` row per label (and ``on``, 1 / 0, when marked) and one
    row with empty fields for an image with no label listed."""
    stream = sys.stdout if stream is None else stream
    if fmt == "json":
        print(json.dumps(results, indent=1), file=stream)
        return
    writer = csv.writer(stream)
    marked = any("on" in entry for item in results for entry in item["labels"])
    writer.writerow(["image", "rank", "label", "score", *(["on"] if marked else [])])
    for item in results:
        if not item["labels"]:  # kept, as in JSON: the image was scored, no label listed
            writer.writerow([item["image"], "", "", "", *([""] if marked else [])])
        for rank, entry in enumerate(item["labels"], start=1):
            on = [int(entry["on"])] if marked else []
            writer.writerow([item["image"], rank, entry["label"], entry["score"], *on])
