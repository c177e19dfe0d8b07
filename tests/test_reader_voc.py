"""The VOC reader on a format-exact VOC 2007 fixture (tests/fixtures/voc, see its README)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlrkit.data import DataFormatError, create_dataset
from mlrkit.data.voc import VOC_CLASSES, read_voc

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "voc"
TRAIN = ["000012", "000035"]
VAL = ["000005", "000007", "000009", "000050"]
TEST = ["000001", "000004", "000059"]


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """A copy of the fixture with tiny JPEGs, so tests may break files."""
    root = tmp_path / "voc"
    shutil.copytree(FIXTURE, root)
    images = root / "VOCdevkit" / "VOC2007" / "JPEGImages"
    images.mkdir()
    for image_id in TRAIN + VAL + TEST:
        Image.new("RGB", (4, 3), (120, 60, 30)).save(images / f"{image_id}.jpg")
    return root


def main_dir(root: Path) -> Path:
    return root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"


def row(data, image_id: str) -> dict[str, int]:
    """Non-negative labels of one image as {class: label}."""
    i = [p.stem for p in data.image_paths].index(image_id)
    return {c: int(v) for c, v in zip(data.class_names, data.labels[i]) if v != 0}


def test_reads_trainval_and_test_from_xml(voc_root):
    data = create_dataset("voc2007", voc_root)
    assert data.name == "voc2007"
    assert data.class_names == list(VOC_CLASSES) and data.class_names[-1] == "tvmonitor"
    assert data.labels.shape == (9, 20) and data.labels.dtype == np.int8
    assert [p.stem for p in data.image_paths] == sorted(TRAIN + VAL) + TEST
    assert data.split_names() == ["trainval", "test"]
    assert data.image_ids()[0] == "VOCdevkit/VOC2007/JPEGImages/000005.jpg"
    assert row(data, "000005") == {"chair": 1}  # some chairs difficult, some not: positive
    assert row(data, "000009") == {"horse": 1, "person": 1}
    assert row(data, "000050") == {"bottle": 1, "chair": -1, "person": 1}  # chair difficult only
    assert row(data, "000059") == {"chair": -1, "person": 1, "tvmonitor": 1}
    difficult = data.extras["difficult"]
    assert difficult.dtype == bool and difficult.shape == (9, 20)
    assert difficult.sum() == 3 and (data.labels[difficult] == -1).all()


@pytest.mark.parametrize("mode, value", [("unknown", -1), ("negative", 0), ("positive", 1)])
def test_difficult_only_entries_follow_the_option(voc_root, mode, value):
    data = create_dataset("voc2007", voc_root, difficult=mode)
    hard = data.extras["difficult"]
    assert (data.labels[hard] == value).all()
    assert row(data, "000035")["person"] == 1 and row(data, "000035").get("diningtable", 0) == value


@pytest.mark.parametrize("mode", ["unknown", "negative", "positive"])
def test_class_files_give_the_same_labels_as_xml(voc_root, mode):
    from_xml = create_dataset("voc2007", voc_root, source="xml", difficult=mode)
    from_sets = create_dataset("voc2007", voc_root, source="imagesets", difficult=mode)
    np.testing.assert_array_equal(from_sets.labels, from_xml.labels)
    np.testing.assert_array_equal(from_sets.extras["difficult"], from_xml.extras["difficult"])
    assert from_sets.image_paths == from_xml.image_paths


def test_auto_source_uses_class_files_without_annotations(voc_root):
    expected = create_dataset("voc2007", voc_root).labels
    shutil.rmtree(voc_root / "VOCdevkit" / "VOC2007" / "Annotations")
    (main_dir(voc_root) / "test.txt").unlink()  # ids then come from aeroplane_test.txt
    data = create_dataset("voc2007", voc_root, image_sets=("trainval", "test"))
    np.testing.assert_array_equal(data.labels, expected)
    with pytest.raises(DataFormatError, match=r"aeroplane_train\.txt not found"):
        create_dataset("voc2007", voc_root, image_sets=("train",))


def test_train_and_val_image_sets(voc_root):
    data = read_voc(voc_root, year=2007, image_sets=("train", "val"))
    assert data.split_names() == ["train", "val"]
    assert [p.stem for p in data.subset("train").image_paths] == TRAIN
    assert [p.stem for p in data.subset("val").image_paths] == VAL
    assert [p.stem for p in read_voc(voc_root, image_sets="val").image_paths] == VAL


def test_default_is_train_val_without_test_set(voc_root):
    (main_dir(voc_root) / "test.txt").unlink()
    assert create_dataset("voc2007", voc_root).split_names() == ["train", "val"]


@pytest.mark.parametrize("sub", ["VOCdevkit", "VOCdevkit/VOC2007"])
def test_root_may_be_the_devkit_or_year_folder(voc_root, sub):
    data = create_dataset("voc", voc_root / sub)  # the year comes from the VOC2007 folder
    assert data.name == "voc2007" and data.labels.shape == (9, 20)


def test_missing_images_are_listed():
    with pytest.raises(DataFormatError, match=r"9 of 9 file\(s\) not found.*000005\.jpg"):
        create_dataset("voc2007", FIXTURE)
    assert len(create_dataset("voc2007", FIXTURE, check_images=False)) == 9


def test_malformed_xml_names_the_file(voc_root):
    path = voc_root / "VOCdevkit" / "VOC2007" / "Annotations" / "000007.xml"
    path.write_text(path.read_text()[:200])
    with pytest.raises(DataFormatError, match=r"000007\.xml: malformed XML"):
        create_dataset("voc2007", voc_root)


def test_unknown_class_in_xml_names_it_and_the_known_classes(voc_root):
    path = voc_root / "VOCdevkit" / "VOC2007" / "Annotations" / "000012.xml"
    path.write_text(path.read_text().replace("<name>car</name>", "<name>truck</name>"))
    with pytest.raises(DataFormatError, match=r"000012\.xml: object class 'truck'.*aeroplane"):
        create_dataset("voc2007", voc_root)


def test_missing_annotation_file_is_an_error(voc_root):
    (voc_root / "VOCdevkit" / "VOC2007" / "Annotations" / "000004.xml").unlink()
    with pytest.raises(DataFormatError, match=r"1 of 9 file\(s\) not found.*000004\.xml"):
        create_dataset("voc2007", voc_root)


def test_bad_line_in_class_file_gives_the_line(voc_root):
    path = main_dir(voc_root) / "dog_test.txt"
    path.write_text("000001  1\n000004 2\n000059 -1\n")
    with pytest.raises(DataFormatError, match=r"dog_test\.txt:2: expected '<image id> <1\|-1\|0>'"):
        create_dataset("voc2007", voc_root, source="imagesets")


def test_class_file_with_other_images_is_an_error(voc_root):
    path = main_dir(voc_root) / "cat_trainval.txt"
    path.write_text(path.read_text().replace("000050", "000051"))
    with pytest.raises(DataFormatError, match=r"cat_trainval\.txt: lists other images.*000051"):
        create_dataset("voc2007", voc_root, source="imagesets")


def test_image_in_two_requested_sets_is_an_error(voc_root):
    with pytest.raises(DataFormatError, match=r"in both image sets 'trainval' and 'val'"):
        read_voc(voc_root, year=2007, image_sets=("trainval", "val"))


def test_missing_image_set_lists_the_available_ones(voc_root):
    with pytest.raises(DataFormatError, match=r"seg\.txt not found.*'test', 'train'"):
        read_voc(voc_root, year=2007, image_sets=("seg",))


def test_wrong_year_or_option_is_an_error(voc_root):
    with pytest.raises(DataFormatError, match=r"one VOC2012/ImageSets folder .* found none"):
        create_dataset("voc2012", voc_root)
    with pytest.raises(DataFormatError, match=r"VOC2007 is VOC2007, not VOC2012"):
        create_dataset("voc2012", voc_root / "VOCdevkit" / "VOC2007")
    with pytest.raises(ValueError, match="difficult must be one of"):
        create_dataset("voc2007", voc_root, difficult="ignore")


def test_image_id_leading_outside_the_root_is_refused_unless_allowed(voc_root, tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    Image.new("RGB", (4, 3)).save(secret / "x.jpg")
    ann = voc_root / "VOCdevkit" / "VOC2007" / "Annotations"
    shutil.copy(ann / "000005.xml", secret / "x.xml")
    with open(main_dir(voc_root) / "trainval.txt", "a") as f:
        f.write("../../../../secret/x\n")  # JPEGImages/../../../../ is the root's parent
    with pytest.raises(DataFormatError,
                       match=r"trainval\.txt, image id '\.\./\.\./\.\./\.\./secret/x': image path "
                             r".*outside the dataset root.*allow_outside_root"):
        create_dataset("voc2007", voc_root)
    data = create_dataset("voc2007", voc_root, allow_outside_root=True)
    assert data.image_paths[-4].resolve() == (secret / "x.jpg").resolve()


def test_options_of_a_year_reader_are_those_of_read_voc_but_the_year():
    from mlrkit.data.dataset import reader_options

    assert "year" not in reader_options("voc2007")
    assert {"difficult", "allow_outside_root", "extra_splits"} <= set(reader_options("voc2007"))
    with pytest.raises(ValueError, match=r"\['year'\] are fixed"):
        create_dataset("voc2007", FIXTURE, year=2012)
