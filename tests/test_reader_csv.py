"""The generic CSV reader on the real coco2014-6k and MIML label files and on small broken files."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from conftest import real_data

from mlrkit.data import DataFormatError, create_dataset


def split_sizes(data) -> dict[str, int]:
    return {s: int((data.splits == s).sum()) for s in data.split_names()}


def test_reads_coco2014_6k_label_lists_with_classes_txt_and_its_split():
    data = create_dataset("csv", real_data("coco2014-6k"))
    assert data.name == "coco2014-6k"
    assert data.labels.shape == (6168, 80) and data.labels.dtype == np.int8
    assert data.class_names[0] == "person" and data.class_names[-1] == "toothbrush"  # classes.txt
    assert data.class_names[4] == "airplane"  # COCO-80 order, not sorted
    assert set(np.unique(data.labels)) == {0, 1}
    assert abs(data.labels.sum(1).mean() - 2.84) < 0.01
    assert split_sizes(data) == {"train": 4948, "test": 1220}
    first = data.image_paths[0]
    assert first.parent.name == "images" and first.name == "COCO_train2014_000000000009.jpg"
    assert {data.class_names[j] for j in np.flatnonzero(data.labels[0])} == {
        "bowl", "orange", "broccoli"}


def test_reads_miml_with_a_filenames_column():
    data = create_dataset("csv", real_data("miml"))
    assert data.labels.shape == (2000, 5)
    assert data.class_names == ["desert", "mountains", "sea", "sunset", "trees"]
    assert split_sizes(data) == {"train": 1228, "val": 377, "test": 395}
    assert abs(data.labels.sum(1).mean() - 1.24) < 0.01


def write(root: Path, text: str, images: Sequence[str] = ()) -> Path:
    """A label file under ``root`` and empty image files under ``root/images``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for image in images:
        (root / "images" / image).write_bytes(b"")
    path = root / "labels.csv"
    path.write_text(text)
    return path


def test_class_columns_with_unknown_cells(tmp_path):
    write(
        tmp_path,
        "image,dog,cat\na.jpg,1,0\nb.jpg,,-1\n\nc.jpg, 0 ,1\n",
        ["a.jpg", "b.jpg", "c.jpg"],
    )
    data = create_dataset("csv", tmp_path)
    assert data.class_names == ["dog", "cat"] and data.splits is None
    np.testing.assert_array_equal(data.labels, [[1, 0], [-1, -1], [0, 1]])
    assert data.image_ids() == ["images/a.jpg", "images/b.jpg", "images/c.jpg"]


def test_images_relative_to_root_without_an_images_folder(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.jpg").write_bytes(b"")
    (tmp_path / "mine.csv").write_text("file,dog\npics/a.jpg,1\n")
    data = create_dataset("csv", tmp_path, labels_file="mine.csv")
    assert data.image_paths == [tmp_path / "pics" / "a.jpg"]


def test_label_lists_with_the_sorted_union_of_names(tmp_path):
    write(
        tmp_path,
        "image,labels\na.jpg,dog;person\nb.jpg,\nc.jpg, cat \n",
        ["a.jpg", "b.jpg", "c.jpg"],
    )
    data = create_dataset("csv", tmp_path)
    assert data.class_names == ["cat", "dog", "person"]
    np.testing.assert_array_equal(data.labels, [[0, 1, 1], [0, 0, 0], [1, 0, 0]])
    unknown = create_dataset("csv", tmp_path, unlisted="unknown").labels
    np.testing.assert_array_equal(unknown, [[-1, 1, 1], [-1, -1, -1], [1, -1, -1]])


def test_label_lists_take_classes_txt_or_the_classes_option(tmp_path):
    write(tmp_path, "image,labels\na.jpg,dog\n", ["a.jpg"])
    (tmp_path / "classes.txt").write_text("person\ndog\n\nbird\n")
    data = create_dataset("csv", tmp_path)
    assert data.class_names == ["person", "dog", "bird"]
    np.testing.assert_array_equal(data.labels, [[0, 1, 0]])
    assert create_dataset("csv", tmp_path, classes=["dog", "cow"]).class_names == ["dog", "cow"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("image,dog,cat\na.jpg,1,0\nb.jpg,1,yes\n", r"labels\.csv:3: column 'cat' holds 'yes'"),
        ("image,dog,cat\na.jpg,1,0\nb.jpg,1\n", r"labels\.csv:3: 2 cells, expected 3"),
        ("image,dog\na.jpg,1\nb.jpg,0\na.jpg,0\n", r"labels\.csv:4: image 'a.jpg' is already .* 2"),
        ("image,dog,dog\na.jpg,1,0\n", r"labels\.csv:1: class name\(s\) \['dog'\] appear twice"),
        ("image,labels\na.jpg,dog\nb.jpg,dog;cat\n", r"labels\.csv:3: unknown class .*\['cat'\]"),
        ("image,labels\na.jpg,dog,cat\n", r"labels\.csv:2: 3 cells, expected 2"),
        ("", r"labels\.csv: empty file"),
        ("image,dog\n", r"labels\.csv: no image rows"),
    ],
)
def test_broken_files_name_file_and_line(tmp_path, text, message):
    write(tmp_path, text, ["a.jpg", "b.jpg"])
    (tmp_path / "classes.txt").write_text("dog\nperson\n")
    with pytest.raises(DataFormatError, match=message):
        create_dataset("csv", tmp_path)


