"""CUB-200-2011 with its 312 binary attributes as labels, as in the single-positive papers.

Layout: the official ``CUB_200_2011.tgz``, unpacked; it holds ``attributes.txt`` next to the
``CUB_200_2011/`` folder. ``root`` is the folder the archive was unpacked into, or
``CUB_200_2011/`` itself. The files are those of Cole et al.'s ``preproc/format_cub.py``::

    root/
      attributes.txt                       "<attribute_id> <name>", e.g. 2 has_bill_shape::dagger
      CUB_200_2011/images.txt              "<image_id> <image_name>", e.g. 1 001.Black.../x.jpg
      CUB_200_2011/train_test_split.txt    "<image_id> <is_training_image>" (1 train, 0 test)
      CUB_200_2011/attributes/image_attribute_labels.txt
                                           "<image_id> <attribute_id> <is_present> <certainty_id>
                                           <time>", one line per image and attribute
      CUB_200_2011/images/<image_name>

The attribute names may also sit at ``CUB_200_2011/attributes/attributes.txt`` (where the dataset's
README puts them).

Labels follow Cole et al.: the label is ``is_present`` (1 / 0) and ``certainty_id`` is ignored, so
an attribute marked present with certainty "not visible" is positive. Some lines of the real
``image_attribute_labels.txt`` have extra columns; Cole et al. read it with pandas and ``usecols``,
which takes the first fields of every line by position and ignores the rest, and so does this
reader. Unlike the reference, which relies on the line order, each line is placed by its
``image_id`` and ``attribute_id``: a missing, repeated or unknown pair is an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlrkit.data.dataset import MultiLabelData, register_dataset
from mlrkit.data.files import DataFormatError, check_inside_root, read_lines, require_files


@register_dataset("cub")
def read_cub(
    root: Path, check_images: bool = True, allow_outside_root: bool = False
) -> MultiLabelData:
    """Read the CUB attribute labels with the official train/test split.

    Args:
        root: the folder ``CUB_200_2011.tgz`` was unpacked into, or ``CUB_200_2011/`` itself.
        check_images: raise when image files are missing (count and first few in the message).
        allow_outside_root: accept image names in ``images.txt`` that resolve (symlinks followed)
            outside ``root`` and ``images/``; by default they are an error naming the line.

    Returns:
        ``labels`` ``(N, 312)`` int8 of 1 / 0 in ``images.txt`` order, columns in
        ``attributes.txt`` order; ``splits`` ``(N,)`` ``"train"`` / ``"test"`` (Cole et al. split
        the official train set 80/20 into train and val later; that is a protocol step);
        ``class_groups``: the attributes of each part-property, e.g. ``"has_bill_shape"``.
    """
    root = Path(root)
    base = root if (root / "images.txt").is_file() else root / "CUB_200_2011"
    names_file = _find_attribute_names(base)

    images = _read_id_table(base / "images.txt")
    is_train = _read_id_table(base / "train_test_split.txt")
    attributes = _read_id_table(names_file)
    image_ids = list(images)
    splits = _splits(base / "train_test_split.txt", is_train, image_ids, base / "images.txt")
    labels = _read_attribute_labels(
        base / "attributes" / "image_attribute_labels.txt", image_ids, list(attributes)
    )

    class_names = list(attributes.values())
    groups: dict[str, list[int]] = {}
    for j, name in enumerate(class_names):
        groups.setdefault(name.split("::")[0], []).append(j)

    image_paths = [base / "images" / name for name in images.values()]
    check_inside_root(image_paths, root, [base / "images"],
                      lambda i: f"{base / 'images.txt'}:{i + 1}", allow_outside_root)
    if check_images:
        require_files(
            image_paths,
            str(base / "images"),
            "unpack CUB_200_2011.tgz with its images/ folder, or pass check_images=False",
        )
    return MultiLabelData(
        name="cub",
        root=root,
        class_names=class_names,
        image_paths=image_paths,
        labels=labels,
        splits=splits,
        class_groups={group: np.asarray(cols) for group, cols in groups.items()},
    )


def _find_attribute_names(base: Path) -> Path:
    candidates = [base / "attributes" / "attributes.txt", base.parent / "attributes.txt"]
    for path in candidates:
        if path.is_file():
            return path
    raise DataFormatError(
        f"attribute names not found: looked for {candidates[0]} and {candidates[1]}; "
        f"CUB_200_2011.tgz has attributes.txt next to its CUB_200_2011/ folder"
    )


def _read_lines(path: Path) -> list[str]:
    return read_lines(path, "unpack CUB_200_2011.tgz and point root at the folder that holds "
                            "CUB_200_2011/")


def _read_id_table(path: Path) -> dict[int, str]:
    """``{id: value}`` from lines ``"<id> <value>"`` (ids unique integers), in file order."""
    table: dict[int, str] = {}
    for line_no, line in enumerate(_read_lines(path), start=1):
        fields = line.split()
        if len(fields) != 2 or not fields[0].isdigit():
            raise DataFormatError(f"{path}:{line_no}: expected '<id> <value>', got {line!r}")
        key = int(fields[0])
        if key in table:
            raise DataFormatError(f"{path}:{line_no}: id {key} is listed twice")
        table[key] = fields[1]
    return table


def _splits(
    path: Path, is_train: dict[int, str], image_ids: list[int], images_file: Path
) -> np.ndarray:
    """``(N,)`` ``"train"`` / ``"test"`` of ``image_ids`` from ``train_test_split.txt``."""
    for line_no, flag in enumerate(is_train.values(), start=1):
        if flag not in ("0", "1"):
            raise DataFormatError(
                f"{path}:{line_no}: is_training_image must be 0 or 1, got {flag!r}"
            )
    known = set(image_ids)
    missing = [key for key in image_ids if key not in is_train]
    unknown = [key for key in is_train if key not in known]
    if missing or unknown:
        raise DataFormatError(
            f"{path}: must list the images of {images_file} exactly; {len(missing)} missing "
            f"(e.g. ids {missing[:3]}), {len(unknown)} unknown (e.g. ids {unknown[:3]})"
        )
    return np.asarray(["train" if is_train[key] == "1" else "test" for key in image_ids])


def _read_attribute_labels(
    path: Path, image_ids: list[int], attribute_ids: list[int]
) -> np.ndarray:
    """``(len(image_ids), len(attribute_ids))`` int8 is_present from ``image_attribute_labels.txt``.

    The first three fields of each line are image id, attribute id and is_present; later fields
    (certainty, time, and the extra columns of some real lines) are not read.
    """
    row_of = {key: i for i, key in enumerate(image_ids)}
    col_of = {key: j for j, key in enumerate(attribute_ids)}
    num_cols = len(attribute_ids)
    cells: list[int] = []
    present: list[bool] = []
    for line_no, line in enumerate(_read_lines(path), start=1):
        fields = line.split(None, 3)
        if len(fields) < 3 or not (fields[0].isdigit() and fields[1].isdigit()):
            raise DataFormatError(
                f"{path}:{line_no}: expected '<image_id> <attribute_id> <is_present> "
                f"<certainty_id> <time>', got {line!r}"
            )
        row, col = row_of.get(int(fields[0])), col_of.get(int(fields[1]))
        if row is None or col is None:
            what = f"image id {fields[0]}" if row is None else f"attribute id {fields[1]}"
            raise DataFormatError(f"{path}:{line_no}: unknown {what}")
        if fields[2] not in ("0", "1"):
            raise DataFormatError(f"{path}:{line_no}: is_present must be 0 or 1, got {fields[2]!r}")
        cells.append(row * num_cols + col)
        present.append(fields[2] == "1")

    flat = np.asarray(cells, dtype=np.int64)
    counts = np.bincount(flat, minlength=len(image_ids) * num_cols)
    repeated = np.flatnonzero(counts[flat] > 1)
    if repeated.size:
        first, again = np.flatnonzero(flat == flat[repeated[0]])[:2]
        raise DataFormatError(
            f"{path}:{again + 1}: image id {image_ids[flat[again] // num_cols]}, attribute id "
            f"{attribute_ids[flat[again] % num_cols]} was already given at line {first + 1}"
        )
    missing = np.flatnonzero(counts == 0)
    if missing.size:
        pairs = [(image_ids[k // num_cols], attribute_ids[k % num_cols]) for k in missing[:3]]
        raise DataFormatError(
            f"{path}: {missing.size} (image id, attribute id) pair(s) have no line, e.g. {pairs}; "
            f"the file needs one line per image and attribute"
        )
    labels = np.zeros(len(image_ids) * num_cols, dtype=np.int8)
    labels[flat] = present
    return labels.reshape(len(image_ids), num_cols)
