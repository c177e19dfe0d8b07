"""The NUS-WIDE reader on a format-exact fixture (tests/fixtures/nuswide, see its README)."""

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlrkit.data import DataFormatError, create_dataset

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "nuswide"
IMAGES = [
    "actor/0001_2124494179.jpg",
    "actor/0002_174174086.jpg",
    "beach/0001_1234567890.jpg",
    "beach/0002_2345678901.jpg",
    "zoo/0001_3456789012.jpg",
]


@pytest.fixture
def nus_root(tmp_path: Path) -> Path:
    """A copy of the fixture with tiny JPEGs under Flickr/, so tests may break files."""
    root = tmp_path / "nuswide"
    shutil.copytree(FIXTURE, root)
    for key in IMAGES:
        path = root / "Flickr" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 3), (20, 90, 200)).save(path)
    return root


def keys(data) -> list[str]:
    return [Path(p).relative_to(data.root / "Flickr").as_posix() for p in data.image_paths]


def row(data, key: str) -> dict[str, int]:
    """Positive classes of one image as {class: 1}."""
    i = keys(data).index(key)
    return {c: int(v) for c, v in zip(data.class_names, data.labels[i], strict=True) if v != 0}


def test_reads_the_81_concepts_with_the_official_split(nus_root):
    data = create_dataset("nuswide", nus_root)
    assert data.name == "nuswide"
    assert data.class_names == ["animal", "sky", "water"]
    assert data.labels.shape == (5, 3) and data.labels.dtype == np.int8
    assert keys(data) == IMAGES  # Imagelist.txt order, backslashes turned into folders
    assert data.image_ids()[0] == "Flickr/actor/0001_2124494179.jpg"
    assert data.splits.tolist() == ["train", "test", "train", "test", "train"]
    assert row(data, "actor/0001_2124494179.jpg") == {"sky": 1}
    assert row(data, "actor/0002_174174086.jpg") == {}  # no concept: kept as all-negative
    assert row(data, "beach/0001_1234567890.jpg") == {"sky": 1, "water": 1}
    assert row(data, "beach/0002_2345678901.jpg") == {"animal": 1, "water": 1}
    assert row(data, "zoo/0001_3456789012.jpg") == {"animal": 1}
    assert set(data.class_groups) == {"concepts81"}
    assert data.class_groups["concepts81"].tolist() == [0, 1, 2]


def test_tags1006_has_the_seen_tags_first_then_the_concepts(nus_root):
    data = create_dataset("nuswide", nus_root, label_set="tags1006")
    assert data.class_names == ["nature", "blue", "sunset", "portrait", "animal", "sky", "water"]
    assert data.class_groups["seen"].tolist() == [0, 1, 2, 3]
    assert data.class_groups["unseen"].tolist() == [4, 5, 6]
    expected = [
        [0, 0, 0, 1, 0, 1, 0],
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 1, 1],
        [0, 0, 0, 0, 1, 0, 1],
        [1, 0, 0, 0, 1, 0, 0],  # tagged "sky" by its owner, but the concept sky is absent
    ]
    np.testing.assert_array_equal(data.labels, expected)


@pytest.mark.parametrize("label_set", ["concepts81", "tags1006"])
def test_train_test_files_give_the_same_labels_as_the_all_image_files(nus_root, label_set):
    from_all = create_dataset("nuswide", nus_root, label_set=label_set, source="all")
    from_splits = create_dataset("nuswide", nus_root, label_set=label_set, source="traintest")
    assert keys(from_splits) == [IMAGES[i] for i in (0, 2, 4, 1, 3)]  # train list, then test list
    order = [keys(from_all).index(k) for k in keys(from_splits)]
    np.testing.assert_array_equal(from_splits.labels, from_all.labels[order])
    assert from_splits.splits.tolist() == from_all.splits[order].tolist()
    assert from_splits.class_names == from_all.class_names


def test_auto_source_falls_back_to_the_train_test_files(nus_root):
    shutil.rmtree(nus_root / "Groundtruth" / "AllLabels")
    data = create_dataset("nuswide", nus_root)
    assert data.splits.tolist() == ["train"] * 3 + ["test"] * 2


def test_images_without_a_positive_are_kept_and_counted(nus_root, caplog):
    with caplog.at_level(logging.WARNING, logger="mlrkit.data.nuswide"):
        data = create_dataset("nuswide", nus_root, label_set="tags1006")
    assert len(data) == 5
    messages = [r.getMessage() for r in caplog.records]
    assert any("1 of 5 images have no positive label among the seen classes" in m for m in messages)
    assert any(
        "1 of 5 images have no positive label among the unseen classes" in m for m in messages
    )


def test_windows_prefixes_in_image_lists_name_the_same_files(nus_root):
    image_list = nus_root / "ImageList" / "Imagelist.txt"
    lines = image_list.read_text().splitlines()
    image_list.write_text("".join(f"C:\\ImageData\\Flickr\\{line}\r\n" for line in lines))
    assert keys(create_dataset("nuswide", nus_root)) == IMAGES


