"""The VG-200 reader on HCP-MLR-PL-format files (tests/fixtures/vg, see its README)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlrkit.data import DataFormatError, create_dataset

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "vg"
NAMES = ["2328403.jpg", "1680.jpg", "2336863.jpg", "2389780.jpg", "498046.jpg"]
POSITIVES = [[0, 3, 17], [199], [], [3, 5], [17, 42, 199]]


@pytest.fixture
def vg_root(tmp_path: Path) -> Path:
    """A copy of the fixture with tiny JPEGs (1680.jpg in VG_100K_2/), so tests may break files."""
    root = tmp_path / "vg"
    shutil.copytree(FIXTURE, root)
    for name in NAMES:
        folder = root / ("VG_100K_2" if name == "1680.jpg" else "VG_100K")
        folder.mkdir(exist_ok=True)
        Image.new("RGB", (4, 3), (10, 200, 30)).save(folder / name)
    return root


def test_reads_the_hcp_files_train_list_first(vg_root):
    data = create_dataset("vg200", vg_root)
    assert data.name == "vg200"
    assert data.class_names == [str(k) for k in range(200)]
    assert data.labels.shape == (5, 200) and data.labels.dtype == np.int8
    assert [Path(p).name for p in data.image_paths] == NAMES
    assert data.image_ids()[1] == "VG_100K_2/1680.jpg"  # found in the second image folder
    assert data.splits.tolist() == ["train", "train", "train", "test", "test"]
    assert [np.flatnonzero(r).tolist() for r in data.labels] == POSITIVES
    assert set(np.unique(data.labels)) == {0, 1}  # HCP-MLR-PL's -1 (absent) is 0 here


@pytest.mark.parametrize("file_name", ["names.txt", "names.json"])
def test_category_file_gives_the_class_names(vg_root, file_name):
    names = [f"object {k}" for k in range(200)]
    path = vg_root / file_name
    if file_name.endswith(".json"):
        path.write_text(json.dumps(names))
    else:
        path.write_text("\n".join(names) + "\n")
    data = create_dataset("vg200", vg_root, category_file=file_name)
    assert data.class_names == names
    assert data.class_names[199] == "object 199" and data.labels[1, 199] == 1


def test_category_file_must_match_the_number_of_classes(vg_root):
    (vg_root / "names.txt").write_text("man\nwindow\n")
    with pytest.raises(
        DataFormatError, match=r"names\.txt: 2 class names, expected num_classes=200"
    ):
        create_dataset("vg200", vg_root, category_file="names.txt")


def test_listed_image_missing_from_the_label_index_names_list_and_line(vg_root):
    (vg_root / "test_list_500.txt").write_text("2389780.jpg\n\n2407277.jpg\n")
    with pytest.raises(
        DataFormatError,
        match=r"test_list_500\.txt:3: image '2407277\.jpg' has no entry in .*labels_index\.json",
    ):
        create_dataset("vg200", vg_root)


@pytest.mark.parametrize("index", [200, -1])
def test_class_index_out_of_range_names_file_and_key(vg_root, index):
    path = vg_root / "vg_category_200_labels_index.json"
    entries = json.loads(path.read_text())
    entries["2389780.jpg"] = [3, index]
    path.write_text(json.dumps(entries))
    with pytest.raises(
        DataFormatError,
        match=rf"labels_index\.json: key '2389780\.jpg': class index {index} is outside 0\.\.199",
    ):
        create_dataset("vg200", vg_root)


def test_malformed_label_entry_names_the_key(vg_root):
    path = vg_root / "vg_category_200_labels_index.json"
    path.write_text(path.read_text().replace("[199]", '["199"]', 1))
    with pytest.raises(DataFormatError, match=r"key '1680\.jpg': expected a list of class indices"):
        create_dataset("vg200", vg_root)


def test_invalid_json_names_file_and_line(vg_root):
    (vg_root / "vg_category_200_labels_index.json").write_text('{\n"1680.jpg": [199],\n}\n')
    with pytest.raises(DataFormatError, match=r"labels_index\.json:3: invalid JSON"):
        create_dataset("vg200", vg_root)


def test_image_in_both_lists_is_an_error(vg_root):
    (vg_root / "test_list_500.txt").write_text("2389780.jpg\n1680.jpg\n")
    with pytest.raises(
        DataFormatError,
        match=r"test_list_500\.txt:2: image '1680\.jpg' is already listed at .*train",
    ):
        create_dataset("vg200", vg_root)


def test_missing_list_file_is_an_error(vg_root):
    (vg_root / "train_list_500.txt").unlink()
    with pytest.raises(DataFormatError, match=r"train_list_500\.txt not found"):
        create_dataset("vg200", vg_root)


def test_missing_images_are_counted_unless_unchecked(vg_root):
    shutil.rmtree(vg_root / "VG_100K_2")
    (vg_root / "VG_100K" / "498046.jpg").unlink()
    with pytest.raises(DataFormatError, match=r"2 of 5 file\(s\) not found, e\.g\. .*1680\.jpg"):
        create_dataset("vg200", vg_root)
    data = create_dataset("vg200", vg_root, check_images=False)
    assert data.image_ids()[1] == "VG_100K/1680.jpg"  # found nowhere: the first folder


def test_blank_or_repeated_category_name_names_file_and_line(vg_root):
    names = [f"object {k}" for k in range(200)]
    names[3] = ""
    (vg_root / "names.txt").write_text("\n".join(names) + "\n")
    with pytest.raises(DataFormatError, match=r"names\.txt:4: empty class name"):
        create_dataset("vg200", vg_root, category_file="names.txt")
    names[3] = "object 1"
    (vg_root / "names.json").write_text(json.dumps(names))
    with pytest.raises(
        DataFormatError, match=r"names\.json: item 3: class name 'object 1' is listed"
    ):
        create_dataset("vg200", vg_root, category_file="names.json")


def test_listed_name_leading_outside_the_root_names_list_and_line(vg_root, tmp_path):
    (tmp_path / "secret").mkdir()
    Image.new("RGB", (4, 3)).save(tmp_path / "secret" / "x.jpg")
    name = "../../secret/x.jpg"  # VG_100K/../../ is the root's parent
    index = json.loads((vg_root / "vg_category_200_labels_index.json").read_text())
    (vg_root / "vg_category_200_labels_index.json").write_text(json.dumps({**index, name: [1]}))
    with open(vg_root / "test_list_500.txt", "a") as f:
        f.write(name + "\n")
    with pytest.raises(DataFormatError, match=r"test_list_500\.txt:\d+: image .*outside the "
                                              r"dataset root"):
        create_dataset("vg200", vg_root)
    assert len(create_dataset("vg200", vg_root, allow_outside_root=True)) == len(NAMES) + 1