def test_unknown_class_lists_the_known_ones(tmp_path):
    write(tmp_path, "image,labels\na.jpg,dgo\n", ["a.jpg"])
    with pytest.raises(DataFormatError, match=r"labels\.csv:2: .*\['dgo'\].*: dog, cat$"):
        create_dataset("csv", tmp_path, classes=["dog", "cat"])


def test_missing_images_and_label_file_are_errors(tmp_path):
    write(tmp_path, "image,dog\na.jpg,1\nb.jpg,0\nc.jpg,1\n", ["b.jpg"])
    with pytest.raises(DataFormatError, match=r"labels\.csv .*2 of 3 file\(s\) not found.*a\.jpg"):
        create_dataset("csv", tmp_path)
    assert len(create_dataset("csv", tmp_path, check_images=False)) == 3
    with pytest.raises(DataFormatError, match=r"label file .*other\.csv not found"):
        create_dataset("csv", tmp_path, labels_file="other.csv")


def test_classes_option_must_match_the_header(tmp_path):
    write(tmp_path, "image,dog,cat\na.jpg,1,0\n", ["a.jpg"])
    with pytest.raises(DataFormatError, match=r"labels\.csv:1: the header's classes"):
        create_dataset("csv", tmp_path, classes=["cat", "dog"])


def secret_image(tmp_path: Path) -> Path:
    """An image file outside the dataset root ``tmp_path / "data"``."""
    secret = tmp_path / "secret" / "x.jpg"
    secret.parent.mkdir(parents=True)
    secret.write_bytes(b"")
    return secret


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_image_outside_the_root_is_refused_naming_the_line_unless_allowed(tmp_path, kind):
    root, secret = tmp_path / "data", secret_image(tmp_path)
    name = {"dotdot": "../../secret/x.jpg", "absolute": str(secret), "symlink": "link.jpg"}[kind]
    write(root, f"image,dog\na.jpg,1\n{name},0\n", ["a.jpg"])
    if kind == "symlink":
        (root / "images" / "link.jpg").symlink_to(secret)
    with pytest.raises(DataFormatError,
                       match=r"labels\.csv:3: image .* outside the dataset root.*"
                             r"allow_outside_root"):
        create_dataset("csv", root)
    data = create_dataset("csv", root, allow_outside_root=True)
    assert data.image_paths[1].resolve() == secret.resolve()


def test_links_that_stay_inside_and_a_linked_image_folder_are_accepted(tmp_path):
    store = tmp_path / "disk" / "photos"
    store.mkdir(parents=True)
    (store / "a.jpg").write_bytes(b"")
    root = tmp_path / "data"
    root.mkdir()
    (root / "images").symlink_to(store)  # the whole image folder lives on another disk
    (root / "labels.csv").write_text("image,dog\na.jpg,1\nb.jpg,0\n")
    (store / "b.jpg").symlink_to(store / "a.jpg")  # a link within the image folder
    assert len(create_dataset("csv", root)) == 2


def test_a_file_separated_by_semicolons_is_named_so(tmp_path):
    (tmp_path / "labels.csv").write_text("image;cat;dog\na.jpg;1;0\n")
    with pytest.raises(DataFormatError, match=r"labels\.csv:1: .*seems separated by semicolons: "
                                              r"mlrkit reads comma-separated files"):
        create_dataset("csv", tmp_path, check_images=False)
