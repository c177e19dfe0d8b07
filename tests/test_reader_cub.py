"""The CUB attribute reader on a format-exact fixture (tests/fixtures/cub, see its README)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlrkit.data import DataFormatError, create_dataset

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "cub"
IMAGES = [
    "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg",
    "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg",
    "002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg",
]
ATTRIBUTES = [
    "has_bill_shape::curved_(up_or_down)",
    "has_bill_shape::dagger",
    "has_wing_color::blue",
    "has_wing_color::brown",
]


@pytest.fixture
def cub_root(tmp_path: Path) -> Path:
    """A copy of the fixture with tiny JPEGs, so tests may break files."""
    root = tmp_path / "cub"
    shutil.copytree(FIXTURE, root)
    for name in IMAGES:
        path = root / "CUB_200_2011" / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 3), (200, 180, 20)).save(path)
    return root


def labels_file(root: Path) -> Path:
    return root / "CUB_200_2011" / "attributes" / "image_attribute_labels.txt"


def replace_line(path: Path, line_no: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_reads_is_present_with_the_official_split(cub_root):
    data = create_dataset("cub", cub_root)
    assert data.name == "cub"
    assert data.class_names == ATTRIBUTES
    assert data.image_ids() == [f"CUB_200_2011/images/{name}" for name in IMAGES]
    assert data.splits.tolist() == ["train", "test", "train"]
    assert data.labels.dtype == np.int8
    # image 1 curved: present with certainty "not visible", still positive (Cole et al.);
    # image 2 brown: a line with two extra columns
    np.testing.assert_array_equal(data.labels, [[1, 0, 0, 1], [0, 1, 1, 1], [0, 0, 0, 0]])
    assert {k: v.tolist() for k, v in data.class_groups.items()} == {
        "has_bill_shape": [0, 1],
        "has_wing_color": [2, 3],
    }


def test_root_may_be_the_inner_folder_and_names_may_sit_in_attributes(cub_root):
    expected = create_dataset("cub", cub_root)
    inner = cub_root / "CUB_200_2011"
    (cub_root / "attributes.txt").rename(inner / "attributes" / "attributes.txt")
    data = create_dataset("cub", inner)
    np.testing.assert_array_equal(data.labels, expected.labels)
    assert data.class_names == ATTRIBUTES and data.image_paths == expected.image_paths


def test_labels_are_placed_by_id_not_by_line_order(cub_root):
    path = labels_file(cub_root)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(reversed(lines)) + "\n")
    data = create_dataset("cub", cub_root)
    np.testing.assert_array_equal(data.labels, [[1, 0, 0, 1], [0, 1, 1, 1], [0, 0, 0, 0]])


@pytest.mark.parametrize(
    "text, message",
    [
        ("2 3", r"expected '<image_id> <attribute_id> <is_present>"),
        ("2 x 1 3 4.72", r"expected '<image_id> <attribute_id> <is_present>"),
        ("2 3 2 3 4.72", r"is_present must be 0 or 1, got '2'"),
        ("9 3 1 3 4.72", r"unknown image id 9"),
        ("2 5 1 3 4.72", r"unknown attribute id 5"),
        ("2 2 1 3 4.72", r"image id 2, attribute id 2 was already given at line 6"),
    ],
)
def test_malformed_label_line_names_file_and_line(cub_root, text, message):
    replace_line(labels_file(cub_root), 7, text)
    with pytest.raises(DataFormatError, match=rf"image_attribute_labels\.txt:7: {message}"):
        create_dataset("cub", cub_root)


def test_missing_label_line_is_an_error(cub_root):
    path = labels_file(cub_root)
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[:-1]))
    with pytest.raises(
        DataFormatError, match=r"image_attribute_labels\.txt: 1 \(image id, attribute id\) pair"
    ):
        create_dataset("cub", cub_root)


def test_malformed_image_and_split_lines_name_file_and_line(cub_root):
    split_file = cub_root / "CUB_200_2011" / "train_test_split.txt"
    replace_line(split_file, 2, "2 yes")
    with pytest.raises(DataFormatError, match=r"train_test_split\.txt:2: is_training_image"):
        create_dataset("cub", cub_root)
    replace_line(cub_root / "CUB_200_2011" / "images.txt", 3, "3")
    with pytest.raises(DataFormatError, match=r"images\.txt:3: expected '<id> <value>'"):
        create_dataset("cub", cub_root)


def test_split_file_must_list_every_image(cub_root):
    (cub_root / "CUB_200_2011" / "train_test_split.txt").write_text("1 1\n2 0\n")
    with pytest.raises(
        DataFormatError, match=r"train_test_split\.txt: .*1 missing \(e\.g\. ids \[3\]"
    ):
        create_dataset("cub", cub_root)


def test_missing_files_are_errors(cub_root):
    (cub_root / "attributes.txt").unlink()
    with pytest.raises(DataFormatError, match=r"attribute names not found"):
        create_dataset("cub", cub_root)


def test_missing_label_file_is_an_error(cub_root):
    labels_file(cub_root).unlink()
    with pytest.raises(DataFormatError, match=r"image_attribute_labels\.txt not found"):
        create_dataset("cub", cub_root)


def test_missing_images_are_counted_unless_unchecked(cub_root):
    shutil.rmtree(cub_root / "CUB_200_2011" / "images" / "002.Laysan_Albatross")
    with pytest.raises(DataFormatError, match=r"1 of 3 file\(s\) not found, e\.g\. .*Laysan"):
        create_dataset("cub", cub_root)
    assert len(create_dataset("cub", cub_root, check_images=False)) == 3


def test_image_name_leading_outside_the_root_names_the_line(cub_root, tmp_path):
    (tmp_path / "secret").mkdir()
    Image.new("RGB", (4, 3)).save(tmp_path / "secret" / "x.jpg")
    replace_line(cub_root / "CUB_200_2011" / "images.txt", 2, "2 ../../../secret/x.jpg")
    with pytest.raises(DataFormatError, match=r"images\.txt:2: image .*outside the dataset root"):
        create_dataset("cub", cub_root)
    assert len(create_dataset("cub", cub_root, allow_outside_root=True)) == 3