def test_crlf_line_ends_and_no_trailing_tab_read_the_same(nus_root):
    expected = create_dataset("nuswide", nus_root, label_set="tags1006").labels
    for path in [
        *(nus_root / "Groundtruth" / "AllLabels").iterdir(),
        *(nus_root / "ImageList").iterdir(),
    ]:
        path.write_bytes(path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    tags = nus_root / "NUS_WID_Tags" / "AllTags1k.txt"
    tags.write_bytes(tags.read_bytes().replace(b"\t\n", b"\r\n"))
    np.testing.assert_array_equal(
        create_dataset("nuswide", nus_root, label_set="tags1006").labels, expected
    )


def test_tag_files_are_only_needed_for_tags1006(nus_root):
    shutil.rmtree(nus_root / "NUS_WID_Tags")
    assert len(create_dataset("nuswide", nus_root)) == 5
    with pytest.raises(DataFormatError, match=r"TagList1k\.txt not found"):
        create_dataset("nuswide", nus_root, label_set="tags1006")


def test_concept_without_label_file_names_the_concept_line(nus_root):
    (nus_root / "Groundtruth" / "AllLabels" / "Labels_sky.txt").unlink()
    with pytest.raises(
        DataFormatError, match=r"Concepts81\.txt:2: concept 'sky' has no label file"
    ):
        create_dataset("nuswide", nus_root)


def test_label_file_of_an_unlisted_concept_is_an_error(nus_root):
    stray = nus_root / "Groundtruth" / "TrainTestLabels" / "Labels_dog_Train.txt"
    stray.write_text("0\n0\n0\n")
    with pytest.raises(
        DataFormatError, match=r"Labels_dog_Train\.txt: label file of concept 'dog'"
    ):
        create_dataset("nuswide", nus_root, source="traintest")


def test_malformed_label_value_names_file_and_line(nus_root):
    path = nus_root / "Groundtruth" / "AllLabels" / "Labels_water.txt"
    path.write_text("0\n0\n-1\n1\n0\n")
    with pytest.raises(DataFormatError, match=r"Labels_water\.txt:3: expected 0 or 1, got '-1'"):
        create_dataset("nuswide", nus_root)


def test_label_file_with_too_few_lines_is_an_error(nus_root):
    (nus_root / "Groundtruth" / "AllLabels" / "Labels_animal.txt").write_text("0\n0\n0\n1\n")
    with pytest.raises(DataFormatError, match=r"Labels_animal\.txt: 4 lines, expected 5"):
        create_dataset("nuswide", nus_root)


@pytest.mark.parametrize(
    "line, found", [("1\t0\t0\t0\t0\t", "5 values"), ("1\t0\t0\t2\t0\t0\t", "value '2'")]
)
def test_malformed_tag_row_names_file_and_line(nus_root, line, found):
    path = nus_root / "NUS_WID_Tags" / "AllTags1k.txt"
    lines = path.read_text().splitlines()
    lines[3] = line
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataFormatError, match=rf"AllTags1k\.txt:4: expected 6 values 0/1 .*{found}"
    ):
        create_dataset("nuswide", nus_root, label_set="tags1006")


def test_split_list_entry_missing_from_the_image_list_is_an_error(nus_root):
    path = nus_root / "ImageList" / "TrainImagelist.txt"
    path.write_text("actor\\0001_2124494179.jpg\nbeach\\0009_1.jpg\nzoo\\0001_3456789012.jpg\n")
    with pytest.raises(DataFormatError, match=r"TrainImagelist\.txt:2: image 'beach/0009_1\.jpg'"):
        create_dataset("nuswide", nus_root)


def test_image_listed_twice_is_an_error(nus_root):
    path = nus_root / "ImageList" / "TestImagelist.txt"
    path.write_text("actor\\0002_174174086.jpg\nactor\\0002_174174086.jpg\n")
    with pytest.raises(DataFormatError, match=r"TestImagelist\.txt:2: .* listed twice"):
        create_dataset("nuswide", nus_root)


def test_missing_concept_list_is_an_error(nus_root):
    (nus_root / "ConceptsList" / "Concepts81.txt").unlink()
    with pytest.raises(DataFormatError, match=r"concept list not found"):
        create_dataset("nuswide", nus_root)


def test_missing_images_are_counted_unless_unchecked(nus_root):
    (nus_root / "Flickr" / "zoo" / "0001_3456789012.jpg").unlink()
    with pytest.raises(DataFormatError, match=r"1 of 5 file\(s\) not found, e\.g\. .*zoo"):
        create_dataset("nuswide", nus_root)
    assert len(create_dataset("nuswide", nus_root, check_images=False)) == 5


def test_unknown_label_set_is_rejected(nus_root):
    with pytest.raises(ValueError, match="label_set must be one of"):
        create_dataset("nuswide", nus_root, label_set="tags1000")


def test_image_linked_to_a_file_outside_the_root_is_refused_unless_allowed(nus_root, tmp_path):
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (4, 3)).save(secret)
    image = nus_root / "Flickr" / IMAGES[2]
    image.unlink()
    image.symlink_to(secret)
    with pytest.raises(DataFormatError, match=r"ImageList, entry 'beach/0001_1234567890\.jpg': "
                                              r"image path .* resolves to .*secret\.jpg, outside"):
        create_dataset("nuswide", nus_root)
    assert len(create_dataset("nuswide", nus_root, allow_outside_root=True)) == 5
