r"""NUS-WIDE: the 81 human-annotated concepts, or the 1006 labels of the zero-shot protocol.

Layout: the official NUS-WIDE archives (``ImageList``, ``Groundtruth``, ``ConceptsList``,
``NUS_WID_Tags``) and the ``Flickr`` image folder, unpacked side by side, as the reference code
reads them: BiAM ``util_nus.py`` (``NUS_WID_Tags/TagList1k.txt``, ``ConceptsList/Concepts81.txt``),
MKT ``utils/dataset.py`` (images at ``Flickr/<folder>/<file>``) and the preprocessing scripts that
built their label files from ``ImageList/Imagelist.txt``, ``NUS_WID_Tags/AllTags1k.txt`` and
``Groundtruth/AllLabels/Labels_<concept>.txt``::

    root/
      ConceptsList/Concepts81.txt     81 concept names, one a line (or root/Concepts81.txt)
      ImageList/Imagelist.txt         every image, one a line, e.g. actor\0001_2124494179.jpg
      ImageList/TrainImagelist.txt    the official training images (161,789), same form
      ImageList/TestImagelist.txt     the official test images (107,859), same form
      Groundtruth/AllLabels/Labels_<concept>.txt                one 0/1 a line, Imagelist order
      Groundtruth/TrainTestLabels/Labels_<concept>_Train.txt    one 0/1 a line, TrainImagelist order
      Groundtruth/TrainTestLabels/Labels_<concept>_Test.txt     one 0/1 a line, TestImagelist order
      NUS_WID_Tags/TagList1k.txt      the 1000 tag names, one a line
      NUS_WID_Tags/AllTags1k.txt      1000 tab-separated 0/1 a line (one per tag), Imagelist order
      NUS_WID_Tags/Train_Tags1k.dat   the same in TrainImagelist order (Test_Tags1k.dat: test)
      Flickr/<folder>/<file>.jpg

Two equivalent sources of labels: ``source="all"`` reads ``Imagelist.txt`` with the ``AllLabels``
and ``AllTags1k.txt`` files and takes the split from the train and test lists; ``"traintest"`` reads
the train and test lists with the per-split ``TrainTestLabels`` and ``*_Tags1k.dat`` files (images
in train-then-test order). The tag files are read only for ``label_set="tags1006"``.

Image-list entries to files: backslashes are path separators (the lists were written on Windows)
and an entry keeps its last two components, ``<folder>/<file>``. So ``actor\0001_2124494179.jpg``
and ``C:\ImageData\Flickr\actor\0001_2124494179.jpg`` both name
``root/Flickr/actor/0001_2124494179.jpg``; train/test entries are matched to ``Imagelist.txt`` the
same way.

Images without labels: about a fifth of NUS-WIDE's images have none of the 81 concepts. They are
kept, with all-negative rows (the ground truth says each concept is absent), and their number is
logged per class group at WARNING level. A protocol that drops them does it explicitly, e.g. the
zero-shot training set keeps ``(labels[:, class_groups["seen"]] == 1).any(1)``.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from mlrkit.data.dataset import POSITIVE, MultiLabelData, register_dataset
from mlrkit.data.files import DataFormatError, check_inside_root, read_lines, require_files

logger = logging.getLogger(__name__)

LABEL_SETS = ("concepts81", "tags1006")
SOURCES = ("auto", "all", "traintest")
_SPLIT_STEMS = (("train", "Train"), ("test", "Test"))
_TAG_BLOCK = 4096  # lines of a tag file parsed at once (about 8 MB of AllTags1k.txt)
_IS_SPACE = np.isin(np.arange(256), list(b"\t\n\r "))  # (256,) bool, indexed by byte value


@register_dataset("nuswide")
def read_nuswide(
    root: Path,
    label_set: Literal["concepts81", "tags1006"] = "concepts81",
    source: Literal["auto", "all", "traintest"] = "auto",
    image_dir: str = "Flickr",
    check_images: bool = True,
    allow_outside_root: bool = False,
) -> MultiLabelData:
    """Read NUS-WIDE labels with the official train/test split.

    Args:
        root: folder holding ``ImageList/``, ``Groundtruth/``, ``NUS_WID_Tags/`` and the images.
        label_set: ``"concepts81"``: the 81 concepts in ``Concepts81.txt`` order, from the human
            ground truth; ``class_groups == {"concepts81": 0..80}``. ``"tags1006"``: the zero-shot
            label set of BiAM / MKT: first the tags of ``TagList1k.txt`` that are not concepts
            (925 on the real lists, in ``TagList1k.txt`` order, labels from the Flickr user tags),
            then the 81 concepts (labels from the ground truth); ``class_groups == {"seen":
            0..924, "unseen": 925..1005}``. Every column is returned for every image: hiding the
            unseen labels of training images is the protocol's job.
        source: ``"all"``, ``"traintest"`` (see the module docstring), or ``"auto"``: ``"all"``
            when ``Groundtruth/AllLabels`` exists.
        image_dir: folder under ``root`` that holds ``<folder>/<file>.jpg``.
        check_images: raise when image files are missing (count and first few in the message).
        allow_outside_root: accept image entries that resolve (symlinks followed) outside
            ``root`` and ``image_dir``; by default they are an error naming the image list.

    Returns:
        ``labels`` ``(N, C)`` int8 of 1 / 0 (no unknowns; ``C`` = 81 or 1006); ``splits`` ``(N,)``
        ``"train"`` / ``"test"``.
    """
    if label_set not in LABEL_SETS:
        raise ValueError(f"label_set must be one of {list(LABEL_SETS)}, got {label_set!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {list(SOURCES)}, got {source!r}")
    root = Path(root)
    if source == "auto":
        source = "all" if (root / "Groundtruth" / "AllLabels").is_dir() else "traintest"

    concepts_file = _find_concepts_file(root)
    concepts = _read_names(concepts_file)
    tags_dir = root / "NUS_WID_Tags"
    tags: list[str] = []
    if label_set == "tags1006":
        tags = _read_names(tags_dir / "TagList1k.txt")
    concept_set = set(concepts)
    seen = np.array([j for j, tag in enumerate(tags) if tag not in concept_set], dtype=np.int64)

    keys, concept_labels, tag_labels, splits = _read_labels(
        root, source, concepts, concepts_file, len(tags), seen)
    if label_set == "concepts81":
        class_names = concepts
        labels = concept_labels
        bounds = {"concepts81": (0, len(concepts))}
    else:
        class_names = [tags[j] for j in seen] + concepts
        labels = np.concatenate([tag_labels, concept_labels], axis=1)
        bounds = {"seen": (0, len(seen)), "unseen": (len(seen), len(class_names))}
    for group, (start, stop) in bounds.items():
        _log_images_without_positive(root, labels[:, start:stop], group)

    image_folder = root / image_dir
    image_paths = [image_folder / key for key in keys]
    check_inside_root(image_paths, root, [image_folder],
                      lambda i: f"{root / 'ImageList'}, entry {keys[i]!r}", allow_outside_root)
    if check_images:
        require_files(
            image_paths,
            str(image_folder),
            f"unpack the NUS-WIDE images as {image_dir}/<folder>/<file>.jpg under {root}, "
            f"or pass check_images=False",
        )
    return MultiLabelData(
        name="nuswide",
        root=root,
        class_names=class_names,
        image_paths=image_paths,
        labels=labels,
        splits=np.asarray(splits, dtype=str),
        class_groups={group: np.arange(*bound) for group, bound in bounds.items()},
    )


def _read_labels(root: Path, source: str, concepts: list[str], concepts_file: Path,
                 num_tags: int, seen: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray,
                                                           np.ndarray]:
    """The image keys, concept labels ``(N, 81)``, tag labels ``(N, num_tags')`` of the ``seen``
    tags and splits ``(N,)`` of ``source`` ``"all"`` or ``"traintest"`` (the module docstring)."""
    tags_dir = root / "NUS_WID_Tags"
    if source == "all":
        list_file = root / "ImageList" / "Imagelist.txt"
        label_files = _label_files(root, "AllLabels", "", concepts, concepts_file)
        keys, concept_labels, tag_labels = _read_part(
            list_file, label_files, tags_dir / "AllTags1k.txt", num_tags, seen
        )
        return keys, concept_labels, tag_labels, _splits_from_lists(root, keys, list_file)
    train, test = (
        _read_part(
            root / "ImageList" / f"{stem}Imagelist.txt",
            _label_files(root, "TrainTestLabels", f"_{stem}", concepts, concepts_file),
            tags_dir / f"{stem}_Tags1k.dat",
            num_tags,
            seen,
        )
        for _, stem in _SPLIT_STEMS
    )
    _check_disjoint(root, train.keys, test.keys)
    return (train.keys + test.keys,
            np.concatenate([train.concept_labels, test.concept_labels]),
            np.concatenate([train.tag_labels, test.tag_labels]),
            np.repeat(["train", "test"], [len(train.keys), len(test.keys)]))


def _find_concepts_file(root: Path) -> Path:
    candidates = [root / "ConceptsList" / "Concepts81.txt", root / "Concepts81.txt"]
    for path in candidates:
        if path.is_file():
            return path
    raise DataFormatError(
        f"concept list not found: looked for {candidates[0]} and {candidates[1]}; unpack "
        f"NUS-WIDE's ConceptsList archive under {root}"
    )


def _label_files(
    root: Path, folder_name: str, suffix: str, concepts: list[str], concepts_file: Path
) -> list[Path]:
    """The ``Groundtruth/<folder_name>/Labels_<concept><suffix>.txt`` file of each concept.

    A missing file is reported at the concept's line of ``concepts_file``; a label file of a concept
    that ``concepts_file`` does not list is an error too (a mix of releases).
    """
    folder = root / "Groundtruth" / folder_name
    if not folder.is_dir():
        raise DataFormatError(
            f"label folder {folder} not found; unpack NUS-WIDE's Groundtruth archive under {root}"
        )
    prefix, end = "Labels_", f"{suffix}.txt"
    listed = set(concepts)
    for path in sorted(folder.glob(f"{prefix}*{end}")):
        concept = path.name[len(prefix) : len(path.name) - len(end)]
        if concept not in listed:
            raise DataFormatError(
                f"{path}: label file of concept {concept!r}, which {concepts_file} does not list; "
                f"use the concept list and ground truth of the same NUS-WIDE release"
            )
    paths = [folder / f"{prefix}{concept}{end}" for concept in concepts]
    for line_no, path in enumerate(paths, start=1):
        if not path.is_file():
            raise DataFormatError(
                f"{concepts_file}:{line_no}: concept {concepts[line_no - 1]!r} has no label file "
                f"{path}"
            )
    return paths


class _Part(NamedTuple):
    """The images of one image list and their labels, rows in list order."""

    keys: list[str]  # N "<folder>/<file>"
    concept_labels: np.ndarray  # (N, 81) int8
    tag_labels: np.ndarray  # (N, S) int8, the S kept columns of the tag file


def _read_part(
    list_file: Path, label_files: list[Path], tag_file: Path, num_tags: int, keep: np.ndarray
) -> _Part:
    """The images of one image list, one concept column per label file, and tag columns ``keep``.

    ``tag_file`` (``num_tags`` columns) is read only when ``keep`` is not empty.
    """
    keys = _read_image_list(list_file)
    concept_labels = np.zeros((len(keys), len(label_files)), dtype=np.int8)
    for j, path in enumerate(label_files):
        concept_labels[:, j] = _read_label_column(path, list_file, len(keys))
    tag_labels = np.zeros((len(keys), 0), dtype=np.int8)
    if keep.size:
        tag_labels = _read_tag_matrix(tag_file, list_file, len(keys), num_tags, keep)
    return _Part(keys, concept_labels, tag_labels)


def _read_lines(path: Path) -> list[bytes]:
    return read_lines(path, "NUS-WIDE's archives unpack to ImageList/, Groundtruth/, "
                            "ConceptsList/ and NUS_WID_Tags/ under the dataset root", binary=True)


def _read_names(path: Path) -> list[str]:
    """Names of a list file (``Concepts81.txt``, ``TagList1k.txt``), one a line, in file order."""
    names: dict[str, int] = {}
    for line_no, line in enumerate(_read_lines(path), start=1):
        name = line.decode("utf-8").strip()
        if not name:
            raise DataFormatError(f"{path}:{line_no}: empty line; expected one name a line")
        if name in names:
            raise DataFormatError(
                f"{path}:{line_no}: name {name!r} is listed twice (first at line {names[name]})"
            )
        names[name] = line_no
    return list(names)


def _read_image_list(path: Path) -> list[str]:
    """``"<folder>/<file>"`` keys of an image list, in file order (see the module docstring)."""
    keys: dict[str, int] = {}
    for line_no, line in enumerate(_read_lines(path), start=1):
        entry = line.decode("utf-8").strip()
        parts = [p for p in entry.replace("\\", "/").split("/") if p]
        if len(parts) < 2:
            raise DataFormatError(
                f"{path}:{line_no}: expected an image entry like 'actor\\0001_2124494179.jpg', "
                f"got {entry!r}"
            )
        key = "/".join(parts[-2:])
        if key in keys:
            raise DataFormatError(
                f"{path}:{line_no}: image {key!r} is listed twice (first at line {keys[key]})"
            )
        keys[key] = line_no
    return list(keys)


def _read_label_column(path: Path, list_file: Path, num_images: int) -> np.ndarray:
    """``(num_images,)`` int8 from a ``Labels_<concept>`` file: one ``0`` or ``1`` a line."""
    lines = _read_lines(path)
    if len(lines) != num_images:
        raise DataFormatError(
            f"{path}: {len(lines)} lines, expected {num_images} (one per image of {list_file})"
        )
    joined = b"".join(lines)
    if len(joined) == num_images:  # fast path: every line is a single character
        values = np.frombuffer(joined, dtype=np.uint8) - ord("0")
        if (values <= 1).all():
            return values.astype(np.int8)
    values = np.empty(num_images, dtype=np.int8)
    for line_no, line in enumerate(lines, start=1):
        value = line.strip()
        if value not in (b"0", b"1"):
            raise DataFormatError(f"{path}:{line_no}: expected 0 or 1, got {value.decode()!r}")
        values[line_no - 1] = value == b"1"
    return values


def _read_tag_matrix(
    path: Path, list_file: Path, num_images: int, num_tags: int, keep: np.ndarray
) -> np.ndarray:
    """Columns ``keep`` of a tag file (one image a line, ``num_tags`` 0/1 separated by tabs).

    The file (540 MB for ``AllTags1k.txt``) is read in blocks of lines, not held in memory.

    Returns:
        ``(num_images, len(keep))`` int8.
    """
    if not path.is_file():
        raise DataFormatError(
            f"{path} not found; unpack NUS-WIDE's NUS_WID_Tags archive under the dataset root"
        )
    matrix = np.empty((num_images, len(keep)), dtype=np.int8)
    with open(path, "rb") as f:
        done = 0
        while done < num_images:
            block = list(itertools.islice(f, min(_TAG_BLOCK, num_images - done)))
            if not block:
                break
            rows = _parse_tag_block(block, path, done + 1, num_tags)
            matrix[done : done + len(block)] = rows[:, keep]
            done += len(block)
        extra = sum(1 for line in f if line.strip())
    if done != num_images or extra:
        raise DataFormatError(
            f"{path}: {done + extra} lines, expected {num_images} (one per image of {list_file})"
        )
    return matrix


def _parse_tag_block(lines: list[bytes], path: Path, first_line: int, num_tags: int) -> np.ndarray:
    """``(len(lines), num_tags)`` int8 of lines holding ``num_tags`` whitespace-separated 0/1.

    ``first_line`` is the line number of ``lines[0]`` in ``path``, for error messages.
    """
    width = len(lines[0])
    if width >= 2 * num_tags and all(len(line) == width for line in lines):
        # Fast path for the official layout, lines of equal length such as "0\t1\t...0\t\n":
        # digits at even offsets, one whitespace byte after each, only whitespace after the last.
        table = np.frombuffer(b"".join(lines), dtype=np.uint8).reshape(len(lines), width)
        values = table[:, 0 : 2 * num_tags : 2] - ord("0")
        separators = table[:, 1 : 2 * num_tags : 2]
        tail = table[:, 2 * num_tags :]
        if (values <= 1).all() and _IS_SPACE[separators].all() and _IS_SPACE[tail].all():
            return values.astype(np.int8)
    rows = np.empty((len(lines), num_tags), dtype=np.int8)
    for k, line in enumerate(lines):
        fields = line.split()
        bad = [v.decode() for v in fields if v not in (b"0", b"1")]
        if bad or len(fields) != num_tags:
            found = f"value {bad[0]!r}" if bad else f"{len(fields)} values"
            raise DataFormatError(
                f"{path}:{first_line + k}: expected {num_tags} values 0/1 (one per tag of "
                f"TagList1k.txt), got {found}"
            )
        rows[k] = [v == b"1" for v in fields]
    return rows


def _splits_from_lists(root: Path, keys: list[str], list_file: Path) -> np.ndarray:
    """``(N,)`` ``"train"`` / ``"test"`` of the images in ``keys`` from the train and test lists."""
    row_of = {key: i for i, key in enumerate(keys)}
    splits = np.full(len(keys), "", dtype=object)
    for name, stem in _SPLIT_STEMS:
        path = root / "ImageList" / f"{stem}Imagelist.txt"
        for line_no, key in enumerate(_read_image_list(path), start=1):
            i = row_of.get(key)
            if i is None:
                raise DataFormatError(f"{path}:{line_no}: image {key!r} is not in {list_file}")
            if splits[i]:
                raise DataFormatError(
                    f"{path}:{line_no}: image {key!r} is also in the {splits[i]} list"
                )
            splits[i] = name
    missing = [keys[i] for i in np.flatnonzero(splits == "")]
    if missing:
        raise DataFormatError(
            f"{list_file}: {len(missing)} image(s) are in neither TrainImagelist.txt nor "
            f"TestImagelist.txt, e.g. {missing[:3]}; use the image lists of one NUS-WIDE release"
        )
    return splits.astype(str)


def _check_disjoint(root: Path, train_keys: list[str], test_keys: list[str]) -> None:
    both = sorted(set(train_keys) & set(test_keys))
    if both:
        raise DataFormatError(
            f"{root / 'ImageList'}: {len(both)} image(s) are in both TrainImagelist.txt and "
            f"TestImagelist.txt, e.g. {both[:3]}"
        )


def _log_images_without_positive(root: Path, labels: np.ndarray, group: str) -> None:
    """Log how many images (rows of ``labels``, ``(N, C_group)``) have no positive in a group."""
    count = int((labels.max(axis=1, initial=0) < POSITIVE).sum())
    if count:
        logger.warning(
            "nuswide at %s: %d of %d images have no positive label among the %s classes; "
            "they are kept, with all-negative rows",
            root,
            count,
            len(labels),
            group,
        )
