"""Pascal VOC 2007 / 2012 image-level labels, read from the official devkit layout.

Layout (``root`` may hold ``VOCdevkit/``, or be ``VOCdevkit/`` or ``VOC20xx/`` itself)::

    VOCdevkit/VOC2007/Annotations/000005.xml             one XML per image, objects with <difficult>
    VOCdevkit/VOC2007/ImageSets/Main/trainval.txt        image ids of one image set, one per line
    VOCdevkit/VOC2007/ImageSets/Main/chair_trainval.txt  "<id> <1|-1|0>" per line, 0 = difficult only
    VOCdevkit/VOC2007/JPEGImages/000005.jpg

An entry (image, class) is *difficult* when every object of that class in the image is marked
``<difficult>1</difficult>``; this is exactly the ``0`` of the per-class ImageSets files, so both
sources give the same labels.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from mlrkit.data.dataset import (
    NEGATIVE,
    POSITIVE,
    UNKNOWN,
    MultiLabelData,
    fixed_options,
    register_dataset,
)
from mlrkit.data.files import DataFormatError, check_inside_root, require_files

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
DIFFICULT_LABEL = {"unknown": UNKNOWN, "negative": NEGATIVE, "positive": POSITIVE}
SOURCES = ("auto", "xml", "imagesets")
_YEAR_DIR = re.compile(r"VOC(\d{4})")


@register_dataset("voc")
def read_voc(
    root: Path,
    year: int | str | None = None,
    image_sets: str | Sequence[str] | None = None,
    source: Literal["auto", "xml", "imagesets"] = "auto",
    difficult: Literal["unknown", "negative", "positive"] = "unknown",
    check_images: bool = True,
    allow_outside_root: bool = False,
) -> MultiLabelData:
    """Read VOC image-level labels for the 20 classes in the standard order (:data:`VOC_CLASSES`).

    Args:
        root: folder holding ``VOCdevkit/VOC{year}``, or ``VOCdevkit`` or ``VOC{year}`` itself.
        year: ``2007``, ``2012``, ...; ``None`` finds the only ``VOC20xx`` folder under ``root``.
        image_sets: name(s) of ``ImageSets/Main/{name}.txt`` to read; each is a split name.
            Default ``("trainval", "test")`` for 2007 when ``test.txt`` exists, else
            ``("train", "val")``. An image listed in two of them is an error.
        source: ``"xml"`` reads ``Annotations/*.xml``; ``"imagesets"`` reads the per-class
            ``ImageSets/Main/{class}_{name}.txt`` files (what Cole et al.'s single-positive
            preprocessing uses); ``"auto"`` uses XML when ``Annotations/`` exists.
        difficult: label of a difficult-only entry: ``"unknown"`` (-1, default), ``"negative"``
            (0, HCP-MLR-PL's behaviour) or ``"positive"`` (1).
        check_images: raise when a ``JPEGImages/{id}.jpg`` file is missing.
        allow_outside_root: accept image ids whose ``JPEGImages/{id}.jpg`` resolves (symlinks
            followed) outside ``root`` and ``JPEGImages/`` (e.g. ``../../x``); by default they are
            an error naming the image set, checked before any annotation is read.

    Returns:
        ``labels`` ``(N, 20)`` int8; ``splits`` ``(N,)`` image-set names; ``extras["difficult"]``
        ``(N, 20)`` bool, True where the class appears only in difficult objects.
    """
    if difficult not in DIFFICULT_LABEL:
        raise ValueError(f"difficult must be one of {list(DIFFICULT_LABEL)}, got {difficult!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {list(SOURCES)}, got {source!r}")
    root = Path(root)
    voc_dir, year = _find_voc_dir(root, year)
    main_dir = voc_dir / "ImageSets" / "Main"
    if image_sets is None:
        two_sets = str(year) == "2007" and (main_dir / "test.txt").is_file()
        image_sets = ("trainval", "test") if two_sets else ("train", "val")
    image_sets = [image_sets] if isinstance(image_sets, str) else list(image_sets)
    if not image_sets:
        raise ValueError("image_sets must name at least one image set, e.g. ('train', 'val')")
    if source == "auto":
        source = "xml" if (voc_dir / "Annotations").is_dir() else "imagesets"

    ids, splits = _read_image_sets(main_dir, image_sets, from_class_files=source == "imagesets")
    image_paths = [voc_dir / "JPEGImages" / f"{i}.jpg" for i in ids]
    check_inside_root(
        image_paths, root, [voc_dir / "JPEGImages"],
        lambda k: f"{main_dir / splits[k]}.txt, image id {ids[k]!r}", allow_outside_root,
    )
    if source == "xml":
        present, hard = _labels_from_xml(voc_dir / "Annotations", ids)
    else:
        present, hard = _labels_from_class_files(main_dir, image_sets, ids, splits)
    labels = np.where(present, POSITIVE, np.where(hard, DIFFICULT_LABEL[difficult], NEGATIVE))

    if check_images:
        require_files(
            image_paths,
            str(voc_dir / "JPEGImages"),
            "extract the VOC JPEGImages next to Annotations, or pass check_images=False",
        )
    return MultiLabelData(
        name=f"voc{year}" if year is not None else "voc",
        root=root,
        class_names=list(VOC_CLASSES),
        image_paths=image_paths,
        labels=labels.astype(np.int8),
        splits=np.asarray(splits, dtype=str),
        extras={"difficult": hard},
    )


read_voc2007 = register_dataset("voc2007")(fixed_options(read_voc, year=2007))
read_voc2012 = register_dataset("voc2012")(fixed_options(read_voc, year=2012))


def _read_image_sets(main_dir: Path, image_sets: list[str],
                     from_class_files: bool) -> tuple[list[str], list[str]]:
    """The image ids of the ``image_sets`` in order, and each id's set name; an id in two sets
    is an error."""
    ids: list[str] = []
    splits: list[str] = []
    set_of: dict[str, str] = {}
    for name in image_sets:
        set_ids = _read_image_set(main_dir, name, from_class_files=from_class_files)
        clash = [i for i in set_ids if i in set_of]
        if clash:
            raise DataFormatError(
                f"{main_dir}: {len(clash)} image(s) are in both image sets {set_of[clash[0]]!r} "
                f"and {name!r}, e.g. {clash[:3]}; request image sets that do not overlap "
                f"(e.g. 'trainval' alone, or 'train' and 'val')"
            )
        set_of.update(dict.fromkeys(set_ids, name))
        ids += set_ids
        splits += [name] * len(set_ids)
    return ids, splits


def _find_voc_dir(root: Path, year: int | str | None) -> tuple[Path, str | None]:
    """The ``VOC{year}`` folder: ``root`` itself or under ``root`` or ``root/VOCdevkit``; its year."""
    pattern = "VOC*" if year is None else f"VOC{year}"
    if (root / "ImageSets").is_dir():
        found = [root]
    else:
        parents = (root / "VOCdevkit", root)
        found = sorted({d for p in parents for d in p.glob(pattern) if (d / "ImageSets").is_dir()})
    if len(found) != 1:
        what = f"several ({[d.name for d in found]})" if found else "none"
        raise DataFormatError(
            f"looked for one {pattern}/ImageSets folder under {root} and {root / 'VOCdevkit'}, "
            f"found {what}; point root at the folder that holds VOCdevkit/ (as extracted from the "
            f"VOC tar files) or at the VOC20xx folder itself, or pass year="
        )
    match = _YEAR_DIR.fullmatch(found[0].name)
    if year is None:
        return found[0], match[1] if match else None
    if match and match[1] != str(year):
        raise DataFormatError(f"{found[0]} is VOC{match[1]}, not VOC{year}; pass year={match[1]}")
    return found[0], str(year)


def _read_image_set(main_dir: Path, name: str, from_class_files: bool) -> list[str]:
    """Image ids of ``ImageSets/Main/{name}.txt``, in file order.

    With ``from_class_files`` and no ``{name}.txt``, the ids come from ``aeroplane_{name}.txt``.
    """
    path = main_dir / f"{name}.txt"
    if path.is_file():
        return list(_read_id_lines(path, expect_value=False))
    class_file = main_dir / f"{VOC_CLASSES[0]}_{name}.txt"
    if from_class_files and class_file.is_file():
        return list(_read_id_lines(class_file, expect_value=True))
    available = sorted(p.stem for p in main_dir.glob("*.txt") if "_" not in p.stem)
    raise DataFormatError(
        f"image set file {path} not found; available image sets: {available}; pass image_sets= "
        f"with some of them"
    )


def _read_id_lines(path: Path, expect_value: bool) -> dict[str, int]:
    """``{image id: value}`` from lines ``"<id> <1|-1|0>"``, or ``"<id>"`` (value 0), in file order."""
    entries: dict[str, int] = {}
    form = "'<image id> <1|-1|0>'" if expect_value else "'<image id>'"
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 1 + expect_value or (
                expect_value and fields[1] not in ("1", "-1", "0")
            ):
                raise DataFormatError(f"{path}:{line_no}: expected {form}, got {line.strip()!r}")
            if fields[0] in entries:
                raise DataFormatError(f"{path}:{line_no}: image {fields[0]!r} is listed twice")
            entries[fields[0]] = int(fields[1]) if expect_value else 0
    return entries


def _labels_from_xml(ann_dir: Path, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``present`` and ``difficult``, both ``(N, 20)`` bool, from ``Annotations/{id}.xml``.

    ``present``: the class has a non-difficult object; ``difficult``: it has only difficult ones.
    """
    paths = [ann_dir / f"{i}.xml" for i in ids]
    require_files(paths, str(ann_dir), "extract the VOC Annotations, or pass source='imagesets'")
    column = {name: j for j, name in enumerate(VOC_CLASSES)}
    present = np.zeros((len(ids), len(VOC_CLASSES)), dtype=bool)
    hard = np.zeros_like(present)
    for row, path in enumerate(paths):
        for name, is_difficult in _read_objects(path):
            if name not in column:
                raise DataFormatError(
                    f"{path}: object class {name!r} is not a VOC class; known classes: "
                    f"{', '.join(VOC_CLASSES)}"
                )
            (hard if is_difficult else present)[row, column[name]] = True
    return present, hard & ~present


def _read_objects(path: Path) -> list[tuple[str, bool]]:
    """``(class name, difficult)`` of each ``<object>`` in one VOC XML file."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as err:
        raise DataFormatError(
            f"{path}: malformed XML ({err}); re-extract this file from the VOC tar file"
        ) from None
    objects = []
    for k, obj in enumerate(tree.getroot().findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        flag = (obj.findtext("difficult") or "0").strip()
        if not name or flag not in ("0", "1"):
            raise DataFormatError(
                f"{path}: <object> number {k} needs a <name> and a <difficult> of 0 or 1, got "
                f"name {name!r}, difficult {flag!r}; fix or re-extract the file"
            )
        objects.append((name, flag == "1"))
    return objects


def _labels_from_class_files(
    main_dir: Path, image_sets: Sequence[str], ids: list[str], splits: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """``present`` (value 1) and ``difficult`` (value 0), ``(N, 20)`` bool, from the per-class files.

    Each ``{class}_{set}.txt`` must list exactly the images of the image set.
    """
    values = np.zeros((len(ids), len(VOC_CLASSES)), dtype=np.int8)
    split_array = np.asarray(splits, dtype=str)
    for name in image_sets:
        rows = np.flatnonzero(split_array == name)
        set_ids = [ids[i] for i in rows]
        wanted = set(set_ids)
        for j, cls in enumerate(VOC_CLASSES):
            path = main_dir / f"{cls}_{name}.txt"
            if not path.is_file():
                raise DataFormatError(
                    f"class file {path} not found; the per-class ImageSets files come with the VOC "
                    f"tar file, or read Annotations with source='xml'"
                )
            entries = _read_id_lines(path, expect_value=True)
            if entries.keys() != wanted:
                extra = [i for i in entries if i not in wanted]
                lacking = [i for i in set_ids if i not in entries]
                raise DataFormatError(
                    f"{path}: lists other images than image set {name!r}: {len(extra)} extra "
                    f"(e.g. {extra[:3]}), {len(lacking)} missing (e.g. {lacking[:3]}); use the "
                    f"class files of the same VOC release"
                )
            values[rows, j] = [entries[i] for i in set_ids]
    return values == 1, values == 0
